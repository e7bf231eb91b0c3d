//! The `jwt` policy in real Envoy, both hosts, against a loopback JWKS
//! server with keys generated here: every algorithm verifies, every kind of
//! bad token gets 401, a rotated key works without restarting anything, and
//! when the JWKS server dies the cached keys go on working while a request
//! that needs new keys gets a prompt 401.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test crate: a failed step must fail the test"
)]

use std::time::{Duration, Instant};

use integration_tests::eventually;
use integration_tests::jwks::JwksServer;
use integration_tests::{Host, Stack};
use jwt_simple::prelude::*;
use jwt_simple::reexports::ct_codecs::Encoder;
use local_envoy::filters::static_cluster;
use serde_json::{json, Value};

const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "orders";

fn b64(bytes: &[u8]) -> String {
    Base64UrlSafeNoPadding::encode_to_string(bytes).unwrap()
}

/// One signing key of each family, with its public JWK.
struct Keys {
    rsa: RS256KeyPair,
    ec256: ES256KeyPair,
    ec384: ES384KeyPair,
    ed: Ed25519KeyPair,
    hmac: HS256Key,
}

impl Keys {
    fn generate() -> Self {
        Self {
            rsa: RS256KeyPair::generate(2048).unwrap().with_key_id("rsa-1"),
            ec256: ES256KeyPair::generate().with_key_id("ec256-1"),
            ec384: ES384KeyPair::generate().with_key_id("ec384-1"),
            ed: Ed25519KeyPair::generate().with_key_id("ed-1"),
            hmac: HS256Key::from_bytes(b"a shared secret of thirty-two bytes!").with_key_id("hs-1"),
        }
    }

    fn jwks(&self, extra: &[Value]) -> String {
        let rsa = self.rsa.public_key().to_components();
        let p256 = self.ec256.public_key().public_key().to_bytes_uncompressed();
        let p384 = self.ec384.public_key().public_key().to_bytes_uncompressed();
        let mut keys = vec![
            // No `alg`: the same RSA key serves RS* and PS*.
            json!({"kty": "RSA", "kid": "rsa-1", "n": b64(&rsa.n), "e": b64(&rsa.e)}),
            json!({"kty": "EC", "crv": "P-256", "kid": "ec256-1", "x": b64(&p256[1..33]), "y": b64(&p256[33..])}),
            json!({"kty": "EC", "crv": "P-384", "kid": "ec384-1", "x": b64(&p384[1..49]), "y": b64(&p384[49..])}),
            json!({"kty": "OKP", "crv": "Ed25519", "kid": "ed-1", "x": b64(&self.ed.public_key().to_bytes())}),
            json!({"kty": "oct", "kid": "hs-1", "k": b64(&self.hmac.to_bytes())}),
        ];
        keys.extend_from_slice(extra);
        json!({ "keys": keys }).to_string()
    }
}

fn ec256_jwk(key: &ES256KeyPair, kid: &str) -> Value {
    let point = key.public_key().public_key().to_bytes_uncompressed();
    json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": b64(&point[1..33]), "y": b64(&point[33..])})
}

fn claims() -> JWTClaims<NoCustomClaims> {
    Claims::create(jwt_simple::prelude::Duration::from_mins(10))
        .with_issuer(ISSUER)
        .with_audience(AUDIENCE)
        .with_subject("alice")
}

/// A token signed with an RSA key for each RSA algorithm.
fn rsa_token(keys: &Keys, algorithm: &str) -> String {
    let der = keys.rsa.to_der().unwrap();
    match algorithm {
        "RS256" => keys.rsa.sign(claims()),
        "RS384" => RS384KeyPair::from_der(&der)
            .unwrap()
            .with_key_id("rsa-1")
            .sign(claims()),
        "RS512" => RS512KeyPair::from_der(&der)
            .unwrap()
            .with_key_id("rsa-1")
            .sign(claims()),
        "PS256" => PS256KeyPair::from_der(&der)
            .unwrap()
            .with_key_id("rsa-1")
            .sign(claims()),
        "PS384" => PS384KeyPair::from_der(&der)
            .unwrap()
            .with_key_id("rsa-1")
            .sign(claims()),
        _ => PS512KeyPair::from_der(&der)
            .unwrap()
            .with_key_id("rsa-1")
            .sign(claims()),
    }
    .unwrap()
}

