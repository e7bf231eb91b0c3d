use super::*;
use ct_codecs::Encoder;
use policy_executor::testing::{changes, engine_for, request, start};
use policy_executor::{HeaderChange, Outcome};
use serde_json::json;

#[test]
fn the_typed_parameters_and_policy_yaml_agree() {
    policy_executor::testing::check_definition(FACTORY, include_str!("../policy.yaml")).unwrap();
}

fn basic(user: &str, password: &str) -> String {
    let encoded = Base64::encode_to_string(format!("{user}:{password}")).unwrap();
    format!("Basic {encoded}")
}

fn bcrypt_hash(password: &str) -> String {
    bcrypt::hash_with_salt(password, 4, [7; 16])
        .unwrap()
        .format_for_version(bcrypt::Version::TwoY)
}

fn sha_hash(password: &str) -> String {
    let digest = Sha1::digest(password.as_bytes());
    format!("{{SHA}}{}", Base64::encode_to_string(digest).unwrap())
}

fn run(
    config: serde_json::Value,
    authorization: Option<&str>,
) -> (Outcome, Option<serde_json::Value>) {
    let engine = engine_for(FACTORY, config).unwrap_or_else(|e| panic!("{e}"));
    let headers: Vec<(&str, &str)> = authorization
        .map(|a| ("authorization", a))
        .into_iter()
        .collect();
    let mut x = start(&engine, request("GET", "/", &headers)).unwrap();
    let outcome = x.on_request_headers();
    (outcome, x.context().metadata().get(USER).cloned())
}

#[test]
fn users_from_an_htpasswd_file_and_a_list_authenticate() {
    let sha512 =
        sha_crypt::sha512_simple("carol-pw", &sha_crypt::Sha512Params::new(5_000).unwrap())
            .unwrap();
    let htpasswd = format!(
        "# team\nalice:{}\nbob:{}\n",
        bcrypt_hash("alice-pw"),
        sha_hash("bob-pw")
    );
    let config = json!({
        "realm": "orders",
        "htpasswd": htpasswd,
        "users": [{"name": "carol", "hash": sha512}],
        "user_header": "x-user",
    });
    for (user, password) in [
        ("alice", "alice-pw"),
        ("bob", "bob-pw"),
        ("carol", "carol-pw"),
    ] {
        let (outcome, who) = run(config.clone(), Some(&basic(user, password)));
        assert_eq!(who, Some(json!(user)));
        assert_eq!(
            changes(outcome),
            [
                ("authorization".into(), HeaderChange::Remove),
                ("x-user".into(), HeaderChange::Replace(vec![user.into()])),
            ]
        );
    }
}

#[test]
fn wrong_missing_and_malformed_credentials_get_401_with_the_realm() {
    let config =
        json!({"realm": "orders", "users": [{"name": "alice", "hash": bcrypt_hash("alice-pw")}]});
    let wrong = basic("alice", "nope");
    let stranger = basic("mallory", "alice-pw");
    for authorization in [
        None,
        Some(wrong.as_str()),
        Some(stranger.as_str()),
        Some("Basic !!!"),
        Some("Bearer x"),
    ] {
        let (outcome, who) = run(config.clone(), authorization);
        let Outcome::Respond(reply) = outcome else {
            panic!("let through: {authorization:?}")
        };
        assert_eq!(reply.status, 401);
        assert_eq!(
            reply.headers[0],
            (
                "www-authenticate".into(),
                "Basic realm=\"orders\", charset=\"UTF-8\"".into()
            )
        );
        assert_eq!(who, None);
    }
}

#[test]
fn verified_credentials_are_cached_but_a_wrong_password_is_not_let_in_by_them() {
    let policy =
        parse(&json!({"users": [{"name": "alice", "hash": bcrypt_hash("alice-pw")}]})).unwrap();
    let cached = || policy.verified.lock().unwrap().len();
    assert!(policy.authenticate("alice", "alice-pw"));
    assert_eq!(cached(), 1);
    // The cache is consulted before the hash: a planted entry (which bcrypt
    // would refuse) is accepted, so a cached credential costs no bcrypt.
    let planted: [u8; 32] = Sha256::digest(b"alice:planted").into();
    policy
        .verified
        .lock()
        .unwrap()
        .insert(planted, "alice".into());
    assert!(policy.authenticate("alice", "planted"));
    assert!(!policy.authenticate("alice", "alice-pw!"));
    assert!(!policy.authenticate("mallory", "alice-pw"));
    assert_eq!(cached(), 2, "failures are not cached");
}

#[test]
fn weak_or_unknown_hashes_are_refused_at_load() {
    let error = |hash: &str| {
        engine_for(FACTORY, json!({"users": [{"name": "a", "hash": hash}]}))
            .err()
            .unwrap()
            .to_string()
    };
    assert!(error("$apr1$abc$def").contains("field config.users[0]: MD5 hashes are too weak"));
    assert!(error("plaintext").contains("hash with `htpasswd -B`"));
    let duplicate = engine_for(
        FACTORY,
        json!({"htpasswd": format!("a:{}\na:{}", sha_hash("x"), sha_hash("y"))}),
    );
    assert!(duplicate
        .err()
        .unwrap()
        .to_string()
        .contains("htpasswd line 2: user \"a\" is listed twice"));
}
