//! Local buckets: one GCRA bucket per limit and key in the host's shared
//! storage, so every worker of an Envoy (every thread of the shim) counts
//! against the same bucket.
//!
//! A bucket is one entry, written with compare-and-swap: a worker reads
//! the entry and its version, decides, and writes the new TAT only if no
//! other worker wrote in between; if one did, it reads again and decides
//! again. Two workers can therefore never both take the last request.
//!
//! Proxy-Wasm's shared data cannot create an entry atomically (a write
//! naming a version succeeds on an entry that does not exist), so a missing
//! entry is read again, then created *empty* (a full bucket, nothing
//! consumed), and only then consumed with compare-and-swap. A creation can
//! overwrite another worker's only if that worker created the entry *and*
//! consumed from it between this worker's last read and its write, a
//! window of one host call: the one place a count can be off, once per new
//! key.
//!
//! Entries are never deleted (shared data has no expiry), so the number of
//! entries is bounded: each limit has `max_keys` slots, and a key's slot is
//! its hash modulo that. A slot remembers which key owns it; another key
//! hashing there takes it over once the owner's bucket is full again
//! (idle), and until then shares it, which can only make both stricter,
//! never looser.

use policy_executor::{Host, SharedError};

use crate::gcra::{Rate, Verdict, NEVER};
use crate::{secs_up, Bucket, Limit, Report, State};

/// The prefix of the shared-storage entries.
const KEY_PREFIX: &str = "policy-engine/rate-limit/";

/// How many times a write that lost a race is decided again before the
/// request is refused (fail closed); each retry means another worker
/// admitted a request meanwhile.
const MAX_ATTEMPTS: usize = 64;

/// The local buckets of one policy instance.
pub(crate) struct Buckets {
    max_keys: u64,
}

/// A bucket's entry: its TAT and the hash of the key that owns the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    tat: u64,
    owner: u64,
}

impl Entry {
    fn encode(self) -> [u8; 16] {
        let mut bytes = [0; 16];
        bytes[..8].copy_from_slice(&self.tat.to_be_bytes());
        bytes[8..].copy_from_slice(&self.owner.to_be_bytes());
        bytes
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let tat = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
        let owner = u64::from_be_bytes(bytes.get(8..16)?.try_into().ok()?);
        Some(Self { tat, owner })
    }
}

/// Where one request's bucket of one limit is.
struct Slot {
    key: String,
    owner: u64,
}

impl Buckets {
    pub(crate) fn new(max_keys: u64) -> Self {
        Self { max_keys }
    }

    fn slot(&self, limit: &Limit, bucket: &Bucket) -> Slot {
        let owner = fnv1a(limit.bucket_id(bucket).as_bytes());
        Slot {
            key: format!("{KEY_PREFIX}{}/{}", limit.name, owner % self.max_keys),
            owner,
        }
    }

    /// Decides a request against every limit: admitted (and counted in
    /// every bucket) only if every bucket has room. `Err` when the shared
    /// storage would not let it decide (the caller refuses the request).
    pub(crate) fn decide(
        &self,
        host: &dyn Host,
        limits: &[Limit],
        buckets: &[Bucket],
        costs: &[u64],
    ) -> Result<Vec<Report>, String> {
        let now = host.now_millis().saturating_mul(1_000);
        let mut entries: Vec<Candidate> = limits
            .iter()
            .zip(buckets)
            .zip(costs)
            .map(|((limit, bucket), &cost)| {
                let slot = self.slot(limit, bucket);
                let view = read(host, &slot, now);
                let rate = limit.rate(bucket);
                let verdict = rate.decide(view.tat, now, cost);
                Candidate {
                    slot,
                    view,
                    rate,
                    cost,
                    verdict,
                }
            })
            .collect();
        if entries.iter().any(|c| !c.verdict.allowed) {
            // Refused: the limits that had room report it unconsumed.
            return Ok(entries
                .iter()
                .map(|c| {
                    if c.verdict.allowed {
                        report(&c.rate, &c.rate.decide(c.view.tat, now, 0))
                    } else {
                        report(&c.rate, &c.verdict)
                    }
                })
                .collect());
        }
        for i in 0..entries.len() {
            let (committed, rest) = entries.split_at_mut(i);
            let Some(candidate) = rest.first_mut() else {
                break;
            };
            let (rate, cost) = (candidate.rate, candidate.cost);
            match commit(host, &candidate.slot, now, &mut candidate.view, |tat| {
                rate.decide(tat, now, cost)
            })? {
                Ok(verdict) => candidate.verdict = verdict,
                Err(verdict) => {
                    // Another worker took the room first: give back what
                    // the earlier limits counted, and refuse.
                    for earlier in committed.iter_mut() {
                        let (rate, cost) = (earlier.rate, earlier.cost);
                        refund(host, &earlier.slot, |tat| rate.refund(tat, cost));
                        earlier.verdict = rate.decide(earlier.view.tat, now, 0);
                    }
                    candidate.verdict = verdict;
                    return Ok(entries
                        .iter()
                        .map(|c| report(&c.rate, &c.verdict))
                        .collect());
                }
            }
        }
        Ok(entries
            .iter()
            .map(|c| report(&c.rate, &c.verdict))
            .collect())
    }
}

