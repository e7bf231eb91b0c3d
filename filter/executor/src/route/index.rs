//! An index over the route entries, so that selecting one does not try
//! every entry in turn: a configuration with a thousand entries would make
//! the last one a thousand times slower to reach than the first.
//!
//! Each entry is filed under its most selective condition: its path (a
//! trie over exact paths and prefixes), else its exact host, else it is a
//! candidate for every request. A request's candidates are the entries its
//! path and host can match, in configuration order; each is then tried with
//! all its conditions, as the linear scan would, and the first that holds
//! wins. An entry left out fails a condition the scan would have tried
//! first, so the choice (and when Envoy's route name is read) is the
//! scan's; a test checks this against the scan on generated tables.

use std::collections::HashMap;

use super::{Conditions, HostMatch, PathMatch, RouteInput};
use crate::canonical::strip_port;

/// Entries by the conditions requests are looked up by.
#[derive(Debug, Default)]
pub(crate) struct RouteIndex {
    /// Entries with neither a path nor an exact host condition.
    always: Vec<usize>,
    /// Entries by exact host (lower case), those without a path condition.
    hosts: HashMap<String, Vec<usize>>,
    /// Entries with a path condition, by path.
    paths: Trie,
}

/// A byte trie over the paths of path conditions.
#[derive(Debug, Default)]
struct Trie {
    nodes: Vec<Node>,
}

#[derive(Debug, Default)]
struct Node {
    /// Children by next byte, sorted.
    children: Vec<(u8, usize)>,
    /// Entries whose prefix ends here.
    prefix: Vec<usize>,
    /// Entries whose exact path ends here.
    exact: Vec<usize>,
}

impl Trie {
    fn node_for(&mut self, path: &str) -> &mut Node {
        if self.nodes.is_empty() {
            self.nodes.push(Node::default());
        }
        let mut at = 0;
        for byte in path.bytes() {
            let children = &self.nodes[at].children;
            at = match children.binary_search_by_key(&byte, |(b, _)| *b) {
                Ok(found) => children[found].1,
                Err(slot) => {
                    let next = self.nodes.len();
                    self.nodes[at].children.insert(slot, (byte, next));
                    self.nodes.push(Node::default());
                    next
                }
            };
        }
        &mut self.nodes[at]
    }

    /// The entries whose path condition `path` (without its query) meets.
    fn candidates(&self, path: &str, into: &mut Vec<usize>) {
        let Some(mut node) = self.nodes.first() else {
            return;
        };
        into.extend_from_slice(&node.prefix);
        for byte in path.bytes() {
            let Ok(found) = node.children.binary_search_by_key(&byte, |(b, _)| *b) else {
                return;
            };
            let Some(next) = self.nodes.get(node.children[found].1) else {
                return;
            };
            node = next;
            into.extend_from_slice(&node.prefix);
        }
        into.extend_from_slice(&node.exact);
    }
}

impl RouteIndex {
    pub(crate) fn new<'c>(conditions: impl Iterator<Item = &'c Conditions>) -> Self {
        let mut index = Self::default();
        for (position, conditions) in conditions.enumerate() {
            match (&conditions.path, &conditions.host) {
                (Some(PathMatch::Prefix(prefix)), _) => {
                    index.paths.node_for(prefix).prefix.push(position);
                }
                (Some(PathMatch::Exact(path)), _) => {
                    index.paths.node_for(path).exact.push(position);
                }
                (None, Some(HostMatch::Exact(host))) => index
                    .hosts
                    .entry(host.to_ascii_lowercase())
                    .or_default()
                    .push(position),
                (None, _) => index.always.push(position),
            }
        }
        index
    }

    /// The entries `input` may match, in configuration order.
    pub(crate) fn candidates(&self, input: &RouteInput<'_>) -> Vec<usize> {
        let mut found = self.always.clone();
        if let Some(path) = input.path {
            let path = path.split(['?', '#']).next().unwrap_or(path);
            self.paths.candidates(path, &mut found);
        }
        if !self.hosts.is_empty() {
            if let Some(host) = input.host.map(strip_port) {
                let entries = match self.hosts.get(host) {
                    Some(entries) => Some(entries),
                    None => self.hosts.get(&host.to_ascii_lowercase()),
                };
                if let Some(entries) = entries {
                    found.extend_from_slice(entries);
                }
            }
        }
        found.sort_unstable();
        found.dedup();
        found
    }
}

#[cfg(test)]
mod tests {
    use super::super::{LazyRouteName, PathMatch};
    use super::*;

    /// A small deterministic generator (xorshift), so the test needs no
    /// crate and fails the same way every run.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self, below: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % below as u64) as usize
        }

        fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
            from[self.next(from.len())]
        }
    }

    const PATHS: [&str; 8] = ["/", "/a", "/a/", "/a/b", "/ab", "/b/c", "/api/x", ""];
    const HOSTS: [&str; 4] = ["a.example", "B.example", "c.example", ""];
    const NAMES: [&str; 3] = ["r1", "r2", ""];

    fn conditions(rng: &mut Rng) -> Conditions {
        let path = match rng.next(3) {
            0 => None,
            1 => Some(PathMatch::Exact(rng.pick(&PATHS[..7]).to_owned())),
            _ => Some(PathMatch::Prefix(rng.pick(&PATHS[..7]).to_owned())),
        };
        let host = match rng.next(4) {
            0 => Some(HostMatch::Exact(rng.pick(&HOSTS[..3]).to_ascii_lowercase())),
            1 => Some(HostMatch::Suffix(".example".into())),
            _ => None,
        };
        let methods = match rng.next(3) {
            0 => vec!["GET".to_owned()],
            _ => Vec::new(),
        };
        let route_name = (rng.next(3) == 0).then(|| rng.pick(&NAMES[..2]).to_owned());
        Conditions {
            route_name,
            host,
            path,
            methods,
        }
    }

    #[test]
    fn the_index_chooses_what_the_linear_scan_chooses() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..2000 {
            let entries: Vec<Conditions> = (0..rng.next(12) + 1)
                .map(|_| conditions(&mut rng))
                .collect();
            let index = RouteIndex::new(entries.iter());
            for _ in 0..20 {
                let path = format!(
                    "{}{}",
                    rng.pick(&PATHS),
                    ["", "?q=1", "/x", "b"][rng.next(4)]
                );
                let host = format!("{}{}", rng.pick(&HOSTS), ["", ":8080"][rng.next(2)]);
                let method = ["GET", "POST"][rng.next(2)];
                let name = rng.pick(&NAMES);
                let input = RouteInput {
                    host: (!host.is_empty()).then_some(host.as_str()),
                    path: (!path.is_empty()).then_some(path.as_str()),
                    method: Some(method),
                };
                let fetch = || (!name.is_empty()).then(|| name.to_owned());
                let mut scan_name = LazyRouteName::new(fetch);
                let scanned = entries
                    .iter()
                    .position(|c| c.matches(&input, &mut scan_name));
                let mut index_name = LazyRouteName::new(fetch);
                let indexed = index
                    .candidates(&input)
                    .into_iter()
                    .find(|&i| entries[i].matches(&input, &mut index_name));
                assert_eq!(indexed, scanned, "{entries:?} {input:?} {name:?}");
                assert_eq!(
                    index_name.into_fetched(),
                    scan_name.into_fetched(),
                    "the route name is read when the scan reads it"
                );
            }
        }
    }
}
