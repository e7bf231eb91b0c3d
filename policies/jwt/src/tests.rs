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

#[test]
fn the_typed_parameters_and_policy_yaml_agree() {
    policy_executor::testing::check_definition(FACTORY, include_str!("../policy.yaml")).unwrap();
}

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
    engine.documents().store(
        &source,
        Document {
            fetched_at: version,
            body: json!({"keys": keys}).to_string().as_bytes().into(),
        },
    );
}

#[test]
fn remote_keys_are_asked_for_and_an_unknown_kid_asks_for_a_refetch() {
    let engine = engine_for(FACTORY, remote_config()).unwrap();
    let [source] = engine.remote_sources().try_into().unwrap();
    assert_eq!(source.timeout, Duration::from_secs(2));
    assert_eq!(source.refresh_interval, Duration::from_secs(600));
    assert_eq!(source.min_refetch_interval, Duration::from_millis(500));
    let old = ES256KeyPair::generate().with_key_id("old");
    let new = ES256KeyPair::generate().with_key_id("new");
    let auth = |key: &ES256KeyPair| bearer(&key.sign(claims(json!({}))).unwrap());

    // Nothing fetched yet: the request waits for a fetch; none comes: 401.
    let mut x = start(
        &engine,
        request("GET", "/", &[("authorization", &auth(&old))]),
    )
    .unwrap();
    assert_eq!(x.on_request_headers(), Outcome::Refetch(source.clone()));
    assert_eq!(status(&x.resume()), Some(401));

    publish(&engine, 1, &[es256_jwk(&old, "old")]);
    let (outcome, _) = run(&engine, &[("authorization", &auth(&old))]);
    assert_eq!(status(&outcome), None);

    // A rotation: the token names a kid the cached set lacks.
    let mut x = start(
        &engine,
        request("GET", "/", &[("authorization", &auth(&new))]),
    )
    .unwrap();
    assert_eq!(x.on_request_headers(), Outcome::Refetch(source.clone()));
    publish(&engine, 2, &[es256_jwk(&new, "new")]);
    assert_eq!(status(&x.resume()), None);

    // The old key is gone: its token, verified and cached before, is not
    // served from the cache any more.
    let (outcome, _) = run(&engine, &[("authorization", &auth(&old))]);
    assert!(matches!(outcome, Outcome::Refetch(_)));
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
    policy.cache.lock().unwrap().insert(digest, planted, now);
    assert!(verify(&forged));
}
