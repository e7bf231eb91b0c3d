//! The ext_authz gRPC messages (`envoy.service.auth.v3`), declared by hand.
//!
//! `envoy-types` has them generated, but it depends on tonic with its
//! transport, which does not build for wasm32-wasip1 and would bloat the
//! module anyway; prost's derive needs neither `protoc` nor a build script.
//! Only the fields this policy reads or writes are declared. Their numbers
//! and types are Envoy's (the tests below check them against `envoy-types`),
//! and prost skips every field left out when it decodes, so messages from a
//! newer Envoy or a more talkative authorization server still decode.
//!
//! A oneof of which only one member is needed is declared as that member
//! alone, an optional field with its tag: a set oneof member and a present
//! optional field are the same bytes on the wire. A message carrying one of
//! the other members decodes with the field `None`.

use std::collections::HashMap;

// ---------------------------------------------------------------------------
// envoy.service.auth.v3: the request
// ---------------------------------------------------------------------------

/// `envoy.service.auth.v3.CheckRequest`, the argument of `Authorization/Check`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CheckRequest {
    /// The request being authorized and the connection it came on.
    #[prost(message, optional, tag = "1")]
    pub attributes: Option<AttributeContext>,
}

/// `envoy.service.auth.v3.AttributeContext`: who is asking, whom, and what.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AttributeContext {
    /// The downstream peer, the client as Envoy sees it.
    #[prost(message, optional, tag = "1")]
    pub source: Option<Peer>,
    /// The local peer: the address the request arrived on.
    #[prost(message, optional, tag = "2")]
    pub destination: Option<Peer>,
    /// The request itself.
    #[prost(message, optional, tag = "4")]
    pub request: Option<Request>,
    /// Free-form pairs from the configuration, passed through as they are.
    #[prost(map = "string, string", tag = "10")]
    pub context_extensions: HashMap<String, String>,
}

/// `envoy.service.auth.v3.AttributeContext.Peer`: one end of the connection.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Peer {
    /// The peer's address.
    #[prost(message, optional, tag = "1")]
    pub address: Option<Address>,
    /// The peer's authenticated identity: from its TLS certificate, the URI
    /// SAN (e.g. a SPIFFE ID), else a DNS SAN, else the subject; empty when
    /// unknown.
    #[prost(string, tag = "4")]
    pub principal: String,
}

/// `envoy.service.auth.v3.AttributeContext.Request`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Request {
    /// The HTTP request.
    #[prost(message, optional, tag = "2")]
    pub http: Option<HttpRequest>,
}

/// `envoy.service.auth.v3.AttributeContext.HttpRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HttpRequest {
    /// The request ID, as in `x-request-id`.
    #[prost(string, tag = "1")]
    pub id: String,
    /// The method, e.g. `GET`.
    #[prost(string, tag = "2")]
    pub method: String,
    /// The headers, names lower-cased; a header sent more than once is one
    /// entry, its values merged (joined with `,`).
    #[prost(map = "string, string", tag = "3")]
    pub headers: HashMap<String, String>,
    /// The request target as sent (`:path`): path and query string, not
    /// decoded.
    #[prost(string, tag = "4")]
    pub path: String,
    /// The `:authority` (`Host`).
    #[prost(string, tag = "5")]
    pub host: String,
    /// The URL scheme, e.g. `https`.
    #[prost(string, tag = "6")]
    pub scheme: String,
    /// The query string, without `?`. Envoy leaves it empty: the query is in
    /// `path`.
    #[prost(string, tag = "7")]
    pub query: String,
    /// The URL fragment, without `#`. Envoy leaves it empty.
    #[prost(string, tag = "8")]
    pub fragment: String,
    /// The body size in bytes, -1 when unknown.
    #[prost(int64, tag = "9")]
    pub size: i64,
    /// The protocol, e.g. `HTTP/1.1` or `HTTP/2`.
    #[prost(string, tag = "10")]
    pub protocol: String,
    /// The buffered body (possibly truncated), as text.
    #[prost(string, tag = "11")]
    pub body: String,
    /// The buffered body as bytes, sent instead of `body` when Envoy is told
    /// to pack it as bytes.
    #[prost(bytes = "vec", tag = "12")]
    pub raw_body: Vec<u8>,
}

