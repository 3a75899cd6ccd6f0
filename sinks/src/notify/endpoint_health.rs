//! Whether a webhook endpoint is tried now: a pure state machine (time passed in). An endpoint
//! that fails `suspend_after` times in a row is suspended for a cooldown, doubling per
//! suspension up to a cap; while suspended its deliveries are parked (dead-lettered) instead of
//! tried, so a failing endpoint backs off on its own and never holds a record, or the
//! channel's committed offset, for longer than those attempts. After the cooldown one delivery
//! is tried: a success clears the record, a failure suspends it again for longer.

use std::time::{Duration, Instant};

/// When an endpoint is suspended, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthLimits {
    /// Failures in a row that suspend an endpoint (at least 1).
    pub suspend_after: u32,
    /// The first suspension; each next one doubles, up to `max_cooldown`.
    pub first_cooldown: Duration,
    pub max_cooldown: Duration,
}

/// What to do with a delivery to the endpoint now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Try it.
    Send,
    /// Park it: the endpoint is suspended until then.
    Park { until: Instant },
    /// Drop it: the endpoint answered 410 Gone and was disabled (as if it had not been listed).
    Skip,
}

/// One endpoint's record of failures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointHealth {
    failures_in_a_row: u32,
    suspended_until: Option<Instant>,
    /// Suspensions since the last success (the cooldown doubles with each).
    suspensions: u32,
    /// Answered 410 Gone: disabled for good.
    gone: bool,
    /// When the attempt in flight started.
    attempt_started: Option<Instant>,
}

impl EndpointHealth {
    pub fn admit(&self, now: Instant) -> Admission {
        if self.gone {
            return Admission::Skip;
        }
        match self.suspended_until {
            Some(until) if now < until => Admission::Park { until },
            _ => Admission::Send,
        }
    }

    /// A 2xx: the endpoint is well again.
    pub fn succeeded(&mut self) {
        *self = EndpointHealth::default();
    }

    /// An attempt starts.
    pub fn started(&mut self, now: Instant) {
        self.attempt_started = Some(now);
    }

    /// An attempt ended neither in success nor in a failure of the endpoint (a refusal, the
    /// channel unavailable).
    pub fn ended(&mut self) {
        self.attempt_started = None;
    }

    /// Whether the endpoint is working through its deliveries: not suspended, its last attempt
    /// did not fail, and the one in flight (if any) started less than `stall` ago. A full queue
    /// of an endpoint that keeps up is waited for; one that does not is parked.
    pub fn keeping_up(&self, now: Instant, stall: Duration) -> bool {
        let suspended = self.suspended_until.is_some_and(|until| now < until);
        let stalled = self
            .attempt_started
            .is_some_and(|at| now.saturating_duration_since(at) > stall);
        !suspended && self.failures_in_a_row == 0 && !stalled
    }

    /// A 410 Gone: the endpoint was disabled; what was queued for it is dropped.
    pub fn gone(&mut self) {
        self.gone = true;
    }

    /// A failure the endpoint is responsible for (5xx, 408, 429, timeout, refused connection).
    /// Returns the end of the suspension when this failure suspends the endpoint.
    pub fn failed(&mut self, now: Instant, limits: &HealthLimits) -> Option<Instant> {
        self.attempt_started = None;
        self.failures_in_a_row = self.failures_in_a_row.saturating_add(1);
        // After a suspension one failure suspends it again (the trial delivery failed).
        let threshold = if self.suspensions > 0 {
            1
        } else {
            limits.suspend_after.max(1)
        };
        if self.failures_in_a_row < threshold {
            return None;
        }
        let doubling = 2u32.saturating_pow(self.suspensions.min(16));
        let cooldown = limits
            .first_cooldown
            .saturating_mul(doubling)
            .min(limits.max_cooldown);
        self.suspensions = self.suspensions.saturating_add(1);
        self.failures_in_a_row = 0;
        let until = now + cooldown;
        self.suspended_until = Some(until);
        Some(until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HealthLimits = HealthLimits {
        suspend_after: 3,
        first_cooldown: Duration::from_secs(30),
        max_cooldown: Duration::from_secs(100),
    };

    #[test]
    fn failures_in_a_row_suspend_and_the_cooldown_doubles_to_its_cap() {
        let t0 = Instant::now();
        let mut health = EndpointHealth::default();
        assert_eq!(health.failed(t0, &LIMITS), None);
        assert_eq!(health.failed(t0, &LIMITS), None);
        let until = health.failed(t0, &LIMITS).unwrap();
        assert_eq!(until, t0 + Duration::from_secs(30));
        assert_eq!(
            health.admit(t0 + Duration::from_secs(29)),
            Admission::Park { until }
        );
        // After the cooldown one trial; it fails: suspended again at once, for twice as long.
        let t1 = t0 + Duration::from_secs(30);
        assert_eq!(health.admit(t1), Admission::Send);
        assert_eq!(
            health.failed(t1, &LIMITS),
            Some(t1 + Duration::from_secs(60))
        );
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!(
            health.failed(t2, &LIMITS),
            Some(t2 + Duration::from_secs(100)),
            "capped"
        );
    }

    #[test]
    fn an_endpoint_keeps_up_while_its_attempts_succeed_quickly() {
        let t0 = Instant::now();
        let stall = Duration::from_secs(1);
        let mut health = EndpointHealth::default();
        assert!(health.keeping_up(t0, stall));
        health.started(t0);
        assert!(health.keeping_up(t0 + Duration::from_millis(900), stall));
        assert!(
            !health.keeping_up(t0 + Duration::from_millis(1100), stall),
            "hanging"
        );
        health.succeeded();
        assert!(health.keeping_up(t0 + Duration::from_secs(5), stall));
        health.started(t0);
        health.failed(t0, &LIMITS);
        assert!(!health.keeping_up(t0, stall), "its last attempt failed");
    }

    #[test]
    fn a_success_clears_everything() {
        let t0 = Instant::now();
        let mut health = EndpointHealth::default();
        health.failed(t0, &LIMITS);
        health.failed(t0, &LIMITS);
        health.succeeded();
        assert_eq!(health.failed(t0, &LIMITS), None, "the count starts over");
        for _ in 0..2 {
            health.failed(t0, &LIMITS);
        }
        health.succeeded();
        assert_eq!(health, EndpointHealth::default());
        assert_eq!(health.admit(t0), Admission::Send);
        health.gone();
        assert_eq!(
            health.admit(t0),
            Admission::Skip,
            "a disabled endpoint gets nothing more"
        );
    }
}
