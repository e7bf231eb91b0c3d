//! The shim's transport for the calls policies make (`Wait::Send`):
//! asynchronous HTTP/1.1 and unary gRPC to the service's `base_uri`. The
//! shim has no Envoy cluster to send through, so it connects directly.
//!
//! Connections are pooled per service (hyper's pool for HTTP, one lazily
//! connected tonic channel per gRPC service); no thread ever blocks on a
//! call.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Mutex;

use bytes::{Buf, BufMut, Bytes};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use policy_executor::{Answer, Call, CallFailure, CallRequest, CallResponse};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::{Channel, Endpoint};
use tonic::Status;

/// The largest answer read; a larger one is a failure.
const MAX_ANSWER_BYTES: usize = 1 << 20;

/// Sends calls; one per process, shared by every stream.
pub struct Caller {
    http: Client<HttpConnector, Full<Bytes>>,
    grpc: Mutex<HashMap<String, Channel>>,
}

impl Default for Caller {
    fn default() -> Self {
        Self {
            http: Client::builder(TokioExecutor::new()).build_http(),
            grpc: Mutex::default(),
        }
    }
}

impl Caller {
    /// Sends `call` and waits for its answer, at most its timeout.
    pub async fn call(&self, call: Call) -> Answer {
        let timeout = call.timeout;
        match tokio::time::timeout(timeout, self.send(call)).await {
            Ok(answer) => answer,
            Err(_) => Err(CallFailure::Timeout),
        }
    }

    async fn send(&self, call: Call) -> Answer {
        let Call {
            service, request, ..
        } = call;
        match request {
            CallRequest::Http {
                method,
                path,
                headers,
                body,
            } => {
                let uri = format!("{}{path}", service.base_uri);
                self.http(&method, &uri, &headers, body).await
            }
            CallRequest::Grpc {
                service: name,
                method,
                message,
                metadata,
            } => {
                let channel = self.channel(&service.base_uri)?;
                grpc_unary(channel, &format!("/{name}/{method}"), message, &metadata).await
            }
        }
    }

    async fn http(
        &self,
        method: &str,
        uri: &str,
        headers: &[(String, String)],
        body: Vec<u8>,
    ) -> Answer {
        if !uri.starts_with("http://") {
            return Err(CallFailure::Unreachable(format!(
                "{uri}: the shim calls services over plain HTTP only"
            )));
        }
        let mut request = hyper::Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| CallFailure::Unreachable(format!("{uri}: {e}")))?;
        let response = self
            .http
            .request(request)
            .await
            .map_err(|e| CallFailure::Unreachable(format!("{uri}: {e}")))?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .filter_map(|(name, value)| {
                Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
            })
            .collect();
        let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| CallFailure::Unreachable(format!("{uri}: reading the answer: {e}")))?
            .to_bytes()
            .to_vec();
        Ok(CallResponse {
            status,
            headers,
            body,
        })
    }

    /// The channel to the gRPC service at `base_uri`, connected on first
    /// use and reconnected by tonic when it breaks.
    fn channel(&self, base_uri: &str) -> Result<Channel, CallFailure> {
        let mut channels = self.grpc.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(channel) = channels.get(base_uri) {
            return Ok(channel.clone());
        }
        let channel = Endpoint::from_shared(base_uri.to_owned())
            .map_err(|e| CallFailure::Unreachable(format!("{base_uri}: {e}")))?
            .connect_lazy();
        channels.insert(base_uri.to_owned(), channel.clone());
        Ok(channel)
    }
}

async fn grpc_unary(
    channel: Channel,
    path: &str,
    message: Vec<u8>,
    metadata: &[(String, String)],
) -> Answer {
    let path = http::uri::PathAndQuery::from_str(path)
        .map_err(|e| CallFailure::Unreachable(format!("{path}: {e}")))?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| CallFailure::Unreachable(e.to_string()))?;
    let mut request = tonic::Request::new(message);
    for (name, value) in metadata {
        let (Ok(name), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(name.as_bytes()),
            value.parse(),
        ) else {
            continue;
        };
        request.metadata_mut().insert(name, value);
    }
    match grpc.unary(request, path, RawCodec).await {
        Ok(response) => Ok(CallResponse {
            status: 200,
            headers: Vec::new(),
            body: response.into_inner(),
        }),
        Err(status) => Err(CallFailure::from_grpc(
            u32::try_from(i32::from(status.code())).unwrap_or(2),
            status.message(),
        )),
    }
}

/// Messages go through as the bytes the policy encoded.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let mut message = vec![0; src.remaining()];
        src.copy_to_slice(&mut message);
        Ok(Some(message))
    }
}
