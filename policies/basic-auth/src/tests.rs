use super::*;
use ct_codecs::Encoder;
use policy_executor::testing::{changes, engine_for, request, start};
use policy_executor::{HeaderChange, Outcome};
use serde_json::json;

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
        .insert(planted, "alice".into(), 0, u64::MAX, 0);
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

fn request_with(config: &serde_json::Value, headers: &[(&str, &str)]) -> Outcome {
    let engine = engine_for(FACTORY, config.clone()).unwrap_or_else(|e| panic!("{e}"));
    let mut x = start(&engine, request("GET", "/", headers)).unwrap();
    x.on_request_headers()
}

fn status(outcome: &Outcome) -> Option<u16> {
    match outcome {
        Outcome::Respond(reply) => Some(reply.status),
        _ => None,
    }
}

#[test]
fn the_scheme_is_read_in_any_case_and_malformed_or_duplicate_credentials_are_refused() {
    let config = json!({"users": [{"name": "alice", "hash": sha_hash("alice-pw")}]});
    let good = basic("alice", "alice-pw");
    let encoded = good.trim_start_matches("Basic ");
    for scheme in ["Basic ", "basic ", "BASIC ", "Basic   "] {
        let value = format!("{scheme}{encoded}");
        let outcome = request_with(&config, &[("authorization", &value)]);
        assert_eq!(status(&outcome), None, "{value}");
    }
    let overlong = basic("alice", &"x".repeat(MAX_CREDENTIALS_BYTES));
    let refused: [(&[(&str, &str)], u16); 10] = [
        (&[("authorization", &format!("Basic\t{encoded}"))], 401),
        (&[("authorization", &format!("Basic:{encoded}"))], 401),
        (&[("authorization", "Basic")], 401),
        (&[("authorization", "Basic ")], 401),
        (&[("authorization", "")], 401),
        (&[("authorization", &format!("Basic {encoded} x"))], 401),
        (&[("authorization", &overlong)], 401),
        (&[("authorization", &good), ("authorization", &good)], 400),
        (
            &[
                ("authorization", &good),
                ("authorization", "Basic bWFsbG9yeTp4"),
            ],
            400,
        ),
        (
            &[("authorization", &format!("{good},Basic bWFsbG9yeTp4"))],
            400,
        ),
    ];
    for (headers, expected) in refused {
        assert_eq!(
            status(&request_with(&config, headers)),
            Some(expected),
            "{headers:?}"
        );
    }
}

