//! The timer loop: wakes due payments, a bounded number at once, each under its lock.

use super::*;

impl Runtime {
    /// The timer loop (see the module docs): wakes due payments, at most
    /// [`MAX_CONCURRENT_WAKES`] at once, until `stopping` turns true and the wakes it started
    /// are over.
    pub(super) async fn drive_timers(&self, mut stopping: watch::Receiver<bool>) {
        let mut running = FuturesUnordered::new();
        loop {
            // The timer loop: until stopping and no wake runs.
            let stop = *stopping.borrow();
            if stop && running.is_empty() {
                break;
            }
            let mut next_due = None;
            if !stop {
                let free = MAX_CONCURRENT_WAKES.saturating_sub(running.len());
                let due = {
                    let mut wheel = self.wheel();
                    let due = wheel.take_due(now_millis(), free);
                    next_due = wheel.next_due();
                    due
                };
                for (partition, payment_id) in due {
                    running.push(self.wake(partition, payment_id));
                }
            }
            // Sleep until the next timer (bounded: the clock is the wall clock), a new timer,
            // a finished wake or the stop. At the limit, only a finished wake frees a place.
            let full = running.len() >= MAX_CONCURRENT_WAKES;
            let pause = match next_due {
                Some(at) if !full => {
                    Duration::from_millis(u64::try_from(at - now_millis()).unwrap_or(0))
                        .clamp(Duration::from_millis(5), Duration::from_secs(1))
                }
                _ => Duration::from_secs(1),
            };
            tokio::select! {
                Some(()) = running.next(), if !running.is_empty() => {}
                () = tokio::time::sleep(pause) => {}
                () = self.timer_set.notified() => {}
                _ = stopping.changed(), if !stop => {}
            }
        }
    }

    /// One payment's timer came due: under its lock, feed `Input::Wake`. A failure sets the
    /// timer again a little later (the stored timer is still there for a restart).
    pub(super) async fn wake(&self, partition: i32, payment_id: String) {
        let span = info_span!("payment_wake", partition, payment_id = %payment_id);
        async {
            self.deps.metrics.wakes.inc_by(1);
            let outcome = {
                let _lock = self.locks.lock(&payment_id).await;
                if self.wheel().owns(partition) {
                    Some(self.wake_payment(partition, &payment_id).await)
                } else {
                    // Revoked meanwhile: the new owner has the timer.
                    None
                }
            };
            let retry_in = match outcome {
                Some(Err(StepError::Conflict(reason))) => {
                    self.deps.metrics.conflicts.inc_by(1);
                    warn!(reason = %reason, "payment written by another processor while waking it; trying again");
                    Some(Duration::from_secs(1))
                }
                Some(Err(StepError::Fatal(reason))) => {
                    error!(reason = %reason, "waking a payment failed; trying again in a minute");
                    Some(Duration::from_secs(60))
                }
                Some(Err(StepError::GaveUp(reason))) => {
                    // The partition's timers are dropped and reloaded when it is taken again.
                    self.park(partition, reason, false);
                    None
                }
                Some(Ok(())) | None => None,
            };
            let mut wheel = self.wheel();
            wheel.finish(&payment_id);
            if let Some(delay) = retry_in {
                let at = now_millis() + Millis::try_from(delay.as_millis()).unwrap_or(60_000);
                wheel.set(partition, &payment_id, at);
            }
        }
        .instrument(span)
        .await;
        self.update_timer_gauge();
    }

    pub(super) async fn wake_payment(
        &self,
        partition: i32,
        payment_id: &str,
    ) -> Result<(), StepError> {
        let (mut state, mut stored) = self.load(payment_id).await?;
        if stored.revision == 0 {
            // A timer without a payment row (written just before a crash): nothing to wait for.
            return self.unschedule(partition, payment_id).await;
        }
        debug!(order_id = %state.order_id, status = state.status.name(), "payment timer due");
        // A wake is no provider event: nothing can be refused.
        self.run_input(partition, &mut state, &mut stored, Input::Wake)
            .await
            .map(|_| ())
    }
}