fn config(jwks_uri: &str) -> String {
    format!(
        r#"
routes:
  - name: orders
    policies:
      - name: jwt
        config:
          providers:
            - issuer: {ISSUER}
              audiences: [{AUDIENCE}]
              algorithms: [HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA]
              remote_jwks:
                http_uri: {{ uri: "{jwks_uri}", cluster: jwks, timeout: 2s }}
                cache_duration: 300s
                min_refetch_interval: 1s
              claim_to_headers: [{{ claim_name: sub, header_name: x-user }}]
"#
    )
}

fn start(host: Host, server: &JwksServer) -> Stack {
    start_with_workers(host, server, 1)
}

fn start_with_workers(host: Host, server: &JwksServer, workers: u32) -> Stack {
    Stack::builder(host, &config(&server.uri()))
        .clusters(vec![static_cluster("jwks", server.addr())])
        .workers(workers)
        .start()
}

fn get(stack: &Stack, token: &str) -> integration_tests::Reply {
    stack.send(
        "GET",
        "/orders",
        &[("authorization", &format!("Bearer {token}"))],
    )
}

/// Waits for the first fetch to land: until then requests get 401.
fn wait_until_accepted(stack: &Stack, token: &str) {
    eventually("the keys", Duration::from_secs(15), || {
        (get(stack, token).status == 200).then_some(())
    });
}

#[test]
fn tokens_of_every_algorithm_verify_and_bad_ones_get_401_on_both_hosts() {
    let keys = Keys::generate();
    let server = JwksServer::start(&keys.jwks(&[])).unwrap();
    for host in Host::ALL {
        let stack = start(host, &server);
        let es256 = keys.ec256.sign(claims()).unwrap();
        wait_until_accepted(&stack, &es256);

        let secret = keys.hmac.to_bytes();
        let mut valid = vec![
            ("HS256", keys.hmac.authenticate(claims()).unwrap()),
            (
                "HS384",
                HS384Key::from_bytes(&secret)
                    .with_key_id("hs-1")
                    .authenticate(claims())
                    .unwrap(),
            ),
            (
                "HS512",
                HS512Key::from_bytes(&secret)
                    .with_key_id("hs-1")
                    .authenticate(claims())
                    .unwrap(),
            ),
            ("ES256", es256.clone()),
            ("ES384", keys.ec384.sign(claims()).unwrap()),
            ("EdDSA", keys.ed.sign(claims()).unwrap()),
        ];
        for algorithm in ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"] {
            valid.push((algorithm, rsa_token(&keys, algorithm)));
        }
        for (algorithm, token) in &valid {
            let reply = get(&stack, token);
            assert_eq!(reply.status, 200, "{host:?} {algorithm}: {}", reply.body);
            let upstream = reply.upstream().unwrap();
            assert_eq!(
                upstream.header("x-user"),
                Some("alice"),
                "{host:?} {algorithm}"
            );
            assert_eq!(
                upstream.header("authorization"),
                None,
                "{host:?} {algorithm}"
            );
        }

        for (case, token) in bad_tokens(&keys) {
            let reply = get(&stack, &token);
            assert_eq!(reply.status, 401, "{host:?} {case}: {}", reply.body);
            let challenge = reply.header("www-authenticate").unwrap_or_default();
            assert!(
                challenge.starts_with("Bearer realm=\"orders\""),
                "{host:?} {case}: {challenge}"
            );
            assert!(reply.upstream().is_none(), "{host:?} {case}");
        }
        let reply = stack.send("GET", "/orders", &[]);
        assert_eq!(reply.status, 401, "{host:?} no token");
    }
}

