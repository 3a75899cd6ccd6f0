//! The partitions this instance owns: taking one (the path of every assignment: timers loaded,
//! resume point decided from the store's watermark and the group's offset), giving one up when a
//! fault outlasts the retry budget and taking it again, the one bounded retry of every call, and
//! the running comparison of the store's watermarks.

use super::*;

impl Runtime {
    /// Acts on rebalances noted since the last batch: drops revoked partitions' timers, takes
    /// the assigned ones (see [`take`](Self::take)).
    pub(super) async fn apply_membership(
        &self,
        consumer: &PaymentConsumer,
        context: &GroupContext,
    ) {
        for change in context.take() {
            match change {
                Membership::Revoked(partitions) => {
                    for partition in partitions {
                        self.written_map().remove(&partition);
                        self.parked_map().remove(&partition);
                        let dropped = self.wheel().revoke(partition);
                        info!(
                            partition,
                            timers = dropped,
                            "partition revoked; timers dropped"
                        );
                    }
                }
                Membership::Assigned(partitions) => {
                    for partition in partitions {
                        // Assigned partitions arrive paused (the pausing context).
                        if let Err(reason) = self.take(consumer, partition, self.policy()).await {
                            self.park(partition, reason, true);
                        }
                    }
                }
            }
        }
        self.publish_parked();
        self.update_timer_gauge();
    }

    /// Takes a (paused) partition: loads its timers from the store and decides where it
    /// resumes, then resumes it. The path of every new assignment, and of a parked partition
    /// taken again: nothing is kept from before.
    pub(super) async fn take(
        &self,
        consumer: &PaymentConsumer,
        partition: i32,
        policy: RetryPolicy,
    ) -> Result<(), String> {
        self.wheel().assign(partition);
        let loaded = self.load_timers(partition, policy).await?;
        info!(
            partition,
            timers = loaded,
            "partition assigned; timers loaded"
        );
        self.reposition(consumer, partition, policy).await
    }

    pub(super) fn parked_map(&self) -> std::sync::MutexGuard<'_, BTreeMap<i32, Parked>> {
        // A panic while holding the map leaves it whole (single inserts and removes).
        self.parked.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn is_parked(&self, partition: i32) -> bool {
        self.parked_map().contains_key(&partition)
    }

    /// Gives a partition up after a fault outlasted the retry budget: its timers are dropped,
    /// its records are not applied, `/readyz` answers 503, and [`tend_parked`](Self::tend_parked)
    /// takes it again later. `paused`: the consumer already paused it.
    pub(super) fn park(&self, partition: i32, reason: String, paused: bool) {
        let dropped = self.wheel().revoke(partition);
        self.written_map().remove(&partition);
        let mut parked = self.parked_map();
        let before = parked.get(&partition);
        let attempt = before.map_or(0, |p| p.attempt.saturating_add(1));
        let paused = paused || before.is_some_and(|p| p.paused);
        let wait = self.policy().jittered_delay(attempt.saturating_add(3));
        if attempt == 0 {
            warn!(partition, timers_dropped = dropped, reason = %reason, "partition given up after its retry budget; it is taken again when the fault clears");
        } else {
            debug!(partition, attempt, reason = %reason, "taking the parked partition again failed");
        }
        parked.insert(
            partition,
            Parked {
                reason,
                paused,
                attempt,
                retry_at: Instant::now() + wait,
            },
        );
        drop(parked);
        self.publish_parked();
    }

