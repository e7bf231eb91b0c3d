//! Choosing the chain for a request.
//!
//! Entries are tried in configuration order and the first whose conditions
//! all hold wins. A request that matches none gets the configured
//! [`Unmatched`] outcome, which is a denial unless the configuration says
//! otherwise: a gap in the route map must not become a bypass.

use std::sync::Arc;

use crate::chain::Chain;
use crate::headers::HeaderMap;
use crate::policy::LocalReply;

/// The request facts a route entry can match on.
#[derive(Debug, Clone, Copy, Default)]
pub struct RouteInput<'a> {
    /// Envoy's route name (`xds.route_name`).
    pub route_name: Option<&'a str>,
    /// `:authority`.
    pub host: Option<&'a str>,
    /// `:path`, query included.
    pub path: Option<&'a str>,
    /// `:method`.
    pub method: Option<&'a str>,
}

impl<'a> RouteInput<'a> {
    /// Reads host, path and method from request headers.
    pub fn from_headers(route_name: Option<&'a str>, headers: &'a HeaderMap) -> Self {
        Self {
            route_name,
            host: headers.get(":authority"),
            path: headers.get(":path"),
            method: headers.get(":method"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HostMatch {
    /// `api.example.com`
    Exact(String),
    /// `*.example.com`, stored as `.example.com`.
    Suffix(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PathMatch {
    Exact(String),
    Prefix(String),
}

/// The conditions of one route entry; all given ones must hold.
#[derive(Debug, Clone, Default)]
pub(crate) struct Conditions {
    pub(crate) route_name: Option<String>,
    pub(crate) host: Option<HostMatch>,
    pub(crate) path: Option<PathMatch>,
    /// Upper-case; empty means any method.
    pub(crate) methods: Vec<String>,
}

impl Conditions {
    fn matches(&self, input: &RouteInput<'_>) -> bool {
        if let Some(want) = &self.route_name {
            if input.route_name != Some(want.as_str()) {
                return false;
            }
        }
        if let Some(want) = &self.host {
            let Some(host) = input.host.map(strip_port) else {
                return false;
            };
            let ok = match want {
                HostMatch::Exact(h) => host.eq_ignore_ascii_case(h),
                HostMatch::Suffix(s) => {
                    host.len() > s.len()
                        && host
                            .get(host.len() - s.len()..)
                            .is_some_and(|tail| tail.eq_ignore_ascii_case(s))
                }
            };
            if !ok {
                return false;
            }
        }
        if let Some(want) = &self.path {
            let Some(path) = input.path else {
                return false;
            };
            let path = path.split(['?', '#']).next().unwrap_or(path);
            let ok = match want {
                PathMatch::Exact(p) => path == p,
                PathMatch::Prefix(p) => path.starts_with(p.as_str()),
            };
            if !ok {
                return false;
            }
        }
        self.methods.is_empty()
            || input
                .method
                .is_some_and(|m| self.methods.iter().any(|w| w == m))
    }
}

fn strip_port(authority: &str) -> &str {
    match authority.rsplit_once(':') {
        // `[::1]:8080` and `host:8080`, but not a bare IPv6 literal.
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !host.ends_with(':') => {
            host
        }
        _ => authority,
    }
}

/// What happens to a request no route entry matches.
pub enum Unmatched {
    /// Answer with this reply (the default: 403).
    Deny(LocalReply),
    /// Let it through with no policy at all.
    Allow,
    /// Run this chain.
    Chain(Arc<Chain>),
}

pub(crate) struct RouteEntry {
    pub(crate) conditions: Conditions,
    pub(crate) chain: Arc<Chain>,
}

/// The compiled route map of a plugin configuration.
pub struct RouteTable {
    pub(crate) entries: Vec<RouteEntry>,
    pub(crate) unmatched: Unmatched,
}

/// The route table's verdict for one request.
pub enum Selection<'t> {
    /// Run this chain.
    Chain(&'t Arc<Chain>),
    /// Let the request through untouched.
    Allow,
    /// Answer with this reply.
    Deny(&'t LocalReply),
}

impl RouteTable {
    /// Whether any entry matches on Envoy's route name, so the host must
    /// fetch it.
    pub fn needs_route_name(&self) -> bool {
        self.entries
            .iter()
            .any(|e| e.conditions.route_name.is_some())
    }

    /// Picks the chain for a request.
    pub fn select(&self, input: &RouteInput<'_>) -> Selection<'_> {
        match self.entries.iter().find(|e| e.conditions.matches(input)) {
            Some(entry) => Selection::Chain(&entry.chain),
            None => match &self.unmatched {
                Unmatched::Deny(reply) => Selection::Deny(reply),
                Unmatched::Allow => Selection::Allow,
                Unmatched::Chain(chain) => Selection::Chain(chain),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input<'a>(host: &'a str, path: &'a str, method: &'a str) -> RouteInput<'a> {
        RouteInput {
            route_name: Some("r"),
            host: Some(host),
            path: Some(path),
            method: Some(method),
        }
    }

    #[test]
    fn host_matching_ignores_port_and_case() {
        let c = Conditions {
            host: Some(HostMatch::Exact("api.example.com".into())),
            ..Default::default()
        };
        assert!(c.matches(&input("API.example.com:8443", "/", "GET")));
        assert!(!c.matches(&input("example.com", "/", "GET")));
        let wild = Conditions {
            host: Some(HostMatch::Suffix(".example.com".into())),
            ..Default::default()
        };
        assert!(wild.matches(&input("a.example.com", "/", "GET")));
        assert!(!wild.matches(&input("example.com", "/", "GET")));
        assert!(!wild.matches(&input(".example.com", "/", "GET")));
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("::1"), "::1");
    }

    #[test]
    fn path_matching_ignores_query() {
        let exact = Conditions {
            path: Some(PathMatch::Exact("/zen".into())),
            ..Default::default()
        };
        assert!(exact.matches(&input("h", "/zen?x=1", "GET")));
        assert!(!exact.matches(&input("h", "/zen/", "GET")));
        let prefix = Conditions {
            path: Some(PathMatch::Prefix("/repos/".into())),
            methods: vec!["GET".into()],
            ..Default::default()
        };
        assert!(prefix.matches(&input("h", "/repos/a", "GET")));
        assert!(!prefix.matches(&input("h", "/repos/a", "POST")));
        assert!(!prefix.matches(&input("h", "/users", "GET")));
    }

    #[test]
    fn route_name_condition_needs_the_name() {
        let c = Conditions {
            route_name: Some("api".into()),
            ..Default::default()
        };
        assert!(!c.matches(&RouteInput::default()));
        assert!(c.matches(&RouteInput {
            route_name: Some("api"),
            ..Default::default()
        }));
    }
}
