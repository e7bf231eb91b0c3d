use super::*;
use policy_executor::testing::{changes, engine_for, request, start};
use policy_executor::{HeaderChange, Outcome};
use serde_json::json;

/// `printf %s s3cr3t-team-a | sha256sum`
const TEAM_A: &str = "4052a09cc5fb1c394828ee26788be2daf3a181e5730ecc68a96aed9ee43da056";

#[test]
fn the_example_hash_is_the_hash_of_the_key() {
    let hash: [u8; 32] = Sha256::digest(b"s3cr3t-team-a").into();
    assert_eq!(decode_sha256(TEAM_A), Some(hash));
    assert_eq!(decode_sha256(&TEAM_A.to_uppercase()), Some(hash));
    assert_eq!(decode_sha256("zz"), None);
}

fn outcome(
    config: serde_json::Value,
    path: &str,
    headers: &[(&str, &str)],
) -> (Outcome, Option<serde_json::Value>) {
    let engine = engine_for(FACTORY, config).unwrap_or_else(|e| panic!("{e}"));
    let mut x = start(&engine, request("GET", path, headers)).unwrap();
    let outcome = x.on_request_headers();
    (outcome, x.context().metadata().get(CONSUMER).cloned())
}

#[test]
fn a_known_key_names_its_consumer_and_can_be_stripped() {
    let config = json!({
        "keys": [{"consumer": "team-b", "sha256": "00".repeat(32)}, {"consumer": "team-a", "sha256": TEAM_A}],
        "consumer_header": "x-consumer",
        "strip": true,
    });
    let (outcome, consumer) = outcome(config, "/", &[("x-api-key", "s3cr3t-team-a")]);
    assert_eq!(consumer, Some(json!("team-a")));
    assert_eq!(
        changes(outcome),
        [
            ("x-api-key".into(), HeaderChange::Remove),
            (
                "x-consumer".into(),
                HeaderChange::Replace(vec!["team-a".into()])
            ),
        ]
    );
}

#[test]
fn missing_wrong_and_empty_keys_get_401() {
    let config = json!({"keys": [{"consumer": "team-a", "sha256": TEAM_A}]});
    for headers in [&[][..], &[("x-api-key", "wrong")], &[("x-api-key", "")]] {
        let (outcome, consumer) = outcome(config.clone(), "/", headers);
        let Outcome::Respond(reply) = outcome else {
            panic!("let through: {headers:?}")
        };
        assert_eq!(reply.status, 401);
        assert!(reply
            .headers
            .contains(&("www-authenticate".into(), "ApiKey".into())));
        assert_eq!(consumer, None);
    }
}

#[test]
fn a_key_in_the_query_is_found_and_stripped_from_the_path() {
    let config = json!({"from": {"query": "api_key"}, "keys": [{"consumer": "ci", "sha256": TEAM_A}], "strip": true});
    let (outcome, consumer) = outcome(config, "/items?page=2&api_key=s3cr3t-team-a", &[]);
    assert_eq!(consumer, Some(json!("ci")));
    assert_eq!(
        changes(outcome),
        [(
            ":path".into(),
            HeaderChange::Replace(vec!["/items?page=2".into()])
        )]
    );
}

#[test]
fn bad_parameters_are_refused() {
    let error = |config| engine_for(FACTORY, config).err().unwrap().to_string();
    assert!(error(json!({"keys": [{"consumer": "a", "sha256": "xyz"}]}))
        .contains("field config.keys[0].sha256"));
    assert!(error(
        json!({"keys": [{"consumer": "a", "sha256": TEAM_A}, {"consumer": "b", "sha256": TEAM_A}]})
    )
    .contains("listed twice"));
    assert!(
        error(json!({"from": {}, "keys": [{"consumer": "a", "sha256": TEAM_A}]}))
            .contains("field config.from")
    );
    assert!(error(
        json!({"from": [{"query": "k"}, {"query": "k"}], "keys": [{"consumer": "a", "sha256": TEAM_A}]})
    )
    .contains("listed twice"));
}

