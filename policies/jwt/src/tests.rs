use super::*;
use jwt_simple::prelude::{
    Claims, ECDSAP256KeyPairLike, ECDSAP256PublicKeyLike, ES256KeyPair, HS256Key, JWTClaims,
    MACLike, RS256KeyPair, RSAKeyPairLike,
};
use jwt_simple::reexports::ct_codecs::Encoder;
use policy_executor::testing::{changes, engine_for, request, start};
use policy_executor::{Document, Engine, HeaderChange, Outcome};
use serde_json::{json, Value};

const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "orders";

fn b64(bytes: &[u8]) -> String {
    Base64UrlSafeNoPadding::encode_to_string(bytes).unwrap()
}

fn es256_jwk(key: &ES256KeyPair, kid: &str) -> Value {
    let point = key.public_key().public_key().to_bytes_uncompressed();
    json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": b64(&point[1..33]), "y": b64(&point[33..])})
}

fn claims(extra: Value) -> JWTClaims<Value> {
    Claims::with_custom_claims(extra, jwt_simple::prelude::Duration::from_mins(10))
        .with_issuer(ISSUER)
        .with_audience(AUDIENCE)
        .with_subject("alice")
}

fn inline(jwks: Value, algorithms: &[&str], extra: Value) -> Value {
    let mut provider = json!({
        "issuer": ISSUER,
        "audiences": [AUDIENCE],
        "algorithms": algorithms,
        "local_jwks": {"inline_string": jwks.to_string()},
    });
    if let (Some(p), Some(e)) = (provider.as_object_mut(), extra.as_object()) {
        p.extend(e.clone());
    }
    json!({"providers": [provider]})
}

fn run(engine: &Engine, headers: &[(&str, &str)]) -> (Outcome, Option<Value>) {
    let mut x = start(engine, request("GET", "/orders", headers)).unwrap();
    let outcome = x.on_request_headers();
    (outcome, x.context().metadata().get(JWT_CLAIMS).cloned())
}

