//! The deployment manifests the project ships are valid: custom resources
//! against the real CRDs (copies in `tests/crds/`), embedded plugin
//! configurations against the policies in this build.
//!
//! The CRD schemas are checked structurally (JSON Schema); their CEL
//! `x-kubernetes-validations` rules need a Kubernetes API server and are not
//! evaluated here. Every custom kind the examples use has its CRD there
//! (EnvoyExtensionPolicy, EnvoyPatchPolicy, ClientTrafficPolicy, Backend,
//! WasmPlugin, EnvoyFilter); the tests below also check the fields that
//! make them what they are for (edge hardening, mutual TLS).
//!
//! Beyond schemas: every example fails closed (no `unmatched: allow`, and
//! each embedded plugin configuration passes the shim's `--check`), the
//! Kubernetes manifests fence the shim (NetworkPolicy, PodDisruptionBudget,
//! resources), and the gateway examples set Envoy's edge hardening.

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
    // tests/crds holds unmodified copies of the real CRDs (Envoy Gateway's
    // EnvoyExtensionPolicy, Istio's WasmPlugin), so a clean clone validates
    // on its own; CRD_DIR points at other versions to check against.
    let dir = std::env::var_os("CRD_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("tests/crds"));
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
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

/// Kinds Kubernetes serves itself (no CRD): the core group and the
/// built-in groups the examples use.
fn is_built_in(api_version: &str) -> bool {
    match api_version.split_once('/') {
        None => true, // "v1": the core group
        Some((group, _)) => matches!(group, "apps" | "policy" | "networking.k8s.io"),
    }
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
        if is_built_in(api_version) {
            continue; // a built-in kind: see the tests below
        }
        let Some((_, _, schema)) = schemas
            .iter()
            .find(|(v, k, _)| v == api_version && k == kind)
        else {
            panic!("{}: no CRD for {api_version} {kind}", file.display());
        };
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

/// The resource of `kind` in `envoy/kubernetes/<file>`.
fn kubernetes_resource(file: &str, kind: &str) -> Value {
    documents(&repo().join("envoy/kubernetes").join(file))
        .into_iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in {file}"))
}

/// What every Deployment of a gRPC server here has: replicas, gRPC probes
/// on the serving port, resource requests, a hardened container. Returns
/// its pods' labels.
fn check_grpc_deployment(deployment: &Value) -> Value {
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pods = deployment["spec"]["selector"]["matchLabels"].clone();
    assert!(pods.is_object());
    let template = &deployment["spec"]["template"];
    assert_eq!(template["metadata"]["labels"], pods);
    let container = &template["spec"]["containers"][0];
    let port = &container["ports"][0]["containerPort"];
    assert_eq!(&container["readinessProbe"]["grpc"]["port"], port);
    assert_eq!(&container["livenessProbe"]["grpc"]["port"], port);
    for resource in ["cpu", "memory"] {
        assert!(
            container["resources"]["requests"][resource].is_string(),
            "resources.requests.{resource} missing"
        );
    }
    assert!(container["resources"]["limits"]["memory"].is_string());
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(template["spec"]["securityContext"]["runAsNonRoot"], true);
    pods
}

#[test]
fn the_kubernetes_deployment_is_what_the_shim_needs() {
    let find = |kind: &str| kubernetes_resource("extproc.yaml", kind);
    let deployment = find("Deployment");
    let shim_pods = &check_grpc_deployment(&deployment);
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert!(container["resources"]["limits"]["cpu"].is_string());

    // Voluntary disruptions leave a replica serving.
    let budget = find("PodDisruptionBudget");
    assert_eq!(&budget["spec"]["selector"]["matchLabels"], shim_pods);
    assert_eq!(budget["spec"]["minAvailable"], 1);

    // Only the gateway's pods reach the shim, and only its gRPC port.
    let fence = find("NetworkPolicy");
    assert_eq!(&fence["spec"]["podSelector"]["matchLabels"], shim_pods);
    assert_eq!(fence["spec"]["policyTypes"], serde_json::json!(["Ingress"]));
    let rules = fence["spec"]["ingress"].as_array().unwrap();
    assert_eq!(rules.len(), 1, "one ingress rule: from the gateway");
    for peer in rules[0]["from"].as_array().unwrap() {
        // Both selectors in one peer: these pods in this namespace. An
        // empty or missing selector would admit every pod or namespace.
        for selector in ["namespaceSelector", "podSelector"] {
            let labels = peer[selector]["matchLabels"].as_object();
            assert!(
                labels.is_some_and(|labels| !labels.is_empty()),
                "{selector} must name the gateway's: {peer}"
            );
        }
    }
    assert_eq!(rules[0]["ports"][0]["port"], "grpc");
    let service = find("Service");
    assert_eq!(
        service["spec"]["ports"][0]["appProtocol"],
        "kubernetes.io/h2c"
    );
}

#[test]
fn the_rate_limit_service_deployment_reaches_redis_and_only_the_engine_reaches_it() {
    let find = |kind: &str| kubernetes_resource("ratelimit.yaml", kind);
    let deployment = find("Deployment");
    let pods = check_grpc_deployment(&deployment);
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["readinessProbe"]["grpc"]["service"],
        "envoy.service.ratelimit.v3.RateLimitService"
    );
    // The Redis URL (it may hold a password) comes from the Secret.
    let secret = find("Secret");
    let redis = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "REDIS_URL")
        .expect("REDIS_URL");
    let reference = &redis["valueFrom"]["secretKeyRef"];
    assert_eq!(reference["name"], secret["metadata"]["name"]);
    let key = reference["key"].as_str().unwrap();
    let url = secret["stringData"][key].as_str().unwrap();
    assert!(
        url.starts_with("redis://") || url.starts_with("rediss://"),
        "{url}"
    );
    // The arguments are the binary's: it parses them.
    let args: Vec<String> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    let help = std::process::Command::new(local_envoy::ratelimit_bin())
        .arg("--help")
        .output()
        .expect("policy-ratelimit (make build builds it)");
    let help = String::from_utf8_lossy(&help.stdout);
    for arg in &args {
        let flag = arg.split('=').next().unwrap();
        assert!(help.contains(flag), "{flag} is not a policy-ratelimit flag");
    }
    let budget = find("PodDisruptionBudget");
    assert_eq!(budget["spec"]["selector"]["matchLabels"], pods);
    let service = find("Service");
    assert_eq!(service["spec"]["selector"], pods);
    assert_eq!(
        service["spec"]["ports"][0]["appProtocol"],
        "kubernetes.io/h2c"
    );
    let fence = find("NetworkPolicy");
    assert_eq!(fence["spec"]["podSelector"]["matchLabels"], pods);
    let peers = fence["spec"]["ingress"][0]["from"].as_array().unwrap();
    let shim_pods = kubernetes_resource("extproc.yaml", "Deployment")["spec"]["selector"]
        ["matchLabels"]
        .clone();
    assert!(
        peers
            .iter()
            .any(|p| p["podSelector"]["matchLabels"] == shim_pods),
        "the shim's pods may call it"
    );
    for peer in peers {
        let labels = peer["podSelector"]["matchLabels"].as_object();
        assert!(
            labels.is_some_and(|l| !l.is_empty()),
            "{peer} admits every pod"
        );
    }
}

