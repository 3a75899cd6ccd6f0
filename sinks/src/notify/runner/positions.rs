//! Where one channel stands in each partition when things go wrong or change hands: giving a
//! partition up after its retry budget and taking it again ("parked"), repositioning a newly
//! owned partition (in-app: from the store's watermark), and storing finished offsets for
//! commit (in-app: after the watermark write, which checks first that the store lost nothing).

use super::*;

impl ChannelRunner {
    /// Gives a partition up on this channel after a fault outlasted the retry budget: paused,
    /// `/readyz` 503, taken again by [`tend_parked`](Self::tend_parked) later.
    pub(super) fn park(&self, parked: &mut BTreeMap<i32, Parked>, partition: i32, reason: String) {
        let channel = self.channel.name();
        let attempt = parked
            .get(&partition)
            .map_or(0, |p| p.attempt.saturating_add(1));
        if attempt == 0 {
            warn!(channel, partition, reason = %reason, "partition given up after its retry budget; it is taken again when the fault clears");
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&self.topic, partition);
            if let Err(e) = self.consumer.pause(&tpl) {
                warn!(channel, partition, error = %e, "pausing the parked partition failed; its records are dropped until it is taken again");
            }
        } else {
            debug!(channel, partition, attempt, reason = %reason, "taking the parked partition again failed");
        }
        let wait = self
            .deps
            .settings
            .retry_policy()
            .jittered_delay(attempt.saturating_add(1));
        parked.insert(
            partition,
            Parked {
                reason,
                attempt,
                retry_at: Instant::now() + wait,
            },
        );
        self.publish_parked(parked);
    }

    /// Tries once to take again each parked partition whose wait is over: from the committed
    /// offset, or (in-app) where the store's watermark says.
    pub(super) async fn tend_parked(
        &self,
        stored: &mut StoredMarks,
        parked: &mut BTreeMap<i32, Parked>,
    ) {
        let now = Instant::now();
        let due: Vec<i32> = parked
            .iter()
            .filter(|(_, p)| p.retry_at <= now)
            .map(|(partition, _)| *partition)
            .collect();
        for partition in due {
            let once = RetryPolicy {
                budget: Duration::ZERO,
                ..self.deps.settings.retry_policy()
            };
            match self.reposition(stored, partition, once).await {
                Ok(()) => {
                    parked.remove(&partition);
                    info!(
                        channel = self.channel.name(),
                        partition, "parked partition taken again: the fault cleared"
                    );
                }
                Err(reason) => self.park(parked, partition, reason),
            }
        }
        self.publish_parked(parked);
    }

    pub(super) fn publish_parked(&self, parked: &BTreeMap<i32, Parked>) {
        let channel = self.channel.name();
        let reasons = parked
            .iter()
            .map(|(p, parked)| format!("{channel} partition {p} given up: {}", parked.reason))
            .collect();
        self.deps.metrics.readiness.set_part(channel, reasons);
        let count = self.deps.metrics.readiness.count();
        self.deps
            .metrics
            .partitions_parked
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// Where an assigned partition resumes, and resumes it there: the committed offset, or
    /// (in-app) the store's watermark when the store is behind Kafka (it lost rows it had
    /// acknowledged; replaying writes them again). Retried within `policy`; the partition
    /// stays paused meanwhile.
    pub(super) async fn reposition(
        &self,
        stored: &mut StoredMarks,
        partition: i32,
        policy: RetryPolicy,
    ) -> Result<(), String> {
        let mut retries = policy.start(Instant::now());
        loop {
            // Bounded: `retries` gives up after `policy`'s budget.
            match self.try_reposition(partition).await {
                Ok((watermark, resume)) => {
                    if self.channel == Channel::Inapp {
                        stored.written.insert(partition, Written::now(watermark));
                    }
                    debug!(
                        channel = self.channel.name(),
                        partition,
                        ?resume,
                        "partition resumes"
                    );
                    return Ok(());
                }
                Err(e) => {
                    let Some(delay) = retries.next_delay(Instant::now()) else {
                        return Err(e);
                    };
                    warn!(channel = self.channel.name(), partition, error = %e, "repositioning the assigned partition failed; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    pub(super) async fn try_reposition(
        &self,
        partition: i32,
    ) -> Result<(Option<i64>, Resume), String> {
        let timeout = self.deps.kafka.timeout;
        let committed = committed_offset(&self.consumer, &self.topic, partition, timeout)
            .map_err(|e| format!("reading the committed offset: {e}"))?;
        // Read on every channel: it is also the check that the store answers again, so a
        // partition given up during a store outage is not taken back before the store is.
        let watermark = self
            .deps
            .watermarks
            .load(&self.group_id, &self.topic, partition)
            .await
            .map_err(|e| format!("reading the watermark: {e}"))?;
        let (watermark, resume) = if self.channel == Channel::Inapp {
            (watermark, Resume::decide(watermark, committed))
        } else {
            (None, Resume::Committed(committed))
        };
        if let Resume::Replay { from, committed } = resume {
            self.deps.metrics.store_loss_replays.inc_by(1);
            warn!(
                channel = self.channel.name(),
                partition,
                ?from,
                committed,
                "the store is behind Kafka (it lost in-app rows): replaying from its watermark"
            );
        }
        seek_and_resume(
            &self.consumer,
            &self.topic,
            partition,
            resume.offset(),
            timeout,
        )
        .await
        .map_err(|e| format!("seeking the partition: {e}"))?;
        Ok((watermark, resume))
    }

    /// Stores for commit the offsets final since the last call. In-app: each partition's
    /// watermark is written first ([`WatermarkStore::advance`], which checks that the store did
    /// not go backwards and no store call failed since the last one); a partition whose write
    /// failed keeps its offset for the next call, one whose check failed is read again from the
    /// stored watermark.
    ///
    /// [`WatermarkStore::advance`]: boxoffice_store::watermarks::WatermarkStore::advance
    pub(super) async fn store_pending(&self, stored: &mut StoredMarks, marks: &mut Watermarks) {
        if stored.pending.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut stored.pending);
        for (partition, commit) in pending {
            if self.channel == Channel::Inapp {
                let written = stored
                    .written
                    .get(&partition)
                    .copied()
                    .unwrap_or_else(|| Written::now(None));
                let advanced = self
                    .deps
                    .watermarks
                    .advance(&self.group_id, &self.topic, partition, written, commit + 1)
                    .await;
                match advanced {
                    Ok(Advanced::Saved(saved)) => {
                        stored.written.insert(partition, saved);
                    }
                    Ok(read_again) => {
                        self.read_again_from_store(stored, marks, partition, read_again, written);
                        continue;
                    }
                    Err(e) => {
                        // Bounded: one offset per owned partition waits; a newer one wins.
                        debug!(partition, error = %e, "storing the in-app watermark failed; the next finished record or tick tries again");
                        stored.pending.entry(partition).or_insert(commit);
                        continue;
                    }
                }
            }
            if let Err(e) = self.consumer.store_offset(&self.topic, partition, commit) {
                // The partition was revoked meanwhile: its new owner starts from the last
                // committed offset and finds the finished rows final.
                debug!(channel = self.channel.name(), partition, error = %e,
                       "storing the offset failed");
            }
        }
        if self.channel == Channel::Inapp {
            stored.saved_at = Some(Instant::now());
        }
    }

    /// Compares each partition's stored watermark with the one written here: an older one
    /// means the store lost rows since, and a store call that failed since means it may have;
    /// either way the partition is read again from the stored one. Writes check too
    /// ([`store_pending`](Self::store_pending)); this catches a loss while no record comes.
    pub(super) async fn check_watermarks(&self, stored: &mut StoredMarks, marks: &mut Watermarks) {
        let owned: Vec<(i32, Written)> = stored.written.iter().map(|(p, w)| (*p, *w)).collect();
        for (partition, written) in owned {
            // Read before the load: a failure after it is for the next check.
            let failures = transient_failures();
            let Ok(now) = self
                .deps
                .watermarks
                .load(&self.group_id, &self.topic, partition)
                .await
            else {
                continue;
            };
            if let Some(why) = check(now, written, failures) {
                self.read_again_from_store(stored, marks, partition, why, written);
            }
        }
    }

    /// The store's in-app watermark went backwards (it lost rows it had acknowledged), or a
    /// store call failed since the last one (rows after it may be lost): the partition is read
    /// again from the stored watermark and the rows written again (upserts by id).
    fn read_again_from_store(
        &self,
        stored: &mut StoredMarks,
        marks: &mut Watermarks,
        partition: i32,
        why: Advanced,
        written: Written,
    ) {
        let Some(now) = why.read_again_from() else {
            return;
        };
        let metrics = &self.deps.metrics;
        if why.log_read_again(partition, written) {
            metrics.store_fault_replays.inc_by(1);
        } else {
            metrics.store_loss_replays.inc_by(1);
        }
        let target = now.map_or(Offset::Beginning, Offset::Offset);
        if let Err(e) = self
            .consumer
            .seek(&self.topic, partition, target, self.deps.kafka.timeout)
        {
            // `written` stays: the next write or check finds the loss again.
            warn!(partition, error = %e, "seeking back failed; the next check tries again");
            return;
        }
        // Records in lanes are skipped (a new reading); the partition's marks start over.
        self.bump_epoch(partition);
        marks.partitions.remove(&partition);
        stored.pending.remove(&partition);
        stored.written.insert(partition, Written::now(now));
    }
}