fn status(outcome: &Outcome) -> Option<u16> {
    match outcome {
        Outcome::Respond(reply) => Some(reply.status),
        _ => None,
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[test]
fn a_valid_token_passes_with_its_claims_mapped_and_is_stripped() {
    let key = ES256KeyPair::generate().with_key_id("k1");
    let config = inline(
        json!({"keys": [es256_jwk(&key, "k1")]}),
        &["ES256"],
        json!({"claim_to_headers": [{"claim_name": "sub", "header_name": "x-user"}, {"claim_name": "tenant", "header_name": "x-tenant"}]}),
    );
    let engine = engine_for(FACTORY, config).unwrap();
    let token = key.sign(claims(json!({"scope": "orders.read"}))).unwrap();
    let (outcome, claims) = run(
        &engine,
        &[("authorization", &bearer(&token)), ("x-tenant", "forged")],
    );
    let claims = claims.unwrap();
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["scope"], "orders.read");
    assert_eq!(
        changes(outcome),
        [
            ("x-user".into(), HeaderChange::Replace(vec!["alice".into()])),
            ("x-tenant".into(), HeaderChange::Remove),
            ("authorization".into(), HeaderChange::Remove),
        ]
    );
}

#[test]
fn bad_tokens_get_401_with_a_bearer_challenge() {
    let key = ES256KeyPair::generate();
    let other = ES256KeyPair::generate();
    let engine = engine_for(
        FACTORY,
        inline(
            json!({"keys": [es256_jwk(&key, "k1")]}),
            &["ES256"],
            json!({}),
        ),
    )
    .unwrap();
    let now = now_seconds();
    let mut expired = claims(json!({}));
    expired.expires_at = Some(UnixTimeStamp::from_secs(now - 3600));
    let mut early = claims(json!({}));
    early.invalid_before = Some(UnixTimeStamp::from_secs(now + 3600));
    let wrong_issuer = claims(json!({})).with_issuer("https://evil.test");
    let wrong_audience = claims(json!({})).with_audience("billing");
    let mut no_expiry = claims(json!({}));
    no_expiry.expires_at = None;
    let good = key.sign(claims(json!({}))).unwrap();
    let tampered = format!("{}x", &good[..good.len() - 1]);
    let header_none = b64(br#"{"alg":"none","typ":"JWT"}"#);
    let body = b64(json!({"iss": ISSUER, "aud": AUDIENCE, "exp": now + 600})
        .to_string()
        .as_bytes());
    let cases = [
        ("expired", key.sign(expired).unwrap()),
        ("not yet valid", key.sign(early).unwrap()),
        ("wrong issuer", key.sign(wrong_issuer).unwrap()),
        ("wrong audience", key.sign(wrong_audience).unwrap()),
        ("no exp", key.sign(no_expiry).unwrap()),
        ("another key", other.sign(claims(json!({}))).unwrap()),
        ("bad signature", tampered),
        ("alg none", format!("{header_none}.{body}.")),
        ("malformed", "not-a-jwt".into()),
        ("oversized", format!("{}.{}.x", "a".repeat(9000), body)),
    ];
    for (case, token) in cases {
        let (outcome, claims) = run(&engine, &[("authorization", &bearer(&token))]);
        let Outcome::Respond(reply) = outcome else {
            panic!("{case}: let through")
        };
        assert_eq!(reply.status, 401, "{case}");
        let challenge = &reply.headers[0];
        assert_eq!(challenge.0, "www-authenticate", "{case}");
        assert!(
            challenge.1.contains("error=\"invalid_token\""),
            "{case}: {}",
            challenge.1
        );
        assert_eq!(claims, None, "{case}");
    }
    let (outcome, _) = run(&engine, &[]);
    let Outcome::Respond(reply) = outcome else {
        panic!("no token let through")
    };
    assert_eq!(reply.status, 401);
    assert_eq!(reply.headers[0].1, "Bearer realm=\"test\"");
}

#[test]
fn an_hmac_token_made_with_the_rsa_public_key_never_passes() {
    let rsa = RS256KeyPair::generate(2048).unwrap();
    let components = rsa.public_key().to_components();
    let jwk = json!({"kty": "RSA", "kid": "r1", "n": b64(&components.n), "e": b64(&components.e)});
    // The attacker signs HS256 with bytes anyone can get: the public key.
    let forged_key = HS256Key::from_bytes(rsa.public_key().to_pem().unwrap().as_bytes());
    let forged = forged_key.authenticate(claims(json!({}))).unwrap();
    let genuine = rsa.sign(claims(json!({}))).unwrap();
    for algorithms in [&["RS256"][..], &["RS256", "HS256"]] {
        let config = inline(json!({"keys": [jwk.clone()]}), algorithms, json!({}));
        let engine = engine_for(FACTORY, config).unwrap();
        let (outcome, _) = run(&engine, &[("authorization", &bearer(&forged))]);
        assert_eq!(status(&outcome), Some(401), "{algorithms:?}");
        let (outcome, _) = run(&engine, &[("authorization", &bearer(&genuine))]);
        assert_eq!(status(&outcome), None, "{algorithms:?}");
    }
}

#[test]
fn scopes_and_claims_are_required_when_configured() {
    let key = ES256KeyPair::generate();
    let config = inline(
        json!({"keys": [es256_jwk(&key, "k1")]}),
        &["ES256"],
        json!({"required_scopes": ["orders.write"], "required_claims": {"tenant": "acme"}}),
    );
    let engine = engine_for(FACTORY, config).unwrap();
    let sign = |extra| bearer(&key.sign(claims(extra)).unwrap());
    let (outcome, _) = run(
        &engine,
        &[(
            "authorization",
            &sign(json!({"tenant": "acme", "scope": "orders.read orders.write"})),
        )],
    );
    assert_eq!(status(&outcome), None);
    let (outcome, _) = run(
        &engine,
        &[(
            "authorization",
            &sign(json!({"tenant": "acme", "scp": ["orders.read"]})),
        )],
    );
    assert_eq!(status(&outcome), Some(403));
    let (outcome, _) = run(
        &engine,
        &[(
            "authorization",
            &sign(json!({"tenant": "other", "scope": "orders.write"})),
        )],
    );
    assert_eq!(status(&outcome), Some(401));
}

#[test]
fn a_missing_token_may_be_allowed_and_tokens_come_from_other_places() {
    let key = ES256KeyPair::generate();
    let mut config = inline(
        json!({"keys": [es256_jwk(&key, "k1")]}),
        &["ES256"],
        json!({}),
    );
    config["allow_missing"] = json!(true);
    config["forward"] = json!(true);
    config["from"] = json!([{"query": "access_token"}, {"cookie": "session"}]);
    let engine = engine_for(FACTORY, config).unwrap();
    let (outcome, claims) = run(&engine, &[]);
    assert_eq!((status(&outcome), claims), (None, None));
    let token = key.sign(self::claims(json!({}))).unwrap();
    let (outcome, claims) = run(
        &engine,
        &[("cookie", &format!("theme=dark; session={token}"))],
    );
    assert_eq!(changes(outcome), []);
    assert!(claims.is_some());
    // A token that is there but bad is refused even when missing is allowed.
    let (outcome, _) = run(&engine, &[("cookie", "session=garbage")]);
    assert_eq!(status(&outcome), Some(401));
    let (outcome, _) = run(&engine, &[("cookie", "session=")]);
    assert_eq!(status(&outcome), Some(401));
}

fn remote_config() -> Value {
    json!({"providers": [{
        "issuer": ISSUER,
        "algorithms": ["ES256"],
        "remote_jwks": {
            "http_uri": {"uri": "http://issuer.test/jwks.json", "cluster": "issuer", "timeout": "2s"},
            "cache_duration": "10m",
            "min_refetch_interval": "500ms",
        },
    }]})
}

fn publish(engine: &Engine, version: u64, keys: &[Value]) {
    let [source] = engine.remote_sources().try_into().unwrap();
    engine.remote().documents().store(
        &source,
        Document {
            fetched_at: version,
            body: json!({"keys": keys}).to_string().as_bytes().into(),
        },
    );
}

#[test]
fn remote_keys_are_asked_for_and_an_unknown_kid_asks_for_a_refetch() {
    let host = policy_executor::testing::FakeHost::at(1_000_000);
    let mut engine = engine_for(FACTORY, remote_config()).unwrap();
    engine.set_host(Box::new(host.clone()));
    let [source] = engine.remote_sources().try_into().unwrap();
    assert_eq!(source.timeout, Duration::from_secs(2));
    assert_eq!(source.refresh_interval, Duration::from_secs(600));
    assert_eq!(source.min_refetch_interval, Duration::from_millis(500));
    let old = ES256KeyPair::generate().with_key_id("old");
    let new = ES256KeyPair::generate().with_key_id("new");
    let auth = |key: &ES256KeyPair| bearer(&key.sign(claims(json!({}))).unwrap());
    let waits = Outcome::Wait(policy_executor::Wait::Poll);
    let mut refresher = policy_executor::Refresher::default();
    let mut fetch = |answer: policy_executor::Answer| {
        let calls = refresher.tick(engine.remote(), std::slice::from_ref(&source));
        assert_eq!(calls, [(source.clone(), source.fetch_call())]);
        refresher.on_answer(engine.remote(), &source, &answer);
    };

    // Nothing fetched yet: the request waits for the keys; the fetch fails:
    // 401.
    let mut x = start(
        &engine,
        request("GET", "/", &[("authorization", &auth(&old))]),
    )
    .unwrap();
    assert_eq!(x.on_request_headers(), waits);
    fetch(Err(policy_executor::CallFailure::Timeout));
    assert_eq!(status(&x.poll()), Some(401));

    publish(&engine, 1, &[es256_jwk(&old, "old")]);
    let (outcome, _) = run(&engine, &[("authorization", &auth(&old))]);
    assert_eq!(status(&outcome), None);

    // A rotation: the token names a kid the cached set lacks; the request
    // waits for the new set and verifies with it.
    host.advance(1_000);
    let mut x = start(
        &engine,
        request("GET", "/", &[("authorization", &auth(&new))]),
    )
    .unwrap();
    assert_eq!(x.on_request_headers(), waits);
    let keys = json!({"keys": [es256_jwk(&new, "new")]}).to_string();
    fetch(Ok(policy_executor::CallResponse {
        status: 200,
        headers: Vec::new(),
        body: keys.into_bytes(),
    }));
    assert_eq!(status(&x.poll()), None);

    // The old key is gone: its token, verified and cached before, is not
    // served from the cache any more; within min_refetch_interval of the
    // last fetch it is refused at once.
    let (outcome, _) = run(&engine, &[("authorization", &auth(&old))]);
    assert_eq!(status(&outcome), Some(401));
}

#[test]
fn bad_parameters_are_refused_with_their_field() {
    let error = |config: Value| engine_for(FACTORY, config).err().unwrap().to_string();
    let mut config = remote_config();
    config["providers"][0]["algorithms"] = json!(["ES256", "none"]);
    assert!(error(config)
        .contains("field config.providers[0].algorithms[1]: unknown algorithm \"none\""));
    let mut config = remote_config();
    config["providers"][0]["remote_jwks"]["cache_duration"] = json!("soon");
    assert!(error(config).contains("config.providers[0].remote_jwks.cache_duration"));
    let config = inline(
        json!({"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB"}]}),
        &["ES256"],
        json!({}),
    );
    assert!(error(config).contains("no key in the set can verify ES256"));
}

