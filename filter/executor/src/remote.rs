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
//!   for that fetch, then its policy runs again and sees
//!   [`Context::refetched`] true, so it decides with what it has.
//!
//! Who fetches and who waits is decided by the rules in [`attempt`], the
//! same in both hosts: one fetch at a time per source across workers, a
//! claim never outlives its owner by more than a lease, attempts spaced by
//! `min_refetch_interval`, and a waiting request never refused while the
//! document is reachable. A failed fetch keeps the cached document: keys
//! go on working while the issuer is down.
//!
//! [`Policy::remote_sources`]: crate::Policy::remote_sources
//! [`Action::Refetch`]: crate::Action::Refetch
//! [`Context::refetched`]: crate::Context::refetched

pub mod attempt;

pub use attempt::{Attempt, AttemptState, Step, WaitStep, Waiting};

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

    /// Whether a document fetched at `fetched_at` is due for a periodic
    /// refresh at `now`.
    pub fn refresh_due(&self, fetched_at: Option<u64>, now: u64) -> bool {
        fetched_at.is_none_or(|at| now.saturating_sub(at) >= duration_millis(self.refresh_interval))
    }
}

pub(crate) fn duration_millis(duration: Duration) -> u64 {
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

/// The fetched documents, by source.
///
/// Shared by every exchange of the engine; in the shim, by every thread and
/// every configuration it loads (see `Engine::keep_documents_of`). Reads
/// vastly outnumber writes (one per fetch), hence the `RwLock`.
#[derive(Debug, Default)]
pub struct Documents {
    by_source: RwLock<HashMap<RemoteSource, Document>>,
    /// The last fetch attempt per source, for hosts whose workers share
    /// this cache (the shim); the Wasm host keeps it in Envoy's shared data.
    attempts: RwLock<HashMap<RemoteSource, Attempt>>,
}

impl Documents {
    /// The document fetched for `source`, if any.
    pub fn get(&self, source: &RemoteSource) -> Option<Document> {
        let map = self.by_source.read().ok()?;
        map.get(source).cloned()
    }

    /// The version (`fetched_at`) of the document cached for `source`.
    pub fn version(&self, source: &RemoteSource) -> Option<u64> {
        let map = self.by_source.read().ok()?;
        map.get(source).map(|d| d.fetched_at)
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

    /// The last fetch attempt of `source` (in-process hosts).
    pub fn attempt(&self, source: &RemoteSource) -> Option<Attempt> {
        self.attempts.read().ok()?.get(source).copied()
    }

    /// For in-process hosts (the shim): claims the next attempt of `source`
    /// at `now` if the rules say to fetch. `Ok` carries the claim's time,
    /// which the owner passes to [`Documents::answer`] or
    /// [`Documents::release`]; `Err` says what to do instead.
    ///
    /// The owner is a task of this process that releases its claim if it
    /// goes away, so the claim needs no renewal: it stays live until its
    /// answer is overdue.
    pub fn claim(&self, source: &RemoteSource, now: u64) -> Result<u64, Step> {
        // A poisoned lock only means a panic elsewhere; the map is intact.
        let mut attempts = self.attempts.write().unwrap_or_else(|p| p.into_inner());
        match source.next_step(attempts.get(source), now) {
            Step::Fetch => {
                let claim = Attempt {
                    claimed_at: now,
                    state: AttemptState::InFlight {
                        renewed_at: u64::MAX,
                    },
                };
                attempts.insert(source.clone(), claim);
                Ok(now)
            }
            other => Err(other),
        }
    }

    /// Ends the attempt claimed at `claimed_at`: stores its document, if it
    /// brought one, then marks it answered. Stored first, so whoever sees
    /// the attempt answered also sees its document.
    pub fn answer(&self, source: &RemoteSource, claimed_at: u64, document: Option<Document>) {
        if let Some(document) = document {
            self.store(source, document);
        }
        self.end_attempt(source, claimed_at, AttemptState::Answered);
    }

    /// Gives up the attempt claimed at `claimed_at` before any answer: the
    /// next claim is due at once.
    pub fn release(&self, source: &RemoteSource, claimed_at: u64) {
        self.end_attempt(source, claimed_at, AttemptState::Released);
    }

    /// Moves the attempt claimed at `claimed_at` to `state`, unless a later
    /// attempt replaced it.
    fn end_attempt(&self, source: &RemoteSource, claimed_at: u64, state: AttemptState) {
        let mut attempts = self.attempts.write().unwrap_or_else(|p| p.into_inner());
        if let Some(attempt) = attempts.get_mut(source) {
            if attempt.claimed_at == claimed_at {
                *attempt = attempt.with_state(state);
            }
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
    fn in_process_claims_are_spaced_from_answers_and_released_ones_are_due_at_once() {
        let source = source();
        let documents = Documents::default();
        assert_eq!(documents.claim(&source, 1_000), Ok(1_000));
        assert_eq!(
            documents.claim(&source, 1_001),
            Err(Step::Wait { claimed_at: 1_000 })
        );
        // Its owner went away: the next request fetches at once.
        documents.release(&source, 1_000);
        assert_eq!(documents.claim(&source, 1_002), Ok(1_002));
        documents.answer(
            &source,
            1_002,
            Some(Document::new(1_500, "keys".as_bytes())),
        );
        assert_eq!(documents.version(&source), Some(1_500));
        assert_eq!(documents.claim(&source, 1_002 + 29_999), Err(Step::TooSoon));
        assert_eq!(documents.claim(&source, 1_002 + 30_000), Ok(31_002));
        // A late answer to an old attempt does not end the new one.
        documents.answer(&source, 1_002, None);
        assert!(documents
            .attempt(&source)
            .is_some_and(|a| a.is_live(&source, 31_003)));
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
