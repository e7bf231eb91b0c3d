//! The builder: policy directories it refuses, what a build contains, the
//! configuration schema it emits, and the scaffold it writes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test crate: a failed step must fail the test"
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use integration_tests::{Host, Stack};
use local_envoy::{default_build, repo_root, EnvoyError};
use serde_json::Value;

fn builder() -> PathBuf {
    std::env::var_os("POLICY_BUILDER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/debug/policy-builder"))
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("builder-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn run_builder(args: &[&str], manifest: &Path) -> Output {
    Command::new(builder())
        .args(args)
        .arg("--manifest")
        .arg(manifest)
        .output()
        .unwrap()
}

const GOOD_YAML: &str =
    "name: good\nversion: 1.0.0\ndescription: fine\nphases: [request_headers]\nbody: none\n";

/// A policy directory with this policy.yaml, a schema that takes any
/// object, and a minimal crate.
fn policy_dir(root: &Path, name: &str, yaml: Option<&str>, lib: &str) -> PathBuf {
    let dir = root.join(name);
    if let Some(yaml) = yaml {
        write(&dir.join("policy.yaml"), yaml);
    }
    write(&dir.join("schema.json"), r#"{ "type": "object" }"#);
    let executor = repo_root().join("filter/executor");
    write(
        &dir.join("Cargo.toml"),
        &format!(
            "[package]\nname = \"{name}\"\nversion = \"1.0.0\"\nedition = \"2021\"\n\n[dependencies]\npolicy-executor = {{ path = {:?} }}\n",
            executor.display().to_string()
        ),
    );
    write(&dir.join("src/lib.rs"), lib);
    dir
}

#[test]
fn invalid_policy_directories_are_refused_with_clear_messages() {
    let root = scratch("invalid");
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("no-yaml", None, "cannot read policy.yaml"),
        (
            "bad-yaml",
            Some("name: [".into()),
            "policy.yaml is not valid YAML",
        ),
        (
            "bad-version",
            Some(GOOD_YAML.replace("1.0.0", "one")),
            "version \"one\" is not semver",
        ),
        (
            "bad-phase",
            Some(GOOD_YAML.replace("request_headers", "on_request")),
            "unknown phase \"on_request\"",
        ),
        (
            "body-without-phase",
            Some(GOOD_YAML.replace("body: none", "body: request")),
            "needs the request_body phase",
        ),
        (
            "unknown-field",
            Some(format!("{GOOD_YAML}colour: red\n")),
            "unknown field `colour`",
        ),
        (
            "bad-schema",
            Some(GOOD_YAML.into()),
            "schema.json must be a JSON Schema with `type: object`",
        ),
        (
            "no-schema",
            Some(GOOD_YAML.into()),
            "cannot read schema.json",
        ),
    ];
    for (name, yaml, expected) in cases {
        let dir = policy_dir(&root, name, yaml.as_deref(), "");
        match name {
            "bad-schema" => write(&dir.join("schema.json"), r#"{ "type": "string" }"#),
            "no-schema" => std::fs::remove_file(dir.join("schema.json")).unwrap(),
            _ => {}
        }
        let manifest = root.join(format!("{name}.yaml"));
        write(
            &manifest,
            &format!("name: t\npolicies:\n  - path: {}\n", dir.display()),
        );
        let out = run_builder(&["build", "--check"], &manifest);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name} was accepted");
        assert!(stderr.contains(expected), "{name}: {stderr}");
        assert!(
            stderr.contains(&dir.display().to_string()),
            "{name} not named: {stderr}"
        );
    }

    // The same name@version twice.
    let one = policy_dir(&root, "twin-a", Some(GOOD_YAML), "");
    let two = policy_dir(&root, "twin-b", Some(GOOD_YAML), "");
    let manifest = root.join("twins.yaml");
    write(
        &manifest,
        &format!(
            "name: t\npolicies:\n  - path: {}\n  - path: {}\n",
            one.display(),
            two.display()
        ),
    );
    let out = run_builder(&["build", "--check"], &manifest);
    assert!(String::from_utf8_lossy(&out.stderr).contains("good@1.0.0 is already in this build"));
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_crate_that_is_not_a_policy_is_refused() {
    let root = scratch("not-a-policy");
    let dir = policy_dir(
        &root,
        "not-a-policy",
        Some(GOOD_YAML),
        "pub fn hello() {}\n",
    );
    let manifest = root.join("build.yaml");
    write(
        &manifest,
        &format!(
            "name: not-a-policy\npolicies:\n  - path: {}\n",
            dir.display()
        ),
    );
    let out = Command::new(builder())
        .args(["build", "--wasm-only", "--out"])
        .arg(root.join("out"))
        .arg("--manifest")
        .arg(&manifest)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("must export `pub const FACTORY: policy_executor::PolicyFactory`")
            && stderr.contains("good@1.0.0 (not-a-policy)"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_build_without_policies_refuses_every_configuration_that_names_one() {
    let root = scratch("empty");
    let manifest = root.join("build.yaml");
    write(&manifest, "name: empty\npolicies: []\n");
    let out_dir = root.join("out");
    let out = Command::new(builder())
        .args(["build", "--wasm-only", "--out"])
        .arg(&out_dir)
        .arg("--manifest")
        .arg(&manifest)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let module = out_dir.join("plugin.wasm");

    let with_policy = "routes:\n  - match: { route: echo-api }\n    policies: [{ name: set-headers, config: {} }]\n";
    let log = match Stack::builder(Host::Wasm, with_policy)
        .module(&module)
        .try_start()
    {
        Err(EnvoyError::Rejected { log }) => log,
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("a build without policies accepted set-headers"),
    };
    assert!(
        log.contains(r#"unknown policy "set-headers": this build contains no policies"#),
        "{log}"
    );
    assert!(log.contains("policy engine build empty (source"), "{log}");

    let stack = Stack::builder(Host::Wasm, "routes: [{ policies: [] }]\n")
        .module(&module)
        .try_start()
        .unwrap();
    assert_eq!(stack.send("GET", "/api/x", &[]).status, 200);
    drop(stack);
    let _ = std::fs::remove_dir_all(&root);
}

fn build_info() -> Value {
    let text = std::fs::read_to_string(default_build().join("build-info.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn the_default_build_describes_itself_and_logs_it() {
    let info = build_info();
    let module = std::fs::read(default_build().join("plugin.wasm")).unwrap();
    let digest = Command::new("sha256sum")
        .arg(default_build().join("plugin.wasm"))
        .output()
        .unwrap();
    let digest = String::from_utf8_lossy(&digest.stdout);
    assert_eq!(info["module"]["sha256"].as_str(), digest.split(' ').next());
    assert_eq!(info["module"]["bytes"].as_u64(), Some(module.len() as u64));
    let policies: Vec<String> = info["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            format!(
                "{}@{}",
                p["name"].as_str().unwrap(),
                p["version"].as_str().unwrap()
            )
        })
        .collect();
    assert!(
        policies.contains(&"set-headers@0.1.0".to_owned()),
        "{policies:?}"
    );
    assert!(info["source_commit"]
        .as_str()
        .is_some_and(|c| !c.is_empty()));

    // Both hosts log the build at start.
    let description = info["description"].as_str().unwrap();
    for host in Host::ALL {
        let stack = Stack::builder(host, "routes: []\n").start();
        let log = match host {
            Host::Wasm => stack.envoy.log(),
            Host::ExtProc => stack.shim.as_ref().unwrap().log(),
        };
        assert!(
            log.contains(description),
            "{host:?} did not log its build:\n{log}"
        );
    }
}

#[test]
fn the_configuration_schema_accepts_the_examples_and_rejects_bad_configurations() {
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(default_build().join("config.schema.json")).unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let yaml = |text: &str| -> Value { serde_yaml::from_str(text).unwrap() };

    let mut examples = vec![repo_root().join("envoy/demo-policies.yaml")];
    examples.extend(integration_tests::yaml_files(
        &repo_root().join("tests/conformance"),
    ));
    for path in examples {
        let text = std::fs::read_to_string(&path).unwrap();
        let document = yaml(&text);
        // Conformance files carry the configuration as a string.
        let config = match document.get("config").and_then(Value::as_str) {
            Some(config) => yaml(config),
            None => document,
        };
        let errors: Vec<String> = validator
            .iter_errors(&config)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{}: {errors:?}", path.display());
    }

    for bad in [
        "routes: [{ policies: [{ name: set-headers, config: { request: { rename: {} } } }] }]",
        "routes: [{ policies: [{ name: no-such-policy }] }]",
        "routes: [{ policies: [{ name: respond, version: 0.1.0, config: { status: 99 } }] }]",
        "routes: [{ policies: [{ name: json-body, version: 9.9.9 }] }]",
        "routes: [{ match: { path: { prefix: api } } }]",
        "unmatched: maybe",
        "rutes: []",
    ] {
        assert!(!validator.is_valid(&yaml(bad)), "accepted: {bad}");
    }
}

#[test]
fn a_scaffolded_policy_builds_and_passes_its_test() {
    let root = scratch("scaffold");
    write(
        &root.join("Cargo.toml"),
        "[workspace]\nresolver = \"2\"\nmembers = [\"policies/*\"]\n",
    );
    let out = Command::new(builder())
        .args(["new-policy", "add-greeting", "--dir"])
        .arg(root.join("policies"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for file in [
        "Cargo.toml",
        "policy.yaml",
        "schema.json",
        "README.md",
        "src/lib.rs",
    ] {
        assert!(
            root.join("policies/add-greeting").join(file).exists(),
            "{file}"
        );
    }
    let test = Command::new(env!("CARGO"))
        .args(["test", "-q", "--offline", "--manifest-path"])
        .arg(root.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", repo_root().join("target/scaffold-test"))
        .output()
        .unwrap();
    let output = String::from_utf8_lossy(&test.stdout);
    assert!(
        test.status.success() && output.contains("4 passed"),
        "{output}{}",
        String::from_utf8_lossy(&test.stderr)
    );
    // The builder accepts the scaffold as a policy directory.
    let manifest = root.join("build.yaml");
    write(
        &manifest,
        "name: s\npolicies:\n  - path: policies/add-greeting\n",
    );
    let check = run_builder(&["build", "--check"], &manifest);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_policy_from_a_git_repository_is_fetched_and_validated() {
    let root = scratch("git-source");
    let repo = root.join("acme-policies");
    policy_dir(&repo, "acme-good", Some(GOOD_YAML), "");
    let git = |args: &[&str]| {
        let status = Command::new("git")
            .arg("-C")
            .arg(&repo)
            .args(["-c", "user.email=t@example.com", "-c", "user.name=t"])
            .args(args)
            .status()
            .unwrap();
        assert!(status.success(), "git {args:?}");
    };
    git(&["init", "-q"]);
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "a policy"]);

    let manifest = root.join("build.yaml");
    write(
        &manifest,
        &format!(
            "name: external\npolicies:\n  - git: file://{}\n    package: acme-good\n    version: 1.0.0\n",
            repo.display()
        ),
    );
    let out = run_builder(&["build", "--check"], &manifest);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("good@1.0.0"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    for (entry, expected) in [
        ("  - crate: acme-good\n", "needs `crate_version`"),
        ("  - git: file:///nowhere\n", "needs `package`"),
        (
            "  - path: x\n    git: file:///nowhere\n",
            "exactly one of `path`, `git` or `crate`",
        ),
    ] {
        write(&manifest, &format!("name: bad\npolicies:\n{entry}"));
        let out = run_builder(&["build", "--check"], &manifest);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(expected),
            "{entry}: {stderr}"
        );
    }
    let _ = std::fs::remove_dir_all(&root);
}