fn status(outcome: &Outcome) -> Option<u16> {
    match outcome {
        Outcome::Respond(reply) => Some(reply.status),
        _ => None,
    }
}

#[test]
fn two_keys_get_400_and_malformed_ones_401() {
    let header = json!({"keys": [{"consumer": "team-a", "sha256": TEAM_A}]});
    let both = json!({
        "from": [{"header": "x-api-key"}, {"query": "api_key"}],
        "keys": [{"consumer": "team-a", "sha256": TEAM_A}],
    });
    let key = "s3cr3t-team-a";
    // (configuration, path, headers, expected status)
    type Case<'a> = (
        &'a serde_json::Value,
        &'a str,
        &'a [(&'a str, &'a str)],
        u16,
    );
    let cases: [Case; 13] = [
        (
            &header,
            "/",
            &[("x-api-key", key), ("x-api-key", "other")],
            400,
        ),
        (&header, "/", &[("x-api-key", key), ("x-api-key", key)], 400),
        (&header, "/", &[("x-api-key", "s3cr3t-team-a,other")], 400),
        (
            &header,
            "/",
            &[("x-api-key", key), ("x_api_key", "other")],
            400,
        ),
        (&both, "/?api_key=other", &[("x-api-key", key)], 400),
        (&both, "/?api_key=s3cr3t-team-a&api_key=other", &[], 400),
        (&both, "/?api_key=s3cr3t-team-a&api%5Fkey=other", &[], 400),
        (&both, "/?api_key=s3cr3t-team-a&API_KEY=other", &[], 400),
        (&header, "/", &[("x_api_key", key)], 401),
        (&header, "/", &[("x-api-key", "s3cr3t team-a")], 401),
        (&header, "/", &[("x-api-key", " ")], 401),
        (&both, "/?api_key=%zz", &[], 401),
        (&both, "/?API_KEY=s3cr3t-team-a", &[], 401),
    ];
    for (config, path, headers, expected) in cases {
        let (outcome, consumer) = outcome(config.clone(), path, headers);
        assert_eq!(status(&outcome), Some(expected), "{path} {headers:?}");
        assert_eq!(consumer, None);
    }
}

#[test]
fn a_query_key_is_percent_decoded_and_every_encoding_of_its_name_stripped() {
    let config = json!({
        "from": [{"header": "x-api-key"}, {"query": "api_key"}],
        "keys": [{"consumer": "ci", "sha256": TEAM_A}],
        "strip": true,
    });
    let (outcome, consumer) = outcome(config, "/items?%61pi%5Fkey=s3cr3t%2Dteam%2Da&page=2", &[]);
    assert_eq!(consumer, Some(json!("ci")));
    assert_eq!(
        changes(outcome),
        [(
            ":path".into(),
            HeaderChange::Replace(vec!["/items?page=2".into()])
        )]
    );
}

#[test]
fn the_consumer_header_is_the_engines_whatever_the_client_sent() {
    let config = json!({
        "keys": [{"consumer": "team-a", "sha256": TEAM_A}],
        "consumer_header": "x-consumer",
    });
    let engine = engine_for(FACTORY, config.clone()).unwrap();
    let policy = build(&config).unwrap();
    assert_eq!(
        policy.asserted_headers(),
        [HeaderName::parse("x-consumer").unwrap()]
    );
    let mut x = start(
        &engine,
        request(
            "GET",
            "/",
            &[
                ("x-api-key", "s3cr3t-team-a"),
                ("x-consumer", "admin"),
                ("X_Consumer", "admin"),
            ],
        ),
    )
    .unwrap();
    assert_eq!(
        changes(x.on_request_headers()),
        [
            (
                "x-consumer".into(),
                HeaderChange::Replace(vec!["team-a".into()])
            ),
            ("x_consumer".into(), HeaderChange::Remove),
        ]
    );
    let error = engine_for(
        FACTORY,
        json!({"keys": [{"consumer": "a\nb", "sha256": TEAM_A}], "consumer_header": "x-consumer"}),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(error.contains("field config.keys[0].consumer"), "{error}");
}