/// One limit's bucket for one request, and what it says.
struct Candidate {
    slot: Slot,
    view: View,
    rate: Rate,
    cost: u64,
    verdict: Verdict,
}

/// What a worker read of a slot: the TAT that applies to its key, and the
/// entry's version (`None`: there is no entry yet).
struct View {
    tat: u64,
    cas: Option<u32>,
}

fn read(host: &dyn Host, slot: &Slot, now: u64) -> View {
    let (bytes, cas) = host.shared_get(&slot.key);
    let tat = match bytes.as_deref().and_then(Entry::decode) {
        Some(entry) if entry.owner == slot.owner => entry.tat,
        // Another key's slot: taken over once idle, shared until then.
        Some(entry) if entry.tat > now => entry.tat,
        _ => 0,
    };
    View {
        tat,
        cas: cas.filter(|_| bytes.is_some()),
    }
}

/// Writes the verdict `decide` gives on the slot, deciding again each time
/// another worker wrote first: `Ok(Ok)` admitted, `Ok(Err)` refused (the
/// room went to another worker), `Err` when the storage fails or the races
/// never end.
fn commit(
    host: &dyn Host,
    slot: &Slot,
    now: u64,
    view: &mut View,
    decide: impl Fn(u64) -> Verdict,
) -> Result<Result<Verdict, Verdict>, String> {
    for _ in 0..MAX_ATTEMPTS {
        if view.cas.is_none() {
            // Read again right before creating, to keep the window in
            // which a creation can overwrite another's to one host call.
            *view = read(host, slot, now);
            if view.cas.is_some() {
                continue;
            }
            // Create the entry empty, then swap on it like everyone else.
            let empty = Entry {
                tat: 0,
                owner: slot.owner,
            };
            if let Err(SharedError::Failed(why)) = host.shared_set(&slot.key, &empty.encode(), None)
            {
                return Err(format!("cannot create {:?}: {why}", slot.key));
            }
            *view = read(host, slot, now);
            continue;
        }
        let verdict = decide(view.tat);
        if !verdict.allowed {
            return Ok(Err(verdict));
        }
        let entry = Entry {
            tat: verdict.tat,
            owner: slot.owner,
        };
        match host.shared_set(&slot.key, &entry.encode(), view.cas) {
            Ok(()) => return Ok(Ok(verdict)),
            Err(SharedError::CasMismatch) => *view = read(host, slot, now),
            Err(SharedError::Failed(why)) => {
                return Err(format!("cannot write {:?}: {why}", slot.key))
            }
        }
    }
    Err(format!(
        "{:?}: still contended after {MAX_ATTEMPTS} attempts",
        slot.key
    ))
}

/// Gives back what a request counted in `slot`.
fn refund(host: &dyn Host, slot: &Slot, give_back: impl Fn(u64) -> u64) {
    for _ in 0..MAX_ATTEMPTS {
        let (bytes, cas) = host.shared_get(&slot.key);
        let Some(entry) = bytes.as_deref().and_then(Entry::decode) else {
            return;
        };
        if entry.owner != slot.owner {
            return;
        }
        let entry = Entry {
            tat: give_back(entry.tat),
            ..entry
        };
        match host.shared_set(&slot.key, &entry.encode(), cas) {
            Err(SharedError::CasMismatch) => continue,
            _ => return,
        }
    }
}

fn report(rate: &Rate, verdict: &Verdict) -> Report {
    Report {
        allowed: verdict.allowed,
        quota: rate.requests,
        window_secs: rate.window_secs(),
        state: Some(State {
            remaining: verdict.remaining,
            reset_secs: secs_up(verdict.reset_us),
        }),
        retry_after_secs: (!verdict.allowed && verdict.retry_after_us != NEVER)
            .then(|| secs_up(verdict.retry_after_us).max(1)),
    }
}

/// FNV-1a: a stable hash, the same in every worker and every build.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}
