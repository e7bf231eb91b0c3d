//! The test suite format: a configuration, canned answers for the services
//! it calls, and cases (a request and what must come of it).
//!
//! One format for `policy-tool test` and for the conformance runner that
//! sends the same cases through real Envoy (`tests/tests/conformance.rs`),
//! so a suite means the same thing offline and on both hosts.
//!
//! ```yaml
//! config: |                      # the plugin configuration under test
//!   routes: [...]
//! envoy_routes:                  # Envoy's route names, by path prefix
//!   echo-api: /api               # (what `match: { route: ... }` sees)
//! callouts:                      # canned answers, first match wins
//!   - match: { cluster: authz, header: { authorization: Bearer good } }
//!     http: { status: 200, headers: { x-user: alice } }
//! cases:
//!   - name: a known key passes
//!     request: { method: GET, path: /api/items, headers: { x-api-key: k } }
//!     expect:
//!       status: 200
//!       upstream_headers: { x-api-key: null, x-consumer: team-a }
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;

/// A suite file.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct Suite {
    /// The plugin configuration, as text (YAML or JSON).
    #[serde(default)]
    pub config: String,
    /// Or the file that holds it, relative to the suite's directory.
    pub config_file: Option<std::path::PathBuf>,
    /// Envoy's route names and the path prefixes its route table gives
    /// them, longest prefix first when several match. None: requests have
    /// no route name.
    #[serde(default)]
    pub envoy_routes: BTreeMap<String, String>,
    /// Canned answers for the calls policies make (JWKS, ext-authz, rate
    /// limit service), tried in order.
    #[serde(default)]
    pub callouts: Vec<Callout>,
    /// Envoy's own edge hardening on the listener, in the conformance
    /// runner (on unless a suite turns it off to test the engine alone).
    #[serde(default = "yes")]
    pub edge_hardening: bool,
    /// The conformance runner writes requests byte for byte.
    #[serde(default)]
    pub raw_requests: bool,
    /// The conformance runner starts a loopback authorization service
    /// (`grpc` or `http`); `{authz_uri}` in the configuration is its
    /// address. Offline, `callouts` answer in its place.
    pub authz: Option<AuthzProtocol>,
    /// The conformance runner starts Redis and the rate limit service;
    /// `{ratelimit_uri}` in the configuration is its address.
    #[serde(default)]
    pub ratelimit: bool,
    /// The cases.
    pub cases: Vec<Case>,
}

impl Suite {
    /// Reads the suite in `path`, and the configuration its `config_file`
    /// names.
    pub fn load(path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut suite: Suite = serde_yaml::from_str(&text)
            .map_err(|e| format!("{}: not a suite: {e}", path.display()))?;
        match (&suite.config_file, suite.config.is_empty()) {
            (Some(file), true) => {
                let file = path
                    .parent()
                    .unwrap_or(std::path::Path::new("."))
                    .join(file);
                suite.config = std::fs::read_to_string(&file).map_err(|e| {
                    format!("{}: config_file {}: {e}", path.display(), file.display())
                })?;
            }
            (None, false) => {}
            _ => {
                return Err(format!(
                    "{}: give the configuration as `config` or as `config_file`, once",
                    path.display()
                ))
            }
        }
        Ok(suite)
    }
}

/// The protocol of a suite's authorization service.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AuthzProtocol {
    /// `envoy.service.auth.v3.Authorization` over gRPC.
    Grpc,
    /// Plain HTTP.
    Http,
}

/// One case.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// Its name, unique in the suite (`--case` picks one).
    pub name: String,
    /// Why only the live hosts can run this case: what Envoy itself does
    /// to the request before any filter sees it, or what a real service
    /// counts. The offline tool skips it and says why.
    pub live_only: Option<String>,
    /// Canned answers for this case alone, tried before the suite's.
    #[serde(default)]
    pub callouts: Vec<Callout>,
    /// The request.
    pub request: Request,
    /// What must come of it.
    pub expect: Expect,
}

/// A request.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// The method (default GET).
    #[serde(default = "get")]
    pub method: String,
    /// The path and query, as sent.
    pub path: String,
    /// Headers.
    #[serde(default)]
    pub headers: Headers,
    /// A text body.
    pub body: Option<String>,
    /// A body with `\xHH` escapes for bytes a YAML string cannot hold.
    pub body_bytes: Option<String>,
    /// The peer: its address and verified certificate identity.
    #[serde(default)]
    pub peer: Peer,
    /// The time the request is made, in seconds since the epoch (default:
    /// now).
    pub clock: Option<u64>,
}

impl Request {
    /// The body's bytes.
    pub fn body(&self) -> Option<Vec<u8>> {
        if let Some(text) = &self.body {
            return Some(text.clone().into_bytes());
        }
        let escaped = self.body_bytes.as_ref()?.as_bytes();
        let mut bytes = Vec::with_capacity(escaped.len());
        let mut at = 0;
        while at < escaped.len() {
            let hex = escaped
                .get(at..at + 4)
                .filter(|s| s.starts_with(b"\\x"))
                .and_then(|s| std::str::from_utf8(&s[2..]).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match hex {
                Some(byte) => {
                    bytes.push(byte);
                    at += 4;
                }
                None => {
                    bytes.push(escaped[at]);
                    at += 1;
                }
            }
        }
        Some(bytes)
    }
}

/// The connection a request came on.
#[derive(Deserialize, Debug, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    /// `ip:port` (default `127.0.0.1:50000`).
    pub address: Option<String>,
    /// The URI SAN of a verified client certificate (a SPIFFE ID).
    pub uri_san: Option<String>,
}

