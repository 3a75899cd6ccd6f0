//! The one retry policy every service uses: exponential delays with "equal jitter" (half fixed,
//! half random, so many retrying tasks spread out), capped per delay, and a **maximum elapsed
//! time per operation** after which the caller gets `None` and must take its defined way out
//! (the booking processor gives the partition up and restores it through the recovery path of
//! a new assignment; see each consumer's runtime). Nothing retries forever.
//!
//! Pure: the caller passes the time in, so the schedule is tested without sleeping.

use std::time::{Duration, Instant};

/// How one kind of operation is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The first delay (before jitter).
    pub base: Duration,
    /// No single delay is longer.
    pub max_delay: Duration,
    /// No operation is retried past this much time since its first attempt.
    pub budget: Duration,
}

impl RetryPolicy {
    /// 50 ms doubling to at most 5 s per delay, within `budget`.
    pub const fn with_budget(budget: Duration) -> Self {
        RetryPolicy {
            base: Duration::from_millis(50),
            max_delay: Duration::from_secs(5),
            budget,
        }
    }

    /// The retries of one operation whose first attempt started at `started`.
    pub fn start(&self, started: Instant) -> Retries {
        Retries {
            policy: *self,
            started,
            attempt: 0,
        }
    }

    /// The delay before retry `attempt` (1-based), jittered.
    pub fn jittered_delay(&self, attempt: u32) -> Duration {
        self.delay(attempt, rand::random::<f64>())
    }

    /// The delay before retry `attempt` (1-based) for a random `unit` in `[0, 1]`:
    /// `base * 2^(attempt-1)` capped at `max_delay`, half of it fixed, half scaled by `unit`.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
            .min(self.max_delay);
        let half = exp / 2;
        half + half.mul_f64(unit.clamp(0.0, 1.0))
    }
}

/// Where one operation's retries stand.
#[derive(Debug, Clone)]
pub struct Retries {
    policy: RetryPolicy,
    started: Instant,
    attempt: u32,
}

impl Retries {
    /// The delay before the next attempt, or `None` once `now` is past the budget (give up).
    /// The delay never ends past the budget either: the last attempt happens inside it.
    pub fn next_delay(&mut self, now: Instant) -> Option<Duration> {
        self.next_delay_with(now, rand::random::<f64>())
    }

    /// [`next_delay`](Self::next_delay) with the jitter's random `unit` given (tests).
    pub fn next_delay_with(&mut self, now: Instant, unit: f64) -> Option<Duration> {
        let elapsed = now.saturating_duration_since(self.started);
        let left = self
            .policy
            .budget
            .checked_sub(elapsed)
            .filter(|d| !d.is_zero())?;
        self.attempt = self.attempt.saturating_add(1);
        Some(self.policy.delay(self.attempt, unit).min(left))
    }

    /// Retries so far (0 before the first [`next_delay`](Self::next_delay)).
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Time since the first attempt.
    pub fn elapsed(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.started)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: RetryPolicy = RetryPolicy {
        base: Duration::from_millis(100),
        max_delay: Duration::from_secs(1),
        budget: Duration::from_secs(3),
    };

    #[test]
    fn delays_double_up_to_the_cap_with_half_of_each_random() {
        let fixed: Vec<u128> = (1..=6).map(|a| POLICY.delay(a, 0.0).as_millis()).collect();
        assert_eq!(fixed, [50, 100, 200, 400, 500, 500]);
        let full: Vec<u128> = (1..=6).map(|a| POLICY.delay(a, 1.0).as_millis()).collect();
        assert_eq!(full, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(POLICY.delay(u32::MAX, 1.0), POLICY.max_delay);
    }

    #[test]
    fn an_operation_gives_up_at_its_budget_and_never_sleeps_past_it() {
        let t0 = Instant::now();
        let mut retries = POLICY.start(t0);
        let mut now = t0;
        let mut slept = Duration::ZERO;
        while let Some(delay) = retries.next_delay_with(now, 1.0) {
            now += delay;
            slept += delay;
            assert!(slept <= POLICY.budget);
        }
        assert_eq!(slept, POLICY.budget, "the last delay is cut to the budget");
        assert_eq!(retries.attempts(), 6);
        assert_eq!(retries.next_delay_with(now, 0.5), None, "stays given up");
    }

    #[test]
    fn a_zero_budget_gives_up_at_once() {
        let t0 = Instant::now();
        let mut retries = RetryPolicy::with_budget(Duration::ZERO).start(t0);
        assert_eq!(retries.next_delay_with(t0, 0.5), None);
        assert_eq!(retries.attempts(), 0);
    }
}
