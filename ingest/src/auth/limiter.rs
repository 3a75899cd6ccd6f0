//! Login rate limiting: a token bucket per key (one set keyed by account, one by client
//! address), on `governor`'s keyed GCRA limiter. In memory, so the limit is per ingest replica:
//! N replicas behind a load balancer allow up to N times the configured rate (documented in
//! ingest/README.md).

use std::fmt;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter as Gcra};

/// Keys kept before the ones whose bucket is full again are swept out.
const SWEEP_ABOVE: usize = 50_000;

/// Token buckets: `burst` attempts at once, one more every `refill`.
pub struct RateLimiter<C: Clock = DefaultClock> {
    limiter: Gcra<String, DefaultKeyedStateStore<String>, C, NoOpMiddleware<C::Instant>>,
    clock: C,
}

impl<C: Clock> fmt::Debug for RateLimiter<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("keys", &self.limiter.len())
            .finish_non_exhaustive()
    }
}

impl RateLimiter {
    pub fn new(burst: u32, refill: Duration) -> Self {
        Self::with_clock(burst, refill, DefaultClock::default())
    }
}

impl<C: Clock + Clone> RateLimiter<C> {
    /// A limiter on `clock` (tests pass a fake one).
    pub fn with_clock(burst: u32, refill: Duration, clock: C) -> Self {
        let period = refill.max(Duration::from_millis(1));
        // `with_period` refuses only a zero period, excluded above.
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| unreachable!("the period is at least 1 ms"))
            .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
        RateLimiter {
            limiter: Gcra::dashmap_with_clock(quota, clock.clone()),
            clock,
        }
    }

    /// Takes one attempt for `key`: `Ok` when allowed, otherwise how long until the next
    /// attempt is.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        if self.limiter.len() > SWEEP_ABOVE {
            self.limiter.retain_recent();
        }
        self.limiter
            .check_key(&key.to_owned())
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    #[test]
    fn a_burst_is_allowed_then_refused_then_refilled() {
        let clock = FakeRelativeClock::default();
        let limiter = RateLimiter::with_clock(3, Duration::from_secs(10), clock.clone());
        for _ in 0..3 {
            assert!(limiter.check("a").is_ok());
        }
        let wait = limiter.check("a").unwrap_err();
        assert!(
            wait <= Duration::from_secs(10) && wait > Duration::from_secs(9),
            "{wait:?}"
        );
        assert!(limiter.check("b").is_ok(), "keys are independent");
        clock.advance(Duration::from_secs(10));
        assert!(limiter.check("a").is_ok());
        assert!(limiter.check("a").is_err());
    }
}