/// A map of headers, or a list of `[name, value]` pairs where order,
/// repeats and spelling matter.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum Headers {
    /// `name: value`.
    Map(BTreeMap<String, String>),
    /// `[name, value]` pairs.
    List(Vec<(String, String)>),
}

impl Default for Headers {
    fn default() -> Self {
        Self::Map(BTreeMap::new())
    }
}

impl Headers {
    /// The pairs, in order.
    pub fn pairs(&self) -> Vec<(&str, &str)> {
        match self {
            Self::Map(map) => map.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect(),
            Self::List(list) => list.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect(),
        }
    }
}

/// What must come of a request. Only what is given is checked.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// The status the client gets.
    pub status: u16,
    /// The body the client gets.
    pub body: Option<String>,
    /// How that body starts.
    pub body_starts_with: Option<String>,
    /// Response headers: a value, or null for absent.
    #[serde(default)]
    pub headers: BTreeMap<String, Option<String>>,
    /// Whether the upstream sees the request (default true).
    #[serde(default = "yes")]
    pub reaches_upstream: bool,
    /// Headers the upstream sees: a value, or null for absent.
    #[serde(default)]
    pub upstream_headers: BTreeMap<String, Option<String>>,
    /// The body the upstream sees.
    pub upstream_body: Option<String>,
    /// The path (and query) the upstream sees.
    pub upstream_path: Option<String>,
    /// Fields of the request's decision-log line (`fields` of the
    /// configuration's `decision_log` expressions): value, or null.
    #[serde(default)]
    pub decision_fields: BTreeMap<String, serde_json::Value>,
    /// Strings the request's decision-log line must not contain.
    #[serde(default)]
    pub decision_excludes: Vec<String>,
    /// The decision: `allowed`, `answered`, `denied` or `error`, as the
    /// decision log's `decision` field says.
    pub decision: Option<String>,
    /// The policy that decided, as the decision log's `policy` field says.
    pub decided_by: Option<String>,
}

/// A canned answer to calls that match.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct Callout {
    /// Which calls it answers (default: every call).
    #[serde(rename = "match", default)]
    pub matches: CalloutMatch,
    /// An HTTP answer.
    pub http: Option<HttpAnswer>,
    /// An ext-authz gRPC answer.
    pub ext_authz: Option<ExtAuthzAnswer>,
    /// A rate limit service answer.
    pub rate_limit: Option<RateLimitAnswer>,
    /// No answer: `timeout`, `unreachable`, or `{ grpc_status: CODE }`.
    pub fail: Option<Failure>,
}

/// An ext-authz gRPC answer: `{ allow: {...} }` or `{ deny: {...} }`.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum ExtAuthzAnswer {
    /// Allow.
    Allow {
        /// With these changes to the request.
        allow: Allowed,
    },
    /// Deny.
    Deny {
        /// With this reply.
        deny: Denied,
    },
}

/// The changes an allowing answer makes.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct Allowed {
    /// Headers set on the request.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Headers removed from it.
    #[serde(default)]
    pub remove: Vec<String>,
    /// Dynamic metadata (`metadata["ext-authz.<key>"]` to later policies).
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// The reply of a denying answer.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct Denied {
    /// The status.
    pub status: u16,
    /// Headers of the reply.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Its body.
    #[serde(default)]
    pub body: String,
}

/// What a call must be for a canned answer to apply.
#[derive(Deserialize, Debug, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct CalloutMatch {
    /// The Envoy cluster the call goes to.
    pub cluster: Option<String>,
    /// The start of an HTTP call's path.
    pub path_prefix: Option<String>,
    /// The gRPC service, e.g. `envoy.service.auth.v3.Authorization`.
    pub grpc_service: Option<String>,
    /// Headers the call carries (for an ext-authz check over gRPC: the
    /// headers of the request being checked).
    #[serde(default)]
    pub header: BTreeMap<String, String>,
}

/// An HTTP answer.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct HttpAnswer {
    /// The status (default 200).
    #[serde(default = "ok")]
    pub status: u16,
    /// Headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The body.
    #[serde(default)]
    pub body: String,
}

/// A rate limit service answer.
#[derive(Deserialize, Debug, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitAnswer {
    /// Under the limit.
    Ok,
    /// Over it.
    OverLimit,
}

/// A call without an answer: `timeout`, `unreachable`, or
/// `{ grpc_status: CODE }`.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum Failure {
    /// `timeout` or `unreachable`.
    Kind(FailureKind),
    /// A gRPC status code other than OK.
    Grpc {
        /// The code.
        grpc_status: u32,
    },
}

/// A call that got nothing back.
#[derive(Deserialize, Debug, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// No answer in time.
    Timeout,
    /// The service cannot be reached.
    Unreachable,
}

fn get() -> String {
    "GET".into()
}

fn ok() -> u16 {
    200
}

fn yes() -> bool {
    true
}