#[test]
fn durations_use_envoys_notation() {
    assert_eq!(parse_duration("5s"), Some(Duration::from_secs(5)));
    assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
    assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
    assert_eq!(parse_duration("10m"), Some(Duration::from_secs(600)));
    assert_eq!(parse_duration("5"), None);
    assert_eq!(parse_duration("-1s"), None);
}

#[test]
fn a_verified_token_is_served_from_the_cache_without_its_signature_checked() {
    let key = ES256KeyPair::generate();
    let policy = parse(&inline(
        json!({"keys": [es256_jwk(&key, "k1")]}),
        &["ES256"],
        json!({}),
    ))
    .unwrap();
    let token = key.sign(claims(json!({}))).unwrap();
    let verify = |token: &str| {
        let mut cx = policy_executor::testing::context(request(
            "GET",
            "/",
            &[("authorization", &bearer(token))],
        ));
        matches!(policy.on_request_headers(&mut cx), Action::Continue)
    };
    assert!(verify(&token));
    // Plant a verdict for a token whose signature is garbage: accepted, so
    // the cache is consulted before any signature check.
    let forged = format!("{}garbage", &token[..token.len() - 7]);
    assert!(!verify(&forged));
    let digest: [u8; 32] = Sha256::digest(forged.as_bytes()).into();
    let now = now_seconds();
    let planted = Verified {
        provider: 0,
        claims: Arc::new(json!({"sub": "planted"})),
        not_before: 0,
        expires: now + 600,
        keys_version: 0,
    };
    policy
        .cache
        .lock()
        .unwrap()
        .insert(digest, planted, 0, now + 600, now);
    assert!(verify(&forged));
}

