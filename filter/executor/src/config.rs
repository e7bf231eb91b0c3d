//! The plugin configuration: the raw form users write, and its compilation
//! into a [`RouteTable`].
//!
//! Two tiers: serde structs that mirror the document and reject unknown
//! fields, then `compile`, which validates everything and builds every policy
//! instance. Nothing is parsed or compiled per request. JSON and YAML are both
//! accepted (Envoy Gateway passes JSON; people write YAML): JSON is read as
//! YAML, and YAML is read into a JSON value first so that both give the same
//! errors. A key given twice in one mapping is refused, not silently
//! resolved (see `document`).
//!
//! ```yaml
//! routes:
//!   - name: api                     # optional label for logs and errors
//!     match:                        # every condition given must hold
//!       route: echo-api             # Envoy route name (xds.route_name)
//!       host: api.example.com       # or *.example.com; port ignored
//!       path: { prefix: /v1/ }      # or { exact: /zen }; query ignored
//!       methods: [GET, POST]
//!     policies:
//!       - name: set-headers
//!         version: 0.1.0            # optional while a build has one version
//!         config: { request: { set: { x-tenant: acme } } }
//!         when: 'request.method != "OPTIONS"'   # optional CEL guard
//! unmatched: deny                   # deny (default, 403) | allow
//!                                   # | { deny: { status, body } }
//!                                   # | { policies: [...] }
//! paths:
//!   escaped_slashes: reject         # reject (default: %2F, %5C get 400) | keep
//!                                   # (see `canonical`)
//! ```

mod document;

use std::fmt;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use crate::canonical::EscapedSlashes;
use crate::chain::{Chain, ChainEntry};
use crate::expr::{Expression, Phase};
use crate::policy::LocalReply;
use crate::registry::{check_reply_status, ParamError, Registry};
use crate::route::{
    Conditions, HostMatch, PathMatch, RouteEntry, RouteIndex, RouteTable, Unmatched,
};

/// A configuration that cannot be used, and where the fault is.
///
/// Displayed as one line naming the route entry, the policy and the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The route entry at fault, e.g. `routes[1] "api"`.
    pub route: Option<String>,
    /// The policy at fault, e.g. `policies[0] set-headers`.
    pub policy: Option<String>,
    /// The JSON path of the faulty field, relative to the policy's `config`
    /// when a policy is named, else to the route entry or the document.
    pub field: Option<String>,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid plugin configuration")?;
        let mut sep = ": ";
        for (label, part) in [
            ("route", &self.route),
            ("policy", &self.policy),
            ("field", &self.field),
        ] {
            if let Some(part) = part {
                write!(f, "{sep}{label} {part}")?;
                sep = ", ";
            }
        }
        write!(f, ": {}", self.reason)
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    fn document(field: Option<String>, reason: impl ToString) -> Self {
        Self {
            route: None,
            policy: None,
            field,
            reason: reason.to_string(),
        }
    }
}

/// The plugin configuration: which chain of policies runs for which
/// requests.
#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(title = "plugin configuration"))]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// Route entries, tried in order: the first whose `match` holds gives
    /// the request its chain.
    #[serde(default)]
    routes: Vec<RawRoute>,
    /// What happens to a request no route entry matches: `deny` (the
    /// default: 403), `allow`, `{ deny: { status, body } }` or
    /// `{ policies: [...] }`.
    #[serde(default)]
    unmatched: Option<RawUnmatched>,
    /// How paths are read.
    #[serde(default)]
    paths: RawPaths,
    /// One JSON line per request: what was decided and why.
    decision_log: Option<crate::decision::RawDecisionLog>,
}

/// How paths are read.
#[derive(Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(rename = "paths"))]
#[serde(deny_unknown_fields)]
struct RawPaths {
    /// What to do with `%2F` and `%5C` in a path.
    #[serde(default)]
    escaped_slashes: EscapedSlashes,
}

/// One route entry: which requests it takes, and the chain they run.
#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(rename = "route"))]
#[serde(deny_unknown_fields)]
struct RawRoute {
    /// A label for logs, metrics and errors (default: `match.route`, else
    /// `route-N`); unique.
    name: Option<String>,
    /// The conditions a request must meet; all that are given must hold.
    /// None: every request.
    #[serde(rename = "match", default)]
    conditions: RawConditions,
    /// The chain: policies run in this order.
    #[serde(default)]
    policies: Vec<RawPolicy>,
    /// The largest body the chain's body policies take (default 1 MiB): a
    /// larger request gets 413, a larger response 502. Streamed response
    /// bodies are never held whole and have no such limit.
    #[serde(default = "default_max_body_bytes")]
    #[cfg_attr(feature = "schema", schemars(range(min = 1)))]
    max_body_bytes: usize,
}

/// The default `max_body_bytes`: Envoy's default buffer limit.
fn default_max_body_bytes() -> usize {
    1 << 20
}

