//! Waiting for a service: the exchange's side of the calls and document
//! fetches of the module docs' "Waiting for a service".

use std::time::Duration;

// The chain's own types and imports: this is its code, kept apart.
use super::*;

/// A request phase stopped at one policy, waiting.
pub(super) struct Pending {
    pub(super) position: usize,
    pub(super) phase: Phases,
    /// Calls this policy made in this phase so far.
    pub(super) calls: usize,
    pub(super) on: WaitingOn,
}

pub(super) enum WaitingOn {
    /// The answer to the policy's call, sent at `sent_at` (milliseconds;
    /// `sent_us` in microseconds, for the callout's metrics).
    Answer {
        sent_at: u64,
        timeout: Duration,
        sent_us: u64,
        metrics: Arc<CalloutMetrics>,
    },
    /// A fresher copy of a document, fetched by a worker's `Refresher`.
    Document {
        source: RemoteSource,
        waiting: Waiting,
    },
}

/// How the entry that waited runs again.
pub(super) enum Rerun {
    /// With the answer to its call.
    Answered(Answer),
    /// After a refetch of this source (successful or not).
    Refetched(RemoteSource),
}

impl Exchange {
    /// Whether the exchange waits for a service.
    pub fn is_waiting(&self) -> bool {
        self.pending.is_some()
    }

    /// Takes the answer to the call of the last [`Wait::Send`] (or the
    /// failure to send it) and goes on with the phase that waited.
    pub fn on_answer(&mut self, answer: Answer) -> Outcome {
        let Some(pending) = self.pending.take() else {
            // A host fault; never a reason to let the request go on.
            log::error!("an answer came for a request that waits for none");
            return Outcome::Respond(LocalReply::text(500, "policy engine error\n"));
        };
        match &pending.on {
            WaitingOn::Answer {
                sent_us, metrics, ..
            } => {
                metrics.calls.increment();
                if answer.is_err() {
                    metrics.failures.increment();
                }
                let now = self.cx.host().now_micros();
                metrics.latency.record(now.saturating_sub(*sent_us));
                self.resume(*pending, Rerun::Answered(answer))
            }
            WaitingOn::Document { .. } => {
                // A document wait sends nothing: keep waiting.
                self.pending = Some(pending);
                Outcome::Wait(Wait::Poll)
            }
        }
    }

    /// Looks again at what the exchange waits for: gives up on an overdue
    /// answer, asks for a document whose awaited fetch lapsed, or resumes
    /// once the document arrived.
    pub fn poll(&mut self) -> Outcome {
        let Some(mut pending) = self.pending.take() else {
            return Outcome::Wait(Wait::Poll);
        };
        let remote = Arc::clone(self.cx.remote());
        let now = remote.now();
        match &mut pending.on {
            WaitingOn::Answer {
                sent_at,
                timeout,
                metrics,
                ..
            } => {
                let overdue = sent_at
                    .saturating_add(duration_millis(*timeout))
                    .saturating_add(duration_millis(ANSWER_GRACE));
                if now >= overdue {
                    log::warn!("no answer to a call past its timeout: failing it");
                    metrics.calls.increment();
                    metrics.failures.increment();
                    return self.resume(*pending, Rerun::Answered(Err(CallFailure::Timeout)));
                }
            }
            WaitingOn::Document { source, waiting } => {
                remote.sync(source);
                let version = remote.documents().version(source);
                let last = remote.last_attempt(source);
                match waiting.poll(source, version, last.as_ref(), now) {
                    WaitStep::Resume => {
                        let source = source.clone();
                        return self.resume(*pending, Rerun::Refetched(source));
                    }
                    WaitStep::Wait => {}
                    // Nobody is fetching it: this worker's refresher will.
                    WaitStep::FetchForIt => remote.want(source),
                }
            }
        }
        self.pending = Some(pending);
        Outcome::Wait(Wait::Poll)
    }

    /// The request went away while it waited (client reset, timeout, local
    /// reply): the exchange is over. A call it sent is the host's to
    /// cancel; a document fetch it waited for goes on, for the next
    /// request.
    pub fn abandon(&mut self) {
        self.pending = None;
        self.finished = true;
    }

    pub(super) fn resume(&mut self, pending: Pending, rerun: Rerun) -> Outcome {
        let Pending {
            position,
            phase,
            calls,
            ..
        } = pending;
        // The body phase's body (edits included) waited in the context.
        self.run_request_phase(phase, Some((position, calls, rerun)))
    }

    /// Sends the request's W3C trace context (`traceparent`, with its
    /// `tracestate`) with a call, so the service's spans join the
    /// request's trace; an invalid `traceparent` is not forwarded.
    pub(super) fn propagate_trace(&self, call: &mut Call) {
        let request = self.cx.request_headers();
        let Some(parent) = request
            .get("traceparent")
            .filter(|p| crate::decision::trace_id(p).is_some())
        else {
            return;
        };
        let mut context = vec![("traceparent".to_owned(), parent.trim().to_owned())];
        // W3C: at most 32 members, 512 characters is what must be kept.
        if let Some(state) = request
            .get("tracestate")
            .filter(|s| s.len() <= 512 && s.bytes().all(|b| (0x20..0x7f).contains(&b)))
        {
            context.push(("tracestate".to_owned(), state.to_owned()));
        }
        let carried = match &mut call.request {
            CallRequest::Http { headers, .. } => headers,
            CallRequest::Grpc { metadata, .. } => metadata,
        };
        carried.retain(|(name, _)| {
            !name.eq_ignore_ascii_case("traceparent") && !name.eq_ignore_ascii_case("tracestate")
        });
        carried.extend(context);
    }

    /// Starts waiting for a fresher copy of `source`: for the fetch in
    /// flight, or for the one this worker's refresher is asked to make.
    /// `Err` when there is nothing to wait for (a newer copy is already
    /// shared, or the last answer came too recently to ask again).
    pub(super) fn wait_for_document(
        &mut self,
        position: usize,
        phase: Phases,
        calls: usize,
        source: RemoteSource,
    ) -> Result<Outcome, RemoteSource> {
        let remote = Arc::clone(self.cx.remote());
        if remote.sync(&source) {
            return Err(source);
        }
        let now = remote.now();
        let awaited = match source.next_step(remote.last_attempt(&source).as_ref(), now) {
            Step::TooSoon => return Err(source),
            Step::Wait { claimed_at } => claimed_at,
            // Any attempt claimed from now on is one it waits for.
            Step::Fetch => {
                remote.want(&source);
                now
            }
        };
        let waiting = Waiting::new(&source, remote.documents().version(&source), awaited, now);
        self.pending = Some(Box::new(Pending {
            position,
            phase,
            calls,
            on: WaitingOn::Document { source, waiting },
        }));
        Ok(Outcome::Wait(Wait::Poll))
    }

    /// A policy that cannot be waited for any longer: the request is
    /// answered 500 (fail closed).
    pub(super) fn give_up(&mut self, position: usize, entry: &ChainEntry, why: &str) -> Outcome {
        log::warn!("chain {:?}: {} {why}", self.chain.name, entry.label);
        self.passed = position;
        let reply = LocalReply::text(500, "policy engine error\n");
        if let Some(m) = self.chain.metrics.entries.get(position) {
            m.replied.increment();
        }
        self.note(position, PolicyDecision::Replied);
        self.count_reply(position, reply.status);
        self.outcome_of(Some((position, reply))).into()
    }
}
