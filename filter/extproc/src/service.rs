//! The `envoy.service.ext_proc.v3.ExternalProcessor` gRPC service.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessor;
use envoy_types::pb::envoy::service::ext_proc::v3::{ProcessingRequest, ProcessingResponse};
use futures_util::Stream;
use policy_executor::metrics::{metrics, Counter, PREFIX};
use policy_executor::Wait;
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
/// chain waits. If Envoy goes away meanwhile, the stream is dropped with
/// this future (and dropping the state gives up its claims).
async fn answer(
    state: &mut ProcessingStream,
    mut step: Step,
    caller: &Caller,
) -> ProcessingResponse {
    loop {
        step = match step {
            Step::Reply(response) => return response,
            Step::Wait(Wait::Poll) => {
                tokio::time::sleep(POLL_EVERY).await;
                state.poll()
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
                    }
                }
            }
        };
    }
}

/// One ext_proc stream's state between Envoy's messages.
struct Session {
    inbound: Streaming<ProcessingRequest>,
    state: ProcessingStream,
    caller: Arc<Caller>,
    /// Counted closed when dropped, however the stream ends.
    _open: OpenStream,
    /// A malformed message was answered with an error: nothing follows.
    failed: bool,
}

impl Session {
    /// The reply to Envoy's next message; `None` once the stream is over.
    async fn next_reply(mut self) -> Option<(Result<ProcessingResponse, Status>, Self)> {
        if self.failed {
            return None;
        }
        let message = match self.inbound.message().await {
            Ok(Some(message)) => message,
            Ok(None) => return None,
            Err(status) => {
                log::debug!("ext_proc stream ended by Envoy: {status}");
                return None;
            }
        };
        let reply = match self.state.process(message) {
            Ok(step) => Ok(answer(&mut self.state, step, &self.caller).await),
            Err(e) => {
                self.failed = true;
                Err(Status::invalid_argument(e.0))
            }
        };
        Some((reply, self))
    }
}

/// The replies of one stream, computed as tonic polls for them: in the
/// task hyper runs for the stream, with no task or channel of our own.
type Replies = Pin<Box<dyn Stream<Item = Result<ProcessingResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ExternalProcessor for PolicyProcessor {
    type ProcessStream = Replies;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Self::ProcessStream>, Status> {
        let session = Session {
            inbound: request.into_inner(),
            state: ProcessingStream::new(self.store.current()),
            caller: Arc::clone(&self.caller),
            _open: OpenStream::new(&self.streams),
            failed: false,
        };
        let replies = futures_util::stream::unfold(session, Session::next_reply);
        Ok(Response::new(Box::pin(replies)))
    }
}