/// An engine with one ES256 key that maps `sub` to `x-user` and `tenant`
/// to `x-tenant`, with `extra` top-level parameters.
fn mapping_engine(key: &ES256KeyPair, extra: Value) -> Engine {
    let mut config = inline(
        json!({"keys": [es256_jwk(key, "k1")]}),
        &["ES256"],
        json!({"claim_to_headers": [
            {"claim_name": "sub", "header_name": "x-user"},
            {"claim_name": "tenant", "header_name": "x-tenant"},
        ]}),
    );
    if let (Some(c), Some(e)) = (config.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    engine_for(FACTORY, config).unwrap()
}

fn challenge(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Respond(reply) => reply.headers[0].1.clone(),
        other => panic!("let through: {other:?}"),
    }
}

#[test]
fn the_scheme_is_read_in_any_case_with_one_or_more_spaces() {
    let key = ES256KeyPair::generate();
    let engine = mapping_engine(&key, json!({}));
    let token = key.sign(claims(json!({}))).unwrap();
    for scheme in ["Bearer ", "bearer ", "BEARER ", "Bearer   "] {
        let (outcome, claims) = run(&engine, &[("authorization", &format!("{scheme}{token}"))]);
        assert_eq!(status(&outcome), None, "{scheme:?}");
        assert!(claims.is_some(), "{scheme:?}");
    }
}

