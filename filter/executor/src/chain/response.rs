//! The response phases: the upstream's response (or a local reply) going
//! back out through the layers of the chain, in reverse order.

// The chain's own types and imports: this is its code, kept apart.
use super::*;

impl Exchange {
    /// Runs the response-headers phase over the upstream's response headers
    /// (`:status` included).
    pub fn on_response_headers(&mut self, headers: HeaderMap) -> ResponseOutcome {
        if self.finished {
            return ResponseOutcome::Continue(HeaderMutations::default());
        }
        self.cx.begin_response(headers);
        if let Some(refused) = self.check_response_framing() {
            return refused;
        }
        let replied = run_response_phase(
            &self.chain,
            &mut self.cx,
            &self.skipped,
            self.passed,
            Phases::RESPONSE_HEADERS,
            |p, cx| p.on_response_headers(cx),
        );
        self.outcome_of(replied)
    }

    /// Runs the response-body phase over the whole upstream response body
    /// (streamed policies take it as one chunk). A body larger than the
    /// chain's `max_body_bytes` is replaced with 502. If a policy replaced
    /// the body, [`Exchange::take_body_edit`] has it.
    pub fn on_response_body(&mut self, body: &[u8]) -> ResponseOutcome {
        if self.finished {
            return ResponseOutcome::Continue(HeaderMutations::default());
        }
        if body.len() > self.chain.max_body_bytes {
            return self.refuse_oversized(Direction::Response);
        }
        match self.run_whole_response_body(self.passed, body.to_vec()) {
            Ok((body, edited)) => {
                if edited {
                    self.hand_over_edit(body);
                }
                self.response_decided();
                self.outcome_of(None)
            }
            Err(replied) => self.outcome_of(Some(replied)),
        }
    }

    /// Turns the result of a phase into an outcome; a reply first goes
    /// through the response phases of the policies outside the one that made
    /// it.
    pub(super) fn outcome_of(&mut self, replied: Option<(usize, LocalReply)>) -> ResponseOutcome {
        let Some((mut outer, mut reply)) = replied else {
            return ResponseOutcome::Continue(self.cx.take_pending());
        };
        self.finished = true;
        loop {
            self.cx.begin_response(reply_headers(&reply));
            let body = std::mem::take(&mut reply.body);
            let again = run_response_phase(
                &self.chain,
                &mut self.cx,
                &self.skipped,
                outer,
                Phases::RESPONSE_HEADERS,
                |p, cx| p.on_response_headers(cx),
            )
            .map_or_else(|| self.run_whole_response_body(outer, body), Err);
            match again {
                Err((position, replacement)) => {
                    outer = position;
                    reply = replacement;
                }
                Ok((body, _)) => {
                    reply.body = body;
                    break;
                }
            }
        }
        self.cx.take_pending();
        ResponseOutcome::Respond(reply_from_headers(self.cx.take_response(), reply))
    }
}

/// Runs `phase` over the first `outer` policies in reverse order; returns the
/// position and reply of the policy that replied, if one did.
pub(super) fn run_response_phase(
    chain: &Chain,
    cx: &mut Context,
    skipped: &[bool],
    outer: usize,
    phase: Phases,
    run: impl Fn(&dyn Policy, &mut Context) -> ResponseAction,
) -> Option<(usize, LocalReply)> {
    let entries = chain.entries.get(..outer).unwrap_or(&chain.entries);
    for (position, entry) in entries.iter().enumerate().rev() {
        if !entry.phases.contains(phase) || skipped.get(position).copied().unwrap_or(false) {
            continue;
        }
        cx.trace_running(&entry.label);
        if let ResponseAction::Respond(reply) = run(entry.policy.as_ref(), cx) {
            log::debug!(
                "chain {:?}: {} replaced the response with {}",
                chain.name,
                entry.label,
                reply.status
            );
            return Some((position, reply));
        }
    }
    None
}

pub(super) fn reply_headers(reply: &LocalReply) -> HeaderMap {
    let status = (":status".to_owned(), reply.status.to_string());
    HeaderMap::from_pairs(std::iter::once(status).chain(reply.headers.iter().cloned()))
}

/// Rebuilds a reply from headers edited by response phases.
pub(super) fn reply_from_headers(headers: HeaderMap, reply: LocalReply) -> LocalReply {
    let status = headers
        .get(":status")
        .and_then(|s| s.parse().ok())
        .unwrap_or(reply.status);
    let headers = headers
        .into_pairs()
        .into_iter()
        .filter(|(name, _)| !name.starts_with(':'))
        .collect();
    LocalReply {
        status,
        headers,
        body: reply.body,
    }
}
