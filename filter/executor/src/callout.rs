//! Calls a policy makes to a service outside Envoy, and the small interface
//! each host provides for them.
//!
//! A policy that needs an answer from elsewhere (an authorization service, a
//! rate-limit service) returns [`Action::Call`] from a request phase. The
//! exchange stops there and hands the [`Call`] to the host
//! ([`Outcome::Wait`] with [`Wait::Send`]); the host sends it to the named
//! cluster and gives the [`Answer`] back through [`Exchange::on_answer`].
//! The policy's phase then runs again, sees the answer with
//! [`Context::answer`], and decides, or makes its next call.
//!
//! Remote documents (a JWKS) use the same road: a policy that needs a
//! fresher copy returns [`Action::Refresh`], and the exchange follows the
//! rules in [`crate::remote::attempt`] (who fetches, who waits for whom)
//! over the host's shared storage, sending the fetch as a [`Call`] when it
//! is this request's to make.
//!
//! What the host provides is all in [`Host`]: a clock and storage every
//! worker sees. The transport is its answer to [`Wait::Send`]. The rules are
//! all here, so they are tested natively against a fake host
//! ([`crate::testing::FakeHost`], feature `test-util`).
//!
//! [`Action::Call`]: crate::Action::Call
//! [`Action::Refresh`]: crate::Action::Refresh
//! [`Outcome::Wait`]: crate::Outcome::Wait
//! [`Exchange::on_answer`]: crate::Exchange::on_answer
//! [`Context::answer`]: crate::Context::answer

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A service outside Envoy: the cluster Envoy sends to (the Wasm host), and
/// the base URL a process without Envoy's clusters connects to (the shim).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Service {
    /// The Envoy cluster that reaches the service.
    pub cluster: String,
    /// `http://host:port` (or `https://`), no path: the shim's address for
    /// it, and the `:authority` of requests to it.
    pub base_uri: String,
}

impl Service {
    /// The `host[:port]` of [`Service::base_uri`].
    pub fn authority(&self) -> &str {
        let rest = self
            .base_uri
            .split_once("://")
            .map_or(self.base_uri.as_str(), |(_, rest)| rest);
        rest.split_once('/')
            .map_or(rest, |(authority, _)| authority)
    }
}

/// One request to a service, with how long its answer may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// Where it goes.
    pub service: Service,
    /// How long the answer may take; past it the answer is
    /// [`CallFailure::Timeout`].
    pub timeout: Duration,
    /// What is sent.
    pub request: CallRequest,
}

/// What a [`Call`] sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallRequest {
    /// An HTTP request.
    Http {
        /// The method.
        method: String,
        /// The path and query.
        path: String,
        /// Headers besides the pseudo-headers, lower-case names.
        headers: Vec<(String, String)>,
        /// The body; empty for none.
        body: Vec<u8>,
    },
    /// A unary gRPC call.
    Grpc {
        /// The fully qualified service, e.g.
        /// `envoy.service.auth.v3.Authorization`.
        service: String,
        /// The method, e.g. `Check`.
        method: String,
        /// The request message, protobuf-encoded.
        message: Vec<u8>,
        /// Initial metadata (lower-case names); the exchange adds the
        /// request's trace context.
        metadata: Vec<(String, String)>,
    },
}

/// A service's answer that arrived.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CallResponse {
    /// The HTTP status; 200 for a gRPC call that succeeded.
    pub status: u16,
    /// Response headers, lower-case names (none for gRPC).
    pub headers: Vec<(String, String)>,
    /// The body; for gRPC, the response message, protobuf-encoded.
    pub body: Vec<u8>,
}

impl CallResponse {
    /// The first value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why a call has no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallFailure {
    /// No answer within the call's timeout.
    Timeout,
    /// The service could not be reached, or the connection failed before an
    /// answer (no such cluster, connection refused, reset).
    Unreachable(String),
    /// A gRPC call ended with a status other than OK.
    GrpcStatus {
        /// The gRPC status code.
        code: u32,
        /// Its message, if any.
        message: String,
    },
}

impl fmt::Display for CallFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Timeout => f.write_str("timed out"),
            Self::Unreachable(why) => write!(f, "unreachable: {why}"),
            Self::GrpcStatus { code, message } => write!(f, "gRPC status {code}: {message}"),
        }
    }
}

impl CallFailure {
    /// The failure a gRPC status code means, as hosts report it.
    pub fn from_grpc(code: u32, message: impl Into<String>) -> Self {
        match code {
            4 => Self::Timeout,
            14 => Self::Unreachable(message.into()),
            _ => Self::GrpcStatus {
                code,
                message: message.into(),
            },
        }
    }
}

/// The outcome of a call: the service's answer or why there is none.
pub type Answer = Result<CallResponse, CallFailure>;

/// Why shared storage refused a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SharedError {
    /// Another worker wrote the entry since it was read.
    CasMismatch,
    /// The store failed (logged by the caller).
    Failed(String),
}