/// The conditions of a route entry.
#[derive(Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(rename = "match"))]
#[serde(deny_unknown_fields)]
struct RawConditions {
    /// Envoy's route name (`xds.route_name`), as the route configuration
    /// names it.
    route: Option<String>,
    /// The host, without port: `api.example.com`, or `*.example.com` for
    /// any subdomain.
    #[cfg_attr(feature = "schema", schemars(regex(pattern = r"^(\*\.)?[^*\s]+$")))]
    host: Option<String>,
    /// The canonical path (query ignored).
    path: Option<RawPath>,
    /// Request methods.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(inner(regex(pattern = "^[A-Za-z]+$"))))]
    methods: Vec<String>,
}

/// A path condition.
#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(rename = "path_match"))]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum RawPath {
    /// The path is exactly this.
    Exact(#[cfg_attr(feature = "schema", schemars(regex(pattern = "^/")))] String),
    /// The path starts with this.
    Prefix(#[cfg_attr(feature = "schema", schemars(regex(pattern = "^/")))] String),
}

/// One policy of a chain. The schema of a build lists, for each of its
/// policies, `name`, `version` and the policy's own `config`.
#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(rename = "policy"))]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    /// The policy's name.
    name: String,
    /// Its version; needed only when the build has several.
    version: Option<String>,
    /// A CEL guard: the policy runs only when it is true.
    when: Option<String>,
    /// The policy's parameters.
    #[serde(default)]
    config: Value,
}

/// What happens to a request no route entry matches.
#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(rename = "unmatched"))]
#[serde(untagged)]
enum RawUnmatched {
    Keyword(UnmatchedKeyword),
    Detailed(RawUnmatchedDetailed),
}

#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(rename = "unmatched_keyword"))]
#[serde(rename_all = "snake_case")]
enum UnmatchedKeyword {
    /// Refuse with 403.
    Deny,
    /// Let the request through without a chain.
    Allow,
}

#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(rename = "unmatched_detailed"))]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum RawUnmatchedDetailed {
    /// Refuse with this reply.
    Deny(RawDeny),
    /// Run this chain.
    Policies(Vec<RawPolicy>),
}

/// A refusal's reply.
#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(rename = "deny"))]
#[serde(deny_unknown_fields)]
struct RawDeny {
    /// The status, 200 to 599.
    #[serde(default = "default_deny_status")]
    #[cfg_attr(feature = "schema", schemars(range(min = 200, max = 599)))]
    status: u16,
    /// The body, sent as `text/plain`.
    #[serde(default = "default_deny_body")]
    body: String,
}

fn default_deny_status() -> u16 {
    403
}

fn default_deny_body() -> String {
    "no policy chain matches this request\n".into()
}

/// The JSON Schema of the plugin configuration, whatever the build: a
/// policy's `config` is any value here (the offline tool's `schema` puts
/// each policy of a build in its place).
#[cfg(feature = "schema")]
pub fn schema() -> Value {
    crate::schema::derive::<RawConfig>()
}

/// Parses and compiles a plugin configuration (JSON or YAML).
pub fn compile(text: &[u8], registry: &Registry) -> Result<RouteTable, ConfigError> {
    let text = std::str::from_utf8(text)
        .map_err(|e| ConfigError::document(None, format!("not UTF-8: {e}")))?;
    if text.trim().is_empty() {
        return Err(ConfigError::document(None, "the configuration is empty"));
    }
    let document::Document(document) = serde_yaml::from_str(text)
        .map_err(|e| ConfigError::document(None, format!("not valid JSON or YAML: {e}")))?;
    let raw: RawConfig = serde_path_to_error::deserialize(&document).map_err(|e| {
        let path = e.path().to_string();
        ConfigError::document(Some(path), e.into_inner())
    })?;
    compile_raw(raw, registry)
}

fn compile_raw(raw: RawConfig, registry: &Registry) -> Result<RouteTable, ConfigError> {
    let mut entries = Vec::with_capacity(raw.routes.len());
    let mut names: Vec<String> = Vec::new();
    for (index, route) in raw.routes.into_iter().enumerate() {
        let name = route
            .name
            .clone()
            .or_else(|| route.conditions.route.clone())
            .unwrap_or_else(|| format!("route-{index}"));
        let label = format!("routes[{index}] {name:?}");
        if names.contains(&name) {
            return Err(ConfigError {
                route: Some(label),
                policy: None,
                field: Some("name".into()),
                reason: format!("another route entry is already named {name:?}"),
            });
        }
        let conditions =
            compile_conditions(route.conditions).map_err(|(field, reason)| ConfigError {
                route: Some(label.clone()),
                policy: None,
                field: Some(format!("match.{field}")),
                reason,
            })?;
        if route.max_body_bytes == 0 {
            return Err(ConfigError {
                route: Some(label),
                policy: None,
                field: Some("max_body_bytes".into()),
                reason: "must be at least 1".into(),
            });
        }
        let chain = compile_chain(
            &name,
            &label,
            route.policies,
            route.max_body_bytes,
            registry,
        )?;
        names.push(name);
        entries.push(RouteEntry {
            conditions,
            chain: Arc::new(chain),
        });
    }
    let unmatched = match raw.unmatched {
        None | Some(RawUnmatched::Keyword(UnmatchedKeyword::Deny)) => {
            Unmatched::Deny(LocalReply::text(default_deny_status(), default_deny_body()))
        }
        Some(RawUnmatched::Keyword(UnmatchedKeyword::Allow)) => Unmatched::Allow,
        Some(RawUnmatched::Detailed(RawUnmatchedDetailed::Deny(deny))) => {
            let status = check_reply_status("unmatched.deny.status", deny.status)
                .map_err(|e| ConfigError::document(Some(e.field), e.reason))?;
            Unmatched::Deny(LocalReply::text(status, deny.body))
        }
        Some(RawUnmatched::Detailed(RawUnmatchedDetailed::Policies(policies))) => {
            let chain = compile_chain(
                "unmatched",
                "unmatched",
                policies,
                default_max_body_bytes(),
                registry,
            )?;
            Unmatched::Chain(Arc::new(chain))
        }
    };
    let decision_log = raw
        .decision_log
        .map(|log| {
            crate::decision::DecisionLog::compile(log)
                .map(Arc::new)
                .map_err(|(field, reason)| ConfigError::document(Some(field), reason))
        })
        .transpose()?;
    let index = (entries.len() > crate::route::INDEXED_FROM)
        .then(|| RouteIndex::new(entries.iter().map(|e| &e.conditions)));
    Ok(RouteTable {
        index,
        entries,
        unmatched,
        escaped_slashes: raw.paths.escaped_slashes,
        decision_log,
    })
}