fn bad_tokens(keys: &Keys) -> Vec<(&'static str, String)> {
    let now = Clock::now_since_epoch();
    let hour = jwt_simple::prelude::Duration::from_hours(1);
    let mut expired = claims();
    expired.expires_at = Some(now - hour);
    let mut early = claims();
    early.invalid_before = Some(now + hour);
    let good = keys.ec256.sign(claims()).unwrap();
    let (head, rest) = good.split_once('.').unwrap();
    let (payload, _) = rest.split_once('.').unwrap();
    let forged_payload = b64(
        json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "root", "exp": now.as_secs() + 600})
            .to_string()
            .as_bytes(),
    );
    let none_header = b64(br#"{"alg":"none","typ":"JWT"}"#);
    // HMAC signed with the RSA public key, under the RSA key's kid.
    let public_pem = keys.rsa.public_key().to_pem().unwrap();
    let confused = HS256Key::from_bytes(public_pem.as_bytes())
        .with_key_id("rsa-1")
        .authenticate(claims())
        .unwrap();
    vec![
        ("expired", keys.ec256.sign(expired).unwrap()),
        ("not yet valid", keys.ec256.sign(early).unwrap()),
        (
            "wrong issuer",
            keys.ec256
                .sign(claims().with_issuer("https://evil.test"))
                .unwrap(),
        ),
        (
            "wrong audience",
            keys.ec256.sign(claims().with_audience("billing")).unwrap(),
        ),
        (
            "bad signature",
            format!(
                "{head}.{forged_payload}.{}",
                good.rsplit('.').next().unwrap()
            ),
        ),
        ("alg none", format!("{none_header}.{payload}.")),
        ("HS/RS confusion", confused),
        ("malformed", "abc.def".into()),
        (
            "oversized",
            format!("{head}.{}.{}", "A".repeat(12_000), "sig"),
        ),
    ]
}

#[test]
fn a_rotated_key_works_at_once_and_cached_keys_outlive_the_jwks_server() {
    let keys = Keys::generate();
    let server = JwksServer::start(&keys.jwks(&[])).unwrap();
    for host in Host::ALL {
        let stack = start(host, &server);
        let old = keys.ec256.sign(claims()).unwrap();
        wait_until_accepted(&stack, &old);
        let fetched = server.fetches();
        for _ in 0..20 {
            assert_eq!(get(&stack, &old).status, 200, "{host:?}");
        }
        assert_eq!(
            server.fetches(),
            fetched,
            "{host:?}: a known key needs no fetch"
        );

        // Rotation: the issuer publishes a new key and signs with it.
        let rotated = ES256KeyPair::generate().with_key_id(&format!("rotated-{host:?}"));
        server.publish(&keys.jwks(&[ec256_jwk(&rotated, &format!("rotated-{host:?}"))]));
        std::thread::sleep(Duration::from_millis(1100));
        let reply = get(&stack, &rotated.sign(claims()).unwrap());
        assert_eq!(reply.status, 200, "{host:?}: {}", reply.body);
        assert_eq!(
            server.fetches(),
            fetched + 1,
            "{host:?}: one refetch for the new kid"
        );

        // Tokens naming unknown kids cannot make it fetch more than once
        // per min_refetch_interval (1s).
        std::thread::sleep(Duration::from_millis(1100));
        let stranger = ES256KeyPair::generate().with_key_id("nobody");
        for _ in 0..5 {
            assert_eq!(
                get(&stack, &stranger.sign(claims()).unwrap()).status,
                401,
                "{host:?}"
            );
        }
        assert_eq!(
            server.fetches(),
            fetched + 2,
            "{host:?}: refetches are rate-limited"
        );

        // The JWKS server dies: cached keys keep working; a token that needs
        // new keys is refused promptly rather than left hanging.
        server.set_down(true);
        std::thread::sleep(Duration::from_millis(1100));
        let started = Instant::now();
        assert_eq!(
            get(&stack, &stranger.sign(claims()).unwrap()).status,
            401,
            "{host:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{host:?}: {:?}",
            started.elapsed()
        );
        assert_eq!(
            get(&stack, &old).status,
            200,
            "{host:?}: cached keys must survive"
        );
        server.set_down(false);
    }
}

