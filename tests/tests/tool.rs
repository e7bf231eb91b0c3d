//! The offline tool, `policy-tool`, as built for the default build: it runs
//! every conformance suite with the same results as both hosts (which
//! `conformance.rs` runs in real Envoy), checks every YAML block of the
//! docs, and catches a rule of the egress example made too permissive.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test crate: a failed step must fail the test"
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use integration_tests::yaml_files;
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn tool(args: &[&str]) -> Output {
    let bin = std::env::var("POLICY_TOOL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo().join("target/builds/default/policy-tool"));
    Command::new(&bin)
        .current_dir(repo())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (make build builds it)", bin.display()))
}

fn text(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr)
}

#[test]
fn the_tool_passes_every_conformance_suite_the_hosts_pass() {
    let suites: Vec<String> = yaml_files(&repo().join("tests/conformance"))
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let mut args = vec!["test"];
    args.extend(suites.iter().map(String::as_str));
    let out = tool(&args);
    let report = text(&out);
    assert!(out.status.success(), "{report}");
    assert!(report.contains(" 0 failed"), "{report}");
    // What it skips says why: only Envoy's own codec can run those.
    for line in report
        .lines()
        .filter(|l| l.trim_start().starts_with("skip "))
    {
        assert!(line.contains("live only: Envoy"), "{line}");
    }
    let passed: usize = report
        .lines()
        .last()
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(passed >= 200, "{report}");

    // One case alone, by name.
    let one = tool(&[
        "test",
        "tests/conformance/authentication.yaml",
        "--case",
        "an unknown key gets 401",
    ]);
    let report = text(&one);
    assert!(report.contains("1 passed, 0 failed"), "{report}");
    let none = tool(&[
        "test",
        "tests/conformance/authentication.yaml",
        "--case",
        "nope",
    ]);
    assert_eq!(none.status.code(), Some(2), "{}", text(&none));
}

