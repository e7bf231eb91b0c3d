//! The `envoy.service.ext_proc.v3.ExternalProcessor` gRPC service.

use std::sync::Arc;

use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessor;
use envoy_types::pb::envoy::service::ext_proc::v3::{ProcessingRequest, ProcessingResponse};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::store::ConfigStore;
use crate::stream::StreamState;

/// Serves ext_proc streams from the configuration in a [`ConfigStore`].
pub struct PolicyProcessor {
    store: Arc<ConfigStore>,
}

impl PolicyProcessor {
    /// A processor serving `store`'s configuration.
    pub fn new(store: Arc<ConfigStore>) -> Self {
        Self { store }
    }
}

#[tonic::async_trait]
impl ExternalProcessor for PolicyProcessor {
    type ProcessStream = ReceiverStream<Result<ProcessingResponse, Status>>;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Self::ProcessStream>, Status> {
        let mut inbound = request.into_inner();
        let mut state = StreamState::new(self.store.current());
        let (replies, outbound) = mpsc::channel(4);
        tokio::spawn(async move {
            loop {
                let message = match inbound.message().await {
                    Ok(Some(message)) => message,
                    Ok(None) => return,
                    Err(status) => {
                        log::debug!("ext_proc stream ended by Envoy: {status}");
                        return;
                    }
                };
                let reply = state
                    .process(message)
                    .map_err(|e| Status::invalid_argument(e.0));
                let failed = reply.is_err();
                if replies.send(reply).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(outbound)))
    }
}
