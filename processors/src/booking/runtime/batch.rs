//! One partition's share of a batch: decided through the pure core in log order (events being
//! re-folded update state only), published with the consumer offset in one transaction, and
//! saved with the fenced, conditional write of each touched event.

use super::decode::{DecodeFailure, order_id_of};
use super::*;
use crate::booking::coalesce::LatestAvailability;
use crate::booking::render::Output;
use std::collections::BTreeMap;

/// What one partition's share of a batch needs.
pub(super) struct BatchJob<'a> {
    pub(super) deps: &'a BookingDeps,
    pub(super) topics: &'a Topics,
    pub(super) partition_count: i32,
    pub(super) consumer: &'a StreamConsumer<GroupContext>,
}

/// What deciding a partition's records produced, before it is published and stored.
#[derive(Default)]
struct Decided {
    outputs: Vec<Encoded>,
    /// Event id → order ids changed in this batch (each once).
    touched: HashMap<String, BTreeSet<String>>,
    timers: Vec<TimerChange>,
    last_offset: Option<i64>,
    oldest_timestamp: Option<i64>,
    decided: u64,
    refolded: u64,
    /// Order events produced, by record name (`OrderReserved`, `OrderExpired`, ...).
    order_events: BTreeMap<&'static str, u64>,
}

impl BatchJob<'_> {
    pub(super) fn retry_policy(&self) -> RetryPolicy {
        self.deps.settings.retry_policy()
    }

    /// Decides one partition's share of a batch, publishes its outputs and progress in one
    /// transaction, persists the touched events.
    pub(super) async fn run(
        self,
        worker: &mut Worker,
        records: Vec<OwnedMessage>,
    ) -> (i32, BatchOutcome) {
        let partition = worker.partition;
        let started = Instant::now();
        let decided = match self.decide(worker, &records).await {
            Ok(decided) => decided,
            Err(outcome) => return (partition, outcome),
        };
        let Some(last_offset) = decided.last_offset else {
            return (partition, BatchOutcome::Done);
        };
        // A batch that only read records an earlier owner already published, and changed no
        // state, has nothing to publish or store.
        if decided.outputs.is_empty()
            && decided.touched.is_empty()
            && last_offset < worker.published_until
        {
            return (partition, BatchOutcome::Done);
        }
        let decided_at = Instant::now();
        let mut outputs = decided.outputs;
        let published: Vec<String> = decided
            .touched
            .keys()
            .filter(|id| worker.events.get(*id).is_some_and(|t| t.refold.is_none()))
            .cloned()
            .collect();
        for event_id in &published {
            let Some(state) = worker.core.events.get(event_id) else {
                continue;
            };
            let first = worker
                .events
                .get(event_id)
                .and_then(|t| t.first_offset)
                .unwrap_or(last_offset);
            let record = progress_record(state, last_offset, first);
            match encode_progress(
                &self.deps.codec,
                self.topics,
                &record,
                self.deps.settings.retry_budget,
            )
            .await
            {
                Ok(encoded) => outputs.push(encoded),
                Err(e) => return (partition, self.encode_failure("progress", e)),
            }
        }
        if let Err(outcome) = self.publish(worker, &outputs, last_offset).await {
            return (partition, outcome);
        }
        let produced_at = Instant::now();
        self.deps
            .metrics
            .outputs_produced
            .inc_by(outputs.len() as u64);
        if let Err(outcome) = self.persist(worker, &decided.touched, last_offset).await {
            return (partition, outcome);
        }
        worker.apply_timers(decided.timers);

        let metrics = &self.deps.metrics;
        metrics.records_processed.inc_by(decided.decided);
        for (kind, count) in &decided.order_events {
            metrics
                .order_events
                .get_or_create(&vec![("kind", (*kind).to_owned())])
                .inc_by(*count);
        }
        metrics.commands_refolded.inc_by(decided.refolded);
        metrics.batches.inc_by(1);
        metrics.batch_size.observe(records.len() as f64);
        let stored_at = Instant::now();
        for (stage, from, to) in [
            ("decide", started, decided_at),
            ("transaction", decided_at, produced_at),
            ("store", produced_at, stored_at),
        ] {
            metrics
                .stage_ms
                .get_or_create(&vec![("stage", stage.to_owned())])
                .observe(to.duration_since(from).as_secs_f64() * 1000.0);
        }
        if let Some(oldest) = decided.oldest_timestamp {
            metrics
                .decision_latency_ms
                .observe((now_millis() - oldest).max(0) as f64);
        }
        debug!(
            partition,
            last_offset,
            decided = decided.decided,
            refolded = decided.refolded,
            outputs = outputs.len(),
            decide_and_encode_ms = decided_at.duration_since(started).as_millis() as u64,
            transaction_ms = produced_at.duration_since(decided_at).as_millis() as u64,
            store_ms = stored_at.duration_since(produced_at).as_millis() as u64,
            "batch committed"
        );
        (partition, BatchOutcome::Done)
    }

    fn encode_failure(&self, what: &str, e: boxoffice_avro::CodecError) -> BatchOutcome {
        if e.is_retryable() {
            self.deps.metrics.retries_exhausted.inc_by(1);
            BatchOutcome::Rebuild {
                reason: format!(
                    "encoding {what}: registry unavailable for longer than the retry budget: {e}"
                ),
                after: Duration::ZERO,
            }
        } else {
            BatchOutcome::Failed(format!("encoding {what}: {e}"))
        }
    }

    /// Folds the records through the core in log order: live commands are decided and their
    /// outputs encoded; commands of events being re-folded update state only.
    async fn decide(
        &self,
        worker: &mut Worker,
        records: &[OwnedMessage],
    ) -> Result<Decided, BatchOutcome> {
        let metrics = &self.deps.metrics;
        let budget = self.deps.settings.retry_budget;
        let mut out = Decided::default();
        // Each event's availability is published once per batch, after its other records.
        let mut latest_availability = LatestAvailability::default();
        for message in records {
            let offset = message.offset();
            if offset < worker.next_offset {
                continue;
            }
            worker.next_offset = offset + 1;
            out.last_offset = Some(offset);
            let already_published = offset < worker.published_until;
            let command = match self.decode_command(message).await {
                Ok(command) => command,
                Err(DecodeFailure::Registry(e)) => {
                    return Err(self.encode_failure("(decoding a command)", e));
                }
                Err(DecodeFailure::Record(_, _)) if already_published => continue,
                Err(DecodeFailure::Record(kind, reason)) => {
                    warn!(partition = worker.partition, offset, kind = ?kind, reason = %reason, "dead-lettering a record");
                    out.outputs
                        .push(self.dead_letter(message, kind, &reason).await?);
                    metrics.dead_letters.inc_by(1);
                    continue;
                }
            };
            let event_id = command.key().to_owned();
            let tracked = worker
                .events
                .entry(event_id.clone())
                .or_insert_with(|| Tracked {
                    first_offset: Some(offset),
                    ..Tracked::default()
                });
            if let Some(reason) = tracked.lost.clone() {
                if !already_published {
                    out.outputs.push(
                        self.dead_letter(message, DeadLetterErrorKind::StateLost, &reason)
                            .await?,
                    );
                    metrics.dead_letters.inc_by(1);
                }
                continue;
            }
            if tracked.offset.is_some_and(|at| offset <= at) {
                metrics.records_skipped.inc_by(1);
                continue;
            }
            if let Some(target) = tracked.refold
                && offset > target.applied_offset
            {
                // Every command the earlier owner published is folded again: compare.
                self.finish_refold(worker, &event_id, &target)?;
            }
            let silent = worker
                .events
                .get(&event_id)
                .is_some_and(|t| t.refold.is_some());
            let decision = worker.core.decide(&command);
            if let Some(ts) = message.timestamp().to_millis() {
                out.oldest_timestamp = Some(out.oldest_timestamp.map_or(ts, |o: i64| o.min(ts)));
            }
            for reason in &decision.ignored {
                debug!(partition = worker.partition, offset, event_id = %event_id, reason = %reason, "command changed nothing");
            }
            let changed = out.touched.entry(event_id).or_default();
            if let Some(order_id) = order_id_of(&command) {
                changed.insert(order_id.to_owned());
            }
            out.timers.extend(decision.timers);
            if silent {
                out.refolded += 1;
                continue;
            }
            out.decided += 1;
            for output in decision.outputs {
                let Some(output) = latest_availability.absorb(output) else {
                    continue;
                };
                if let Output::Order(event) = &output {
                    let name = event.full_name();
                    let kind = name.rsplit('.').next().unwrap_or(name);
                    *out.order_events.entry(kind).or_default() += 1;
                }
                match encode_output(&self.deps.codec, self.topics, &output, budget).await {
                    Ok(encoded) => out.outputs.push(encoded),
                    Err(e) => return Err(self.encode_failure("an output", e)),
                }
            }
        }
        metrics
            .availability_superseded
            .inc_by(latest_availability.superseded());
        for output in latest_availability.into_outputs() {
            match encode_output(&self.deps.codec, self.topics, &output, budget).await {
                Ok(encoded) => out.outputs.push(encoded),
                Err(e) => return Err(self.encode_failure("an output", e)),
            }
        }
        // Re-folds whose target this batch reached are checked now, so their progress is
        // published with this batch.
        if let Some(last) = out.last_offset {
            let reached: Vec<(String, Published)> = worker
                .events
                .iter()
                .filter_map(|(id, t)| {
                    t.refold
                        .filter(|p| p.applied_offset <= last)
                        .map(|p| (id.clone(), p))
                })
                .collect();
            for (event_id, target) in reached {
                self.finish_refold(worker, &event_id, &target)?;
            }
        }
        Ok(out)
    }

    /// The event has been re-folded through everything published for it: compare the
    /// decisions, and go live or stop the partition.
    fn finish_refold(
        &self,
        worker: &mut Worker,
        event_id: &str,
        target: &Published,
    ) -> Result<(), BatchOutcome> {
        let digest = worker.core.events.get(event_id).and_then(|s| s.digest);
        match check_refold(event_id, digest, target) {
            RefoldCheck::Matches => {
                info!(
                    partition = worker.partition,
                    event_id,
                    through = target.applied_offset,
                    "re-fold matches what was published; the event is live again"
                );
                if let Some(t) = worker.events.get_mut(event_id) {
                    t.refold = None;
                }
                Ok(())
            }
            RefoldCheck::Differs { reason } => {
                self.deps.metrics.refold_mismatches.inc_by(1);
                Err(BatchOutcome::Stop(reason))
            }
        }
    }

    async fn dead_letter(
        &self,
        message: &OwnedMessage,
        kind: DeadLetterErrorKind,
        reason: &str,
    ) -> Result<Encoded, BatchOutcome> {
        dead_letter(
            &self.deps.codec,
            self.topics,
            &self.deps.settings.group_id,
            message,
            kind,
            reason,
            self.deps.settings.retry_budget,
        )
        .await
        .map_err(|e| self.encode_failure("a dead letter", e))
    }

    /// Publishes the batch's records with the consumer offset in one transaction, retrying
    /// within the budget.
    async fn publish(
        &self,
        worker: &Worker,
        outputs: &[Encoded],
        last_offset: i64,
    ) -> Result<(), BatchOutcome> {
        let timeout = self.deps.kafka.timeout;
        let mut retries = self.retry_policy().start(Instant::now());
        loop {
            // Bounded: `retries` gives up after the retry budget.
            let Some(group) = self.consumer.group_metadata() else {
                return Err(BatchOutcome::Rebuild {
                    reason: "the consumer has no group metadata (not a group member?)".to_owned(),
                    after: AHEAD_RECHECK,
                });
            };
            let offsets = OffsetCommit {
                topic: self.topics.commands.clone(),
                partition: worker.partition,
                // Never moves the group's offset back below what was already published.
                next_offset: (last_offset + 1).max(worker.published_until),
                group: Arc::new(group),
            };
            match transaction(&worker.producer, outputs, &offsets, timeout).await {
                Ok(()) => return Ok(()),
                Err(TxnError::Fenced(reason)) => {
                    return Err(BatchOutcome::Rebuild {
                        reason: format!("fenced by a newer owner of the partition: {reason}"),
                        after: FENCED_RECHECK,
                    });
                }
                Err(TxnError::Rebalance(reason)) => {
                    abort(&worker.producer, timeout).await;
                    return Err(BatchOutcome::Rebuild {
                        reason: format!("the group is rebalancing: {reason}"),
                        after: AHEAD_RECHECK,
                    });
                }
                Err(TxnError::Retry(reason)) => {
                    abort(&worker.producer, timeout).await;
                    self.deps.metrics.produce_retries.inc_by(1);
                    let Some(delay) = retries.next_delay(Instant::now()) else {
                        self.deps.metrics.retries_exhausted.inc_by(1);
                        return Err(BatchOutcome::Rebuild {
                            reason: format!(
                                "output transaction kept failing for {:?}: {reason}",
                                retries.elapsed(Instant::now())
                            ),
                            after: Duration::ZERO,
                        });
                    };
                    let attempt = retries.attempts();
                    warn!(partition = worker.partition, attempt, reason = %reason, "output transaction failed; retrying the batch");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Saves every touched event's state at `last_offset`, fenced by the offset stored before.
    async fn persist(
        &self,
        worker: &mut Worker,
        touched: &HashMap<String, BTreeSet<String>>,
        last_offset: i64,
    ) -> Result<(), BatchOutcome> {
        let partition = worker.partition;
        for (event_id, changed_orders) in touched {
            let Some(tracked) = worker.events.get(event_id) else {
                continue;
            };
            let previous = tracked.offset;
            if !tracked.registered {
                self.register_event(partition, event_id).await?;
            }
            let Some(state) = worker.core.events.get(event_id) else {
                continue;
            };
            let changed: Vec<String> = changed_orders.iter().cloned().collect();
            let update = store::update(state, previous, last_offset, &changed);
            match self.save_with_retry(&update).await? {
                SaveOutcome::Applied => {}
                SaveOutcome::Conflict { current_offset } => {
                    let behind = current_offset.is_none_or(|c| previous.is_some_and(|p| c < p));
                    let reason = format!(
                        "event {event_id}: the store holds offset {current_offset:?}, this owner expected {previous:?}"
                    );
                    if behind {
                        self.deps.metrics.store_loss_detected.inc_by(1);
                        warn!(
                            partition,
                            event_id,
                            ?current_offset,
                            ?previous,
                            "the store lost writes it had acknowledged; rebuilding the partition from the log"
                        );
                    }
                    return Err(BatchOutcome::Rebuild {
                        reason,
                        // Ahead: a newer owner saved; give the group a moment to say so.
                        after: if behind {
                            Duration::ZERO
                        } else {
                            AHEAD_RECHECK
                        },
                    });
                }
            }
            if let Some(tracked) = worker.events.get_mut(event_id) {
                tracked.offset = Some(last_offset);
                tracked.registered = true;
            }
        }
        Ok(())
    }
}
