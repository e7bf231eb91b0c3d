//! The `envoy.service.ext_proc.v3.ExternalProcessor` gRPC service.

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessor;
use envoy_types::pb::envoy::service::ext_proc::v3::{ProcessingRequest, ProcessingResponse};
use policy_executor::metrics::{metrics, Counter, PREFIX};
use policy_executor::Wait;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::callout::Caller;
use crate::store::ConfigStore;
use crate::stream::{ProcessingStream, Step};

/// How often a waiting stream looks again (for another worker's fetch, its
/// claim's renewal, an overdue answer).
const POLL_EVERY: Duration = Duration::from_millis(20);

/// Serves ext_proc streams from the configuration in a [`ConfigStore`].
pub struct PolicyProcessor {
    store: Arc<ConfigStore>,
    caller: Arc<Caller>,
    streams: StreamCounts,
}

impl PolicyProcessor {
    /// A processor serving `store`'s configuration, sending the calls its
    /// policies make with `caller`.
    pub fn new(store: Arc<ConfigStore>, caller: Arc<Caller>) -> Self {
        let all = metrics();
        Self {
            store,
            caller,
            streams: StreamCounts {
                opened: all.counter(&format!("{PREFIX}.extproc.streams_opened")),
                closed: all.counter(&format!("{PREFIX}.extproc.streams_closed")),
            },
        }
    }
}

/// ext_proc streams opened and closed (the difference is those open).
#[derive(Clone)]
struct StreamCounts {
    opened: Arc<Counter>,
    closed: Arc<Counter>,
}

/// One stream while it is open: counted opened when made, closed when
/// dropped.
struct OpenStream(StreamCounts);

impl OpenStream {
    fn new(counts: &StreamCounts) -> Self {
        counts.opened.increment();
        Self(counts.clone())
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.closed.increment();
    }
}

/// Drives one message's step to its answer: sends calls and polls while the
/// chain waits. `None` if Envoy went away meanwhile (dropping the state
/// then gives up its claims).
async fn answer(
    state: &mut ProcessingStream,
    mut step: Step,
    caller: &Caller,
    replies: &mpsc::Sender<Result<ProcessingResponse, Status>>,
) -> Option<ProcessingResponse> {
    loop {
        step = match step {
            Step::Reply(response) => return Some(response),
            Step::Wait(Wait::Poll) => {
                tokio::select! {
                    () = tokio::time::sleep(POLL_EVERY) => state.poll(),
                    () = replies.closed() => return None,
                }
            }
            Step::Wait(Wait::Send(call)) => {
                let call = caller.call(call);
                tokio::pin!(call);
                loop {
                    tokio::select! {
                        answer = &mut call => break state.on_answer(answer),
                        () = tokio::time::sleep(POLL_EVERY) => match state.poll() {
                            Step::Wait(Wait::Poll) => continue,
                            other => break other,
                        },
                        () = replies.closed() => return None,
                    }
                }
            }
        };
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
        let stream = OpenStream::new(&self.streams);
        let mut state = ProcessingStream::new(self.store.current());
        let caller = Arc::clone(&self.caller);
        let (replies, outbound) = mpsc::channel(4);
        tokio::spawn(async move {
            // Counted closed when this task ends, however it ends.
            let _stream = stream;
            loop {
                let message = match inbound.message().await {
                    Ok(Some(message)) => message,
                    Ok(None) => return,
                    Err(status) => {
                        log::debug!("ext_proc stream ended by Envoy: {status}");
                        return;
                    }
                };
                let reply = match state.process(message) {
                    Ok(step) => match answer(&mut state, step, &caller, &replies).await {
                        Some(response) => Ok(response),
                        None => return,
                    },
                    Err(e) => Err(Status::invalid_argument(e.0)),
                };
                let failed = reply.is_err();
                if replies.send(reply).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(outbound)))
    }
}
