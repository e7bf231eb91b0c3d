//! Remote documents in the shim (see `policy_executor::remote`): fetched
//! with a plain HTTP/1.1 client, straight from each source's `uri` (the
//! shim has no Envoy cluster to send through). One process serves every
//! stream, so the engine's own cache is the shared copy.

use std::io::Read;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use policy_executor::{Document, Engine, RemoteSource};

use crate::store::ConfigStore;

/// How often the refresher looks for documents due for a refresh.
const TICK: Duration = Duration::from_secs(1);

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

/// The sources being fetched now, so that a request needing one waits for
/// that answer rather than being refused while it is on its way.
static IN_FLIGHT: Mutex<Vec<RemoteSource>> = Mutex::new(Vec::new());
static ANSWERED: Condvar = Condvar::new();

/// Fetches `source` into `engine`'s cache if an attempt is due; a failure
/// keeps the cached document. Blocks for at most the source's timeout.
/// Returns whether it fetched.
pub fn refresh(engine: &Engine, source: &RemoteSource) -> bool {
    let documents = engine.documents();
    if !documents.claim_attempt(source, now_millis()) {
        return false;
    }
    IN_FLIGHT
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(source.clone());
    fetch_into(engine, source);
    let mut in_flight = IN_FLIGHT.lock().unwrap_or_else(|p| p.into_inner());
    in_flight.retain(|s| s != source);
    ANSWERED.notify_all();
    true
}

/// Waits until no fetch of `source` is in flight, for at most its timeout.
fn wait_for_answer(source: &RemoteSource) {
    let deadline = Instant::now() + source.timeout;
    let mut in_flight = IN_FLIGHT.lock().unwrap_or_else(|p| p.into_inner());
    while in_flight.contains(source) {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            return;
        };
        in_flight = match ANSWERED.wait_timeout(in_flight, left) {
            Ok((guard, _)) => guard,
            Err(poisoned) => poisoned.into_inner().0,
        };
    }
}

fn fetch_into(engine: &Engine, source: &RemoteSource) {
    let documents = engine.documents();
    match get(source) {
        Ok(body) => {
            log::info!("fetched {} ({} bytes)", source.uri, body.len());
            documents.store(source, Document::new(now_millis(), body));
        }
        Err(error) => log::warn!(
            "fetching {} failed: {error}; keeping what is cached",
            source.uri
        ),
    }
}

/// For a request waiting on a refetch: fetches on this thread, or waits
/// for the fetch already in flight, telling the runtime so it moves its
/// other tasks elsewhere meanwhile.
pub fn refetch_for_request(engine: &Engine, source: &RemoteSource) {
    let fetch_or_wait = || {
        if !refresh(engine, source) {
            wait_for_answer(source);
        }
    };
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(fetch_or_wait);
        }
        _ => fetch_or_wait(),
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
            let fetched_at = engine.documents().get(&source).map(|d| d.fetched_at);
            if !source.refresh_due(fetched_at, now) {
                continue;
            }
            let engine = Arc::clone(&engine);
            let fetch = tokio::task::spawn_blocking(move || {
                refresh(&engine, &source);
            });
            if let Err(error) = fetch.await {
                log::error!("the document refresher failed: {error}");
            }
        }
    }
}
