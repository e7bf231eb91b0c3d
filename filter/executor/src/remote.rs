//! Documents a policy needs from elsewhere (a JWKS), fetched over HTTP and
//! kept here for every request to read.
//!
//! A policy names what it needs with [`Policy::remote_sources`]; the engine
//! owns one [`Remote`] for the whole configuration: the cache of fetched
//! documents and the host that shares them across workers. Documents are
//! fetched:
//!
//! * on a timer, by the host's [`Refresher`], every source whose document
//!   is older than its `refresh_interval` (or missing), and
//! * on demand, when a request's policy returns [`Action::Refresh`] (a
//!   token names a key the cached JWKS does not have). The request waits
//!   for that fetch (its own, or another worker's), then its policy runs
//!   again and sees [`Context::refetched`] true, so it decides with what it
//!   has.
//!
//! Who fetches and who waits is decided by the rules in [`attempt`], over
//! the host's shared storage ([`Host`]), the same in both hosts: one fetch
//! at a time per source across workers, a claim never outlives its owner by
//! more than a lease, attempts spaced by `min_refetch_interval`, and a
//! waiting request never refused while the document is reachable. A failed
//! fetch keeps the cached document: keys go on working while the issuer is
//! down.
//!
//! [`Policy::remote_sources`]: crate::Policy::remote_sources
//! [`Action::Refresh`]: crate::Action::Refresh
//! [`Context::refetched`]: crate::Context::refetched

pub mod attempt;

pub use attempt::{Attempt, AttemptState, Step, WaitStep, Waiting};

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::callout::{Answer, Call, CallRequest, Host, ProcessHost, Service, SharedError};

/// Shared-storage entries: the document (its fetch time, 8 bytes
/// big-endian, then the body) and the last attempt ([`Attempt::encode`]).
const DOCUMENT_KEY: &str = "policy-engine/document/";
const ATTEMPT_KEY: &str = "policy-engine/attempt/";

/// The largest document kept; a JWKS is a few kilobytes.
pub const MAX_DOCUMENT_BYTES: usize = 1 << 20;

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

    /// The GET that fetches it.
    pub fn fetch_call(&self) -> Call {
        let scheme = self
            .uri
            .split_once("://")
            .map_or("http", |(scheme, _)| scheme);
        Call {
            service: Service {
                cluster: self.cluster.clone(),
                base_uri: format!("{scheme}://{}", self.authority()),
            },
            timeout: self.timeout,
            request: CallRequest::Http {
                method: "GET".into(),
                path: self.path().to_owned(),
                headers: vec![("accept".into(), "application/json".into())],
                body: Vec::new(),
            },
        }
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

/// The fetched documents, by source: this worker's copy.
///
/// Shared by every exchange of the engine; in the shim, by every thread and
/// every configuration it loads (see `Engine::keep_remote_of`). Reads
/// vastly outnumber writes (one per fetch), hence the `RwLock`.
#[derive(Debug, Default)]
pub struct Documents {
    by_source: RwLock<HashMap<RemoteSource, Document>>,
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
}

/// The documents of one configuration and the host that shares them: this
/// worker's cache, and the rules of [`attempt`] over the host's storage.
pub struct Remote {
    documents: Documents,
    host: Box<dyn Host>,
    /// Sources that waiting requests of this worker need fetched now; the
    /// worker's [`Refresher`] claims them on its next tick.
    wanted: std::sync::Mutex<Vec<RemoteSource>>,
}

impl Default for Remote {
    fn default() -> Self {
        Self::new(Box::new(ProcessHost::default()))
    }
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("documents", &self.documents)
            .finish_non_exhaustive()
    }
}

impl Remote {
    /// Documents shared through `host`.
    pub fn new(host: Box<dyn Host>) -> Self {
        Self {
            documents: Documents::default(),
            host,
            wanted: std::sync::Mutex::default(),
        }
    }

    /// Creates the (empty) attempt entry of each source that has none yet,
    /// when the configuration is applied, before any worker can claim.
    ///
    /// Shared data cannot create an entry atomically: a write that creates
    /// one also overwrites one made since it was read. Created at claim
    /// time, two workers racing could each create it, the later wiping the
    /// earlier's claim, and both fetch. Created here, an overwrite can only
    /// meet another empty entry (claims come with ticks, after configure).
    pub fn prepare(&self, sources: &[RemoteSource]) {
        for source in sources {
            let key = attempt_key(source);
            if self.host.shared_get(&key).1.is_none() {
                if let Err(SharedError::Failed(why)) = self.host.shared_set(&key, &[], None) {
                    log::warn!("cannot create shared entry {key:?}: {why}");
                }
            }
        }
    }

