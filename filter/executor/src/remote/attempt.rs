//! Who fetches a remote document, and who waits for whom.
//!
//! Every host keeps, per source, the record of the last fetch attempt where
//! all of its workers see it: Envoy's shared data in the Wasm host, the
//! process's memory in the shim. The rules here read that record and say
//! what a worker is to do; the hosts only store the record, send the
//! request and keep time. They guarantee:
//!
//! * **One fetch at a time** per source across workers, while its owner can
//!   still answer it.
//! * **A claim outlives its owner by at most a lease.** A claim is live
//!   while its owner renews it ([`OWNER_LEASE`]) and its answer is not
//!   overdue (`timeout` plus [`ANSWER_GRACE`]). An owner that goes away
//!   (a VM Envoy destroys after checking a configuration, a plugin being
//!   replaced) stops renewing, and the next worker that needs the document
//!   fetches it. An owner that can release its claim (a stream that is
//!   reset) does so, and the next claim is due at once.
//! * **Attempts are spaced** by `min_refetch_interval`, counted only from
//!   attempts that were answered (with a document or a failure): a lapsed
//!   or released claim was never an attempt, so it cannot keep a rotated key
//!   out.
//! * **A waiting request is never refused while the document is
//!   reachable.** It resumes when a newer document arrives, when the attempt
//!   it waited for (or a later one) is answered, or at its give-up time; if
//!   the attempt it waited for lapses, its host fetches for it
//!   ([`WaitStep::FetchForIt`]).

use std::time::Duration;

use super::{duration_millis, RemoteSource};

/// How long a claim stays live without its owner renewing it. Owners renew
/// their in-flight claims at least every [`RENEW_EVERY`], so a lapse means
/// the owner is gone, not busy.
pub const OWNER_LEASE: Duration = Duration::from_millis(1_500);

/// How often, at most, hosts poll what waits (and so renew claims).
pub const RENEW_EVERY: Duration = Duration::from_millis(500);

/// How long past a fetch's `timeout` its answer may take to reach the other
/// workers (the owner shares it on receipt; the others look on their next
/// tick).
pub const ANSWER_GRACE: Duration = Duration::from_millis(1_000);

/// The last fetch attempt of one source, as every worker of a host sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// When it was claimed, in milliseconds since the epoch. Also its
    /// identity: an owner only ever changes the attempt it claimed.
    pub claimed_at: u64,
    /// Where it is.
    pub state: AttemptState,
}

/// Where a fetch attempt is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptState {
    /// Sent; its owner last showed it was alive at `renewed_at`.
    InFlight {
        /// Milliseconds since the epoch.
        renewed_at: u64,
    },
    /// Answered, with a document or a failure.
    Answered,
    /// Given up by its owner before any answer.
    Released,
}

/// The encoded size of an [`Attempt`].
pub const ATTEMPT_BYTES: usize = 17;

impl Attempt {
    /// A claim made at `now`.
    pub fn claimed(now: u64) -> Self {
        Self {
            claimed_at: now,
            state: AttemptState::InFlight { renewed_at: now },
        }
    }

    /// The same attempt in another state.
    pub fn with_state(self, state: AttemptState) -> Self {
        Self { state, ..self }
    }

    /// Whether the attempt still blocks others at `now`: in flight, renewed
    /// within the lease, and not overdue.
    pub fn is_live(&self, source: &RemoteSource, now: u64) -> bool {
        match self.state {
            AttemptState::InFlight { renewed_at } => {
                now < self.answer_by(source)
                    && now < renewed_at.saturating_add(duration_millis(OWNER_LEASE))
            }
            AttemptState::Answered | AttemptState::Released => false,
        }
    }

    /// When its answer is overdue, everywhere.
    pub fn answer_by(&self, source: &RemoteSource) -> u64 {
        self.claimed_at
            .saturating_add(duration_millis(source.timeout))
            .saturating_add(duration_millis(ANSWER_GRACE))
    }

    /// The record as hosts store it: the claim time (8 bytes, big-endian),
    /// the state (0 answered, 1 in flight, 2 released), the renewal time.
    pub fn encode(&self) -> [u8; ATTEMPT_BYTES] {
        let (state, renewed_at) = match self.state {
            AttemptState::Answered => (0, 0),
            AttemptState::InFlight { renewed_at } => (1, renewed_at),
            AttemptState::Released => (2, 0),
        };
        let mut bytes = [0; ATTEMPT_BYTES];
        bytes[..8].copy_from_slice(&self.claimed_at.to_be_bytes());
        bytes[8] = state;
        bytes[9..].copy_from_slice(&renewed_at.to_be_bytes());
        bytes
    }

