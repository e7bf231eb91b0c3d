//! The per-worker cache of verified tokens, so a client that reuses its
//! token pays for the signature check once.
//!
//! Keyed by the SHA-256 of the token (the token itself is a credential and
//! is not kept). An entry is good until the token's `exp` (plus the clock
//! skew) and only for the key set it was verified with: a rotation that
//! drops a key also drops the tokens it verified. Bounded: when full,
//! expired entries go first, then everything (a burst of new tokens costs
//! at most one signature check each, as without a cache).

use std::collections::HashMap;
use std::sync::Arc;

/// A verified token's outcome.
#[derive(Clone)]
pub(crate) struct Verified {
    /// The index of the provider that verified it.
    pub(crate) provider: usize,
    /// All of its claims.
    pub(crate) claims: Arc<serde_json::Value>,
    /// Seconds since the epoch: usable from `not_before` until `expires`.
    pub(crate) not_before: u64,
    pub(crate) expires: u64,
    /// The version of the provider's key set that verified it.
    pub(crate) keys_version: u64,
}

pub(crate) struct TokenCache {
    capacity: usize,
    entries: HashMap<[u8; 32], Verified>,
}

impl TokenCache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: HashMap::new(),
        }
    }

    /// The cached verdict for a token digest, if still valid at `now`.
    pub(crate) fn get(&self, digest: &[u8; 32], now: u64) -> Option<&Verified> {
        self.entries
            .get(digest)
            .filter(|v| v.not_before <= now && now <= v.expires)
    }

    pub(crate) fn insert(&mut self, digest: [u8; 32], verified: Verified, now: u64) {
        if self.capacity == 0 {
            return;
        }
        if self.entries.len() >= self.capacity {
            self.entries.retain(|_, v| now <= v.expires);
            if self.entries.len() >= self.capacity {
                self.entries.clear();
            }
        }
        self.entries.insert(digest, verified);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verified(expires: u64) -> Verified {
        Verified {
            provider: 0,
            claims: Arc::new(serde_json::json!({"sub": "a"})),
            not_before: 10,
            expires,
            keys_version: 1,
        }
    }

    #[test]
    fn entries_hold_only_inside_their_validity() {
        let mut cache = TokenCache::new(4);
        cache.insert([1; 32], verified(100), 50);
        assert!(cache.get(&[1; 32], 9).is_none());
        assert!(cache.get(&[1; 32], 50).is_some());
        assert!(cache.get(&[1; 32], 101).is_none());
        assert!(cache.get(&[2; 32], 50).is_none());
    }

    #[test]
    fn a_full_cache_drops_expired_entries_first_and_stays_bounded() {
        let mut cache = TokenCache::new(2);
        cache.insert([1; 32], verified(20), 15);
        cache.insert([2; 32], verified(100), 15);
        cache.insert([3; 32], verified(100), 50);
        assert!(cache.get(&[2; 32], 50).is_some());
        assert!(cache.get(&[3; 32], 50).is_some());
        cache.insert([4; 32], verified(100), 50);
        assert!(cache.entries.len() <= 2);
        assert!(cache.get(&[4; 32], 50).is_some());
    }
}
