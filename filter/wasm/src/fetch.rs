//! Remote documents in the Wasm host: the transport and the cross-VM record
//! for the rules in `policy_executor::remote::attempt`.
//!
//! Envoy runs one VM per worker, each with its own root context and its own
//! [`Engine`](policy_executor::Engine). So that a source is fetched once for
//! all of them, two entries of Envoy's shared data (one store for every VM
//! of the plugin's `vm_id`) hold, per source:
//!
//! * the document: the fetch time (8 bytes, big-endian milliseconds) then
//!   the body; every VM copies a newer one into its engine's cache on its
//!   next tick, or at once when a request asks for a refetch;
//! * the last fetch attempt ([`Attempt::encode`]), claimed with
//!   compare-and-swap: only the VM whose swap succeeds sends the request.
//!
//! Only root contexts fetch. A callout belongs to the context that sent it:
//! Envoy cancels a stream's callouts when the stream ends, and the SDK
//! routes an answer to the context that was active when it was sent. A
//! root context lives as long as its plugin, renews its claims on every
//! tick, and releases them when it is done; a VM that Envoy destroys
//! without telling it (one that only checked a configuration) stops
//! renewing, and its claim lapses within `OWNER_LEASE`.

use std::time::UNIX_EPOCH;

use policy_executor::remote::{Attempt, AttemptState, Step};
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
    if documents.version(source).is_some_and(|at| at >= fetched_at) {
        return false;
    }
    let body = bytes.get(8..).unwrap_or_default();
    documents.store(source, Document::new(fetched_at, body));
    true
}

fn attempt_key(source: &RemoteSource) -> String {
    format!("{ATTEMPT_KEY}{}", source.key())
}

/// The last attempt on `source` by any VM, with the entry's
/// compare-and-swap token.
fn read_attempt(key: &str) -> (Option<Attempt>, Option<u32>) {
    match hostcalls::get_shared_data(key) {
        Ok((bytes, cas)) => (bytes.as_deref().and_then(Attempt::decode), cas),
        Err(status) => {
            log::warn!("cannot read shared data {key:?}: {status:?}");
            (None, None)
        }
    }
}

/// The last attempt on `source` by any VM.
pub(crate) fn last_attempt(source: &RemoteSource) -> Option<Attempt> {
    read_attempt(&attempt_key(source)).0
}

/// Creates the attempt entry of `source` if there is none. Compare-and-swap
/// cannot guard an entry that does not exist (Envoy accepts any token for
/// a new key), so claims only ever swap an existing one.
pub(crate) fn ensure_attempt_entry(source: &RemoteSource) {
    let key = attempt_key(source);
    if let Ok((None, _)) = hostcalls::get_shared_data(&key) {
        if let Err(status) = hostcalls::set_shared_data(&key, Some(&[]), None) {
            log::warn!("cannot create shared data {key:?}: {status:?}");
        }
    }
}

/// Claims the next attempt on `source` at `now` for this VM if the rules
/// say to fetch. `Ok` carries the claim's time; `Err` what to do instead.
pub(crate) fn claim(source: &RemoteSource, now: u64) -> Result<u64, Step> {
    let key = attempt_key(source);
    let (last, cas) = read_attempt(&key);
    match source.next_step(last.as_ref(), now) {
        Step::Fetch => {}
        other => return Err(other),
    }
    let Some(cas) = cas else {
        // No entry (it is created at configure time): do not race for it.
        ensure_attempt_entry(source);
        return Err(Step::TooSoon);
    };
    match hostcalls::set_shared_data(&key, Some(&Attempt::claimed(now).encode()), Some(cas)) {
        Ok(()) => Ok(now),
        // Another VM swapped first: follow its attempt.
        Err(_) => Err(source.next_step(read_attempt(&key).0.as_ref(), now)),
    }
}

/// Rewrites this VM's attempt on `source`, claimed at `claimed_at`, with
/// `change`; an entry another VM claimed since is left alone.
fn update_own(source: &RemoteSource, claimed_at: u64, change: impl Fn(Attempt) -> Attempt) {
    let key = attempt_key(source);
    // A swap lost to another VM's write is retried on the fresh entry.
    for _ in 0..3 {
        let (Some(attempt), Some(cas)) = read_attempt(&key) else {
            return;
        };
        if attempt.claimed_at != claimed_at {
            return;
        }
        match hostcalls::set_shared_data(&key, Some(&change(attempt).encode()), Some(cas)) {
            Ok(()) => return,
            Err(Status::CasMismatch) => continue,
            Err(status) => {
                log::warn!("cannot update shared data {key:?}: {status:?}");
                return;
            }
        }
    }
}

/// Shows that this VM's attempt is still on its way.
pub(crate) fn renew(source: &RemoteSource, claimed_at: u64, now: u64) {
    update_own(source, claimed_at, |attempt| match attempt.state {
        AttemptState::InFlight { .. } => {
            attempt.with_state(AttemptState::InFlight { renewed_at: now })
        }
        _ => attempt,
    });
}

/// Gives up this VM's attempt before its answer: the next claim is due at
/// once.
pub(crate) fn release(source: &RemoteSource, claimed_at: u64) {
    update_own(source, claimed_at, |attempt| match attempt.state {
        AttemptState::InFlight { .. } => attempt.with_state(AttemptState::Released),
        _ => attempt,
    });
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

/// Takes the answer to this VM's fetch of `source`: a 200 is shared with
/// every VM and cached here; anything else (Envoy reports a timeout or a
/// connection failure as an answer without headers) leaves the cached
/// document alone. Either way the attempt is answered.
pub(crate) fn complete(documents: &Documents, source: &RemoteSource, claimed_at: u64, body: usize) {
    if let Some(body) = answer_body(source, body) {
        share(documents, source, body);
    }
    // Only now: a VM that sees the attempt answered must also see its
    // document.
    update_own(source, claimed_at, |attempt| {
        attempt.with_state(AttemptState::Answered)
    });
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