    /// Reads a record written by [`Attempt::encode`]; `None` for anything
    /// else (an empty entry: no attempt yet).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let bytes: &[u8; ATTEMPT_BYTES] = bytes.try_into().ok()?;
        let claimed_at = u64::from_be_bytes(bytes[..8].try_into().ok()?);
        let renewed_at = u64::from_be_bytes(bytes[9..].try_into().ok()?);
        let state = match bytes[8] {
            0 => AttemptState::Answered,
            1 => AttemptState::InFlight { renewed_at },
            2 => AttemptState::Released,
            _ => return None,
        };
        Some(Self { claimed_at, state })
    }
}

/// What a worker that needs a document is to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Claim the next attempt and fetch.
    Fetch,
    /// Another worker's fetch, claimed at this time, is live: wait for it.
    Wait {
        /// The claim time of the awaited attempt.
        claimed_at: u64,
    },
    /// An attempt was answered too recently to ask again: decide with what
    /// is cached.
    TooSoon,
}

impl RemoteSource {
    /// What a worker needing this document does at `now`, given the last
    /// attempt.
    pub fn next_step(&self, last: Option<&Attempt>, now: u64) -> Step {
        match last {
            Some(attempt) if attempt.is_live(self, now) => Step::Wait {
                claimed_at: attempt.claimed_at,
            },
            Some(attempt)
                if attempt.state == AttemptState::Answered
                    && now.saturating_sub(attempt.claimed_at)
                        < duration_millis(self.min_refetch_interval) =>
            {
                Step::TooSoon
            }
            // No attempt, a released one, a lapsed one, or one answered
            // long enough ago.
            _ => Step::Fetch,
        }
    }
}

/// A request held until a fetch of a document it needs is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    /// The version (`fetched_at`) of the document it had, if any.
    seen: Option<u64>,
    /// The claim time of the attempt it waits for; when it waits for the
    /// next attempt, the time it began waiting (claims are stamped with
    /// their time, so any attempt claimed since will do).
    awaited: u64,
    /// When it resumes whatever happened, so nothing hangs: room for the
    /// attempt it found and one more claimed for it.
    give_up_at: u64,
}

/// What a waiting request is to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitStep {
    /// Resume: its policy decides with what is cached now.
    Resume,
    /// Keep waiting for the live attempt.
    Wait,
    /// The attempt it waited for lapsed or was released: its host is to
    /// claim the next one and fetch for it, and it keeps waiting.
    FetchForIt,
}

impl Waiting {
    /// Starts waiting at `now`, with the document version `seen`, for the
    /// attempt claimed at `awaited` (`now`: the next one).
    pub fn new(source: &RemoteSource, seen: Option<u64>, awaited: u64, now: u64) -> Self {
        let attempt = duration_millis(source.timeout).saturating_add(duration_millis(ANSWER_GRACE));
        Self {
            seen,
            awaited,
            give_up_at: now
                .saturating_add(attempt.saturating_mul(2))
                .saturating_add(duration_millis(OWNER_LEASE)),
        }
    }