#[test]
fn allow_missing_lets_through_no_token_but_never_a_malformed_one() {
    let key = ES256KeyPair::generate();
    let engine = mapping_engine(&key, json!({"allow_missing": true}));
    let token = key.sign(claims(json!({}))).unwrap();
    let malformed = [
        format!("Bearer\t{token}"),
        format!("Bearer:{token}"),
        format!("Bearer{token}"),
        "Bearer".to_owned(),
        "Bearer ".to_owned(),
        "bearer \t".to_owned(),
        String::new(),
        format!("Bearer {token} extra"),
        format!("Bearer  \t{token}"),
    ];
    for value in &malformed {
        let (outcome, claims) = run(&engine, &[("authorization", value)]);
        assert_eq!(status(&outcome), Some(401), "{value:?}");
        assert!(challenge(&outcome).contains("invalid_token"), "{value:?}");
        assert_eq!(claims, None);
    }
    // Another scheme is not a token (RFC 6750 section 3.1): missing, and
    // left for the upstream.
    let (outcome, claims) = run(&engine, &[("authorization", "Basic YWxpY2U6cHc=")]);
    assert_eq!(claims, None);
    assert_eq!(
        changes(outcome),
        [
            ("x-user".into(), HeaderChange::Remove),
            ("x-tenant".into(), HeaderChange::Remove),
        ]
    );
}

#[test]
fn without_a_token_the_client_never_sets_a_mapped_header() {
    let key = ES256KeyPair::generate();
    let engine = mapping_engine(&key, json!({"allow_missing": true}));
    let (outcome, claims) = run(
        &engine,
        &[
            ("x-user", "admin"),
            ("X_User", "admin"),
            ("x_tenant", "acme"),
            ("x-other", "kept"),
        ],
    );
    assert_eq!(claims, None);
    assert_eq!(
        changes(outcome),
        [
            ("x-user".into(), HeaderChange::Remove),
            ("x_user".into(), HeaderChange::Remove),
            ("x-tenant".into(), HeaderChange::Remove),
            ("x_tenant".into(), HeaderChange::Remove),
        ]
    );
}

#[test]
fn with_a_token_mapped_headers_come_from_its_claims_only() {
    let key = ES256KeyPair::generate();
    let engine = mapping_engine(&key, json!({}));
    // No `tenant` claim: the client's x-tenant and x_tenant go, and its
    // x_user does not ride along beside the verified x-user.
    let token = key.sign(claims(json!({}))).unwrap();
    let (outcome, _) = run(
        &engine,
        &[
            ("authorization", &bearer(&token)),
            ("x_user", "admin"),
            ("x-tenant", "acme"),
            ("x_tenant", "acme"),
        ],
    );
    assert_eq!(
        changes(outcome),
        [
            ("x-user".into(), HeaderChange::Replace(vec!["alice".into()])),
            ("x_user".into(), HeaderChange::Remove),
            ("x-tenant".into(), HeaderChange::Remove),
            ("x_tenant".into(), HeaderChange::Remove),
            ("authorization".into(), HeaderChange::Remove),
        ]
    );
}

