//! The HTTP filter entries `Envoy` can put before the router, as the JSON
//! Envoy's configuration takes.

use std::net::SocketAddr;
use std::path::Path;

use policy_executor::Attribute;
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

/// The name of the cluster [`ext_proc`] sends to.
pub const EXT_PROC_CLUSTER: &str = "policy_extproc";

/// Envoy's `ext_proc` filter in front of the policy engine's shim.
///
/// Envoy first sends only the request headers; the shim's `mode_override`
/// then asks for bodies and the response only when the matched chain needs
/// them (`allow_mode_override`). `xds.route_name` is sent as a request
/// attribute so route entries can match on Envoy's route name, and so are
/// the connection attributes expressions can read (the peer's address and
/// certificate); the shim logs which ones its configuration needs. Failures fail
/// closed (`failure_mode_allow: false`): a request the shim cannot see gets
/// a 500 rather than passing unchecked. The mutation rules give the shim the
/// freedom the Wasm filter has (`x-envoy-*` and routing headers), so both
/// hosts behave alike.
pub fn ext_proc() -> Value {
    json!({
        "name": "envoy.filters.http.ext_proc",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
            "grpc_service": {
                "envoy_grpc": { "cluster_name": EXT_PROC_CLUSTER },
                "timeout": "2s",
            },
            "failure_mode_allow": false,
            "message_timeout": "2s",
            "allow_mode_override": true,
            "request_attributes": request_attributes(),
            "mutation_rules": { "allow_envoy": true, "allow_all_routing": true },
            "processing_mode": {
                "request_header_mode": "SEND",
                "response_header_mode": "SEND",
                "request_body_mode": "NONE",
                "response_body_mode": "NONE",
                "request_trailer_mode": "SKIP",
                "response_trailer_mode": "SKIP",
            },
        },
    })
}

fn request_attributes() -> Vec<&'static str> {
    let connection = Attribute::ALL.iter().map(|a| a.envoy_name());
    std::iter::once("xds.route_name")
        .chain(connection)
        .collect()
}

/// The HTTP/2 cluster for the shim at `address`.
pub fn ext_proc_cluster(address: SocketAddr) -> Value {
    let mut cluster = static_cluster(EXT_PROC_CLUSTER, address);
    cluster["typed_extension_protocol_options"] = json!({
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": { "http2_protocol_options": {} },
        },
    });
    cluster
}

/// A plain HTTP/1.1 cluster named `name` with one endpoint, e.g. for the
/// JWKS server a policy fetches from.
pub fn static_cluster(name: &str, address: SocketAddr) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": { "socket_address": {
                "address": address.ip().to_string(),
                "port_value": address.port(),
            }}}}]}],
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