/// The plugin configurations the examples embed: the shim's ConfigMap, the
/// Envoy Gateway Wasm `config`, the Istio `pluginConfig`.
fn plugin_configurations() -> Vec<(String, Value)> {
    let mut found = Vec::new();
    for (file, doc) in manifests() {
        let name = format!("{} ({})", file.display(), doc["kind"]);
        match doc["kind"].as_str() {
            Some("ConfigMap") => {
                let text = doc["data"]["policies.yaml"].as_str().unwrap();
                found.push((name, serde_yaml::from_str(text).unwrap()));
            }
            Some("EnvoyExtensionPolicy") => {
                for wasm in doc["spec"]["wasm"].as_array().into_iter().flatten() {
                    found.push((name.clone(), wasm["config"].clone()));
                }
            }
            Some("WasmPlugin") => found.push((name, doc["spec"]["pluginConfig"].clone())),
            _ => {}
        }
    }
    assert!(
        found.len() >= 3,
        "only {} plugin configurations",
        found.len()
    );
    found
}

#[test]
fn the_examples_fail_closed_and_are_valid_for_the_shim() {
    for (index, (name, config)) in plugin_configurations().into_iter().enumerate() {
        // Absent means deny; `allow` would pass what no entry maps.
        assert_ne!(
            config["unmatched"], "allow",
            "{name}: unmatched: allow lets a forgotten route through"
        );
        // Valid for the default build, with the same errors as the filter.
        let file =
            std::env::temp_dir().join(format!("example-{}-{index}.json", std::process::id()));
        std::fs::write(&file, config.to_string()).unwrap();
        let check = std::process::Command::new(local_envoy::extproc_bin())
            .arg("--check")
            .arg("--config")
            .arg(&file)
            .output()
            .unwrap();
        let _ = std::fs::remove_file(&file);
        assert!(
            check.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&check.stdout)
        );
    }
}

