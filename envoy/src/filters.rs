//! The HTTP filter entries `Envoy` can put before the router, as the JSON
//! Envoy's configuration takes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

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
/// them (`allow_mode_override`). Response headers are skipped unless asked
/// for: besides saving a message per request, Envoy's own local replies to
/// a request its codec refuses (a header name with an underscore under
/// `REJECT_REQUEST`) would otherwise wait on the shim while the connection
/// is torn down, and the client would get no 400 at all. `xds.route_name` is sent as a request
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
            "mutation_rules": {
                "allow_envoy": true,
                "allow_all_routing": true,
                // A change Envoy refuses fails the request rather than
                // letting it go on unchanged: the upstream never gets a
                // request other than the one decided on.
                "disallow_is_error": true,
            },
            "processing_mode": {
                "request_header_mode": "SEND",
                "response_header_mode": "SKIP",
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

/// Streams Envoy opens on one HTTP/2 connection to the shim before it opens
/// another: Envoy Gateway's default for its clusters.
///
/// Every request in flight is one ext_proc stream. Unbounded, all of a
/// worker's streams share one connection, and at a few thousand concurrent
/// requests the frames Envoy queues on it exceed its flood guard
/// (`max_outbound_frames`, 10,000): Envoy closes the connection as a
/// protocol error and fails every stream on it with a 500 (`make stress`
/// found it at 10,000 connections). A hundred streams a connection keeps
/// each queue far below the guard.
pub const EXT_PROC_STREAMS_PER_CONNECTION: u32 = 100;

/// The HTTP/2 cluster for the shim at `address`.
pub fn ext_proc_cluster(address: SocketAddr) -> Value {
    grpc_cluster(EXT_PROC_CLUSTER, address)
}

/// A cluster speaking HTTP/2 (gRPC) to `address`, at most
/// [`EXT_PROC_STREAMS_PER_CONNECTION`] streams a connection.
pub fn grpc_cluster(name: &str, address: SocketAddr) -> Value {
    let mut cluster = static_cluster(name, address);
    cluster["typed_extension_protocol_options"] = json!({
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {
                "http2_protocol_options": {
                    "max_concurrent_streams": EXT_PROC_STREAMS_PER_CONNECTION,
                },
            },
        },
    });
    cluster
}

/// Mutual TLS from Envoy to the shim (`policy-extproc --tls-cert --tls-key
/// --client-ca`), from PEM files.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    /// The certificate Envoy presents to the shim, signed by the CA the
    /// shim's `--client-ca` names.
    pub certificate: PathBuf,
    /// Its private key.
    pub private_key: PathBuf,
    /// The CA that signed the shim's certificate.
    pub trusted_ca: PathBuf,
    /// The name Envoy asks for (SNI) and requires among the DNS names of the
    /// shim's certificate: another certificate from the same CA (a client's)
    /// is not the shim's.
    pub server_name: String,
}

impl UpstreamTls {
    /// The cluster's `transport_socket`: an `UpstreamTlsContext` offering
    /// HTTP/2 by ALPN (gRPC), with Envoy's client certificate, the trusted
    /// CA and the server name to verify.
    pub fn transport_socket(&self) -> Value {
        let file = |path: &Path| json!({ "filename": path.display().to_string() });
        json!({
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": self.server_name,
                "common_tls_context": {
                    "alpn_protocols": ["h2"],
                    "tls_certificates": [{
                        "certificate_chain": file(&self.certificate),
                        "private_key": file(&self.private_key),
                    }],
                    "validation_context": {
                        "trusted_ca": file(&self.trusted_ca),
                        "match_typed_subject_alt_names": [{
                            "san_type": "DNS",
                            "matcher": { "exact": self.server_name },
                        }],
                    },
                },
            },
        })
    }
}

/// [`ext_proc_cluster`] over mutual TLS: Envoy verifies the shim's
/// certificate against `tls.trusted_ca` and `tls.server_name`, and presents
/// its own, which the shim verifies against its `--client-ca`.
pub fn ext_proc_cluster_tls(address: SocketAddr, tls: &UpstreamTls) -> Value {
    let mut cluster = ext_proc_cluster(address);
    cluster["transport_socket"] = tls.transport_socket();
    cluster
}

/// Connections a cluster may hold to its upstream, across all workers.
pub const MAX_UPSTREAM_CONNECTIONS: u32 = 4096;

/// Requests a cluster may have queued for a connection, and requests (or,
/// over HTTP/2, streams) it may have in flight.
pub const MAX_UPSTREAM_REQUESTS: u32 = 100_000;

/// The circuit breakers every cluster gets (the echo upstream's in the
/// bootstrap, and [`static_cluster`]'s).
///
/// Envoy's defaults allow 1,024 connections, 1,024 requests queued for one
/// and 1,024 requests in flight, and answer 503 beyond that
/// (`upstream_rq_pending_overflow`): at 5,000 concurrent clients, most
/// requests. A proxy in front of one upstream should queue rather than shed
/// what its clients send, so the queue and the requests in flight are
/// bounded only loosely; connections stay bounded, because each costs a file
/// descriptor in Envoy and in the upstream.
pub fn circuit_breakers() -> Value {
    json!({
        "thresholds": [{
            "max_connections": MAX_UPSTREAM_CONNECTIONS,
            "max_pending_requests": MAX_UPSTREAM_REQUESTS,
            "max_requests": MAX_UPSTREAM_REQUESTS,
        }],
    })
}

/// A plain HTTP/1.1 cluster named `name` with one endpoint, e.g. for the
/// JWKS server a policy fetches from, with [`circuit_breakers`].
pub fn static_cluster(name: &str, address: SocketAddr) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "circuit_breakers": circuit_breakers(),
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
