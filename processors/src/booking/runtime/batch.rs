//! One partition's share of a batch: decided through the pure core in log order (events being
//! re-folded update state only), published with the consumer offset in one transaction, and
//! saved with the fenced, conditional write of each touched event.

use super::decode::DecodeFailure;
use super::*;
use crate::booking::coalesce::LatestAvailability;
use crate::booking::core::order_id_of;
use crate::booking::render::Output;
use rdkafka::producer::FutureProducer;
use std::collections::BTreeMap;

/// What deciding and committing a partition's share of a batch needs. Owns shared handles only,
/// so a commit can run as a task of its own while the next batch is decided.
#[derive(Clone)]
pub(super) struct BatchJob {
    pub(super) deps: Arc<BookingDeps>,
    pub(super) topics: Arc<Topics>,
    pub(super) partition_count: i32,
    pub(super) consumer: Arc<StreamConsumer<GroupContext>>,
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
    /// Orders decided in this batch (re-folded ones too: their rows may be what the store
    /// lost), for the read model.
    new_orders: Vec<NewOrder>,
}

/// One event's state write, planned when the batch was decided (the state as it was right
/// after this batch, whatever later batches decide meanwhile).
struct PlannedSave {
    event_id: String,
    /// The offset the store must hold for the write to apply (this worker's previous save).
    previous: Option<i64>,
    register: bool,
    update: StoredEventUpdate,
}

/// A partition's decided batch, ready to commit: the records to produce (outputs and
/// progress), the offset, the state writes and the timer changes, all owned.
pub(super) struct Prepared {
    pub(super) partition: i32,
    /// The worker that decided it; a commit result for another worker is stale.
    pub(super) epoch: u64,
    producer: FutureProducer,
    outputs: Vec<Encoded>,
    last_offset: i64,
    published_until: i64,
    saves: Vec<PlannedSave>,
    new_orders: Vec<NewOrder>,
    timers: Vec<TimerChange>,
    records: usize,
    decided: u64,
    refolded: u64,
    order_events: BTreeMap<&'static str, u64>,
    oldest_timestamp: Option<i64>,
    started: Instant,
    decided_at: Instant,
}

/// What committing a prepared batch came to; timer changes apply only when it is `Done`.
pub(super) struct Committed {
    pub(super) partition: i32,
    pub(super) epoch: u64,
    pub(super) outcome: BatchOutcome,
    pub(super) timers: Vec<TimerChange>,
    /// The batch's last offset: on `Done`, everything it changed is saved.
    pub(super) last_offset: i64,
}

impl BatchJob {
    pub(super) fn retry_policy(&self) -> RetryPolicy {
        self.deps.settings.retry_policy()
    }

