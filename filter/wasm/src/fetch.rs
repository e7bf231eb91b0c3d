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
//! * the last fetch attempt (8 bytes), claimed with compare-and-swap: only
//!   the VM whose swap succeeds sends the request to the source's cluster.

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

/// Claims the next fetch attempt of `source` for this VM, if one is due.
pub(crate) fn claim_attempt(source: &RemoteSource, now: u64) -> bool {
    let key = format!("{ATTEMPT_KEY}{}", source.key());
    let (last, cas) = match hostcalls::get_shared_data(&key) {
        Ok((bytes, cas)) => (bytes.as_deref().and_then(read_u64), cas),
        Err(status) => {
            log::warn!("cannot read shared data {key:?}: {status:?}");
            return false;
        }
    };
    if !source.attempt_due(last, now) {
        return false;
    }
    // Another VM that claimed first changed the entry: the swap fails.
    hostcalls::set_shared_data(&key, Some(&now.to_be_bytes()), cas).is_ok()
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
pub(crate) fn complete(documents: &Documents, source: &RemoteSource, body_size: usize) -> bool {
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
        return false;
    }
    let body = match hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size) {
        Ok(body) => body.unwrap_or_default(),
        Err(status) => {
            log::warn!(
                "cannot read the body fetched from {}: {status:?}",
                source.uri
            );
            return false;
        }
    };
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
    true
}