// ---------------------------------------------------------------------------
// envoy.config.core.v3: addresses
// ---------------------------------------------------------------------------

/// `envoy.config.core.v3.Address`. Of its `address` oneof only
/// `socket_address` is declared: a pipe or an internal address decodes as
/// `socket_address: None`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Address {
    /// An IP address and port.
    #[prost(message, optional, tag = "1")]
    pub socket_address: Option<SocketAddress>,
}

/// `envoy.config.core.v3.SocketAddress`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SocketAddress {
    /// The IP address (or host name).
    #[prost(string, tag = "2")]
    pub address: String,
    /// The port: the `port_value` member of the `port_specifier` oneof (a
    /// named port decodes as `None`).
    #[prost(uint32, optional, tag = "3")]
    pub port_value: Option<u32>,
}

// ---------------------------------------------------------------------------
// envoy.service.auth.v3: the response
// ---------------------------------------------------------------------------

/// `envoy.service.auth.v3.CheckResponse`, the result of `Authorization/Check`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CheckResponse {
    /// The verdict: code `0` (`OK`) allows the request, anything else denies
    /// it.
    #[prost(message, optional, tag = "1")]
    pub status: Option<Status>,
    /// What to do to the request or the response, if anything.
    #[prost(oneof = "HttpResponse", tags = "2, 3")]
    pub http_response: Option<HttpResponse>,
    /// Metadata for the filters after this one.
    #[prost(message, optional, tag = "4")]
    pub dynamic_metadata: Option<Struct>,
}

/// The `http_response` oneof of `CheckResponse`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum HttpResponse {
    /// How to answer a denied request.
    #[prost(message, tag = "2")]
    DeniedResponse(DeniedHttpResponse),
    /// How to change an allowed request (and its response).
    #[prost(message, tag = "3")]
    OkResponse(OkHttpResponse),
}

/// `envoy.service.auth.v3.DeniedHttpResponse`: the response to send instead
/// of forwarding the request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DeniedHttpResponse {
    /// The status; Envoy sends 403 when it is absent.
    #[prost(message, optional, tag = "1")]
    pub status: Option<HttpStatus>,
    /// Headers of the response. An unset `append` means false here.
    #[prost(message, repeated, tag = "2")]
    pub headers: Vec<HeaderValueOption>,
    /// The body of the response.
    #[prost(string, tag = "3")]
    pub body: String,
}

/// `envoy.service.auth.v3.OkHttpResponse`: changes to an allowed request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OkHttpResponse {
    /// Headers to set on the request before it goes upstream. An unset
    /// `append` means false here: the value replaces the header's.
    #[prost(message, repeated, tag = "2")]
    pub headers: Vec<HeaderValueOption>,
    /// Names of headers to remove from the request (pseudo-headers and
    /// `host` excepted).
    #[prost(string, repeated, tag = "5")]
    pub headers_to_remove: Vec<String>,
    /// Headers to add to the response sent downstream.
    #[prost(message, repeated, tag = "6")]
    pub response_headers_to_add: Vec<HeaderValueOption>,
}

/// `envoy.type.v3.HttpStatus`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HttpStatus {
    /// The status code, e.g. 401. (An `envoy.type.v3.StatusCode` enum in the
    /// proto; enums are int32 on the wire.)
    #[prost(int32, tag = "1")]
    pub code: i32,
}

/// `google.rpc.Status`, without its `details`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Status {
    /// A `google.rpc.Code`: `0` is `OK`, `7` `PERMISSION_DENIED`, `16`
    /// `UNAUTHENTICATED`.
    #[prost(int32, tag = "1")]
    pub code: i32,
    /// A message for developers.
    #[prost(string, tag = "2")]
    pub message: String,
}

// ---------------------------------------------------------------------------
// envoy.config.core.v3: headers
// ---------------------------------------------------------------------------

/// `envoy.config.core.v3.HeaderValueOption`: a header and how to apply it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HeaderValueOption {
    /// The header.
    #[prost(message, optional, tag = "1")]
    pub header: Option<HeaderValue>,
    /// Whether to append to the existing values (`true`) or replace them.
    /// Deprecated upstream in favour of `append_action`, but still sent by
    /// many servers and still obeyed by Envoy.
    #[prost(message, optional, tag = "2")]
    pub append: Option<BoolValue>,
    /// One of the `HeaderValueOption::*` action constants (an enum in the
    /// proto; enums are int32 on the wire).
    #[prost(int32, tag = "3")]
    pub append_action: i32,
}