#[test]
fn the_egress_suite_catches_a_rule_made_too_permissive() {
    let out = tool(&["test", "tests/suites/egress.yaml", "--coverage"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("not covered"), "{}", text(&out));

    // `/repos/` loosened to `/repos`: /reposcan gets through.
    let scratch = std::env::temp_dir().join(format!("egress-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    let config = std::fs::read_to_string(repo().join("envoy/examples/egress-policies.yaml"))
        .unwrap()
        .replace(r#"startsWith("/repos/")"#, r#"startsWith("/repos")"#);
    std::fs::write(scratch.join("egress-policies.yaml"), config).unwrap();
    let suite = std::fs::read_to_string(repo().join("tests/suites/egress.yaml"))
        .unwrap()
        .replace(
            "../../envoy/examples/egress-policies.yaml",
            "egress-policies.yaml",
        );
    std::fs::write(scratch.join("egress.yaml"), suite).unwrap();
    let out = tool(&["test", scratch.join("egress.yaml").to_str().unwrap()]);
    let report = text(&out);
    assert_eq!(out.status.code(), Some(1), "{report}");
    // A suite of the first case alone leaves rules no case decided by.
    let first_only = "config_file: egress-policies.yaml\ncases:\n  - name: team-a reads\n    request: { path: /zen, headers: { host: api.github.com }, peer: { uri_san: spiffe://cluster.local/ns/team-a/sa/team-a } }\n    expect: { status: 200 }\n";
    std::fs::write(scratch.join("short.yaml"), first_only).unwrap();
    let short = tool(&[
        "test",
        "--coverage",
        scratch.join("short.yaml").to_str().unwrap(),
    ]);
    let coverage = text(&short);
    assert!(short.status.success(), "{coverage}");
    for rule in ["github-api-paths", "default"] {
        assert!(
            coverage.contains(&format!(
                r#"authorization@0.1.0: rule "{rule}" never decided"#
            )),
            "{coverage}"
        );
    }
    assert!(!coverage.contains(r#"rule "team-a""#), "{coverage}");
    assert!(
        report.contains("FAIL a path that only starts like the allowed prefix is refused"),
        "{report}"
    );
    assert!(report.contains("status 200 (want 403)"), "{report}");
    std::fs::remove_dir_all(&scratch).unwrap();
}

/// Every YAML block of the README and docs/: where it is, and its text.
fn documented_blocks() -> Vec<(String, String)> {
    let mut files = vec![repo().join("README.md")];
    let docs = std::fs::read_dir(repo().join("docs")).unwrap();
    files.extend(
        docs.flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "md")),
    );
    let mut blocks = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let mut block: Option<(usize, String)> = None;
        for (n, line) in text.lines().enumerate() {
            match &mut block {
                None if line.trim_start() == "```yaml" => block = Some((n + 1, String::new())),
                Some((start, body)) if line.trim_start() == "```" => {
                    let at = format!("{}:{start}", file.file_name().unwrap().to_string_lossy());
                    blocks.push((at, std::mem::take(body)));
                    block = None;
                }
                Some((_, body)) => {
                    body.push_str(line);
                    body.push('\n');
                }
                None => {}
            }
        }
    }
    blocks
}

/// What a documented YAML block is, and so how it is checked.
enum Block {
    /// A plugin configuration (or a chain of policies, wrapped into one):
    /// validated by the tool and against the published schema.
    Configuration(Value),
    /// A `policy-tool` suite: read as one.
    Suite,
    /// Envoy, Prometheus or build-manifest YAML: well-formed, and not a
    /// plugin configuration by mistake.
    Other,
}

fn classify(at: &str, text: &str) -> Block {
    let value: Value = serde_yaml::from_str(text).unwrap_or_else(|e| panic!("{at}: {e}"));
    const PLUGIN_KEYS: [&str; 4] = ["routes", "unmatched", "paths", "decision_log"];
    const OTHER_KEYS: [&str; 5] = [
        "http_filters",
        "normalize_path",
        "transport_socket",
        "scrape_configs",
        "name",
    ];
    match &value {
        Value::Object(map) if map.keys().all(|k| PLUGIN_KEYS.contains(&k.as_str())) => {
            Block::Configuration(value)
        }
        Value::Object(map) if map.keys().all(|k| k == "policies") => {
            Block::Configuration(serde_json::json!({ "routes": [map] }))
        }
        Value::Object(map) if map.contains_key("cases") => {
            let suite: Result<policy_tool::suite::Suite, _> = serde_yaml::from_str(text);
            suite.unwrap_or_else(|e| panic!("{at}: not a suite: {e}"));
            Block::Suite
        }
        Value::Object(map) if map.keys().any(|k| OTHER_KEYS.contains(&k.as_str())) => Block::Other,
        // A chain: a list of policies.
        Value::Array(items)
            if items
                .iter()
                .all(|i| i.get("config").is_some() || i.get("when").is_some()) =>
        {
            Block::Configuration(serde_json::json!({ "routes": [{ "policies": items }] }))
        }
        // Envoy's filter lists.
        Value::Array(items)
            if items
                .iter()
                .all(|i| i["name"].as_str().is_some_and(|n| n.starts_with("envoy."))) =>
        {
            Block::Other
        }
        _ => panic!("{at}: a YAML block this test does not know how to check:\n{text}"),
    }
}

#[test]
fn every_yaml_block_in_the_docs_is_checked_and_configurations_validate() {
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("target/builds/default/config.schema.json")).unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let scratch = std::env::temp_dir().join(format!("docs-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    let mut files = Vec::new();
    let (mut suites, mut others) = (0, 0);
    for (i, (at, block)) in documented_blocks().iter().enumerate() {
        let document = match classify(at, block) {
            Block::Configuration(document) => document,
            Block::Suite => {
                suites += 1;
                continue;
            }
            Block::Other => {
                others += 1;
                continue;
            }
        };
        let errors: Vec<String> = validator
            .iter_errors(&document)
            .map(|e| e.to_string())
            .collect();
        assert!(
            errors.is_empty(),
            "{at} breaks the published schema: {errors:?}"
        );
        let file = scratch.join(format!("block-{i}.json"));
        std::fs::write(&file, document.to_string()).unwrap();
        files.push((at.clone(), file.display().to_string()));
    }
    assert!(files.len() >= 10, "only {} configurations", files.len());
    assert!(suites >= 1 && others >= 1);
    let mut args = vec!["validate", "--format", "json"];
    args.extend(files.iter().map(|(_, f)| f.as_str()));
    let out = tool(&args);
    let reports: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    for ((at, _), report) in files.iter().zip(&reports) {
        assert_eq!(report["valid"], true, "{at}: {report}");
    }
    assert!(out.status.success());
    std::fs::remove_dir_all(&scratch).unwrap();
}

#[test]
fn validate_names_the_fault_and_fails() {
    let scratch = std::env::temp_dir().join(format!("validate-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    let bad = scratch.join("bad.yaml");
    std::fs::write(
        &bad,
        "routes:\n  - name: api\n    policies:\n      - name: set-headers\n        config: { request: { set: { x-tenant: 1 } } }\n",
    )
    .unwrap();
    let out = tool(&["validate", bad.to_str().unwrap()]);
    let report = text(&out);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(report.contains(r#"route routes[0] "api""#), "{report}");
    assert!(
        report.contains("policy policies[0] set-headers"),
        "{report}"
    );
    assert!(
        report.contains("field config.request.set.x-tenant: expected string"),
        "{report}"
    );

    // Inside an EnvoyExtensionPolicy, as Envoy Gateway would pass it.
    let manifest = scratch.join("policy.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: EnvoyExtensionPolicy\nmetadata: { name: p }\nspec:\n  wasm:\n    - config: { routes: [{ policies: [{ name: nope }] }] }\n",
    )
    .unwrap();
    let out = tool(&["validate", "--format", "json", manifest.to_str().unwrap()]);
    let reports: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        reports[0]["in"],
        "EnvoyExtensionPolicy p spec.wasm[0].config"
    );
    assert!(
        reports[0]["reason"]
            .as_str()
            .unwrap()
            .contains("unknown policy"),
        "{reports:?}"
    );
    std::fs::remove_dir_all(&scratch).unwrap();
}

#[test]
fn the_shipped_manifests_carry_valid_configurations() {
    let out = tool(&[
        "validate",
        "envoy/gateway/wasm-policy.yaml",
        "envoy/istio/wasmplugin.yaml",
        "envoy/demo-policies.yaml",
        "envoy/examples/egress-policies.yaml",
    ]);
    let report = text(&out);
    assert!(out.status.success(), "{report}");
    assert!(
        report.contains("(EnvoyExtensionPolicy policy-engine-wasm spec.wasm[0].config): valid"),
        "{report}"
    );
    assert!(
        report.contains("(WasmPlugin policy-engine spec.pluginConfig): valid"),
        "{report}"
    );
}

#[test]
fn schema_prints_the_published_schema() {
    let out = tool(&["schema"]);
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(printed["properties"]["paths"].is_object());
    assert!(
        printed["$defs"]["policy"]["oneOf"]
            .as_array()
            .unwrap()
            .len()
            >= 14
    );
}

#[test]
fn explain_shows_the_route_entries_the_policies_and_what_goes_upstream() {
    let out = tool(&[
        "explain",
        "tests/suites/../../envoy/examples/egress-policies.yaml",
        "{ path: /user/keys, headers: { host: api.github.com }, peer: { uri_san: spiffe://cluster.local/ns/team-a/sa/team-a } }",
    ]);
    let report = text(&out);
    assert!(out.status.success(), "{report}");
    assert!(
        report.contains(r#"route entry "egress": matches"#),
        "{report}"
    );
    assert!(
        report.contains("policy authorization@0.1.0: replied"),
        "{report}"
    );
    // The rule that fired, and the values of its parts.
    assert!(report.contains("rule github-api-paths: denied"), "{report}");
    assert!(
        report.contains(r#"request.path.startsWith("/repos/") = false"#),
        "{report}"
    );
    assert!(
        report.contains(r#"request.host = "api.github.com""#),
        "{report}"
    );
    assert!(
        report.contains("policy transformation@0.1.0: not_run"),
        "{report}"
    );

    let allowed = tool(&[
        "explain",
        "envoy/examples/egress-policies.yaml",
        "{ path: /zen, headers: { host: api.github.com, x-internal-debug: '1' }, peer: { uri_san: spiffe://cluster.local/ns/team-a/sa/team-a } }",
    ]);
    let report = text(&allowed);
    assert!(report.contains("rule team-a: allowed"), "{report}");
    assert!(
        report.contains("request header x-internal-debug: removed"),
        "{report}"
    );
    assert!(
        report.contains(r#"request header x-caller-identity: set to ["team-a/team-a"]"#),
        "{report}"
    );
    assert!(report.contains("client gets: 200"), "{report}");
}