/// Finds the one resource of `kind` among the examples (its name, when
/// given, picks one of several).
fn example(kind: &str) -> Value {
    example_named(kind, None)
}

fn example_named(kind: &str, name: Option<&str>) -> Value {
    let found: Vec<Value> = manifests()
        .into_iter()
        .filter(|(file, doc)| doc["kind"] == kind && file.starts_with(repo().join("envoy")))
        .filter(|(_, doc)| name.is_none_or(|n| doc["metadata"]["name"] == n))
        .map(|(_, doc)| doc)
        .collect();
    assert_eq!(found.len(), 1, "expected one {kind} among the examples");
    found.into_iter().next().unwrap()
}

#[test]
fn the_gateway_examples_set_envoys_edge_hardening() {
    // Envoy Gateway: normalize_path is always on; the rest is the policy's.
    let client = example("ClientTrafficPolicy");
    assert_eq!(client["spec"]["targetRefs"][0]["kind"], "Gateway");
    assert_eq!(
        client["spec"]["path"]["escapedSlashesAction"],
        "RejectRequest"
    );
    assert_ne!(client["spec"]["path"]["disableMergeSlashes"], true);
    assert!(
        ["RejectRequest", "DropHeader"].contains(
            &client["spec"]["headers"]["withUnderscoresAction"]
                .as_str()
                .unwrap()
        ),
        "{client}"
    );

    // Istio: the gateway's HTTP connection managers.
    let filter = example_named("EnvoyFilter", Some("policy-engine-edge-hardening"));
    let patch = &filter["spec"]["configPatches"][0];
    assert_eq!(patch["applyTo"], "NETWORK_FILTER");
    assert_eq!(patch["match"]["context"], "GATEWAY");
    assert_eq!(
        patch["match"]["listener"]["filterChain"]["filter"]["name"],
        "envoy.filters.network.http_connection_manager"
    );
    let hcm = &patch["patch"]["value"]["typed_config"];
    assert_eq!(hcm["normalize_path"], true);
    assert_eq!(hcm["merge_slashes"], true);
    assert_eq!(hcm["path_with_escaped_slashes_action"], "REJECT_REQUEST");
    assert_eq!(
        hcm["common_http_protocol_options"]["headers_with_underscores_action"],
        "REJECT_REQUEST"
    );
    // On the pods the WasmPlugin runs in.
    assert_eq!(
        filter["spec"]["workloadSelector"]["labels"],
        example("WasmPlugin")["spec"]["selector"]["matchLabels"]
    );
}

#[test]
fn the_envoy_gateway_tls_example_verifies_both_ends() {
    let backend = example("Backend");
    let tls = &backend["spec"]["tls"];
    assert!(tls["caCertificateRefs"][0]["name"].is_string(), "{tls}");
    assert!(tls["clientCertificateRef"]["name"].is_string(), "{tls}");
    assert!(tls["sni"].is_string(), "{tls}");
    assert_ne!(tls["insecureSkipVerify"], true);

    let through_backend: Vec<Value> = manifests()
        .into_iter()
        .filter(|(_, doc)| doc["kind"] == "EnvoyExtensionPolicy")
        .flat_map(|(_, doc)| {
            doc["spec"]["extProc"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter(|ext_proc| ext_proc["backendRefs"][0]["kind"] == "Backend")
        .collect();
    assert_eq!(through_backend.len(), 1);
    assert_eq!(
        through_backend[0]["backendRefs"][0]["name"],
        backend["metadata"]["name"]
    );
    assert_eq!(through_backend[0]["failOpen"], false);
}
