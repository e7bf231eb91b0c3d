//! Documents a policy needs from elsewhere (a JWKS), fetched over HTTP by the
//! host and kept here for every request to read.
//!
//! A policy names what it needs with [`Policy::remote_sources`]; the engine
//! owns one [`Documents`] cache for the whole configuration. Hosts fetch:
//!
//! * on a timer, every source whose document is older than its
//!   `refresh_interval` (or missing), and
//! * on demand, when a request's policy returns [`Action::Refetch`]
//!   (a token names a key the cached JWKS does not have). The request waits
//!   for that one fetch, then its policy runs again and sees
//!   [`Context::refetched`] true, so it decides with what it has.
//!
//! Either way a source is fetched at most once per `min_refetch_interval`,
//! across all workers ([`RemoteSource::attempt_due`] is the rule, each host
//! keeps the last attempt where all its workers see it). A failed fetch
//! keeps the cached document: keys go on working while the issuer is down.
//!
//! [`Policy::remote_sources`]: crate::Policy::remote_sources
//! [`Action::Refetch`]: crate::Action::Refetch
//! [`Context::refetched`]: crate::Context::refetched

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Where a document comes from and how fresh it must be kept.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RemoteSource {
    /// The `http://` or `https://` URL. The shim fetches it; the Wasm host
    /// sends its path and authority to [`RemoteSource::cluster`].
    pub uri: String,
    /// The Envoy cluster that serves `uri` (Envoy's `http_uri.cluster`).
    pub cluster: String,
    /// How long one fetch may take.
    pub timeout: Duration,
    /// How long a fetched document is used before it is fetched again.
    pub refresh_interval: Duration,
    /// The least time between two fetch attempts.
    pub min_refetch_interval: Duration,
}

impl RemoteSource {
    /// A stable name for the source, e.g. for the Wasm host's shared-data
    /// entries.
    pub fn key(&self) -> String {
        format!("{}|{}", self.cluster, self.uri)
    }

    /// The authority of [`RemoteSource::uri`] (`host[:port]`).
    pub fn authority(&self) -> &str {
        let rest = self.without_scheme();
        rest.split_once('/')
            .map_or(rest, |(authority, _)| authority)
    }

    /// The path and query of [`RemoteSource::uri`]; `/` when it has none.
    pub fn path(&self) -> &str {
        let rest = self.without_scheme();
        rest.find('/').map_or("/", |at| &rest[at..])
    }

    fn without_scheme(&self) -> &str {
        self.uri
            .split_once("://")
            .map_or(self.uri.as_str(), |(_, rest)| rest)
    }

    /// Whether a fetch may be attempted at `now` (milliseconds since the
    /// epoch) when the last attempt was at `last_attempt`.
    pub fn attempt_due(&self, last_attempt: Option<u64>, now: u64) -> bool {
        last_attempt.is_none_or(|last| {
            now.saturating_sub(last) >= duration_millis(self.min_refetch_interval)
        })
    }

    /// Whether a document fetched at `fetched_at` is due for a periodic
    /// refresh at `now`.
    pub fn refresh_due(&self, fetched_at: Option<u64>, now: u64) -> bool {
        fetched_at.is_none_or(|at| now.saturating_sub(at) >= duration_millis(self.refresh_interval))
    }
}

fn duration_millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// One fetched document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    /// When it was fetched, in milliseconds since the epoch. Also its
    /// version: a policy that parses the body keeps the parse until this
    /// changes.
    pub fetched_at: u64,
    /// The response body.
    pub body: Arc<[u8]>,
}

impl Document {
    /// A document fetched at `fetched_at` (milliseconds since the epoch).
    pub fn new(fetched_at: u64, body: impl Into<Arc<[u8]>>) -> Self {
        Self {
            fetched_at,
            body: body.into(),
        }
    }
}

/// The fetched documents of one configuration, by source.
///
/// Shared by every exchange of the engine; in the shim, by every thread.
/// Reads vastly outnumber writes (one per fetch), hence the `RwLock`.
#[derive(Debug, Default)]
pub struct Documents {
    by_source: RwLock<HashMap<RemoteSource, Document>>,
    attempts: RwLock<HashMap<RemoteSource, u64>>,
}

impl Documents {
    /// The document fetched for `source`, if any.
    pub fn get(&self, source: &RemoteSource) -> Option<Document> {
        let map = self.by_source.read().ok()?;
        map.get(source).cloned()
    }

    /// Stores a fetched document, unless a newer one is already there
    /// (another worker's fetch, seen first).
    pub fn store(&self, source: &RemoteSource, document: Document) {
        if let Ok(mut map) = self.by_source.write() {
            let entry = map
                .entry(source.clone())
                .or_insert_with(|| document.clone());
            if entry.fetched_at < document.fetched_at {
                *entry = document;
            }
        }
    }

    /// Takes over the documents and attempt times of the configuration this
    /// one replaces, so that a reload neither refetches everything nor
    /// leaves requests without keys meanwhile.
    pub fn carry_over(&self, previous: &Documents) {
        if let (Ok(mut mine), Ok(theirs)) = (self.by_source.write(), previous.by_source.read()) {
            mine.extend(theirs.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        if let (Ok(mut mine), Ok(theirs)) = (self.attempts.write(), previous.attempts.read()) {
            mine.extend(theirs.iter().map(|(k, v)| (k.clone(), *v)));
        }
    }

    /// For hosts whose workers share this cache (the shim): claims the next
    /// fetch attempt of `source` at `now` if one is due, so that concurrent
    /// requests do not all fetch.
    pub fn claim_attempt(&self, source: &RemoteSource, now: u64) -> bool {
        let Ok(mut attempts) = self.attempts.write() else {
            return false;
        };
        if source.attempt_due(attempts.get(source).copied(), now) {
            attempts.insert(source.clone(), now);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> RemoteSource {
        RemoteSource {
            uri: "http://issuer.example:8080/.well-known/jwks.json?x=1".into(),
            cluster: "issuer".into(),
            timeout: Duration::from_secs(5),
            refresh_interval: Duration::from_secs(300),
            min_refetch_interval: Duration::from_secs(30),
        }
    }

    #[test]
    fn splits_the_uri_for_the_wasm_host() {
        let source = source();
        assert_eq!(source.authority(), "issuer.example:8080");
        assert_eq!(source.path(), "/.well-known/jwks.json?x=1");
        let bare = RemoteSource {
            uri: "https://issuer.example".into(),
            ..source
        };
        assert_eq!(bare.authority(), "issuer.example");
        assert_eq!(bare.path(), "/");
    }

    #[test]
    fn attempts_are_spaced_by_the_minimum_interval() {
        let source = source();
        let documents = Documents::default();
        assert!(documents.claim_attempt(&source, 1_000));
        assert!(!documents.claim_attempt(&source, 1_000 + 29_999));
        assert!(documents.claim_attempt(&source, 1_000 + 30_000));
        assert!(source.refresh_due(None, 0));
        assert!(!source.refresh_due(Some(0), 299_999));
        assert!(source.refresh_due(Some(0), 300_000));
    }

    #[test]
    fn an_older_document_never_replaces_a_newer_one() {
        let source = source();
        let documents = Documents::default();
        let doc = |at: u64, body: &str| Document {
            fetched_at: at,
            body: Arc::from(body.as_bytes()),
        };
        documents.store(&source, doc(20, "new"));
        documents.store(&source, doc(10, "old"));
        assert_eq!(documents.get(&source), Some(doc(20, "new")));
        documents.store(&source, doc(30, "newer"));
        assert_eq!(documents.get(&source), Some(doc(30, "newer")));
    }
}