fn compile_conditions(raw: RawConditions) -> Result<Conditions, (String, String)> {
    let host = match raw.host {
        None => None,
        Some(h) if h.is_empty() => return Err(("host".into(), "host is empty".into())),
        Some(h)
            if h.get(1..).is_some_and(|rest| rest.contains('*'))
                || h.contains(char::is_whitespace) =>
        {
            return Err((
                "host".into(),
                format!("{h:?}: only a leading `*.` wildcard is supported (e.g. *.example.com)"),
            ))
        }
        Some(h) => Some(match h.strip_prefix('*') {
            Some(suffix) if suffix.starts_with('.') && suffix.len() > 1 => {
                HostMatch::Suffix(suffix.to_ascii_lowercase())
            }
            Some(_) => {
                return Err((
                    "host".into(),
                    format!("{h:?}: a wildcard host must look like *.example.com"),
                ))
            }
            None => HostMatch::Exact(h.to_ascii_lowercase()),
        }),
    };
    let path = match raw.path {
        None => None,
        Some(RawPath::Exact(p)) | Some(RawPath::Prefix(p)) if !p.starts_with('/') => {
            return Err(("path".into(), format!("{p:?} does not start with '/'")))
        }
        Some(RawPath::Exact(p)) => Some(PathMatch::Exact(p)),
        Some(RawPath::Prefix(p)) => Some(PathMatch::Prefix(p)),
    };
    let mut methods = Vec::with_capacity(raw.methods.len());
    for (i, m) in raw.methods.into_iter().enumerate() {
        if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err((
                format!("methods[{i}]"),
                format!("{m:?} is not an HTTP method"),
            ));
        }
        methods.push(m.to_ascii_uppercase());
    }
    Ok(Conditions {
        route_name: raw.route,
        host,
        path,
        methods,
    })
}

fn compile_chain(
    name: &str,
    route_label: &str,
    policies: Vec<RawPolicy>,
    max_body_bytes: usize,
    registry: &Registry,
) -> Result<Chain, ConfigError> {
    let mut entries = Vec::with_capacity(policies.len());
    for (position, raw) in policies.into_iter().enumerate() {
        let fault = |policy: String, field: &str, reason: String| ConfigError {
            route: Some(route_label.to_owned()),
            policy: Some(format!("policies[{position}] {policy}")),
            field: Some(field.to_owned()),
            reason,
        };
        let entry = registry
            .find(&raw.name, raw.version.as_deref())
            .map_err(|reason| {
                let asked = match &raw.version {
                    Some(version) => format!("{}@{version}", raw.name),
                    None => raw.name.clone(),
                };
                fault(asked, "name", reason)
            })?;
        let factory = entry.factory;
        let parameter_fault = |e: ParamError| {
            let field = match e.field.as_str() {
                "" | "." => "config".to_owned(),
                path => format!("config.{path}"),
            };
            fault(
                format!("{}@{}", factory.name, factory.version),
                &field,
                e.reason,
            )
        };
        // The schema first, so the verdict is the one editors and CI see;
        // then the policy's own parsing and checks.
        entry
            .check_parameters(&raw.config)
            .map_err(parameter_fault)?;
        let policy = (factory.build)(&raw.config).map_err(parameter_fault)?;
        let label = format!("{}@{}", factory.name, factory.version);
        let guard = match raw.when {
            Some(when) => Some(
                Expression::compile(&when, Phase::Request)
                    .map_err(|e| fault(label.clone(), "when", e.to_string()))?,
            ),
            None => None,
        };
        entries.push(ChainEntry {
            label,
            phases: policy.phases(),
            asserted: policy.asserted_headers(),
            policy,
            guard,
        });
    }
    Ok(Chain::new(name, entries, max_body_bytes))
}
