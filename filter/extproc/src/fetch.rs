//! Remote documents in the shim: the transport for the rules in
//! `policy_executor::remote::attempt`, fetched with a plain HTTP/1.1 client
//! straight from each source's `uri` (the shim has no Envoy cluster to send
//! through). One process serves every stream, so the engine's own cache,
//! kept across reloads, is the shared copy and holds the attempt records.
//!
//! A claim is held by a [`Claim`] guard: if its owner goes away before the
//! answer (a panic, a cancelled task), the guard releases it, so the next
//! request fetches at once instead of waiting out a claim nobody answers.

use std::io::Read;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use policy_executor::remote::{Step, WaitStep, Waiting};
use policy_executor::{Document, Documents, Engine, RemoteSource};

use crate::store::ConfigStore;

/// How often the refresher looks for documents due for a refresh.
const TICK: Duration = Duration::from_secs(1);

/// The longest a waiting request sleeps before it looks again, in case the
/// attempt it waits for lapsed without a word.
const RECHECK: Duration = Duration::from_millis(100);

/// The largest document accepted; a JWKS is a few kilobytes.
const MAX_DOCUMENT: u64 = 1 << 20;

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| u64::try_from(d.as_millis()).ok())
        .unwrap_or(0)
}

/// One GET of `source.uri`; the body of a 200, or why not.
fn get(source: &RemoteSource) -> Result<Vec<u8>, String> {
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(source.timeout))
        .build();
    let agent = ureq::Agent::new_with_config(config);
    let mut response = agent.get(&source.uri).call().map_err(|e| e.to_string())?;
    if response.status() != 200 {
        return Err(format!("status {}", response.status().as_u16()));
    }
    let mut body = Vec::new();
    response
        .body_mut()
        .as_reader()
        .take(MAX_DOCUMENT)
        .read_to_end(&mut body)
        .map_err(|e| e.to_string())?;
    Ok(body)
}

/// Counts ended attempts, so that waiting requests wake on each.
static ENDED: Mutex<u64> = Mutex::new(0);
static ENDED_SIGNAL: Condvar = Condvar::new();

fn announce_end() {
    *ENDED.lock().unwrap_or_else(|p| p.into_inner()) += 1;
    ENDED_SIGNAL.notify_all();
}

/// This task's claim on the next attempt of a source; released unless
/// answered.
struct Claim<'a> {
    documents: &'a Documents,
    source: &'a RemoteSource,
    claimed_at: u64,
    answered: bool,
}

impl Claim<'_> {
    /// Fetches, stores what came and marks the attempt answered; a failure
    /// keeps the cached document.
    fn fetch(mut self) {
        let document = match get(self.source) {
            Ok(body) => {
                log::info!("fetched {} ({} bytes)", self.source.uri, body.len());
                Some(Document::new(now_millis(), body))
            }
            Err(error) => {
                log::warn!(
                    "fetching {} failed: {error}; keeping what is cached",
                    self.source.uri
                );
                None
            }
        };
        self.documents
            .answer(self.source, self.claimed_at, document);
        self.answered = true;
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.documents.release(self.source, self.claimed_at);
        }
        announce_end();
    }
}

/// Claims `source`'s next attempt at `now` if the rules say to fetch.
fn claim<'a>(documents: &'a Documents, source: &'a RemoteSource) -> Result<Claim<'a>, Step> {
    documents
        .claim(source, now_millis())
        .map(|claimed_at| Claim {
            documents,
            source,
            claimed_at,
            answered: false,
        })
}

/// Fetches `source` into `documents` if a periodic refresh may claim it.
fn refresh(documents: &Documents, source: &RemoteSource) {
    if let Ok(claim) = claim(documents, source) {
        claim.fetch();
    }
}

/// For a request whose policy asked for a refetch: fetches on this thread,
/// or waits for the attempt in flight (and fetches if it lapses), as the
/// executor's rules say. Blocks for a bounded time (`Waiting`'s give-up
/// time), telling the runtime so it moves its other tasks elsewhere.
pub fn refetch_for_request(engine: &Engine, source: &RemoteSource) {
    let documents = engine.documents();
    let fetch_or_wait = || fetch_or_wait(documents, source);
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(fetch_or_wait);
        }
        _ => fetch_or_wait(),
    }
}

fn fetch_or_wait(documents: &Documents, source: &RemoteSource) {
    let seen = documents.version(source);
    let awaited = match claim(documents, source) {
        Ok(claim) => return claim.fetch(),
        Err(Step::Wait { claimed_at }) => claimed_at,
        Err(Step::TooSoon | Step::Fetch) => return,
    };
    let mut waiting = Waiting::new(source, seen, awaited, now_millis());
    loop {
        // Read the count before polling, so an end announced in between
        // is not slept through.
        let ended = *ENDED.lock().unwrap_or_else(|p| p.into_inner());
        let last = documents.attempt(source);
        match waiting.poll(
            source,
            documents.version(source),
            last.as_ref(),
            now_millis(),
        ) {
            WaitStep::Resume => return,
            WaitStep::FetchForIt => {
                if let Ok(claim) = claim(documents, source) {
                    return claim.fetch();
                }
            }
            WaitStep::Wait => {
                let guard = ENDED.lock().unwrap_or_else(|p| p.into_inner());
                if *guard == ended {
                    let _ = ENDED_SIGNAL.wait_timeout(guard, RECHECK);
                }
            }
        }
    }
}

/// Keeps the serving configuration's documents fresh, for as long as the
/// process runs.
pub async fn keep_fresh(store: Arc<ConfigStore>) {
    let mut ticks = tokio::time::interval(TICK);
    loop {
        ticks.tick().await;
        let engine = store.current();
        let now = now_millis();
        for source in engine.remote_sources() {
            if !source.refresh_due(engine.documents().version(&source), now) {
                continue;
            }
            let engine = Arc::clone(&engine);
            let fetch = tokio::task::spawn_blocking(move || {
                refresh(engine.documents(), &source);
            });
            if let Err(error) = fetch.await {
                log::error!("the document refresher failed: {error}");
            }
        }
    }
}
