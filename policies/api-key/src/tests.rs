use super::*;
use policy_executor::testing::{changes, engine_for, request, start};
use policy_executor::{HeaderChange, Outcome};
use serde_json::json;

/// `printf %s s3cr3t-team-a | sha256sum`
const TEAM_A: &str = "4052a09cc5fb1c394828ee26788be2daf3a181e5730ecc68a96aed9ee43da056";

#[test]
fn the_typed_parameters_and_policy_yaml_agree() {
    policy_executor::testing::check_definition(FACTORY, include_str!("../policy.yaml")).unwrap();
}

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
}