    /// Asks this worker's [`Refresher`] to fetch `source` on its next tick
    /// (a waiting request needs it and nobody is fetching it).
    pub fn want(&self, source: &RemoteSource) {
        let mut wanted = self.wanted.lock().unwrap_or_else(|p| p.into_inner());
        if !wanted.contains(source) {
            wanted.push(source.clone());
        }
    }

    /// Whether a waiting request asked for a fetch since the last tick.
    pub fn is_wanted(&self) -> bool {
        !self
            .wanted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    fn take_wanted(&self) -> Vec<RemoteSource> {
        std::mem::take(&mut *self.wanted.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// This worker's cached documents.
    pub fn documents(&self) -> &Documents {
        &self.documents
    }

    /// The host's clock, in milliseconds since the epoch.
    pub fn now(&self) -> u64 {
        self.host.now_millis()
    }

    /// The host itself: its clock and the storage every worker shares.
    pub fn host(&self) -> &dyn Host {
        self.host.as_ref()
    }

    /// Copies the shared document of `source` into this worker's cache if
    /// it is newer; returns whether it was.
    pub fn sync(&self, source: &RemoteSource) -> bool {
        let (Some(bytes), _) = self.host.shared_get(&document_key(source)) else {
            return false;
        };
        let Some(fetched_at) = bytes
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
        else {
            return false;
        };
        if self
            .documents
            .version(source)
            .is_some_and(|at| at >= fetched_at)
        {
            return false;
        }
        let body = bytes.get(8..).unwrap_or_default();
        self.documents
            .store(source, Document::new(fetched_at, body));
        true
    }

    /// The last attempt on `source` by any worker, with its entry's version.
    fn read_attempt(&self, source: &RemoteSource) -> (Option<Attempt>, Option<u32>) {
        let (bytes, cas) = self.host.shared_get(&attempt_key(source));
        (bytes.as_deref().and_then(Attempt::decode), cas)
    }

    /// The last attempt on `source` by any worker.
    pub fn last_attempt(&self, source: &RemoteSource) -> Option<Attempt> {
        self.read_attempt(source).0
    }

    /// Claims the next attempt on `source` for the caller if the rules say
    /// to fetch. `Ok` carries the claim's time, which the owner passes to
    /// [`Remote::renew`], [`Remote::answer`] or [`Remote::release`]; `Err`
    /// says what to do instead.
    pub fn claim(&self, source: &RemoteSource) -> Result<u64, Step> {
        let now = self.now();
        let key = attempt_key(source);
        let (last, cas) = self.read_attempt(source);
        match source.next_step(last.as_ref(), now) {
            Step::Fetch => {}
            other => return Err(other),
        }
        if cas.is_none() {
            // A swap cannot guard an entry that does not exist (any version
            // creates it): create it empty, then race for it.
            if let Err(SharedError::Failed(why)) = self.host.shared_set(&key, &[], None) {
                log::warn!("cannot create shared entry {key:?}: {why}");
            }
            return self.claim_existing(source, now);
        }
        self.swap_claim(source, now, cas)
    }

    fn claim_existing(&self, source: &RemoteSource, now: u64) -> Result<u64, Step> {
        let (last, cas) = self.read_attempt(source);
        match source.next_step(last.as_ref(), now) {
            Step::Fetch => self.swap_claim(source, now, cas),
            other => Err(other),
        }
    }

    fn swap_claim(&self, source: &RemoteSource, now: u64, cas: Option<u32>) -> Result<u64, Step> {
        let Some(cas) = cas else {
            return Err(Step::TooSoon);
        };
        let key = attempt_key(source);
        match self
            .host
            .shared_set(&key, &Attempt::claimed(now).encode(), Some(cas))
        {
            Ok(()) => Ok(now),
            // Another worker swapped first: follow its attempt.
            Err(_) => Err(source.next_step(self.last_attempt(source).as_ref(), now)),
        }
    }

    /// Rewrites the caller's attempt on `source`, claimed at `claimed_at`,
    /// with `change`; an attempt another worker claimed since is left alone.
    fn update_own(
        &self,
        source: &RemoteSource,
        claimed_at: u64,
        change: impl Fn(Attempt) -> Attempt,
    ) {
        let key = attempt_key(source);
        // A swap lost to another worker's write is retried on the fresh entry.
        for _ in 0..3 {
            let (Some(attempt), Some(cas)) = self.read_attempt(source) else {
                return;
            };
            if attempt.claimed_at != claimed_at {
                return;
            }
            match self
                .host
                .shared_set(&key, &change(attempt).encode(), Some(cas))
            {
                Ok(()) => return,
                Err(SharedError::CasMismatch) => continue,
                Err(SharedError::Failed(why)) => {
                    log::warn!("cannot update shared entry {key:?}: {why}");
                    return;
                }
            }
        }
    }

    /// Shows that the caller's attempt is still on its way.
    pub fn renew(&self, source: &RemoteSource, claimed_at: u64) {
        let now = self.now();
        self.update_own(source, claimed_at, |attempt| match attempt.state {
            AttemptState::InFlight { .. } => {
                attempt.with_state(AttemptState::InFlight { renewed_at: now })
            }
            _ => attempt,
        });
    }

    /// Gives up the caller's attempt before its answer: the next claim is
    /// due at once.
    pub fn release(&self, source: &RemoteSource, claimed_at: u64) {
        self.update_own(source, claimed_at, |attempt| match attempt.state {
            AttemptState::InFlight { .. } => attempt.with_state(AttemptState::Released),
            _ => attempt,
        });
    }

    /// Takes the answer to the caller's fetch of `source`: a 200 is shared
    /// with every worker and cached here; anything else (logged) leaves the
    /// cached document alone. Either way the attempt is answered, after the
    /// document is stored: whoever sees it answered also sees its document.
    pub fn answer(&self, source: &RemoteSource, claimed_at: u64, answer: &Answer) {
        match answer {
            Ok(response) if response.status == 200 => {
                if response.body.len() > MAX_DOCUMENT_BYTES {
                    log::warn!(
                        "{} is {} bytes, more than the {MAX_DOCUMENT_BYTES} kept; keeping what is cached",
                        source.uri,
                        response.body.len()
                    );
                } else {
                    self.share(source, &response.body);
                }
            }
            Ok(response) => log::warn!(
                "fetching {} failed: status {}; keeping what is cached",
                source.uri,
                response.status
            ),
            Err(failure) => log::warn!(
                "fetching {} failed: {failure}; keeping what is cached",
                source.uri
            ),
        }
        self.update_own(source, claimed_at, |attempt| {
            attempt.with_state(AttemptState::Answered)
        });
    }

    fn share(&self, source: &RemoteSource, body: &[u8]) {
        let fetched_at = self.now();
        let mut shared = Vec::with_capacity(8 + body.len());
        shared.extend_from_slice(&fetched_at.to_be_bytes());
        shared.extend_from_slice(body);
        if let Err(error) = self.host.shared_set(&document_key(source), &shared, None) {
            log::warn!("cannot share the document of {}: {error:?}", source.uri);
        }
        log::info!("fetched {} ({} bytes)", source.uri, body.len());
        self.documents
            .store(source, Document::new(fetched_at, body));
    }
}

fn document_key(source: &RemoteSource) -> String {
    format!("{DOCUMENT_KEY}{}", source.key())
}

fn attempt_key(source: &RemoteSource) -> String {
    format!("{ATTEMPT_KEY}{}", source.key())
}

/// The fetches of a configuration's documents, run by a host's long-lived
/// owner (the Wasm host's root context, the shim's refresher task) on a
/// timer of at most [`attempt::RENEW_EVERY`], faster while requests wait:
/// the periodic refresh, and the fetches waiting requests asked for
/// ([`Remote::want`]). Requests never fetch themselves: a fetch belongs to
/// an owner that outlives them, so a client that goes away cannot take a
/// fetch with it, nor make the next request fetch again.
///
/// It fetches nothing until its first [`Refresher::tick`]: Envoy configures
/// some VMs only to check a configuration, then destroys them, and a claim
/// made in `on_configure` would lapse unanswered.
#[derive(Debug, Default)]
pub struct Refresher {
    /// This owner's fetches in flight: the source and the claim's time.
    owned: Vec<(RemoteSource, u64)>,
}

impl Refresher {
    /// Copies what other workers fetched, renews this owner's claims, and
    /// claims the sources due for a refresh or wanted by waiting requests.
    /// Returns the fetches to send; their answers go to
    /// [`Refresher::on_answer`].
    pub fn tick(&mut self, remote: &Remote, sources: &[RemoteSource]) -> Vec<(RemoteSource, Call)> {
        for source in sources {
            remote.sync(source);
        }
        for (source, claimed_at) in &self.owned {
            remote.renew(source, *claimed_at);
        }
        let wanted = remote.take_wanted();
        let now = remote.now();
        let mut calls = Vec::new();
        for source in sources {
            let owned = self.owned.iter().any(|(s, _)| s == source);
            let due = source.refresh_due(remote.documents().version(source), now);
            if owned || !(due || wanted.contains(source)) {
                continue;
            }
            if let Ok(claimed_at) = remote.claim(source) {
                self.owned.push((source.clone(), claimed_at));
                calls.push((source.clone(), source.fetch_call()));
            }
        }
        calls
    }

    /// Takes the answer to this owner's fetch of `source` (a host that could
    /// not send it answers with the failure).
    pub fn on_answer(&mut self, remote: &Remote, source: &RemoteSource, answer: &Answer) {
        let all = crate::metrics::metrics();
        all.counter(&format!("{}.remote.fetches", crate::metrics::PREFIX))
            .increment();
        if !answer.as_ref().is_ok_and(|r| r.status == 200) {
            all.counter(&format!("{}.remote.fetch_failures", crate::metrics::PREFIX))
                .increment();
        }
        if let Some(at) = self.owned.iter().position(|(s, _)| s == source) {
            let (source, claimed_at) = self.owned.swap_remove(at);
            remote.answer(&source, claimed_at, answer);
        }
    }

    /// The owner is going away and its fetches with it: the next claim on
    /// each is due at once.
    pub fn release_all(&mut self, remote: &Remote) {
        for (source, claimed_at) in self.owned.drain(..) {
            remote.release(&source, claimed_at);
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

    fn ok(body: &str) -> Answer {
        Ok(crate::callout::CallResponse {
            status: 200,
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
        })
    }

    #[test]
    fn claims_are_spaced_from_answers_and_released_ones_are_due_at_once() {
        let source = source();
        let host = crate::callout::FakeHost::at(1_000);
        let remote = Remote::new(Box::new(host.clone()));
        // Another worker: its own cache, the same shared storage.
        let other = Remote::new(Box::new(host.clone()));
        assert_eq!(remote.claim(&source), Ok(1_000));
        host.advance(1);
        assert_eq!(other.claim(&source), Err(Step::Wait { claimed_at: 1_000 }));
        // Its owner went away: the next request fetches at once.
        remote.release(&source, 1_000);
        host.advance(1);
        assert_eq!(other.claim(&source), Ok(1_002));
        host.set_now(1_500);
        other.answer(&source, 1_002, &ok("keys"));
        assert_eq!(other.documents().version(&source), Some(1_500));
        assert!(remote.sync(&source), "the other worker sees the document");
        assert_eq!(
            remote.documents().get(&source).map(|d| d.body),
            Some(Arc::from(&b"keys"[..]))
        );
        host.set_now(1_002 + 29_999);
        assert_eq!(remote.claim(&source), Err(Step::TooSoon));
        host.set_now(1_002 + 30_000);
        assert_eq!(remote.claim(&source), Ok(31_002));
        // A late answer to an old attempt does not end the new one, and a
        // failed answer keeps the cached document.
        other.answer(&source, 1_002, &Err(crate::callout::CallFailure::Timeout));
        assert!(remote
            .last_attempt(&source)
            .is_some_and(|a| a.is_live(&source, 31_003)));
        remote.answer(&source, 31_002, &Err(crate::callout::CallFailure::Timeout));
        assert_eq!(remote.documents().version(&source), Some(1_500));
        assert!(source.refresh_due(None, 0));
        assert!(!source.refresh_due(Some(0), 299_999));
        assert!(source.refresh_due(Some(0), 300_000));
    }

    #[test]
    fn the_refresher_fetches_what_is_due_once_and_releases_when_it_goes() {
        let source = source();
        let host = crate::callout::FakeHost::at(10_000);
        let remote = Remote::new(Box::new(host.clone()));
        let sources = [source.clone()];
        let mut first = Refresher::default();
        let mut second = Refresher::default();
        let calls = first.tick(&remote, &sources);
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].1, source.fetch_call());
        assert!(
            second.tick(&remote, &sources).is_empty(),
            "one fetch at a time"
        );
        // The first owner goes away unanswered: the second fetches at once.
        first.release_all(&remote);
        let calls = second.tick(&remote, &sources);
        assert_eq!(calls.len(), 1);
        second.on_answer(&remote, &source, &ok("keys"));
        assert!(second.tick(&remote, &sources).is_empty(), "fresh now");
        host.advance(300_000);
        assert_eq!(second.tick(&remote, &sources).len(), 1, "due again");
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
