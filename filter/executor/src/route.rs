//! Choosing the chain for a request.
//!
//! Entries are tried in configuration order and the first whose conditions
//! all hold wins. Envoy's route name costs the Wasm host a property read, so
//! it is asked for last, at most once, and only when an entry that matches
//! on it has passed its other conditions. A request that matches none gets the configured
//! [`Unmatched`] outcome, which is a denial unless the configuration says
//! otherwise: a gap in the route map must not become a bypass.
//!
//! A table of more than [`INDEXED_FROM`] entries is looked up through an
//! index (`index`) that gives the same answer without trying every entry.

mod index;

use std::sync::Arc;

pub(crate) use index::RouteIndex;

use crate::canonical::{strip_port, EscapedSlashes};
use crate::chain::Chain;
use crate::headers::HeaderMap;
use crate::policy::LocalReply;

/// The request facts a route entry can match on, besides the route name.
#[derive(Debug, Clone, Copy, Default)]
pub struct RouteInput<'a> {
    /// `:authority`.
    pub host: Option<&'a str>,
    /// `:path`, query included.
    pub path: Option<&'a str>,
    /// `:method`.
    pub method: Option<&'a str>,
}

impl<'a> RouteInput<'a> {
    /// Reads host, path and method from request headers.
    pub fn from_headers(headers: &'a HeaderMap) -> Self {
        Self {
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

/// Envoy's route name, fetched from the host on first use.
pub struct LazyRouteName<F> {
    fetch: Option<F>,
    value: Option<String>,
}

impl<F: FnOnce() -> Option<String>> LazyRouteName<F> {
    /// Wraps the host's way of reading the route name.
    pub fn new(fetch: F) -> Self {
        Self {
            fetch: Some(fetch),
            value: None,
        }
    }

    fn get(&mut self) -> Option<&str> {
        if let Some(fetch) = self.fetch.take() {
            self.value = fetch();
        }
        self.value.as_deref()
    }

    /// The route name, if it was fetched.
    pub fn into_fetched(self) -> Option<String> {
        self.value
    }
}

impl Conditions {
    fn matches<F: FnOnce() -> Option<String>>(
        &self,
        input: &RouteInput<'_>,
        route_name: &mut LazyRouteName<F>,
    ) -> bool {
        self.matches_request(input)
            && self
                .route_name
                .as_ref()
                .is_none_or(|want| route_name.get() == Some(want.as_str()))
    }

    fn matches_request(&self, input: &RouteInput<'_>) -> bool {
        self.mismatch(input).is_none()
    }

    /// Which condition the request fails (route name aside), or `None`
    /// when it meets them all. No allocation: this runs per request, per
    /// entry tried.
    fn mismatch(&self, input: &RouteInput<'_>) -> Option<Mismatch> {
        if let Some(want) = &self.host {
            let Some(host) = input.host.map(strip_port) else {
                return Some(Mismatch::Host);
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
                return Some(Mismatch::Host);
            }
        }
        if let Some(want) = &self.path {
            let Some(path) = input.path else {
                return Some(Mismatch::Path);
            };
            let path = path.split(['?', '#']).next().unwrap_or(path);
            let ok = match want {
                PathMatch::Exact(p) => path == p,
                PathMatch::Prefix(p) => path.starts_with(p.as_str()),
            };
            if !ok {
                return Some(Mismatch::Path);
            }
        }
        let method_ok = self.methods.is_empty()
            || input
                .method
                .is_some_and(|m| self.methods.iter().any(|w| w == m));
        (!method_ok).then_some(Mismatch::Method)
    }

    /// `mismatch` in words, for `policy-tool explain`.
    fn describe(&self, mismatch: Mismatch, input: &RouteInput<'_>) -> String {
        match mismatch {
            Mismatch::Host => {
                let want = match &self.host {
                    Some(HostMatch::Exact(h)) => h.clone(),
                    Some(HostMatch::Suffix(s)) => format!("*{s}"),
                    None => String::new(),
                };
                match input.host.map(strip_port) {
                    Some(host) => format!("host {host:?} is not {want:?}"),
                    None => "the request has no host".into(),
                }
            }
            Mismatch::Path => {
                let path = input.path.map(|p| p.split(['?', '#']).next().unwrap_or(p));
                match (&self.path, path) {
                    (_, None) => "the request has no path".into(),
                    (Some(PathMatch::Exact(p)), Some(path)) => {
                        format!("path {path:?} is not {p:?}")
                    }
                    (Some(PathMatch::Prefix(p)), Some(path)) => {
                        format!("path {path:?} does not start with {p:?}")
                    }
                    (None, Some(_)) => String::new(),
                }
            }
            Mismatch::Method => format!(
                "method {:?} is not one of {}",
                input.method.unwrap_or_default(),
                self.methods.join(", ")
            ),
        }
    }
}

/// The condition of a route entry a request fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mismatch {
    Host,
    Path,
    Method,
}

/// Why one route entry took a request or not: its name, and `None` if it
/// matched or the reason it did not.
pub type RouteVerdict = (String, Option<String>);

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
    /// What `%2F` and `%5C` in a path get (see `canonical`).
    pub(crate) escaped_slashes: EscapedSlashes,
    /// The decision log, when the configuration turns it on.
    pub(crate) decision_log: Option<Arc<crate::decision::DecisionLog>>,
    /// The entries by path and host, for tables of more than
    /// [`INDEXED_FROM`] entries.
    pub(crate) index: Option<RouteIndex>,
}

/// Up to this many entries, trying each in turn costs less than looking
/// up the index.
pub(crate) const INDEXED_FROM: usize = 8;

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
    /// Each route entry's verdict on a request, in order, up to the first
    /// that takes it (what `policy-tool explain` shows).
    pub fn explain(&self, input: &RouteInput<'_>, route_name: Option<&str>) -> Vec<RouteVerdict> {
        let mut verdicts = Vec::new();
        for entry in &self.entries {
            let conditions = &entry.conditions;
            let why = conditions
                .mismatch(input)
                .map(|m| conditions.describe(m, input))
                .or_else(|| {
                    let want = conditions.route_name.as_deref()?;
                    (route_name != Some(want))
                        .then(|| format!("Envoy's route name {route_name:?} is not {want:?}"))
                });
            let matched = why.is_none();
            verdicts.push((entry.chain.name().to_owned(), why));
            if matched {
                break;
            }
        }
        verdicts
    }