impl HeaderValueOption {
    /// `APPEND_IF_EXISTS_OR_ADD`, the default: add the value to the header's
    /// existing values, or add the header.
    pub const APPEND_IF_EXISTS_OR_ADD: i32 = 0;
    /// `ADD_IF_ABSENT`: add the header only if it is absent.
    pub const ADD_IF_ABSENT: i32 = 1;
    /// `OVERWRITE_IF_EXISTS_OR_ADD`: replace the header's values, or add the
    /// header.
    pub const OVERWRITE_IF_EXISTS_OR_ADD: i32 = 2;
    /// `OVERWRITE_IF_EXISTS`: replace the header's values; do nothing if it
    /// is absent.
    pub const OVERWRITE_IF_EXISTS: i32 = 3;
}

/// `envoy.config.core.v3.HeaderValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HeaderValue {
    /// The header name.
    #[prost(string, tag = "1")]
    pub key: String,
    /// The value, when it is UTF-8.
    #[prost(string, tag = "2")]
    pub value: String,
    /// The value as bytes, set instead of `value`.
    #[prost(bytes = "vec", tag = "3")]
    pub raw_value: Vec<u8>,
}

/// `google.protobuf.BoolValue`: a `bool` that can be absent.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BoolValue {
    /// The value.
    #[prost(bool, tag = "1")]
    pub value: bool,
}

// ---------------------------------------------------------------------------
// google.protobuf.Struct: JSON in protobuf
// ---------------------------------------------------------------------------

/// `google.protobuf.Struct`: a JSON object.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Struct {
    /// The members.
    #[prost(map = "string, message", tag = "1")]
    pub fields: HashMap<String, Value>,
}

/// `google.protobuf.Value`: any JSON value.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Value {
    /// The value; `None` when unset, which JSON renders as `null`.
    #[prost(oneof = "ValueKind", tags = "1, 2, 3, 4, 5, 6")]
    pub kind: Option<ValueKind>,
}

/// The `kind` oneof of `Value`, its members named after their JSON types
/// (`null_value` is `Null`, and so on). The recursion through `Struct` and
/// `ListValue` goes through a map and a `Vec`, so nothing needs boxing.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum ValueKind {
    /// `null_value`. A `google.protobuf.NullValue` enum in the proto, whose
    /// only value is `0`.
    #[prost(int32, tag = "1")]
    Null(i32),
    /// `number_value`.
    #[prost(double, tag = "2")]
    Number(f64),
    /// `string_value`.
    #[prost(string, tag = "3")]
    String(String),
    /// `bool_value`.
    #[prost(bool, tag = "4")]
    Bool(bool),
    /// `struct_value`: an object.
    #[prost(message, tag = "5")]
    Struct(Struct),
    /// `list_value`: an array.
    #[prost(message, tag = "6")]
    List(ListValue),
}

/// `google.protobuf.ListValue`: a JSON array.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ListValue {
    /// The elements.
    #[prost(message, repeated, tag = "1")]
    pub values: Vec<Value>,
}

/// The JSON object a `Struct` stands for.
pub fn struct_to_json(s: &Struct) -> serde_json::Value {
    serde_json::Value::Object(
        s.fields
            .iter()
            .map(|(name, value)| (name.clone(), value_to_json(value)))
            .collect(),
    )
}

/// The JSON value a `Value` stands for. JSON has no NaN or infinity: such
/// numbers become `null`, as does an unset `kind`.
pub fn value_to_json(value: &Value) -> serde_json::Value {
    match &value.kind {
        None | Some(ValueKind::Null(_)) => serde_json::Value::Null,
        Some(ValueKind::Number(n)) => serde_json::Number::from_f64(*n)
            .map_or(serde_json::Value::Null, serde_json::Value::Number),
        Some(ValueKind::String(s)) => serde_json::Value::String(s.clone()),
        Some(ValueKind::Bool(b)) => serde_json::Value::Bool(*b),
        Some(ValueKind::Struct(s)) => struct_to_json(s),
        Some(ValueKind::List(list)) => {
            serde_json::Value::Array(list.values.iter().map(value_to_json).collect())
        }
    }
}