    /// Pauses partitions parked since the last batch, and tries once to take again each parked
    /// partition whose wait is over (its wait grows, jittered, up to the policy's longest delay).
    /// Returns the partitions taken again.
    pub(super) async fn tend_parked(&self, consumer: &PaymentConsumer) -> Vec<i32> {
        let now = Instant::now();
        let (to_pause, due) = {
            let mut parked = self.parked_map();
            let mut to_pause = TopicPartitionList::new();
            for (partition, p) in parked.iter_mut().filter(|(_, p)| !p.paused) {
                to_pause.add_partition(&self.topics.payments, *partition);
                p.paused = true;
            }
            let due: Vec<i32> = parked
                .iter()
                .filter(|(_, p)| p.retry_at <= now)
                .map(|(partition, _)| *partition)
                .collect();
            (to_pause, due)
        };
        if to_pause.count() > 0
            && let Err(e) = consumer.pause(&to_pause)
        {
            warn!(error = %e, "pausing parked partitions failed; their records are dropped until they are taken again");
        }
        let mut taken = Vec::new();
        for partition in due {
            // One try: the parked wait is the retry, and healthy partitions keep going.
            match self
                .take(
                    consumer,
                    partition,
                    RetryPolicy::with_budget(Duration::ZERO),
                )
                .await
            {
                // A wake that gave up while `take` awaited parked it again (and dropped its
                // timers): it stays parked, and is paused again next turn (`take` resumed it).
                Ok(()) if !self.wheel().owns(partition) => {
                    if let Some(p) = self.parked_map().get_mut(&partition) {
                        p.paused = false;
                    }
                }
                Ok(()) => {
                    self.parked_map().remove(&partition);
                    taken.push(partition);
                    info!(partition, "parked partition taken again: the fault cleared");
                }
                Err(reason) => self.park(partition, reason, true),
            }
        }
        self.publish_parked();
        taken
    }

    pub(super) fn publish_parked(&self) {
        let parked = self.parked_map();
        let reasons = parked
            .iter()
            .map(|(partition, p)| format!("partition {partition} given up: {}", p.reason))
            .collect();
        let count = i64::try_from(parked.len()).unwrap_or(i64::MAX);
        drop(parked);
        let metrics = &self.deps.metrics;
        metrics.partitions_parked.set(count);
        metrics.readiness.set(reasons);
    }

    pub(super) fn policy(&self) -> RetryPolicy {
        self.deps.settings.retry_policy()
    }

