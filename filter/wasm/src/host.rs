//! Envoy as the executor's [`Host`]: its clock and its shared data (one
//! store for every VM of the plugin's `vm_id`, so every worker sees the
//! documents and fetch attempts of the others), and the transport for the
//! calls policies make: `dispatch_http_call` and `dispatch_grpc_call` to a
//! named cluster.
//!
//! An answer comes back to the context that was active when its call was
//! sent (the proxy-wasm SDK keeps that map); `http` routes it to the stream
//! that waits for it.

use std::time::{Duration, UNIX_EPOCH};

use policy_executor::{Answer, Call, CallFailure, CallRequest, CallResponse, Host};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType, Status};

/// Envoy, for the executor.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct EnvoyHost;

impl Host for EnvoyHost {
    fn now_millis(&self) -> u64 {
        now_millis()
    }

    fn now_micros(&self) -> u64 {
        hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .and_then(|d| u64::try_from(d.as_micros()).ok())
            .unwrap_or(0)
    }

    fn shared_get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        match hostcalls::get_shared_data(key) {
            Ok(entry) => entry,
            Err(status) => {
                log::warn!("cannot read shared data {key:?}: {status:?}");
                (None, None)
            }
        }
    }

    fn shared_set(
        &self,
        key: &str,
        value: &[u8],
        cas: Option<u32>,
    ) -> Result<(), policy_executor::callout::SharedError> {
        use policy_executor::callout::SharedError;
        hostcalls::set_shared_data(key, Some(value), cas).map_err(|status| match status {
            Status::CasMismatch => SharedError::CasMismatch,
            other => SharedError::Failed(format!("{other:?}")),
        })
    }
}

/// Envoy's clock, in milliseconds since the epoch.
pub(crate) fn now_millis() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .and_then(|d| u64::try_from(d.as_millis()).ok())
        .unwrap_or(0)
}

/// The shortest and longest timeouts a call is sent with.
const MIN_TIMEOUT: Duration = Duration::from_millis(1);
const MAX_TIMEOUT: Duration = Duration::from_secs(3_600);

/// A call sent and not yet answered.
#[derive(Debug, Clone, Copy)]
pub(crate) struct InFlight {
    pub(crate) token: u32,
    sent_at: u64,
    timeout: Duration,
}

/// Sends `call` from the current context; its answer comes to that
/// context's `on_http_call_response` or `on_grpc_call_response`.
pub(crate) fn dispatch(call: &Call) -> Result<InFlight, Status> {
    let cluster = call.service.cluster.as_str();
    // Envoy reads 0 ms as "no timeout", and the SDK truncates to 32 bits.
    let timeout = call.timeout.clamp(MIN_TIMEOUT, MAX_TIMEOUT);
    let token = match &call.request {
        CallRequest::Http {
            method,
            path,
            headers,
            body,
        } => {
            let mut all = vec![
                (":method", method.as_str()),
                (":path", path.as_str()),
                (":authority", call.service.authority()),
            ];
            all.extend(headers.iter().map(|(n, v)| (n.as_str(), v.as_str())));
            let body = (!body.is_empty()).then_some(body.as_slice());
            hostcalls::dispatch_http_call(cluster, all, body, vec![], timeout)?
        }
        CallRequest::Grpc {
            service,
            method,
            message,
            metadata,
        } => {
            let metadata = metadata
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_bytes()))
                .collect();
            hostcalls::dispatch_grpc_call(
                cluster,
                service,
                method,
                metadata,
                Some(message),
                timeout,
            )?
        }
    };
    Ok(InFlight {
        token,
        sent_at: now_millis(),
        timeout,
    })
}

impl InFlight {
    /// Reads the answer to an HTTP call. Envoy reports a timeout or a
    /// failed connection as an answer without headers; which one it was is
    /// told by the time it took.
    pub(crate) fn http_answer(&self, num_headers: usize, body_size: usize) -> Answer {
        if num_headers == 0 {
            return Err(self.no_answer());
        }
        let headers = hostcalls::get_map_bytes(MapType::HttpCallResponseHeaders)
            .map_err(|s| CallFailure::Unreachable(format!("cannot read the answer: {s:?}")))?;
        let mut status = None;
        let mut plain = Vec::with_capacity(headers.len());
        for (name, value) in headers {
            let value = String::from_utf8_lossy(&value).into_owned();
            if name == ":status" {
                status = value.parse().ok();
            } else if !name.starts_with(':') {
                plain.push((name, value));
            }
        }
        let Some(status) = status else {
            return Err(CallFailure::Unreachable(
                "an answer without a status".into(),
            ));
        };
        let body = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
            .map_err(|s| CallFailure::Unreachable(format!("cannot read the answer: {s:?}")))?
            .unwrap_or_default();
        Ok(CallResponse {
            status,
            headers: plain,
            body,
        })
    }

    /// Reads the answer to a gRPC call: the message on status 0, the typed
    /// failure otherwise.
    pub(crate) fn grpc_answer(&self, status_code: u32, response_size: usize) -> Answer {
        if status_code != 0 {
            let message = hostcalls::get_grpc_status()
                .ok()
                .and_then(|(_, message)| message)
                .unwrap_or_default();
            if status_code == 14 && now_millis() >= self.deadline() {
                return Err(CallFailure::Timeout);
            }
            return Err(CallFailure::from_grpc(status_code, message));
        }
        let body = hostcalls::get_buffer(BufferType::GrpcReceiveBuffer, 0, response_size)
            .map_err(|s| CallFailure::Unreachable(format!("cannot read the answer: {s:?}")))?
            .unwrap_or_default();
        Ok(CallResponse {
            status: 200,
            headers: Vec::new(),
            body,
        })
    }

    fn deadline(&self) -> u64 {
        let timeout = u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX);
        self.sent_at.saturating_add(timeout)
    }

    fn no_answer(&self) -> CallFailure {
        if now_millis() >= self.deadline() {
            CallFailure::Timeout
        } else {
            CallFailure::Unreachable("the connection failed or was reset".into())
        }
    }
}