#[test]
fn the_user_header_is_the_engines_whatever_the_client_sent() {
    let config = json!({"users": [{"name": "alice", "hash": sha_hash("alice-pw")}], "user_header": "x-user"});
    assert_eq!(
        parse(&config).unwrap().asserted_headers(),
        [HeaderName::parse("x-user").unwrap()]
    );
    let outcome = request_with(
        &config,
        &[
            ("authorization", &basic("alice", "alice-pw")),
            ("x-user", "admin"),
            ("x_user", "admin"),
        ],
    );
    assert_eq!(
        changes(outcome),
        [
            ("authorization".into(), HeaderChange::Remove),
            ("x-user".into(), HeaderChange::Replace(vec!["alice".into()])),
            ("x_user".into(), HeaderChange::Remove),
        ]
    );
    let error = engine_for(
        FACTORY,
        json!({"users": [{"name": "a\rb", "hash": sha_hash("x")}], "user_header": "x-user"}),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(error.contains("field config.users[0]: this user name cannot be sent"));
}

#[test]
fn sha256_crypt_users_authenticate() {
    let hash =
        sha_crypt::sha256_simple("dave-pw", &sha_crypt::Sha256Params::new(1_000).unwrap()).unwrap();
    let policy = parse(&json!({"users": [{"name": "dave", "hash": hash}]})).unwrap();
    assert!(policy.authenticate("dave", "dave-pw"));
    assert!(!policy.authenticate("dave", "dave-pw!"));
}

#[test]
fn costly_or_broken_hashes_are_refused_at_load_with_their_field() {
    let error = |hash: &str| {
        engine_for(FACTORY, json!({"users": [{"name": "a", "hash": hash}]}))
            .err()
            .map(|e| e.to_string())
    };
    let cost4 = bcrypt_hash("pw");
    let cost12 = cost4.replacen("$04$", "$12$", 1);
    assert_eq!(error(&cost12), None, "cost 12 is accepted");
    let cost13 = cost4.replacen("$04$", "$13$", 1);
    let message = error(&cost13).unwrap();
    assert!(
        message.contains("field config.users[0]: bcrypt cost 13 is above 12"),
        "{message}"
    );
    assert!(error(&cost4.replacen("$04$", "$03$", 1))
        .unwrap()
        .contains("below 4"));
    assert!(error(&cost4.replacen("$04$", "$4$", 1)).is_some());
    assert!(error(&format!("{}!", &cost4[..cost4.len() - 1])).is_some());
    assert!(error(&cost4[..cost4.len() - 1]).is_some());
    // The salt's last character carries 4 spare bits that must be zero.
    let mut spare = cost4.clone().into_bytes();
    spare[7 + 21] = b'/';
    assert!(error(&String::from_utf8(spare).unwrap()).is_some());

    let sha = |rounds: usize| {
        sha_crypt::sha512_simple("pw", &sha_crypt::Sha512Params::new(rounds).unwrap()).unwrap()
    };
    assert_eq!(error(&sha(MAX_SHA_CRYPT_ROUNDS)), None);
    assert!(error(&sha(MAX_SHA_CRYPT_ROUNDS + 1))
        .unwrap()
        .contains("SHA-crypt rounds 1000001 is above 1000000"));
    let digest = ".".repeat(43);
    assert!(error(&format!("$5$rounds=999$salt${digest}"))
        .unwrap()
        .contains("below 1000"));
    // These would have made the sha-crypt crate panic when verified.
    for broken in [
        "$5$salt$short".to_owned(),
        format!("$5$salt${}", "!".repeat(43)),
        format!("$5$rounds=x$salt${digest}"),
        format!("$5$a-salt-longer-than-16${digest}"),
        "$6$salt".to_owned(),
    ] {
        assert!(error(&broken).is_some(), "{broken}");
    }
}

#[test]
fn unknown_users_are_verified_against_a_dummy_of_the_commonest_cost() {
    let sha256 =
        sha_crypt::sha256_simple("pw", &sha_crypt::Sha256Params::new(2_000).unwrap()).unwrap();
    let htpasswd = format!(
        "a:{}\nb:{}\nc:{sha256}\nd:{}\n",
        bcrypt_hash("pw"),
        bcrypt_hash("pw"),
        sha_hash("pw")
    );
    let policy = parse(&json!({ "htpasswd": htpasswd })).unwrap();
    assert_eq!(policy.dummy.cost(), Cost::Bcrypt(4));
    // A tie goes to the costlier.
    let htpasswd = format!("a:{sha256}\nb:{}\n", sha_hash("pw"));
    let policy = parse(&json!({ "htpasswd": htpasswd })).unwrap();
    assert_eq!(policy.dummy.cost(), Cost::ShaCrypt(ShaBits::Sha256, 2_000));
}

#[test]
fn dummies_do_the_full_work_and_match_no_password() {
    for cost in [
        Cost::Bcrypt(4),
        Cost::ShaCrypt(ShaBits::Sha256, 1_000),
        Cost::ShaCrypt(ShaBits::Sha512, 1_000),
        Cost::Sha1,
    ] {
        let dummy = Hash::dummy(cost);
        assert!(!dummy.verify("pw"), "{cost:?}");
        assert!(!dummy.verify(""), "{cost:?}");
        // Verifying computes the hash rather than failing on its format.
        match &dummy {
            Hash::Bcrypt { text, .. } => assert_eq!(bcrypt::verify("pw", text).ok(), Some(false)),
            Hash::ShaCrypt {
                bits: ShaBits::Sha256,
                rounds,
                salt,
                ..
            } => assert!(sha_crypt::sha256_crypt_b64(
                b"pw",
                salt.as_bytes(),
                &sha_crypt::Sha256Params::new(*rounds).unwrap()
            )
            .is_ok()),
            Hash::ShaCrypt { rounds, salt, .. } => assert!(sha_crypt::sha512_crypt_b64(
                b"pw",
                salt.as_bytes(),
                &sha_crypt::Sha512Params::new(*rounds).unwrap()
            )
            .is_ok()),
            Hash::Sha1(_) => {}
        }
    }
}

thread_local! {
    /// The cost of every hash this thread verified, in order.
    pub(crate) static VERIFIED: std::cell::RefCell<Vec<Cost>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn verified_costs(run: impl FnOnce()) -> Vec<Cost> {
    VERIFIED.with(|costs| costs.borrow_mut().clear());
    run();
    VERIFIED.with(|costs| std::mem::take(&mut *costs.borrow_mut()))
}

#[test]
fn an_unknown_user_pays_the_same_hash_as_a_wrong_password() {
    // Counted, not timed: each refusal verifies exactly one hash, of the
    // same kind and work factor, whether the user exists or not.
    let hash = bcrypt::hash_with_salt("alice-pw", 8, [7; 16])
        .unwrap()
        .format_for_version(bcrypt::Version::TwoY);
    let policy = parse(&json!({"users": [{"name": "alice", "hash": hash}]})).unwrap();
    let known = verified_costs(|| assert!(!policy.authenticate("alice", "wrong")));
    let unknown = verified_costs(|| assert!(!policy.authenticate("mallory", "wrong")));
    assert_eq!(known, [Cost::Bcrypt(8)]);
    assert_eq!(unknown, known);
    // A cached success costs no hash at all; a wrong password after it
    // still pays the full one.
    assert!(policy.authenticate("alice", "alice-pw"));
    assert!(verified_costs(|| assert!(policy.authenticate("alice", "alice-pw"))).is_empty());
    assert_eq!(
        verified_costs(|| assert!(!policy.authenticate("alice", "alice-pw2"))),
        [Cost::Bcrypt(8)]
    );
}