    /// Calls `call` (given the number of retries so far) until it succeeds, fails for good
    /// (`transient` says no), or `policy`'s budget is spent; `counter` counts the retries.
    pub(super) async fn retrying<T, E, F, Fut>(
        &self,
        policy: RetryPolicy,
        what: &str,
        counter: Option<&Counter>,
        transient: impl Fn(&E) -> bool,
        mut call: F,
    ) -> Result<T, Failed<E>>
    where
        E: std::fmt::Display,
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut retries = policy.start(Instant::now());
        loop {
            // Bounded: `retries` gives up after the retry budget.
            let e = match call(retries.attempts()).await {
                Ok(value) => return Ok(value),
                Err(e) => e,
            };
            if !transient(&e) {
                return Err(Failed::Permanent(e));
            }
            let Some(delay) = retries.next_delay(Instant::now()) else {
                if !policy.budget.is_zero() {
                    self.deps.metrics.retries_exhausted.inc_by(1);
                    warn!(attempts = retries.attempts(), error = %e, "{what} failed for longer than the retry budget; giving up");
                }
                return Err(Failed::GaveUp(e));
            };
            if let Some(counter) = counter {
                counter.inc_by(1);
            }
            warn!(attempt = retries.attempts(), error = %e, "{what} failed; retrying");
            tokio::time::sleep(delay).await;
        }
    }

    /// Loads a partition's timers into the wheel.
    pub(super) async fn load_timers(
        &self,
        partition: i32,
        policy: RetryPolicy,
    ) -> Result<usize, String> {
        let store = &self.deps.store;
        let topic = &self.topics.payments;
        let timers = self
            .retrying(
                policy,
                "loading payment timers",
                Some(&self.deps.metrics.store_retries),
                |_: &PaymentStoreError| true,
                |_| store.timers(topic, partition),
            )
            .await
            .map_err(|f| match f {
                Failed::Permanent(e) | Failed::GaveUp(e) => {
                    format!("loading payment timers: {e}")
                }
            })?;
        let mut wheel = self.wheel();
        for timer in &timers {
            wheel.merge(partition, &timer.payment_id, timer.due_at);
        }
        drop(wheel);
        self.timer_set.notify_one();
        Ok(timers.len())
    }

    pub(super) fn written_map(&self) -> std::sync::MutexGuard<'_, HashMap<i32, Written>> {
        // A panic while holding the map leaves it whole (single inserts and removes).
        self.written.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Decides where a newly assigned partition resumes: at the group's committed offset, or
    /// at the store's watermark when the store is behind Kafka (it lost writes: the records
    /// after it are applied again, idempotently), and resumes it there. The partition stays
    /// paused until then.
    pub(super) async fn reposition(
        &self,
        consumer: &PaymentConsumer,
        partition: i32,
        policy: RetryPolicy,
    ) -> Result<(), String> {
        let topic = &self.topics.payments;
        let group = &self.deps.settings.group_id;
        let timeout = self.deps.kafka.timeout;
        let watermarks = &self.deps.watermarks;
        let decided = self
            .retrying(
                policy,
                "deciding where the partition resumes",
                None,
                |_: &String| true,
                |_| async move {
                    let stored = watermarks
                        .load(group, topic, partition)
                        .await
                        .map_err(|e| format!("reading the partition's watermark: {e}"))?;
                    let committed = committed_offset(consumer, topic, partition, timeout)
                        .map_err(|e| format!("reading the committed offset: {e}"))?;
                    let resume = Resume::decide(stored, committed);
                    seek_and_resume(consumer, topic, partition, resume.offset(), timeout)
                        .await
                        .map_err(|e| format!("seeking the assigned partition: {e}"))?;
                    Ok((stored, resume))
                },
            )
            .await;
        let (stored, resume) = decided.map_err(|f| match f {
            Failed::Permanent(e) | Failed::GaveUp(e) => e,
        })?;
        if let Resume::Replay { from, committed } = resume {
            self.deps.metrics.store_loss_replays.inc_by(1);
            warn!(
                partition,
                ?from,
                committed,
                "the store is behind Kafka (it lost writes it had acknowledged): replaying the partition from the store's watermark"
            );
        }
        self.written_map().insert(partition, Written::now(stored));
        info!(partition, resume = ?resume, "partition resumes");
        Ok(())
    }

    /// Compares each owned partition's stored watermark with the one this instance wrote: an
    /// older one means the store lost writes since, and a store call that failed since means
    /// it may have; either way the partition is read again from the stored one. Writes check
    /// too ([`WatermarkStore::advance`]); this catches a loss while no record comes.
    pub(super) async fn check_watermarks(&self, consumer: &PaymentConsumer) {
        let owned: Vec<(i32, Written)> = self.written_map().iter().map(|(p, w)| (*p, *w)).collect();
        for (partition, written) in owned {
            // Read before the load: a failure after it is for the next check.
            let failures = transient_failures();
            let stored = match self
                .deps
                .watermarks
                .load(
                    &self.deps.settings.group_id,
                    &self.topics.payments,
                    partition,
                )
                .await
            {
                Ok(stored) => stored,
                Err(e) => {
                    debug!(partition, error = %e, "checking the watermark failed");
                    continue;
                }
            };
            if let Some(why) = check(stored, written, failures) {
                self.read_again_from_store(consumer, partition, why, written);
            }
        }
    }

    /// The store's watermark went backwards (it lost writes it had acknowledged), or a store
    /// call failed since the last one (writes after it may be lost): the partition is read
    /// again from the stored watermark; its writes are idempotent.
    pub(super) fn read_again_from_store(
        &self,
        consumer: &PaymentConsumer,
        partition: i32,
        why: Advanced,
        written: Written,
    ) {
        let Some(stored) = why.read_again_from() else {
            return;
        };
        let metrics = &self.deps.metrics;
        if why.log_read_again(partition, written) {
            metrics.store_fault_replays.inc_by(1);
        } else {
            metrics.store_loss_replays.inc_by(1);
        }
        let target = stored.map_or(Offset::Beginning, Offset::Offset);
        match consumer.seek(
            &self.topics.payments,
            partition,
            target,
            self.deps.kafka.timeout,
        ) {
            Ok(()) => {
                self.written_map().insert(partition, Written::now(stored));
            }
            Err(e) => {
                warn!(partition, error = %e, "seeking back failed; the next check tries again")
            }
        }
    }
}