    /// Every chain: the route entries' and the unmatched one, if any.
    pub(crate) fn chains(&self) -> impl Iterator<Item = &Arc<Chain>> {
        let unmatched = match &self.unmatched {
            Unmatched::Chain(chain) => Some(chain),
            Unmatched::Deny(_) | Unmatched::Allow => None,
        };
        self.entries.iter().map(|e| &e.chain).chain(unmatched)
    }

    /// Picks the chain for a request.
    pub fn select<F: FnOnce() -> Option<String>>(
        &self,
        input: &RouteInput<'_>,
        route_name: &mut LazyRouteName<F>,
    ) -> Selection<'_> {
        let found = match &self.index {
            Some(index) => index
                .candidates(input)
                .into_iter()
                .filter_map(|i| self.entries.get(i))
                .find(|e| e.conditions.matches(input, route_name)),
            None => self
                .entries
                .iter()
                .find(|e| e.conditions.matches(input, route_name)),
        };
        match found {
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
        assert!(c.matches_request(&input("API.example.com:8443", "/", "GET")));
        assert!(!c.matches_request(&input("example.com", "/", "GET")));
        let wild = Conditions {
            host: Some(HostMatch::Suffix(".example.com".into())),
            ..Default::default()
        };
        assert!(wild.matches_request(&input("a.example.com", "/", "GET")));
        assert!(!wild.matches_request(&input("example.com", "/", "GET")));
        assert!(!wild.matches_request(&input(".example.com", "/", "GET")));
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("::1"), "::1");
    }

    #[test]
    fn path_matching_ignores_query() {
        let exact = Conditions {
            path: Some(PathMatch::Exact("/zen".into())),
            ..Default::default()
        };
        assert!(exact.matches_request(&input("h", "/zen?x=1", "GET")));
        assert!(!exact.matches_request(&input("h", "/zen/", "GET")));
        let prefix = Conditions {
            path: Some(PathMatch::Prefix("/repos/".into())),
            methods: vec!["GET".into()],
            ..Default::default()
        };
        assert!(prefix.matches_request(&input("h", "/repos/a", "GET")));
        assert!(!prefix.matches_request(&input("h", "/repos/a", "POST")));
        assert!(!prefix.matches_request(&input("h", "/users", "GET")));
    }

    #[test]
    fn the_route_name_is_fetched_last_and_once() {
        let c = Conditions {
            route_name: Some("api".into()),
            path: Some(PathMatch::Prefix("/api".into())),
            ..Default::default()
        };
        let mut fetches = 0;
        let mut name = LazyRouteName::new(|| {
            fetches += 1;
            Some("api".to_owned())
        });
        assert!(!c.matches(&input("h", "/other", "GET"), &mut name));
        assert!(c.matches(&input("h", "/api", "GET"), &mut name));
        assert!(c.matches(&input("h", "/api/x", "GET"), &mut name));
        assert_eq!(name.into_fetched().as_deref(), Some("api"));
        assert_eq!(fetches, 1);

        let mut missing = LazyRouteName::new(|| None);
        assert!(!c.matches(&input("h", "/api", "GET"), &mut missing));
    }
}
