//! The HTTP filter entries `Envoy` can put before the router, as the JSON
//! Envoy's configuration takes.

use std::path::Path;

use serde_json::{json, Value};

/// The policy engine's Wasm filter with this plugin configuration (YAML or
/// JSON text), running `module` in V8.
///
/// `allow_on_headers_stop_iteration` lets the filter hold the headers while
/// it waits for a body a policy must see; without it, Envoy's Proxy-Wasm
/// 0.2 host also stops the body callbacks and such requests stall.
pub fn policy_engine(module: &Path, plugin_configuration: &str) -> Value {
    json!({
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "policy-engine",
                "root_id": "policy-engine",
                "allow_on_headers_stop_iteration": true,
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": plugin_configuration,
                },
                "vm_config": {
                    "vm_id": "policy-engine",
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": { "local": { "filename": module.display().to_string() } },
                },
            },
        },
    })
}

/// Envoy's Lua filter running `source`.
pub fn lua(source: &str) -> Value {
    json!({
        "name": "envoy.filters.http.lua",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
            "default_source_code": { "inline_string": source },
        },
    })
}

/// The router, always last.
pub fn router() -> Value {
    json!({
        "name": "envoy.filters.http.router",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
        },
    })
}
