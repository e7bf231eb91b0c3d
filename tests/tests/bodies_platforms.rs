//! Wasm body chains under Envoy Gateway and Istio, as far as this machine
//! can show: the filter configuration each platform's manifests produce
//! (the generated filter, patched by `envoy/gateway/wasm-body-patch.yaml`;
//! the filter `envoy/istio/envoyfilter-bodies.yaml` installs) runs in real
//! Envoy and masks a response and edits a request. Without
//! `allow_on_headers_stop_iteration` a body chain fails closed promptly
//! instead of stalling. The manifests' CRD validity is `manifests.rs`'s.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test crate: a failed step must fail the test"
)]

use std::path::Path;
use std::time::{Duration, Instant};

use integration_tests::{send, Host, Stack};
use serde::Deserialize;
use serde_json::{json, Value};

fn documents(path: &str) -> Vec<Value> {
    let path = local_envoy::repo_root().join(path);
    let text = std::fs::read_to_string(&path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap())
        .filter(|doc| !doc.is_null())
        .collect()
}

fn module() -> String {
    local_envoy::default_build()
        .join("plugin.wasm")
        .display()
        .to_string()
}

/// What Envoy Gateway generates for the first wasm entry of
/// `wasm-policy.yaml` (internal/xds/translator/wasm.go): the filter named
/// after the policy, its `config` as JSON. Envoy Gateway fetches the code
/// from its own server and enables the filter per route; here the code is
/// the local module and the filter is on for every route.
fn envoy_gateway_filter() -> (Value, String) {
    let policy = documents("envoy/gateway/wasm-policy.yaml")
        .into_iter()
        .find(|d| d["kind"] == "EnvoyExtensionPolicy")
        .unwrap();
    let namespace = policy["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default");
    let name = policy["metadata"]["name"].as_str().unwrap();
    let wasm = &policy["spec"]["wasm"][0];
    let configuration = wasm["config"].to_string();
    let filter = json!({
        "name": format!("envoy.filters.http.wasm/envoyextensionpolicy/{namespace}/{name}/wasm/0"),
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": wasm["name"],
                "root_id": wasm["rootID"],
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": configuration,
                },
                "vm_config": {
                    "vm_id": format!("envoyextensionpolicy/{namespace}/{name}/wasm/0"),
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": { "local": { "filename": module() } },
                },
            },
        },
    });
    (filter, configuration)
}

/// Applies the EnvoyPatchPolicy's JSON patches to the filters its
/// `jsonPath` selects by name, as Envoy Gateway does (add at `path`).
fn patched(mut filter: Value) -> Value {
    let policy = documents("envoy/gateway/wasm-body-patch.yaml").remove(0);
    let mut applied = 0;
    for patch in policy["spec"]["jsonPatches"].as_array().unwrap() {
        let operation = &patch["operation"];
        assert_eq!(operation["op"], "add");
        let selector = operation["jsonPath"].as_str().unwrap();
        let wanted = selector
            .split_once("@.name=='")
            .and_then(|(_, rest)| rest.split_once('\''))
            .map(|(name, _)| name)
            .unwrap();
        if filter["name"] != wanted {
            continue;
        }
        let path = operation["path"].as_str().unwrap();
        let (parent, key) = path.rsplit_once('/').unwrap();
        filter
            .pointer_mut(parent)
            .and_then(Value::as_object_mut)
            .unwrap()
            .insert(key.to_owned(), operation["value"].clone());
        applied += 1;
    }
    assert_eq!(applied, 1, "the patch selects the generated filter");
    filter
}

/// The filter `envoyfilter-bodies.yaml` installs through ECDS, with the
/// module Istio's agent would have fetched.
fn istio_filter() -> (Value, String) {
    let filter = documents("envoy/istio/envoyfilter-bodies.yaml").remove(0);
    let patches = filter["spec"]["configPatches"].as_array().unwrap();
    let extension = patches
        .iter()
        .find(|p| p["applyTo"] == "EXTENSION_CONFIG")
        .unwrap();
    let mut value = extension["patch"]["value"].clone();
    let inserted = patches
        .iter()
        .find(|p| p["applyTo"] == "HTTP_FILTER")
        .unwrap();
    assert_eq!(
        inserted["patch"]["value"]["name"], value["name"],
        "the filter names the extension"
    );
    value["typed_config"]["config"]["vm_config"]["code"] =
        json!({ "local": { "filename": module() } });
    let configuration = value["typed_config"]["config"]["configuration"]["value"]
        .as_str()
        .unwrap()
        .to_owned();
    (value, configuration)
}

/// A request body is edited and a streamed response masked.
fn bodies_work(stack: &Stack) {
    let reply = send(
        &stack.envoy.url("/api/orders"),
        "POST",
        &[("content-type", "application/json")],
        Some(r#"{"debug": true, "item": 1}"#),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let echoed: Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(echoed["body"], r#"{"item":1}"#);
    let reply = stack.send(
        "GET",
        "/api/me",
        &[
            (
                "x-echo-respond-with",
                "jane@example.com paid with 4111 1111 1111 1111",
            ),
            ("x-echo-chunk-bytes", "6"),
        ],
    );
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "[redacted] paid with ***************1111");
}

#[test]
fn the_envoy_gateway_patch_makes_body_chains_work() {
    let (generated, configuration) = envoy_gateway_filter();
    let filter = patched(generated);
    let stack = Stack::builder(Host::Wasm, &configuration)
        .wasm_filter(filter)
        .start();
    bodies_work(&stack);
}

#[test]
fn the_istio_envoy_filter_makes_body_chains_work() {
    let (filter, configuration) = istio_filter();
    let stack = Stack::builder(Host::Wasm, &configuration)
        .wasm_filter(filter)
        .start();
    bodies_work(&stack);
}

#[test]
fn without_the_option_a_body_chain_fails_closed_promptly() {
    let (generated, configuration) = envoy_gateway_filter();
    let stack = Stack::builder(Host::Wasm, &configuration)
        .wasm_filter(generated)
        .start();
    let started = Instant::now();
    let reply = send(
        &stack.envoy.url("/api/orders"),
        "POST",
        &[("content-type", "application/json")],
        Some(r#"{"debug": true}"#),
    );
    assert_eq!(reply.status, 500, "{}", reply.body);
    // Envoy's own stream timeout (15 s) is not what answered.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(stack.upstream.requests_seen(), 0);
    let log = stack.envoy.log();
    assert!(
        log.contains("allow_on_headers_stop_iteration"),
        "the log names the option"
    );
    // A request that no body chain reads is unaffected.
    assert_eq!(
        stack.send("GET", "/other", &[]).status,
        403,
        "unmatched: deny"
    );
}

#[test]
fn without_the_option_a_response_body_chain_fails_closed_promptly() {
    let configuration = r#"{"routes": [{"name": "api", "policies": [
        {"name": "json-transform", "config": {"response": {"remove": ["/headers"]}}}]}]}"#;
    let mut filter = local_envoy::filters::policy_engine(Path::new(&module()), configuration);
    filter["typed_config"]["config"]
        .as_object_mut()
        .unwrap()
        .remove("allow_on_headers_stop_iteration");
    let stack = Stack::builder(Host::Wasm, configuration)
        .wasm_filter(filter)
        .start();
    let started = Instant::now();
    let reply = stack.send("GET", "/api", &[]);
    assert_eq!(reply.status, 500, "{}", reply.body);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(stack
        .envoy
        .log()
        .contains("allow_on_headers_stop_iteration"));
}