/// Wire compatibility, checked against the code `envoy-types` generates from
/// Envoy's own `.proto` files.
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3 as core_v3;
    use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction as Action;
    use envoy_types::pb::envoy::r#type::v3 as type_v3;
    use envoy_types::pb::envoy::service::auth::v3 as auth_v3;
    use envoy_types::pb::google::protobuf as pb;
    use envoy_types::pb::google::rpc;
    use prost::Message as _;
    use serde_json::json;

    fn strings(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn peer(ip: &str, port: u32, principal: &str) -> Peer {
        Peer {
            address: Some(Address {
                socket_address: Some(SocketAddress {
                    address: ip.to_owned(),
                    port_value: Some(port),
                }),
            }),
            principal: principal.to_owned(),
        }
    }

    fn assert_same_peer(theirs: Option<auth_v3::attribute_context::Peer>, ours: &Peer) {
        let theirs = theirs.expect("peer");
        let Some(core_v3::address::Address::SocketAddress(socket)) =
            theirs.address.and_then(|a| a.address)
        else {
            panic!("no socket address");
        };
        let ours_socket = ours
            .address
            .as_ref()
            .and_then(|a| a.socket_address.as_ref())
            .expect("our socket address");
        assert_eq!(socket.address, ours_socket.address);
        assert_eq!(
            socket.port_specifier,
            ours_socket
                .port_value
                .map(core_v3::socket_address::PortSpecifier::PortValue)
        );
        assert_eq!(theirs.principal, ours.principal);
    }

    #[allow(
        deprecated,
        reason = "`..Default::default()` leaves the deprecated `append` unset"
    )]
    fn their_header(key: &str, value: &str, action: Action) -> core_v3::HeaderValueOption {
        core_v3::HeaderValueOption {
            header: Some(core_v3::HeaderValue {
                key: key.to_owned(),
                value: value.to_owned(),
                raw_value: Vec::new(),
            }),
            append_action: action as i32,
            ..Default::default()
        }
    }

    fn our_header(key: &str, value: &str, action: i32) -> HeaderValueOption {
        HeaderValueOption {
            header: Some(HeaderValue {
                key: key.to_owned(),
                value: value.to_owned(),
                raw_value: Vec::new(),
            }),
            append: None,
            append_action: action,
        }
    }

    fn pb_value(kind: pb::value::Kind) -> pb::Value {
        pb::Value { kind: Some(kind) }
    }

    #[test]
    fn check_request_decodes_as_envoys() {
        let source = peer("192.0.2.10", 51234, "spiffe://example.com/client");
        let destination = peer("192.0.2.1", 8443, "");
        let context_extensions = strings(&[("tenant", "acme"), ("route", "orders")]);
        let http = HttpRequest {
            id: "4f2c9a".to_owned(),
            method: "POST".to_owned(),
            headers: strings(&[
                (":authority", "api.example.com"),
                ("content-type", "text/plain"),
                ("x-multi", "a,b"),
            ]),
            path: "/orders/7?verbose=1".to_owned(),
            host: "api.example.com".to_owned(),
            scheme: "https".to_owned(),
            query: "verbose=1".to_owned(),
            fragment: "top".to_owned(),
            size: 13,
            protocol: "HTTP/1.1".to_owned(),
            body: "hello, wörld".to_owned(),
            raw_body: vec![0, 0xff, b'r', b'a', b'w'],
        };
        let ours = CheckRequest {
            attributes: Some(AttributeContext {
                source: Some(source.clone()),
                destination: Some(destination.clone()),
                request: Some(Request {
                    http: Some(http.clone()),
                }),
                context_extensions: context_extensions.clone(),
            }),
        };

        let theirs = auth_v3::CheckRequest::decode(ours.encode_to_vec().as_slice())
            .expect("envoy-types decodes our CheckRequest");
        let attributes = theirs.attributes.clone().expect("attributes");
        assert_same_peer(attributes.source, &source);
        assert_same_peer(attributes.destination, &destination);
        assert_eq!(attributes.context_extensions, context_extensions);
        let request = attributes.request.expect("request");
        assert_eq!(request.time, None);
        let their_http = request.http.expect("http request");
        assert_eq!(their_http.id, http.id);
        assert_eq!(their_http.method, http.method);
        assert_eq!(their_http.headers, http.headers);
        assert_eq!(their_http.header_map, None);
        assert_eq!(their_http.path, http.path);
        assert_eq!(their_http.host, http.host);
        assert_eq!(their_http.scheme, http.scheme);
        assert_eq!(their_http.query, http.query);
        assert_eq!(their_http.fragment, http.fragment);
        assert_eq!(their_http.size, http.size);
        assert_eq!(their_http.protocol, http.protocol);
        assert_eq!(their_http.body, http.body);
        assert_eq!(their_http.raw_body, http.raw_body);

        // And back: nothing was lost or added on the way.
        let back = CheckRequest::decode(theirs.encode_to_vec().as_slice()).expect("decodes");
        assert_eq!(back, ours);
    }

    #[test]
    fn fields_not_declared_are_skipped() {
        let theirs = auth_v3::CheckRequest {
            attributes: Some(auth_v3::AttributeContext {
                source: Some(auth_v3::attribute_context::Peer {
                    address: Some(core_v3::Address {
                        address: Some(core_v3::address::Address::SocketAddress(
                            core_v3::SocketAddress {
                                protocol: core_v3::socket_address::Protocol::Udp as i32,
                                address: "192.0.2.10".to_owned(),
                                port_specifier: Some(
                                    core_v3::socket_address::PortSpecifier::NamedPort(
                                        "https".to_owned(),
                                    ),
                                ),
                                ..Default::default()
                            },
                        )),
                    }),
                    service: "client".to_owned(),
                    labels: strings(&[("app", "web")]),
                    principal: "spiffe://example.com/client".to_owned(),
                    certificate: "-----BEGIN CERTIFICATE-----".to_owned(),
                }),
                destination: Some(auth_v3::attribute_context::Peer {
                    address: Some(core_v3::Address {
                        address: Some(core_v3::address::Address::Pipe(core_v3::Pipe {
                            path: "/run/envoy.sock".to_owned(),
                            mode: 0o600,
                        })),
                    }),
                    ..Default::default()
                }),
                request: Some(auth_v3::attribute_context::Request {
                    time: Some(pb::Timestamp {
                        seconds: 1_700_000_000,
                        nanos: 5,
                    }),
                    http: Some(auth_v3::attribute_context::HttpRequest {
                        method: "GET".to_owned(),
                        header_map: Some(core_v3::HeaderMap {
                            headers: vec![core_v3::HeaderValue {
                                key: "x-a".to_owned(),
                                value: "1".to_owned(),
                                raw_value: Vec::new(),
                            }],
                        }),
                        ..Default::default()
                    }),
                }),
                metadata_context: Some(core_v3::Metadata {
                    filter_metadata: HashMap::from([("f".to_owned(), pb::Struct::default())]),
                    ..Default::default()
                }),
                tls_session: Some(auth_v3::attribute_context::TlsSession {
                    sni: "api.example.com".to_owned(),
                }),
                ..Default::default()
            }),
        };

        let ours = CheckRequest::decode(theirs.encode_to_vec().as_slice()).expect("decodes");
        let attributes = ours.attributes.expect("attributes");
        let source = attributes.source.expect("source");
        assert_eq!(source.principal, "spiffe://example.com/client");
        let socket = source
            .address
            .and_then(|a| a.socket_address)
            .expect("socket address");
        assert_eq!(socket.address, "192.0.2.10");
        assert_eq!(socket.port_value, None, "a named port is not a port_value");
        assert_eq!(
            attributes.destination.expect("destination").address,
            Some(Address {
                socket_address: None
            }),
            "a pipe is not a socket address"
        );
        let http = attributes
            .request
            .and_then(|r| r.http)
            .expect("http request");
        assert_eq!(http.method, "GET");
        assert!(http.headers.is_empty());
    }

    #[test]
    fn append_actions_are_envoys() {
        assert_eq!(
            HeaderValueOption::APPEND_IF_EXISTS_OR_ADD,
            Action::AppendIfExistsOrAdd as i32
        );
        assert_eq!(HeaderValueOption::ADD_IF_ABSENT, Action::AddIfAbsent as i32);
        assert_eq!(
            HeaderValueOption::OVERWRITE_IF_EXISTS_OR_ADD,
            Action::OverwriteIfExistsOrAdd as i32
        );
        assert_eq!(
            HeaderValueOption::OVERWRITE_IF_EXISTS,
            Action::OverwriteIfExists as i32
        );
    }

    #[test]
    #[allow(
        deprecated,
        reason = "sets `HeaderValueOption.append`, deprecated upstream but still sent; \
                  leaves `OkHttpResponse.dynamic_metadata` unset"
    )]
    fn ok_response_decodes_from_envoys() {
        use envoy_types::pb::google::protobuf::value::Kind;

        let metadata = pb::Struct {
            fields: HashMap::from([
                (
                    "user".to_owned(),
                    pb_value(Kind::StringValue("alice".to_owned())),
                ),
                ("admin".to_owned(), pb_value(Kind::BoolValue(true))),
                ("level".to_owned(), pb_value(Kind::NumberValue(3.0))),
                ("ratio".to_owned(), pb_value(Kind::NumberValue(0.25))),
                (
                    "none".to_owned(),
                    pb_value(Kind::NullValue(pb::NullValue::NullValue as i32)),
                ),
                (
                    "groups".to_owned(),
                    pb_value(Kind::ListValue(pb::ListValue {
                        values: vec![
                            pb_value(Kind::StringValue("ops".to_owned())),
                            pb_value(Kind::NumberValue(-1.5)),
                            pb_value(Kind::ListValue(pb::ListValue::default())),
                        ],
                    })),
                ),
                (
                    "org".to_owned(),
                    pb_value(Kind::StructValue(pb::Struct {
                        fields: HashMap::from([
                            (
                                "name".to_owned(),
                                pb_value(Kind::StringValue("acme".to_owned())),
                            ),
                            (
                                "quota".to_owned(),
                                pb_value(Kind::NumberValue(f64::INFINITY)),
                            ),
                        ]),
                    })),
                ),
            ]),
        };
        let mut appended = their_header("x-trace", "b", Action::AppendIfExistsOrAdd);
        appended.append = Some(pb::BoolValue { value: true });
        let raw = core_v3::HeaderValueOption {
            header: Some(core_v3::HeaderValue {
                key: "x-raw".to_owned(),
                value: String::new(),
                raw_value: vec![0xc3, 0x28],
            }),
            ..Default::default()
        };
        let theirs = auth_v3::CheckResponse {
            status: Some(rpc::Status {
                code: rpc::Code::Ok as i32,
                message: "ok".to_owned(),
                details: vec![pb::Any {
                    type_url: "type.googleapis.com/google.rpc.ErrorInfo".to_owned(),
                    value: vec![1, 2, 3],
                }],
            }),
            http_response: Some(auth_v3::check_response::HttpResponse::OkResponse(
                auth_v3::OkHttpResponse {
                    headers: vec![
                        their_header("x-user", "alice", Action::OverwriteIfExistsOrAdd),
                        appended,
                        raw,
                    ],
                    headers_to_remove: vec!["authorization".to_owned(), "cookie".to_owned()],
                    response_headers_to_add: vec![their_header(
                        "x-authz",
                        "checked",
                        Action::AddIfAbsent,
                    )],
                    query_parameters_to_set: vec![core_v3::QueryParameter {
                        key: "user".to_owned(),
                        value: "alice".to_owned(),
                    }],
                    query_parameters_to_remove: vec!["token".to_owned()],
                    ..Default::default()
                },
            )),
            dynamic_metadata: Some(metadata),
        };

        let ours = CheckResponse::decode(theirs.encode_to_vec().as_slice()).expect("decodes");
        assert_eq!(
            ours.status,
            Some(Status {
                code: 0,
                message: "ok".to_owned()
            })
        );
        let Some(HttpResponse::OkResponse(ok)) = &ours.http_response else {
            panic!("not an ok response: {:?}", ours.http_response);
        };
        assert_eq!(
            ok.headers,
            vec![
                our_header(
                    "x-user",
                    "alice",
                    HeaderValueOption::OVERWRITE_IF_EXISTS_OR_ADD
                ),
                HeaderValueOption {
                    append: Some(BoolValue { value: true }),
                    ..our_header("x-trace", "b", HeaderValueOption::APPEND_IF_EXISTS_OR_ADD)
                },
                HeaderValueOption {
                    header: Some(HeaderValue {
                        key: "x-raw".to_owned(),
                        value: String::new(),
                        raw_value: vec![0xc3, 0x28],
                    }),
                    append: None,
                    append_action: HeaderValueOption::APPEND_IF_EXISTS_OR_ADD,
                },
            ]
        );
        assert_eq!(ok.headers_to_remove, ["authorization", "cookie"]);
        assert_eq!(
            ok.response_headers_to_add,
            vec![our_header(
                "x-authz",
                "checked",
                HeaderValueOption::ADD_IF_ABSENT
            )]
        );
        let decoded_metadata = ours.dynamic_metadata.as_ref().expect("dynamic metadata");
        assert_eq!(
            struct_to_json(decoded_metadata),
            json!({
                "user": "alice",
                "admin": true,
                "level": 3.0,
                "ratio": 0.25,
                "none": null,
                "groups": ["ops", -1.5, []],
                "org": { "name": "acme", "quota": null }
            })
        );

        // The metadata goes back to Envoy's types unchanged.
        let back =
            auth_v3::CheckResponse::decode(ours.encode_to_vec().as_slice()).expect("decodes");
        assert_eq!(back.dynamic_metadata, theirs.dynamic_metadata);
    }

    #[test]
    fn denied_response_decodes_from_envoys() {
        let theirs = auth_v3::CheckResponse {
            status: Some(rpc::Status {
                code: rpc::Code::PermissionDenied as i32,
                message: "no token".to_owned(),
                details: Vec::new(),
            }),
            http_response: Some(auth_v3::check_response::HttpResponse::DeniedResponse(
                auth_v3::DeniedHttpResponse {
                    status: Some(type_v3::HttpStatus {
                        code: type_v3::StatusCode::Unauthorized as i32,
                    }),
                    headers: vec![their_header(
                        "www-authenticate",
                        "Bearer realm=\"api\"",
                        Action::OverwriteIfExistsOrAdd,
                    )],
                    body: "{\"error\":\"unauthorized\"}".to_owned(),
                },
            )),
            dynamic_metadata: None,
        };

        let ours = CheckResponse::decode(theirs.encode_to_vec().as_slice()).expect("decodes");
        assert_eq!(
            ours,
            CheckResponse {
                status: Some(Status {
                    code: 7,
                    message: "no token".to_owned(),
                }),
                http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                    status: Some(HttpStatus { code: 401 }),
                    headers: vec![our_header(
                        "www-authenticate",
                        "Bearer realm=\"api\"",
                        HeaderValueOption::OVERWRITE_IF_EXISTS_OR_ADD,
                    )],
                    body: "{\"error\":\"unauthorized\"}".to_owned(),
                })),
                dynamic_metadata: None,
            }
        );

        // Every field this response sets is declared here, so it goes back
        // unchanged.
        let back =
            auth_v3::CheckResponse::decode(ours.encode_to_vec().as_slice()).expect("decodes");
        assert_eq!(back, theirs);
    }

    #[test]
    fn struct_to_json_turns_what_json_lacks_into_null() {
        let value = |kind| Value { kind: Some(kind) };
        let s = Struct {
            fields: HashMap::from([
                ("nan".to_owned(), value(ValueKind::Number(f64::NAN))),
                (
                    "neg_inf".to_owned(),
                    value(ValueKind::Number(f64::NEG_INFINITY)),
                ),
                ("unset".to_owned(), Value { kind: None }),
                ("int".to_owned(), value(ValueKind::Number(42.0))),
                (
                    "empty".to_owned(),
                    value(ValueKind::Struct(Struct::default())),
                ),
            ]),
        };
        assert_eq!(
            struct_to_json(&s),
            json!({ "nan": null, "neg_inf": null, "unset": null, "int": 42.0, "empty": {} })
        );
    }
}