    /// Decides one partition's share of a batch and plans its commit: outputs and progress
    /// encoded, each touched event's state write built from the state right after this batch.
    /// The worker's bookkeeping (next offset, each event's stored offset) moves on as if the
    /// commit succeeds; if it does not, the worker is discarded and the partition restored.
    /// `Ok(None)`: nothing to commit.
    pub(super) async fn prepare(
        &self,
        worker: &mut Worker,
        records: Vec<OwnedMessage>,
    ) -> Result<Option<Prepared>, BatchOutcome> {
        let started = Instant::now();
        let decided = self.decide(worker, &records).await?;
        let Some(last_offset) = decided.last_offset else {
            return Ok(None);
        };
        // A batch that only read records an earlier owner already published, and changed no
        // state, has nothing to publish or store.
        if decided.outputs.is_empty()
            && decided.touched.is_empty()
            && last_offset < worker.published_until
        {
            return Ok(None);
        }
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
                &self.topics,
                &record,
                self.deps.settings.retry_budget,
            )
            .await
            {
                Ok(encoded) => outputs.push(encoded),
                Err(e) => return Err(self.encode_failure("progress", e)),
            }
        }
        let mut saves = Vec::with_capacity(decided.touched.len());
        for (event_id, changed_orders) in &decided.touched {
            let (Some(tracked), Some(state)) = (
                worker.events.get_mut(event_id),
                worker.core.events.get(event_id),
            ) else {
                continue;
            };
            let changed: Vec<String> = changed_orders.iter().cloned().collect();
            for id in &changed {
                match state.orders.get(id) {
                    Some(o) if !o.is_live() => {
                        tracked.ended.insert(id.clone(), last_offset);
                    }
                    _ => {
                        tracked.ended.remove(id);
                    }
                }
            }
            saves.push(PlannedSave {
                event_id: event_id.clone(),
                previous: tracked.offset,
                register: !tracked.registered,
                update: store::update(state, tracked.offset, last_offset, &changed),
            });
            tracked.offset = Some(last_offset);
            tracked.registered = true;
        }
        Ok(Some(Prepared {
            partition: worker.partition,
            epoch: worker.epoch,
            producer: worker.producer.clone(),
            outputs,
            last_offset,
            published_until: worker.published_until,
            saves,
            new_orders: decided.new_orders,
            timers: decided.timers,
            records: records.len(),
            decided: decided.decided,
            refolded: decided.refolded,
            order_events: decided.order_events,
            oldest_timestamp: decided.oldest_timestamp,
            started,
            decided_at: Instant::now(),
        }))
    }

    /// Publishes a prepared batch's records with the consumer offset in one transaction, then
    /// persists the touched events (fenced by the offset stored before). Runs while the next
    /// batch is decided; the runtime starts a partition's next commit only after this one.
    pub(super) async fn commit(self, prepared: Prepared) -> Committed {
        let partition = prepared.partition;
        let span = info_span!("commit", partition, records = prepared.records);
        let outcome = self.commit_inner(&prepared).instrument(span).await;
        Committed {
            partition,
            epoch: prepared.epoch,
            outcome,
            timers: prepared.timers,
            last_offset: prepared.last_offset,
        }
    }

    async fn commit_inner(&self, prepared: &Prepared) -> BatchOutcome {
        let partition = prepared.partition;
        let begun = Instant::now();
        // The order rows beside the transaction, the state save last: the save is the commit
        // point. A row says only what was requested (never the decision), so one written for a
        // transaction that then aborts is still true (the command is in the log and will be
        // decided). A store that loses writes loses the newest first, so a save that survived
        // kept the rows written before it, and a save that was lost is found on the next
        // restore, which re-folds the gap and writes the rows again (they are idempotent).
        let (published, rows) = tokio::join!(
            self.publish(prepared),
            self.write_order_rows(&prepared.new_orders)
        );
        if let Err(outcome) = published.and(rows) {
            return outcome;
        }
        let produced_at = Instant::now();
        let metrics = &self.deps.metrics;
        metrics
            .outputs_produced
            .inc_by(prepared.outputs.len() as u64);
        if let Err(outcome) = self.persist(partition, &prepared.saves).await {
            return outcome;
        }
        metrics.records_processed.inc_by(prepared.decided);
        for (kind, count) in &prepared.order_events {
            metrics
                .order_events
                .get_or_create(&vec![("kind", (*kind).to_owned())])
                .inc_by(*count);
        }
        metrics.commands_refolded.inc_by(prepared.refolded);
        metrics.batches.inc_by(1);
        metrics.batch_size.observe(prepared.records as f64);
        let stored_at = Instant::now();
        for (stage, from, to) in [
            ("decide", prepared.started, prepared.decided_at),
            ("transaction", begun, produced_at),
            ("store", produced_at, stored_at),
        ] {
            metrics
                .stage_ms
                .get_or_create(&vec![("stage", stage.to_owned())])
                .observe(to.duration_since(from).as_secs_f64() * 1000.0);
        }
        if let Some(oldest) = prepared.oldest_timestamp {
            metrics
                .decision_latency_ms
                .observe((now_millis() - oldest).max(0) as f64);
        }
        debug!(
            partition,
            last_offset = prepared.last_offset,
            decided = prepared.decided,
            refolded = prepared.refolded,
            outputs = prepared.outputs.len(),
            decide_and_encode_ms = prepared
                .decided_at
                .duration_since(prepared.started)
                .as_millis() as u64,
            waited_ms = begun.duration_since(prepared.decided_at).as_millis() as u64,
            transaction_ms = produced_at.duration_since(begun).as_millis() as u64,
            store_ms = stored_at.duration_since(produced_at).as_millis() as u64,
            "batch committed"
        );
        BatchOutcome::Done
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
            if let Some(order_id) = order_id_of(&command)
                && !matches!(command, BookingCommand::BookingRequested(_))
                && worker
                    .core
                    .events
                    .get(&event_id)
                    .is_some_and(|state| state.must_load(order_id))
            {
                self.load_order(worker, &event_id, order_id).await?;
            }
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
            if let BookingCommand::BookingRequested(r) = &command
                && decision.ignored.is_empty()
            {
                out.new_orders.push(NewOrder {
                    order_id: r.order_id.clone(),
                    event_id: r.event_id.clone(),
                    user_id: r.user_id.clone(),
                    number_slot: r.number_slot,
                    created_at: r.occurred_at,
                    idempotency_key: r.idempotency_key.clone(),
                });
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
                match encode_output(&self.deps.codec, &self.topics, &output, budget).await {
                    Ok(encoded) => out.outputs.push(encoded),
                    Err(e) => return Err(self.encode_failure("an output", e)),
                }
            }
        }
        metrics
            .availability_superseded
            .inc_by(latest_availability.superseded());
        for output in latest_availability.into_outputs() {
            match encode_output(&self.deps.codec, &self.topics, &output, budget).await {
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
            &self.topics,
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
    async fn publish(&self, prepared: &Prepared) -> Result<(), BatchOutcome> {
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
                partition: prepared.partition,
                // Never moves the group's offset back below what was already published.
                next_offset: (prepared.last_offset + 1).max(prepared.published_until),
                group: Arc::new(group),
            };
            match transaction(&prepared.producer, &prepared.outputs, &offsets, timeout).await {
                Ok(()) => return Ok(()),
                Err(TxnError::Fenced(reason)) => {
                    return Err(BatchOutcome::Rebuild {
                        reason: format!("fenced by a newer owner of the partition: {reason}"),
                        after: FENCED_RECHECK,
                    });
                }
                Err(TxnError::Rebalance(reason)) => {
                    abort(&prepared.producer, timeout).await;
                    return Err(BatchOutcome::Rebuild {
                        reason: format!("the group is rebalancing: {reason}"),
                        after: AHEAD_RECHECK,
                    });
                }
                Err(TxnError::Retry(reason)) => {
                    abort(&prepared.producer, timeout).await;
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
                    warn!(partition = prepared.partition, attempt, reason = %reason, "output transaction failed; retrying the batch");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Saves every touched event's state as planned, fenced by the offset stored before.
    async fn persist(&self, partition: i32, saves: &[PlannedSave]) -> Result<(), BatchOutcome> {
        for save in saves {
            let (event_id, previous) = (&save.event_id, save.previous);
            if save.register {
                self.register_event(partition, event_id).await?;
            }
            match self.save_with_retry(&save.update).await? {
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
        }
        Ok(())
    }
}