/// What a host gives the executor: a clock and storage every worker sees.
///
/// The storage follows Proxy-Wasm's shared data: each entry has a version
/// (`cas`) that changes on every write, and a write that names a version
/// fails with [`SharedError::CasMismatch`] if the entry moved on. As in
/// Envoy, a write that names a version to an entry that does not exist yet
/// succeeds, so an entry that must be swapped safely is created first.
pub trait Host: Send + Sync {
    /// Milliseconds since the epoch.
    fn now_millis(&self) -> u64;
    /// Microseconds since the epoch, for latencies; hosts with a finer
    /// clock than milliseconds give it here.
    fn now_micros(&self) -> u64 {
        self.now_millis().saturating_mul(1_000)
    }
    /// The entry `key` and its version; `(None, None)` if there is none.
    fn shared_get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>);
    /// Writes the entry `key`, if its version is still `cas` (`None`: in
    /// any case).
    fn shared_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SharedError>;
}

/// The host of a single process whose workers are threads (the shim, and
/// tests): the system clock and storage in memory.
#[derive(Debug, Default)]
pub struct ProcessHost {
    entries: Mutex<HashMap<String, (Vec<u8>, u32)>>,
}

impl Host for ProcessHost {
    fn now_millis(&self) -> u64 {
        self.now_micros() / 1_000
    }

    fn now_micros(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .ok()
            .and_then(|d| u64::try_from(d.as_micros()).ok())
            .unwrap_or(0)
    }

    fn shared_get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        // A poisoned lock only means a panic elsewhere; the map is intact.
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        match entries.get(key) {
            Some((value, cas)) => (Some(value.clone()), Some(*cas)),
            None => (None, None),
        }
    }

    fn shared_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SharedError> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        shared_set_in(&mut entries, key, value, cas)
    }
}

/// Proxy-Wasm's compare-and-swap over a map, for in-memory hosts.
pub fn shared_set_in(
    entries: &mut HashMap<String, (Vec<u8>, u32)>,
    key: &str,
    value: &[u8],
    cas: Option<u32>,
) -> Result<(), SharedError> {
    match entries.get_mut(key) {
        Some((_, current)) if cas.is_some_and(|cas| cas != *current) => {
            Err(SharedError::CasMismatch)
        }
        Some(entry) => {
            entry.0 = value.to_vec();
            entry.1 = entry.1.wrapping_add(1);
            Ok(())
        }
        None => {
            entries.insert(key.to_owned(), (value.to_vec(), 1));
            Ok(())
        }
    }
}

/// A host for native tests: a clock the test moves and storage that every
/// clone shares, as the VMs of one Envoy share its shared data.
#[cfg(any(test, feature = "test-util"))]
#[derive(Debug, Clone, Default)]
pub struct FakeHost {
    inner: std::sync::Arc<FakeState>,
}

#[cfg(any(test, feature = "test-util"))]
#[derive(Debug, Default)]
struct FakeState {
    now: std::sync::atomic::AtomicU64,
    entries: Mutex<HashMap<String, (Vec<u8>, u32)>>,
}

#[cfg(any(test, feature = "test-util"))]
impl FakeHost {
    /// A host whose clock reads `now`.
    pub fn at(now: u64) -> Self {
        let host = Self::default();
        host.set_now(now);
        host
    }

    /// Sets the clock.
    pub fn set_now(&self, now: u64) {
        self.inner
            .now
            .store(now, std::sync::atomic::Ordering::SeqCst);
    }

    /// Moves the clock on by `millis`.
    pub fn advance(&self, millis: u64) {
        self.inner
            .now
            .fetch_add(millis, std::sync::atomic::Ordering::SeqCst);
    }
}

#[cfg(any(test, feature = "test-util"))]
impl Host for FakeHost {
    fn now_millis(&self) -> u64 {
        self.inner.now.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn shared_get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        let entries = self.inner.entries.lock().unwrap_or_else(|p| p.into_inner());
        match entries.get(key) {
            Some((value, cas)) => (Some(value.clone()), Some(*cas)),
            None => (None, None),
        }
    }

    fn shared_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SharedError> {
        let mut entries = self.inner.entries.lock().unwrap_or_else(|p| p.into_inner());
        shared_set_in(&mut entries, key, value, cas)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_naming_a_stale_version_fail() {
        let host = ProcessHost::default();
        assert_eq!(host.shared_get("k"), (None, None));
        host.shared_set("k", b"a", Some(42)).ok();
        let (value, cas) = host.shared_get("k");
        assert_eq!(value.as_deref(), Some(&b"a"[..]));
        assert_eq!(host.shared_set("k", b"b", cas), Ok(()));
        assert_eq!(
            host.shared_set("k", b"c", cas),
            Err(SharedError::CasMismatch)
        );
        assert_eq!(host.shared_set("k", b"d", None), Ok(()));
        assert_eq!(host.shared_get("k").0.as_deref(), Some(&b"d"[..]));
    }

    #[test]
    fn grpc_codes_map_to_typed_failures() {
        assert_eq!(CallFailure::from_grpc(4, "x"), CallFailure::Timeout);
        assert!(matches!(
            CallFailure::from_grpc(14, "down"),
            CallFailure::Unreachable(_)
        ));
        assert!(matches!(
            CallFailure::from_grpc(7, "no"),
            CallFailure::GrpcStatus { code: 7, .. }
        ));
        let service = Service {
            cluster: "authz".into(),
            base_uri: "http://authz.example:9000".into(),
        };
        assert_eq!(service.authority(), "authz.example:9000");
    }
}
