//! Remote documents in the Wasm host (see `policy_executor::remote`).
//!
//! Envoy runs one VM per worker, each with its own root context and its own
//! [`Engine`](policy_executor::Engine). So that a source is fetched once for
//! all of them, not once per worker, two entries of Envoy's shared data (one
//! store for every VM of the plugin's `vm_id`) hold, per source:
//!
//! * the document: the fetch time (8 bytes, big-endian milliseconds) then
//!   the body; every VM copies a newer one into its engine's cache on its
//!   next tick, or at once when a request asks for a refetch;
//! * the last fetch attempt (8 bytes of time, then 1 while it is in flight,
//!   0 once answered), claimed with compare-and-swap: only the VM whose
//!   swap succeeds sends the request to the source's cluster. A request on
//!   another VM that needs the same document waits for that attempt (see
//!   `http`) instead of being refused while the answer is on its way.

use std::time::UNIX_EPOCH;

use policy_executor::{Document, Documents, RemoteSource};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType, Status};

const DOCUMENT_KEY: &str = "policy-engine/document/";
const ATTEMPT_KEY: &str = "policy-engine/attempt/";

/// Envoy's clock, in milliseconds since the epoch.
pub(crate) fn now_millis() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .and_then(|d| u64::try_from(d.as_millis()).ok())
        .unwrap_or(0)
}

fn read_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?))
}

/// Copies the shared document of `source` into `documents` if it is newer
/// than the cached one; returns whether it was.
pub(crate) fn sync_from_shared(documents: &Documents, source: &RemoteSource) -> bool {
    let key = format!("{DOCUMENT_KEY}{}", source.key());
    let Ok((Some(bytes), _)) = hostcalls::get_shared_data(&key) else {
        return false;
    };
    let Some(fetched_at) = read_u64(&bytes) else {
        return false;
    };
    let cached = documents.get(source).map(|d| d.fetched_at);
    if cached.is_some_and(|at| at >= fetched_at) {
        return false;
    }
    let body = bytes.get(8..).unwrap_or_default();
    documents.store(source, Document::new(fetched_at, body));
    true
}

/// The last fetch attempt of `source` by any VM: when it was claimed, and
/// whether it is still in flight.
pub(crate) fn last_attempt(source: &RemoteSource) -> Option<(u64, bool)> {
    let (bytes, _) = hostcalls::get_shared_data(&attempt_key(source)).ok()?;
    let bytes = bytes?;
    Some((read_u64(&bytes)?, bytes.get(8) == Some(&1)))
}

/// What a claim on the next fetch attempt found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Claim {
    /// This VM is to fetch now; its claim is stamped with this time.
    Won { claimed_at: u64 },
    /// Some VM's attempt is in flight; its answer is due by this time.
    InFlight { answer_by: u64 },
    /// The last attempt was answered too recently to try again.
    TooSoon,
}

fn attempt_key(source: &RemoteSource) -> String {
    format!("{ATTEMPT_KEY}{}", source.key())
}

/// Claims the next fetch attempt of `source` for this VM, if one is due.
pub(crate) fn claim_attempt(source: &RemoteSource, now: u64) -> Claim {
    let key = attempt_key(source);
    let (last, cas) = match hostcalls::get_shared_data(&key) {
        Ok((bytes, cas)) => (bytes, cas),
        Err(status) => {
            log::warn!("cannot read shared data {key:?}: {status:?}");
            return Claim::TooSoon;
        }
    };
    let last_time = last.as_deref().and_then(read_u64);
    let in_flight = last.as_deref().and_then(|b| b.get(8)) == Some(&1);
    let timeout = u64::try_from(source.timeout.as_millis()).unwrap_or(u64::MAX);
    if let (Some(at), true) = (last_time, in_flight) {
        let answer_by = at.saturating_add(timeout);
        if now < answer_by {
            return Claim::InFlight { answer_by };
        }
    }
    if !source.attempt_due(last_time, now) {
        return Claim::TooSoon;
    }
    let mut entry = now.to_be_bytes().to_vec();
    entry.push(1);
    // Another VM that claimed first changed the entry: the swap fails.
    match hostcalls::set_shared_data(&key, Some(&entry), cas) {
        Ok(()) => Claim::Won { claimed_at: now },
        Err(_) => match last_attempt(source) {
            Some((claimed_at, true)) => Claim::InFlight {
                answer_by: claimed_at.saturating_add(timeout),
            },
            _ => Claim::TooSoon,
        },
    }
}