    /// What to do at `now`, given the cached document's version and the
    /// last attempt.
    pub fn poll(
        &mut self,
        source: &RemoteSource,
        version: Option<u64>,
        last: Option<&Attempt>,
        now: u64,
    ) -> WaitStep {
        if version > self.seen || now >= self.give_up_at {
            return WaitStep::Resume;
        }
        if let Some(attempt) = last {
            if attempt.state == AttemptState::Answered && attempt.claimed_at >= self.awaited {
                return WaitStep::Resume;
            }
        }
        match source.next_step(last, now) {
            Step::Wait { claimed_at } => {
                self.awaited = claimed_at;
                WaitStep::Wait
            }
            Step::Fetch => WaitStep::FetchForIt,
            Step::TooSoon => WaitStep::Resume,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> RemoteSource {
        RemoteSource {
            uri: "http://issuer.example/jwks".into(),
            cluster: "issuer".into(),
            timeout: Duration::from_secs(2),
            refresh_interval: Duration::from_secs(300),
            min_refetch_interval: Duration::from_secs(30),
        }
    }

    const T: u64 = 1_000_000;

    #[test]
    fn records_survive_encoding_and_anything_else_is_no_attempt() {
        for state in [
            AttemptState::Answered,
            AttemptState::Released,
            AttemptState::InFlight { renewed_at: T + 7 },
        ] {
            let attempt = Attempt {
                claimed_at: T,
                state,
            };
            assert_eq!(Attempt::decode(&attempt.encode()), Some(attempt));
        }
        assert_eq!(Attempt::decode(&[]), None);
        assert_eq!(Attempt::decode(&[0; 9]), None);
        let mut unknown = Attempt::claimed(T).encode();
        unknown[8] = 9;
        assert_eq!(Attempt::decode(&unknown), None);
    }

    #[test]
    fn a_live_claim_makes_others_wait() {
        let source = source();
        let claim = Attempt::claimed(T);
        assert_eq!(
            source.next_step(Some(&claim), T + 100),
            Step::Wait { claimed_at: T }
        );
        assert_eq!(source.next_step(None, T), Step::Fetch);
    }

    #[test]
    fn a_claim_whose_owner_stopped_renewing_it_lapses_before_its_timeout() {
        // The owner (a VM Envoy destroyed) never renews: 1.5 s later the
        // next worker fetches, though the 2 s timeout has not passed.
        let source = source();
        let orphan = Attempt::claimed(T);
        assert_eq!(
            source.next_step(Some(&orphan), T + 1_499),
            Step::Wait { claimed_at: T }
        );
        assert_eq!(source.next_step(Some(&orphan), T + 1_500), Step::Fetch);
        // Renewed, it stays live until its answer is overdue.
        let renewed = orphan.with_state(AttemptState::InFlight {
            renewed_at: T + 2_500,
        });
        assert!(renewed.is_live(&source, T + 2_999));
        assert!(!renewed.is_live(&source, T + 3_000));
        assert_eq!(source.next_step(Some(&renewed), T + 3_000), Step::Fetch);
    }

    #[test]
    fn only_answered_attempts_space_the_next_ones() {
        let source = source();
        let answered = Attempt::claimed(T).with_state(AttemptState::Answered);
        assert_eq!(source.next_step(Some(&answered), T + 29_999), Step::TooSoon);
        assert_eq!(source.next_step(Some(&answered), T + 30_000), Step::Fetch);
        // A released or lapsed claim never reached an answer: the next
        // claim is due at once, whatever min_refetch_interval says.
        let released = Attempt::claimed(T).with_state(AttemptState::Released);
        assert_eq!(source.next_step(Some(&released), T + 1), Step::Fetch);
        assert_eq!(
            source.next_step(Some(&Attempt::claimed(T)), T + 3_000),
            Step::Fetch
        );
    }

    #[test]
    fn a_waiter_resumes_on_a_newer_document_or_an_answer_to_its_attempt() {
        let source = source();
        let claim = Attempt::claimed(T);
        let mut waiting = Waiting::new(&source, Some(5), T, T + 10);
        assert_eq!(
            waiting.poll(&source, Some(5), Some(&claim), T + 20),
            WaitStep::Wait
        );
        assert_eq!(
            waiting.poll(&source, Some(T + 30), Some(&claim), T + 30),
            WaitStep::Resume,
            "a newer document"
        );
        let failed = claim.with_state(AttemptState::Answered);
        assert_eq!(
            waiting.poll(&source, Some(5), Some(&failed), T + 30),
            WaitStep::Resume,
            "a failed answer: decide with what is cached"
        );
    }

    #[test]
    fn a_waiter_whose_attempt_lapses_or_is_released_gets_a_fetch_then_waits_for_it() {
        let source = source();
        let mut waiting = Waiting::new(&source, None, T, T);
        let released = Attempt::claimed(T).with_state(AttemptState::Released);
        assert_eq!(
            waiting.poll(&source, None, Some(&released), T + 50),
            WaitStep::FetchForIt
        );
        let orphan = Attempt::claimed(T);
        assert_eq!(
            waiting.poll(&source, None, Some(&orphan), T + 1_500),
            WaitStep::FetchForIt
        );
        // Its host claimed the next attempt: it waits for that one, and an
        // answer to the old one no longer counts.
        let next = Attempt::claimed(T + 1_500);
        assert_eq!(
            waiting.poll(&source, None, Some(&next), T + 1_510),
            WaitStep::Wait
        );
        let answered = next.with_state(AttemptState::Answered);
        assert_eq!(
            waiting.poll(&source, None, Some(&answered), T + 1_600),
            WaitStep::Resume
        );
    }

    #[test]
    fn a_waiter_for_the_next_attempt_is_not_resumed_by_an_earlier_answer() {
        let source = source();
        let earlier = Attempt::claimed(T).with_state(AttemptState::Answered);
        let now = T + 40_000;
        let mut waiting = Waiting::new(&source, Some(T), now, now);
        assert_eq!(
            waiting.poll(&source, Some(T), Some(&earlier), now + 20),
            WaitStep::FetchForIt
        );
        let next = Attempt::claimed(now + 20).with_state(AttemptState::Answered);
        assert_eq!(
            waiting.poll(&source, Some(T), Some(&next), now + 40),
            WaitStep::Resume
        );
    }

    #[test]
    fn a_waiter_gives_up_in_bounded_time() {
        let source = source();
        let mut waiting = Waiting::new(&source, None, 0, T);
        let limit = T + 2 * (2_000 + 1_000) + 1_500;
        // Claims keep coming and being renewed, never answered: it still
        // resumes.
        let endless = Attempt {
            claimed_at: limit - 1_000,
            state: AttemptState::InFlight {
                renewed_at: limit - 100,
            },
        };
        assert_eq!(
            waiting.poll(&source, None, Some(&endless), limit - 1),
            WaitStep::Wait
        );
        assert_eq!(
            waiting.poll(&source, None, Some(&endless), limit),
            WaitStep::Resume
        );
    }
}