#[test]
fn another_providers_mapped_headers_are_cleared_too() {
    let corp = ES256KeyPair::generate();
    let partner = ES256KeyPair::generate();
    let provider = |issuer: &str, key: &ES256KeyPair, header: &str| {
        json!({
            "issuer": issuer,
            "algorithms": ["ES256"],
            "local_jwks": {"inline_string": json!({"keys": [es256_jwk(key, "k1")]}).to_string()},
            "claim_to_headers": [{"claim_name": "sub", "header_name": header}],
        })
    };
    let config = json!({"providers": [
        provider(ISSUER, &corp, "x-user"),
        provider("https://partner.test", &partner, "x-partner-user"),
    ]});
    let policy = parse(&config).unwrap();
    assert_eq!(
        policy.asserted_headers(),
        [
            HeaderName::parse("x-user").unwrap(),
            HeaderName::parse("x-partner-user").unwrap()
        ]
    );
    let engine = engine_for(FACTORY, config).unwrap();
    let token = corp.sign(claims(json!({}))).unwrap();
    let (outcome, _) = run(
        &engine,
        &[
            ("authorization", &bearer(&token)),
            ("x-partner-user", "forged"),
        ],
    );
    assert_eq!(
        changes(outcome),
        [
            ("x-user".into(), HeaderChange::Replace(vec!["alice".into()])),
            ("x-partner-user".into(), HeaderChange::Remove),
            ("authorization".into(), HeaderChange::Remove),
        ]
    );
}

#[test]
fn two_tokens_get_400_invalid_request_whichever_is_valid() {
    let key = ES256KeyPair::generate();
    let mut config = inline(
        json!({"keys": [es256_jwk(&key, "k1")]}),
        &["ES256"],
        json!({}),
    );
    config["allow_missing"] = json!(true);
    config["from"] = json!([
        {"header": "authorization", "prefix": "Bearer "},
        {"query": "access_token"},
    ]);
    let engine = engine_for(FACTORY, config).unwrap();
    let good = key.sign(claims(json!({}))).unwrap();
    let other = key.sign(claims(json!({})).with_subject("mallory")).unwrap();
    let run_at = |path: &str, headers: &[(&str, &str)]| {
        let mut x = start(&engine, request("GET", path, headers)).unwrap();
        x.on_request_headers()
    };
    let cases = [
        (
            "/",
            vec![
                ("authorization", bearer(&good)),
                ("authorization", bearer(&other)),
            ],
        ),
        (
            "/",
            vec![("authorization", format!("Bearer {good},Bearer {other}"))],
        ),
        (
            &*format!("/?access_token={other}"),
            vec![("authorization", bearer(&good))],
        ),
        (
            &*format!("/?access_token={good}&access_token={other}"),
            vec![],
        ),
        (
            &*format!("/?access_token={good}&%61ccess_token={other}"),
            vec![],
        ),
        (
            &*format!("/?access_token={good}&ACCESS_TOKEN={other}"),
            vec![],
        ),
    ];
    for (path, headers) in &cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let outcome = run_at(path, &headers);
        assert_eq!(status(&outcome), Some(400), "{path} {headers:?}");
        assert!(challenge(&outcome).contains("error=\"invalid_request\""));
    }
}

#[test]
fn a_query_token_is_found_under_an_encoded_name_and_every_copy_is_stripped() {
    let key = ES256KeyPair::generate();
    let mut config = inline(
        json!({"keys": [es256_jwk(&key, "k1")]}),
        &["ES256"],
        json!({}),
    );
    config["from"] = json!([{"query": "access_token"}]);
    let engine = engine_for(FACTORY, config).unwrap();
    let token = key.sign(claims(json!({}))).unwrap();
    let path = format!("/orders?page=2&%61ccess%5Ftoken={token}");
    let mut x = start(&engine, request("GET", &path, &[])).unwrap();
    assert_eq!(
        changes(x.on_request_headers()),
        [(
            ":path".into(),
            HeaderChange::Replace(vec!["/orders?page=2".into()])
        )]
    );
}