/// Marks this VM's attempt on `source`, claimed at `claimed_at`, as
/// answered, so requests elsewhere stop waiting for it. `released` (the
/// request never left, e.g. the callout could not be dispatched) also
/// forgets the attempt, so the next claim is due at once. An entry another
/// VM claimed since is left alone: its own attempt is still on its way.
pub(crate) fn finish_attempt(source: &RemoteSource, claimed_at: u64, released: bool) {
    let key = attempt_key(source);
    let Ok((Some(entry), cas)) = hostcalls::get_shared_data(&key) else {
        return;
    };
    if read_u64(&entry) != Some(claimed_at) {
        return;
    }
    let update = if released {
        Vec::new()
    } else {
        let mut answered = claimed_at.to_be_bytes().to_vec();
        answered.push(0);
        answered
    };
    if let Err(status) = hostcalls::set_shared_data(&key, Some(&update), cas) {
        log::debug!("shared data {key:?} changed meanwhile: {status:?}");
    }
}

/// Sends the fetch of `source` to its cluster; the answer comes to the
/// calling context's `on_http_call_response` with the returned token.
pub(crate) fn dispatch(source: &RemoteSource) -> Result<u32, Status> {
    let headers = vec![
        (":method", "GET"),
        (":path", source.path()),
        (":authority", source.authority()),
        ("accept", "application/json"),
    ];
    hostcalls::dispatch_http_call(&source.cluster, headers, None, vec![], source.timeout)
}

/// Takes the answer to a fetch of `source`: a 200 is shared with every VM
/// and cached here; anything else (Envoy reports a timeout or a connection
/// failure as an answer without headers) leaves the cached document alone.
pub(crate) fn complete(
    documents: &Documents,
    source: &RemoteSource,
    claimed_at: u64,
    body_size: usize,
) -> bool {
    let stored = match answer_body(source, body_size) {
        Some(body) => {
            share(documents, source, body);
            true
        }
        None => false,
    };
    // Only now: a VM that sees the attempt answered must also see its
    // document.
    finish_attempt(source, claimed_at, false);
    stored
}

/// The body of a 200 answer to a fetch of `source`; `None` (logged) for
/// anything else.
fn answer_body(source: &RemoteSource, body_size: usize) -> Option<Vec<u8>> {
    let status = hostcalls::get_map_value(MapType::HttpCallResponseHeaders, ":status")
        .ok()
        .flatten();
    if status.as_deref() != Some("200") {
        log::warn!(
            "fetching {} from cluster {:?} failed: status {}; keeping what is cached",
            source.uri,
            source.cluster,
            status
                .as_deref()
                .unwrap_or("none (timeout or connection failure)")
        );
        return None;
    }
    match hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size) {
        Ok(body) => Some(body.unwrap_or_default()),
        Err(status) => {
            log::warn!(
                "cannot read the body fetched from {}: {status:?}",
                source.uri
            );
            None
        }
    }
}

/// Shares a fetched document with every VM and caches it here.
fn share(documents: &Documents, source: &RemoteSource, body: Vec<u8>) {
    let fetched_at = now_millis();
    let mut shared = Vec::with_capacity(8 + body.len());
    shared.extend_from_slice(&fetched_at.to_be_bytes());
    shared.extend_from_slice(&body);
    let key = format!("{DOCUMENT_KEY}{}", source.key());
    if let Err(status) = hostcalls::set_shared_data(&key, Some(&shared), None) {
        log::warn!("cannot share the document of {}: {status:?}", source.uri);
    }
    log::info!("fetched {} ({} bytes)", source.uri, body.len());
    documents.store(source, Document::new(fetched_at, body));
}
