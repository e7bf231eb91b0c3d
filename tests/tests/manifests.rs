//! The deployment manifests the project ships are valid: custom resources
//! against the real CRDs in `../shared/crds/`, embedded plugin
//! configurations against the policies in this build.
//!
//! The CRD schemas are checked structurally (JSON Schema); their CEL
//! `x-kubernetes-validations` rules need a Kubernetes API server and are not
//! evaluated here.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test crate: a failed step must fail the test"
)]

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

fn repo() -> PathBuf {
    local_envoy::repo_root()
}

fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|doc| !doc.is_null())
        .collect()
}

/// (group/version, kind) → the CRD's schema for that version.
fn crd_schemas() -> Vec<(String, String, Value)> {
    // CI and every developer checkout have the project's shared files
    // beside the repository; SHARED_DIR points elsewhere.
    let shared = std::env::var_os("SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("../shared"));
    let dir = shared.join("crds");
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (the CRDs come with the project's shared files)",
            dir.display()
        )
    });
    let mut schemas = Vec::new();
    for entry in entries {
        let path = entry.unwrap().path();
        for crd in documents(&path) {
            let spec = &crd["spec"];
            let group = spec["group"].as_str().unwrap();
            let kind = spec["names"]["kind"].as_str().unwrap();
            for version in spec["versions"].as_array().unwrap() {
                let name = version["name"].as_str().unwrap();
                let schema = version["schema"]["openAPIV3Schema"].clone();
                schemas.push((format!("{group}/{name}"), kind.to_owned(), schema));
            }
        }
    }
    assert!(schemas.len() >= 2, "no CRDs found in {}", dir.display());
    schemas
}

fn manifests() -> Vec<(PathBuf, Value)> {
    let mut all = Vec::new();
    // The examples as committed, and as `make build` renders them with the
    // build's image digests.
    let dirs = [
        repo().join("envoy/gateway"),
        repo().join("envoy/istio"),
        repo().join("envoy/kubernetes"),
        local_envoy::default_build().join("deploy"),
    ];
    for dir in dirs {
        for file in integration_tests::yaml_files(&dir) {
            for doc in documents(&file) {
                all.push((file.clone(), doc));
            }
        }
    }
    all
}

#[test]
fn custom_resources_validate_against_the_real_crds() {
    let schemas = crd_schemas();
    let mut checked = 0;
    for (file, doc) in manifests() {
        let api_version = doc["apiVersion"].as_str().unwrap();
        let kind = doc["kind"].as_str().unwrap();
        if !api_version.contains(".io/") || api_version.starts_with("apps/") {
            continue; // a built-in kind: see the test below
        }
        let (_, _, schema) = schemas
            .iter()
            .find(|(v, k, _)| v == api_version && k == kind)
            .unwrap_or_else(|| panic!("{}: no CRD for {api_version} {kind}", file.display()));
        let validator = jsonschema::validator_for(schema).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&doc)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{} ({kind}):\n{}",
            file.display(),
            errors.join("\n")
        );
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} custom resources were checked");
}

#[test]
fn the_schema_check_catches_a_broken_resource() {
    let schemas = crd_schemas();
    let (file, mut doc) = manifests()
        .into_iter()
        .find(|(_, d)| d["kind"] == "EnvoyExtensionPolicy")
        .unwrap();
    doc["spec"]["extProc"][0]["messageTimeout"] = Value::from("half a second");
    let (_, _, schema) = schemas
        .iter()
        .find(|(_, k, _)| k == "EnvoyExtensionPolicy")
        .unwrap();
    let validator = jsonschema::validator_for(schema).unwrap();
    assert!(
        !validator.is_valid(&doc),
        "{} broken but accepted",
        file.display()
    );
}

#[test]
fn the_kubernetes_deployment_is_what_the_shim_needs() {
    let docs = manifests();
    let find = |kind: &str| {
        docs.iter()
            .find(|(_, d)| d["kind"] == kind)
            .map(|(_, d)| d.clone())
            .unwrap_or_else(|| panic!("no {kind}"))
    };
    let deployment = find("Deployment");
    assert_eq!(deployment["spec"]["replicas"], 2);
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert!(container["readinessProbe"]["grpc"]["port"].is_number());
    assert!(container["livenessProbe"]["grpc"]["port"].is_number());
    assert!(container["resources"]["requests"]["cpu"].is_string());
    let service = find("Service");
    assert_eq!(
        service["spec"]["ports"][0]["appProtocol"],
        "kubernetes.io/h2c"
    );

    // The configuration it ships...
    let config = find("ConfigMap")["data"]["policies.yaml"]
        .as_str()
        .unwrap()
        .to_owned();
    // It is valid for the default build's shim.
    let file = std::env::temp_dir().join(format!("configmap-{}.yaml", std::process::id()));
    std::fs::write(&file, config).unwrap();
    let check = std::process::Command::new(local_envoy::extproc_bin())
        .arg("--check")
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&file);
    assert!(
        check.status.success(),
        "the ConfigMap's policies.yaml: {}",
        String::from_utf8_lossy(&check.stdout)
    );
}
