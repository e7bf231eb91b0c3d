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
//! entry is first created *empty* (a full bucket, nothing consumed) and
//! only then consumed with compare-and-swap. A creation can overwrite
//! another worker's only if that worker created the entry *and* consumed
//! from it between this worker's read and write, a window of one host
//! call: the one place a count can be off, once per new key.
//!
//! Entries are never deleted (shared data has no expiry), so the number of
//! entries is bounded: each limit has `max_keys` slots, and a key's slot is
//! its hash modulo that. A slot remembers which key owns it; another key
//! hashing there takes it over once the owner's bucket is full again
//! (idle), and until then shares it, which can only make both stricter,
//! never looser.

use policy_executor::{Host, SharedError};

use crate::gcra::Verdict;
use crate::{secs_up, Bucket, Limit, Report};

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
    pub(crate) fn new(max_keys: u64) -> Result<Self, policy_executor::ParamError> {
        if max_keys == 0 {
            return Err(policy_executor::ParamError::at("max_keys", "at least 1"));
        }
        Ok(Self { max_keys })
    }

    fn slot(&self, limit: &Limit, bucket: &Bucket) -> Slot {
        let owner = fnv1a(limit.bucket_id(bucket).as_bytes());
        Slot {
            key: format!("{KEY_PREFIX}{}/{}", limit.name, owner % self.max_keys),
            owner,
        }
    }

    /// Decides a request against every limit: admitted (and counted in
    /// every bucket) only if every bucket has room.
    pub(crate) fn decide(
        &self,
        host: &dyn Host,
        limits: &[Limit],
        buckets: &[Bucket],
        costs: &[u64],
    ) -> Vec<Report> {
        let now = host.now_millis().saturating_mul(1_000);
        let slots: Vec<Slot> = limits
            .iter()
            .zip(buckets)
            .map(|(limit, bucket)| self.slot(limit, bucket))
            .collect();
        let mut reports = Vec::with_capacity(limits.len());
        let mut views = Vec::with_capacity(limits.len());
        for (i, limit) in limits.iter().enumerate() {
            let view = read(host, &slots[i], now);
            let verdict = limit.rate(&buckets[i]).decide(view.tat, now, costs[i]);
            reports.push(report(limit, &buckets[i], &verdict));
            views.push(view);
        }
        if reports.iter().any(|r| !r.allowed) {
            // Refused: the limits that had room report it unconsumed.
            for (i, limit) in limits.iter().enumerate() {
                if reports[i].allowed {
                    let unchanged = limit.rate(&buckets[i]).decide(views[i].tat, now, 0);
                    reports[i] = report(limit, &buckets[i], &unchanged);
                }
            }
            return reports;
        }
        for i in 0..limits.len() {
            let rate = limits[i].rate(&buckets[i]);
            match commit(host, &slots[i], now, &mut views[i], |tat| {
                rate.decide(tat, now, costs[i])
            }) {
                Ok(verdict) => reports[i] = report(&limits[i], &buckets[i], &verdict),
                Err(verdict) => {
                    // Another worker took the room first: give back what
                    // the earlier limits counted, and refuse.
                    for j in 0..i {
                        let rate = limits[j].rate(&buckets[j]);
                        refund(host, &slots[j], |tat| rate.refund(tat, costs[j]));
                    }
                    reports[i] = report(&limits[i], &buckets[i], &verdict);
                    return reports;
                }
            }
        }
        reports
    }
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
/// another worker wrote first. `Err` carries a refusal (the room went to
/// another worker, or the races never ended).
fn commit(
    host: &dyn Host,
    slot: &Slot,
    now: u64,
    view: &mut View,
    decide: impl Fn(u64) -> Verdict,
) -> Result<Verdict, Verdict> {
    for _ in 0..MAX_ATTEMPTS {
        if view.cas.is_none() {
            // Create the entry empty, then swap on it like everyone else.
            let empty = Entry {
                tat: 0,
                owner: slot.owner,
            };
            if let Err(SharedError::Failed(why)) = host.shared_set(&slot.key, &empty.encode(), None)
            {
                log::warn!("rate-limit: cannot create {:?}: {why}", slot.key);
                break;
            }
            *view = read(host, slot, now);
            continue;
        }
        let verdict = decide(view.tat);
        if !verdict.allowed {
            return Err(verdict);
        }
        let entry = Entry {
            tat: verdict.tat,
            owner: slot.owner,
        };
        match host.shared_set(&slot.key, &entry.encode(), view.cas) {
            Ok(()) => return Ok(verdict),
            Err(SharedError::CasMismatch) => *view = read(host, slot, now),
            Err(SharedError::Failed(why)) => {
                log::warn!("rate-limit: cannot write {:?}: {why}", slot.key);
                break;
            }
        }
    }
    // Undecidable: refused (fail closed), to be retried in a second.
    Err(Verdict {
        allowed: false,
        tat: view.tat,
        remaining: 0,
        reset_us: 0,
        retry_after_us: crate::gcra::MICROS,
    })
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

fn report(limit: &Limit, bucket: &Bucket, verdict: &Verdict) -> Report {
    let rate = limit.rate(bucket);
    Report {
        allowed: verdict.allowed,
        quota: rate.requests,
        window_secs: rate.window_secs(),
        remaining: verdict.remaining,
        reset_secs: secs_up(verdict.reset_us),
        retry_after_secs: secs_up(verdict.retry_after_us).max(u64::from(!verdict.allowed)),
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