#[test]
fn with_no_keys_at_all_requests_are_refused_not_held() {
    let keys = Keys::generate();
    let server = JwksServer::start(&keys.jwks(&[])).unwrap();
    server.set_down(true);
    for host in Host::ALL {
        let stack = start(host, &server);
        let started = Instant::now();
        let reply = get(&stack, &keys.ec256.sign(claims()).unwrap());
        assert_eq!(reply.status, 401, "{host:?}: {}", reply.body);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{host:?}: {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn worker_vms_share_one_fetch_through_shared_data() {
    let keys = Keys::generate();
    let server = JwksServer::start(&keys.jwks(&[])).unwrap();
    // Two workers, two VMs: each request goes out on a new connection, so
    // the kernel spreads them over both.
    let stack = start_with_workers(Host::Wasm, &server, 2);
    let token = keys.ec256.sign(claims()).unwrap();
    wait_until_accepted(&stack, &token);
    // The very first claim cannot be guarded (compare-and-swap needs an
    // existing entry), and Envoy also configures a base VM on its main
    // thread before the workers' VMs: at most one fetch per VM.
    let at_start = server.fetches();
    assert!(
        (1..=3).contains(&at_start),
        "{at_start} fetches at start:\n{}",
        stack.envoy.log()
    );
    for _ in 0..40 {
        assert_eq!(get(&stack, &token).status, 200);
    }
    assert_eq!(
        server.fetches(),
        at_start,
        "a VM fetched keys another VM had shared"
    );

    let rotated = ES256KeyPair::generate().with_key_id("rotated-shared");
    server.publish(&keys.jwks(&[ec256_jwk(&rotated, "rotated-shared")]));
    std::thread::sleep(Duration::from_millis(1100));
    let new_token = rotated.sign(claims()).unwrap();
    for _ in 0..40 {
        assert_eq!(get(&stack, &new_token).status, 200);
    }
    assert_eq!(
        server.fetches(),
        at_start + 1,
        "one refetch for every worker"
    );
}

/// Sends `count` requests at once, each on its own connection.
fn concurrently(stack: &Stack, token: &str, count: usize) -> Vec<u16> {
    std::thread::scope(|scope| {
        let sends: Vec<_> = (0..count)
            .map(|_| scope.spawn(|| get(stack, token).status))
            .collect();
        sends.into_iter().map(|s| s.join().unwrap()).collect()
    })
}

#[test]
fn requests_arriving_during_a_fetch_wait_for_it_instead_of_failing() {
    let keys = Keys::generate();
    let server = JwksServer::start(&keys.jwks(&[])).unwrap();
    // Every fetch takes 400 ms: requests keep arriving while it is on its way.
    server.set_delay(Duration::from_millis(400));
    for (host, workers) in [(Host::Wasm, 2), (Host::ExtProc, 1)] {
        let before = server.fetches();
        let stack = start_with_workers(host, &server, workers);
        // Right after the start, the first fetch is still in flight.
        let token = keys.ec256.sign(claims()).unwrap();
        let statuses = concurrently(&stack, &token, 8);
        assert!(
            statuses.iter().all(|s| *s == 200),
            "{host:?} at start: {statuses:?}\n{}",
            stack.envoy.log()
        );
        let at_start = server.fetches() - before;
        // At most one per VM: the workers' and Envoy's base VM.
        assert!(
            (1..=workers as usize + 1).contains(&at_start),
            "{host:?}: {at_start} fetches"
        );

        // A rotation under load: every request with the new key waits for
        // the one refetch the first of them started.
        let kid = format!("under-load-{host:?}");
        let rotated = ES256KeyPair::generate().with_key_id(&kid);
        server.publish(&keys.jwks(&[ec256_jwk(&rotated, &kid)]));
        std::thread::sleep(Duration::from_millis(1100));
        let fetched = server.fetches();
        let statuses = concurrently(&stack, &rotated.sign(claims()).unwrap(), 8);
        assert!(
            statuses.iter().all(|s| *s == 200),
            "{host:?} rotation: {statuses:?}"
        );
        assert_eq!(
            server.fetches(),
            fetched + 1,
            "{host:?}: one refetch for all of them"
        );
    }
}

/// Starts a request for `token` on a connection of its own and returns the
/// connection, so the caller can abort the request while it is held.
fn start_request(stack: &Stack, token: &str) -> std::net::TcpStream {
    use std::io::Write;
    let mut connection = std::net::TcpStream::connect(stack.envoy.addr()).unwrap();
    write!(
        connection,
        "GET /orders HTTP/1.1\r\nhost: orders\r\nauthorization: Bearer {token}\r\n\r\n"
    )
    .unwrap();
    connection
}

/// Waits until the JWKS server has been asked `count` times in all.
fn wait_for_fetches(server: &JwksServer, count: usize) {
    eventually(
        "a fetch at the JWKS server",
        Duration::from_secs(10),
        || (server.fetches() >= count).then_some(()),
    );
}

#[test]
fn requests_aborted_while_their_fetch_is_in_flight_cannot_keep_a_rotated_key_out() {
    let keys = Keys::generate();
    let server = JwksServer::start(&keys.jwks(&[])).unwrap();
    for host in Host::ALL {
        let stack = start(host, &server);
        let old = keys.ec256.sign(claims()).unwrap();
        wait_until_accepted(&stack, &old);
        // Past min_refetch_interval (1 s) since the first fetch.
        std::thread::sleep(Duration::from_millis(1100));

        let kid = format!("aborted-{host:?}");
        let rotated = ES256KeyPair::generate().with_key_id(&kid);
        let token = rotated.sign(claims()).unwrap();
        server.set_delay(Duration::from_millis(1500));
        server.publish(&keys.jwks(&[ec256_jwk(&rotated, &kid)]));
        let before = server.fetches();
        // Clients give up on three requests while the refetch they started
        // (or joined) is on its way.
        for _ in 0..3 {
            let connection = start_request(&stack, &token);
            wait_for_fetches(&server, before + 1);
            connection.shutdown(std::net::Shutdown::Both).unwrap();
        }
        let reply = get(&stack, &token);
        assert_eq!(
            reply.status,
            200,
            "{host:?}: {}\n{}",
            reply.body,
            stack.envoy.log()
        );
        assert_eq!(
            server.fetches(),
            before + 1,
            "{host:?}: the aborted requests' fetch served the next one"
        );
        server.set_delay(Duration::ZERO);
    }
}

#[test]
fn requests_at_every_start_wait_for_the_first_fetch() {
    let keys = Keys::generate();
    let server = JwksServer::start(&keys.jwks(&[])).unwrap();
    server.set_delay(Duration::from_millis(400));
    let token = keys.ec256.sign(claims()).unwrap();
    // Envoy configures and destroys VMs of its own at every start; none of
    // them may leave a claim that holds the workers' requests until they
    // are refused.
    for (host, workers, starts) in [
        (Host::Wasm, 2, 5),
        (Host::Wasm, 1, 3),
        (Host::ExtProc, 1, 2),
    ] {
        for start in 0..starts {
            let stack = start_with_workers(host, &server, workers);
            let statuses = concurrently(&stack, &token, 8);
            assert!(
                statuses.iter().all(|s| *s == 200),
                "{host:?} with {workers} workers, start {start}: {statuses:?}\n{}",
                stack.envoy.log()
            );
        }
    }
}
