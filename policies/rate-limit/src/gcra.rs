//! The generic cell rate algorithm (GCRA): a token bucket kept as one
//! number per key, so a bucket is one compare-and-swap in shared data or one
//! Redis key.
//!
//! A rate of `requests` per `period` admits a request every `emission`
//! (`period / requests`) on average, and up to `requests` at once: the
//! bucket starts full and refills one request's worth every `emission`.
//! The stored number is the *theoretical arrival time* (TAT): when the
//! bucket will be full again. A request of cost `c` at `now` is admitted
//! when `max(TAT, now) + c × emission − now ≤ tolerance`, where
//! `tolerance = requests × emission`, and then moves TAT there.
//!
//! Everything is in integer microseconds, so both hosts and the rate limit
//! service decide the same request the same way, and a fresh bucket admits
//! exactly `requests` before its first refill.

/// Microseconds in a second.
pub const MICROS: u64 = 1_000_000;

/// `Verdict::retry_after_us` of a request that can never be admitted.
pub const NEVER: u64 = u64::MAX;

/// A limit's rate: `requests` per `period_us` microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// The bucket's size: requests admitted at once from a full bucket.
    pub requests: u64,
    /// The period over which `requests` refill, in microseconds.
    pub period_us: u64,
}

/// What a bucket said to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Whether the request is admitted.
    pub allowed: bool,
    /// The TAT to store when admitted (the stored one, unchanged, when not).
    pub tat: u64,
    /// Requests of cost 1 still admitted at once after this one.
    pub remaining: u64,
    /// Microseconds until the bucket is full again.
    pub reset_us: u64,
    /// When denied, microseconds until this request would be admitted.
    pub retry_after_us: u64,
}

impl Rate {
    /// Microseconds between two refills of one request, rounded up: a
    /// bucket may refill a little slower than asked, never faster.
    pub fn emission_us(&self) -> u64 {
        self.period_us.div_ceil(self.requests.max(1)).max(1)
    }

    /// Checks that whole-microsecond refills enforce this rate within 1 %
    /// (600,000 a second would be enforced as 500,000); the error says
    /// what would be enforced.
    pub fn check(&self) -> Result<(), String> {
        // The enforced rate, period / emission, against the asked one.
        let emission = u128::from(self.emission_us());
        if u128::from(self.requests) * emission * 99 <= u128::from(self.period_us) * 100 {
            return Ok(());
        }
        let enforced = self.period_us / self.emission_us();
        Err(format!(
            "buckets refill in whole microseconds: {} per {} s would be enforced as {enforced}; choose a number that divides the window in microseconds, or count in larger units",
            self.requests,
            self.period_us / MICROS
        ))
    }

    /// How far ahead of now the TAT may run: a full bucket's worth.
    pub fn tolerance_us(&self) -> u64 {
        self.emission_us().saturating_mul(self.requests)
    }

    /// The period in whole seconds, rounded up (the `w` of `RateLimit-Policy`).
    pub fn window_secs(&self) -> u64 {
        self.period_us.div_ceil(MICROS)
    }

    /// Decides a request of `cost` at `now_us` against the stored `tat`
    /// (0 for a bucket never used).
    pub fn decide(&self, tat: u64, now_us: u64, cost: u64) -> Verdict {
        let emission = self.emission_us();
        let tolerance = self.tolerance_us();
        let start = tat.max(now_us);
        let next = start.saturating_add(cost.saturating_mul(emission));
        if next - now_us <= tolerance {
            let ahead = next - now_us;
            Verdict {
                allowed: true,
                tat: next,
                remaining: (tolerance - ahead) / emission,
                reset_us: ahead,
                retry_after_us: 0,
            }
        } else {
            let ahead = start - now_us;
            Verdict {
                allowed: false,
                tat,
                remaining: tolerance.saturating_sub(ahead) / emission,
                reset_us: ahead,
                // A cost above the bucket's size is never admitted.
                retry_after_us: if cost > self.requests {
                    NEVER
                } else {
                    next - now_us - tolerance
                },
            }
        }
    }

    /// The TAT after giving back a request of `cost` admitted earlier (its
    /// limit passed, another of the chain's did not).
    pub fn refund(&self, tat: u64, cost: u64) -> u64 {
        tat.saturating_sub(cost.saturating_mul(self.emission_us()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: u64 = 60 * MICROS;

    #[test]
    fn a_fresh_bucket_admits_exactly_its_size_then_refills_one_at_a_time() {
        let rate = Rate {
            requests: 10,
            period_us: MINUTE,
        };
        let now = 1_000 * MICROS;
        let mut tat = 0;
        for i in 0..10 {
            let verdict = rate.decide(tat, now, 1);
            assert!(verdict.allowed, "request {i}");
            assert_eq!(verdict.remaining, 9 - i);
            tat = verdict.tat;
        }
        let denied = rate.decide(tat, now, 1);
        assert!(!denied.allowed);
        assert_eq!(denied.retry_after_us, 6 * MICROS);
        assert_eq!(denied.reset_us, MINUTE);
        assert_eq!(denied.remaining, 0);
        // One emission later, exactly one more.
        let later = now + 6 * MICROS;
        let verdict = rate.decide(tat, later, 1);
        assert!(verdict.allowed);
        assert!(!rate.decide(verdict.tat, later, 1).allowed);
        // A full period later the bucket is full again.
        let full = rate.decide(verdict.tat, later + MINUTE, 1);
        assert_eq!(full.remaining, 9);
    }

    #[test]
    fn cost_counts_as_that_many_requests_and_a_refund_gives_them_back() {
        let rate = Rate {
            requests: 10,
            period_us: 10 * MICROS,
        };
        let now = 5 * MICROS;
        let first = rate.decide(0, now, 7);
        assert!(first.allowed);
        assert_eq!(first.remaining, 3);
        let second = rate.decide(first.tat, now, 4);
        assert!(!second.allowed);
        assert_eq!(second.retry_after_us, MICROS);
        assert!(rate.decide(first.tat, now, 3).allowed);
        let refunded = rate.refund(first.tat, 7);
        assert_eq!(rate.decide(refunded, now, 10).remaining, 0);
        assert!(rate.decide(refunded, now, 10).allowed);
        // A cost above the bucket's size is never admitted.
        assert_eq!(rate.decide(0, now, 11).retry_after_us, NEVER);
        // Cost 0 only reads.
        assert_eq!(rate.decide(first.tat, now, 0).tat, first.tat);
    }

    #[test]
    fn refills_round_to_the_stricter_side_and_imprecise_rates_are_refused() {
        let rate = |requests| Rate {
            requests,
            period_us: MICROS,
        };
        assert_eq!(rate(3).emission_us(), 333_334);
        assert!(rate(3).check().is_ok());
        assert!(rate(500_000).check().is_ok());
        assert!(rate(1_000_000).check().is_ok());
        let refused = rate(600_000).check().unwrap_err();
        assert!(refused.contains("enforced as 500000"), "{refused}");
        assert!(rate(2_000_000).check().is_err());
    }

    #[test]
    fn extreme_rates_do_not_overflow() {
        let rate = Rate {
            requests: u64::from(u32::MAX),
            period_us: MICROS,
        };
        assert_eq!(rate.emission_us(), 1);
        assert!(rate.decide(u64::MAX - 5, u64::MAX - 10, u64::MAX).tat > 0);
        let slow = Rate {
            requests: 1,
            period_us: u64::MAX,
        };
        assert!(slow.decide(0, 1, 1).allowed);
    }
}
