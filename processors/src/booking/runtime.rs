//! The booking processor's runtime: Kafka in, the pure core in the middle, Kafka and ScyllaDB
//! out. It owns the consumer-group membership, one worker per assigned partition, the
//! hold-expiry timer, dead-lettering, and the order of side effects that makes processing
//! effectively once:
//!
//! 1. a partition is processed only after `restore` fenced earlier owners, compared the store
//!    with what Kafka says was published, and moved the consumer to where the log must be read
//!    again (see `recovery`);
//! 2. take a batch (bounded count and time) and decide it, partition by partition, in log
//!    order; events the store was behind on are re-folded silently up to what was published;
//! 3. produce every resulting record, an `EventProgress` per touched event and the consumer
//!    offset in **one Kafka transaction** per partition (a new owner's `init_transactions`
//!    fences a zombie's producer);
//! 4. persist each touched event's state with its applied offset, conditional on the offset
//!    stored before (a zombie's stale write is refused).
//!
//! A crash between 3 and 4 leaves the store behind Kafka; the next restore re-folds the gap
//! from the log and checks the decisions against the published digest.
//!
//! A partition that is assigned but not processed (being restored, waiting after a fault,
//! stopped) is re-checked on a timer, never on incoming traffic; `/readyz` answers 503 and the
//! `booking_partitions_waiting` / `booking_partitions_stopped` gauges show it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use boxoffice_avro::Codec;
use boxoffice_avro::clock::now_millis;
use boxoffice_avro::ids;
use boxoffice_avro::records::{BookingCommand, DeadLetterErrorKind, HoldExpired, RecordGroup};
use boxoffice_runtime::retry::RetryPolicy;
use boxoffice_store::inventory::{InventoryStore, SaveOutcome, StoredEventUpdate};
use boxoffice_topics::kafka::KafkaArgs;
use boxoffice_topics::names::TopicPrefix;
use boxoffice_topics::partitioner::partition_for;
use futures::future::join_all;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tracing::{Instrument, debug, error, info, info_span, warn};

use super::partition::{Partition, TimerChange};
use super::publish::{
    Encoded, OffsetCommit, TxnError, abort, dead_letter, encode_output, encode_progress,
    progress_record, transaction,
};
use super::recovery::{Published, RecoverySource, RefoldCheck, check_refold};
use super::restore::{RestoreError, restore};
use super::state::Millis;
use super::store;
pub use super::topics::Topics;
use crate::metrics::BookingMetrics;
use crate::rebalance::{GroupContext, Membership};

/// How the booking processor batches, identifies itself and recovers.
#[derive(Debug, Clone, clap::Args)]
pub struct BookingSettings {
    /// Consumer group of the booking processors; every instance of one deployment shares it.
    #[arg(
        long = "group-id",
        env = "BOOKING_GROUP_ID",
        default_value = "booking-processor"
    )]
    pub group_id: String,

    #[command(flatten)]
    pub topic_prefix: TopicPrefix,

    /// Most records decided in one batch (one transaction and one state write per event).
    /// At most 10,000: a record changes at most one order, and 10,000 typical orders (about
    /// 2.8 MB) stay inside one save's `MAX_SAVE_BYTES`.
    #[arg(long = "max-batch-records", env = "BOOKING_MAX_BATCH_RECORDS", default_value_t = 2000,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_batch_records: u32,

    /// Longest a batch waits to fill up once its first record arrived (e.g. `20ms`).
    #[arg(long = "max-batch-wait", env = "BOOKING_MAX_BATCH_WAIT", default_value = "20ms",
          value_parser = humantime::parse_duration)]
    pub max_batch_wait: Duration,

    /// How long a store write, an output transaction or a registry call is retried before the
    /// partition is given up and restored from the store and the log (e.g. `30s`).
    #[arg(long = "retry-budget", env = "BOOKING_RETRY_BUDGET", default_value = "30s",
          value_parser = humantime::parse_duration)]
    pub retry_budget: Duration,

    /// What a restore trusts. `log` (always, in production) compares the store with what Kafka
    /// says was published and re-folds what the store lost. `trust-store` is the behaviour
    /// that oversold when the store lost writes, kept only as the chaos suite's negative
    /// control.
    #[arg(
        long = "recovery-source",
        env = "BOOKING_RECOVERY_SOURCE",
        default_value = "log",
        value_enum,
        hide = true
    )]
    pub recovery_source: RecoverySource,
}

impl BookingSettings {
    pub fn topics(&self) -> Topics {
        self.topic_prefix.topics()
    }

    /// How store writes, output transactions and registry calls are retried (see
    /// `--retry-budget`).
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy::with_budget(self.retry_budget)
    }
}

/// Why the processor stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(
        "Kafka client could not be created (check --bootstrap-servers / KAFKA_BOOTSTRAP_SERVERS): {0}"
    )]
    Kafka(#[from] KafkaError),
    #[error("topic {topic} does not exist: create it with `topics apply`")]
    MissingTopic { topic: String },
    #[error("stopped rather than skip a record: {0}")]
    Fatal(String),
}

/// What the processor needs from the outside world.
pub struct BookingDeps {
    pub kafka: KafkaArgs,
    pub codec: Arc<Codec>,
    pub store: Arc<InventoryStore>,
    pub settings: BookingSettings,
    pub metrics: Arc<BookingMetrics>,
}

impl std::fmt::Debug for BookingDeps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BookingDeps")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------------------------- workers

/// What the worker knows of one event besides its state (which lives in `Partition`).
#[derive(Debug, Clone, Default)]
pub struct Tracked {
    /// Offset the event's state reflects, as stored (`None`: never stored). Commands at or
    /// below it are already applied.
    pub offset: Option<i64>,
    /// Offset of the event's first command (published with its progress).
    pub first_offset: Option<i64>,
    /// Re-folding from the log up to what was published, without publishing again.
    pub refold: Option<Published>,
    /// The event cannot be rebuilt (its commands are below the log start): why.
    pub lost: Option<String>,
    /// In `partition_events`.
    pub registered: bool,
}

/// One owned partition: its events' state, its transactional producer and its hold timers.
pub struct Worker {
    partition: i32,
    core: Partition,
    events: HashMap<String, Tracked>,
    producer: FutureProducer,
    /// (Deadline, order id) → (event id, user id), soonest first.
    timers: BTreeMap<(Millis, String), (String, String)>,
    /// Order id → its deadline in `timers`.
    hold_index: HashMap<String, Millis>,
    /// The next offset expected from the consumer; anything below was fetched before the last
    /// seek and is dropped.
    next_offset: i64,
    /// Records below this offset were processed and published by an earlier owner: read again
    /// only to re-fold events, never decided or dead-lettered twice.
    published_until: i64,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("partition", &self.partition)
            .field("events", &self.events.len())
            .field("holds", &self.timers.len())
            .field("next_offset", &self.next_offset)
            .field("published_until", &self.published_until)
            .finish_non_exhaustive()
    }
}

impl Worker {
    pub fn new(
        partition: i32,
        core: Partition,
        events: HashMap<String, Tracked>,
        producer: FutureProducer,
        next_offset: i64,
        published_until: i64,
    ) -> Self {
        Worker {
            partition,
            core,
            events,
            producer,
            timers: BTreeMap::new(),
            hold_index: HashMap::new(),
            next_offset,
            published_until,
        }
    }

    /// Schedules the hold-expiry timer of every order the loaded states hold.
    pub fn schedule_active_holds(&mut self) {
        let mut holds = Vec::new();
        for state in self.core.events.values() {
            for (order_id, at) in state.active_holds() {
                let user = state
                    .orders
                    .get(order_id)
                    .map(|o| o.user_id.clone())
                    .unwrap_or_default();
                holds.push((at, order_id.to_owned(), state.event_id.clone(), user));
            }
        }
        for (at, order_id, event_id, user_id) in holds {
            self.schedule(at, order_id, event_id, user_id);
        }
    }

    pub fn hold_count(&self) -> usize {
        self.timers.len()
    }

    fn schedule(&mut self, at: Millis, order_id: String, event_id: String, user_id: String) {
        if let Some(previous) = self.hold_index.insert(order_id.clone(), at) {
            self.timers.remove(&(previous, order_id.clone()));
        }
        self.timers.insert((at, order_id), (event_id, user_id));
    }

    fn clear(&mut self, order_id: &str) {
        if let Some(at) = self.hold_index.remove(order_id) {
            self.timers.remove(&(at, order_id.to_owned()));
        }
    }

    fn apply_timers(&mut self, changes: Vec<TimerChange>) {
        for change in changes {
            match change {
                TimerChange::Schedule {
                    event_id,
                    order_id,
                    user_id,
                    at,
                } => self.schedule(at, order_id, event_id, user_id),
                TimerChange::Clear { order_id, .. } => self.clear(&order_id),
            }
        }
    }
}

/// Where an assigned partition stands.
enum Slot {
    Active(Box<Worker>),
    /// Assigned, not processed: restored once `retry_at` passes.
    Waiting {
        retry_at: Instant,
        attempt: u32,
        reason: String,
    },
    /// Assigned and never processed again by this instance: what fans were told and what the
    /// log gives differ, or the store and Kafka disagree in a way no store fault explains.
    Stopped {
        reason: String,
    },
}

/// The outcome of one batch for one partition.
enum BatchOutcome {
    Done,
    /// This worker's view is stale or a fault outlasted the retry budget: restore the
    /// partition from the store and the log (after `after`).
    Rebuild {
        reason: String,
        after: Duration,
    },
    /// Stop processing the partition (see [`Slot::Stopped`]).
    Stop(String),
    /// Something no retry can fix (a schema the registry refuses): stop the process rather
    /// than skip a record.
    Failed(String),
}

/// How long a fenced partition waits before it is restored again, if still assigned: long
/// enough for the group to tell this instance about the rebalance that fenced it.
const FENCED_RECHECK: Duration = Duration::from_secs(15);
/// How long a partition whose store was ahead waits before it is restored again.
const AHEAD_RECHECK: Duration = Duration::from_secs(2);

struct Runtime {
    deps: BookingDeps,
    topics: Topics,
    partition_count: i32,
    slots: HashMap<i32, Slot>,
    /// Plain idempotent producer for hold expiries (commands, like ingest's).
    command_producer: FutureProducer,
}

/// Runs the booking processor until `shutdown` resolves; then finishes the batch in flight and
/// leaves the group.
pub async fn run(deps: BookingDeps, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    let topics = deps.settings.topics();
    let context = GroupContext::pausing();
    let consumer: StreamConsumer<GroupContext> = deps
        .kafka
        .client_config()
        .set("group.id", &deps.settings.group_id)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("partition.assignment.strategy", "range")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set("fetch.wait.max.ms", "10")
        .create_with_context(context.clone())?;
    let partition_count = partition_count(&consumer, &topics.commands, deps.kafka.timeout).await?;
    consumer.subscribe(&[&topics.commands])?;
    let command_producer: FutureProducer = deps.kafka.durable_producer_config().create()?;
    info!(
        group = %deps.settings.group_id,
        topic = %topics.commands,
        partitions = partition_count,
        recovery_source = ?deps.settings.recovery_source,
        "booking processor joined its group; waiting for partitions"
    );
    if deps.settings.recovery_source == RecoverySource::TrustStore {
        warn!(
            "--recovery-source trust-store: restores take the store's word (the negative control of the chaos suite; it oversells when the store loses writes)"
        );
    }

    let mut runtime = Runtime {
        deps,
        topics,
        partition_count,
        slots: HashMap::new(),
        command_producer,
    };
    tokio::pin!(shutdown);
    loop {
        let batch = tokio::select! {
            _ = &mut shutdown => break,
            batch = collect_batch(&consumer, &runtime.deps.settings) => batch,
        };
        runtime.apply_membership(&context);
        runtime.process(&consumer, batch).await?;
        runtime.restore_due(&consumer).await;
        runtime.fire_due_timers().await;
        runtime.publish_gauges();
    }
    info!("booking processor stopping: batch finished, leaving the group");
    runtime.slots.clear();
    runtime.publish_gauges();
    consumer.unsubscribe();
    Ok(())
}

async fn partition_count(
    consumer: &StreamConsumer<GroupContext>,
    topic: &str,
    timeout: Duration,
) -> Result<i32, RunError> {
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let count = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map_or(0, |t| t.partitions().len());
    if count == 0 {
        return Err(RunError::MissingTopic {
            topic: topic.to_owned(),
        });
    }
    Ok(i32::try_from(count).unwrap_or(i32::MAX))
}

/// Waits for the first record (or a quiet 200 ms, so timers and restores still run), then
/// takes what else arrives within `max_batch_wait`, up to `max_batch_records`.
async fn collect_batch(
    consumer: &StreamConsumer<GroupContext>,
    settings: &BookingSettings,
) -> Vec<OwnedMessage> {
    let mut batch = Vec::new();
    match tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await {
        Ok(Ok(message)) => batch.push(message.detach()),
        Ok(Err(e)) => {
            warn!(error = %e, "consumer error");
            return batch;
        }
        Err(_) => return batch,
    }
    let deadline = tokio::time::Instant::now() + settings.max_batch_wait;
    while batch.len() < settings.max_batch_records as usize {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(Ok(message)) => batch.push(message.detach()),
            Ok(Err(e)) => {
                warn!(error = %e, "consumer error");
                break;
            }
            Err(_) => break,
        }
    }
    batch
}

impl Runtime {
    /// Acts on rebalances noted since the last batch: drops revoked partitions, marks new ones
    /// for a restore.
    fn apply_membership(&mut self, context: &GroupContext) {
        for change in context.take() {
            match change {
                Membership::Revoked(partitions) => {
                    for p in partitions {
                        if self.slots.remove(&p).is_some() {
                            info!(partition = p, "partition revoked; state released");
                        }
                    }
                }
                Membership::Assigned(partitions) => {
                    for p in partitions {
                        self.slots.entry(p).or_insert_with(|| Slot::Waiting {
                            retry_at: Instant::now(),
                            attempt: 0,
                            reason: "assigned".to_owned(),
                        });
                    }
                }
            }
        }
    }

    /// Restores every waiting partition whose time has come, concurrently.
    async fn restore_due(&mut self, consumer: &StreamConsumer<GroupContext>) {
        let now = Instant::now();
        let due: Vec<(i32, u32)> = self
            .slots
            .iter()
            .filter_map(|(p, slot)| match slot {
                Slot::Waiting {
                    retry_at, attempt, ..
                } if *retry_at <= now => Some((*p, *attempt)),
                _ => None,
            })
            .collect();
        if due.is_empty() {
            return;
        }
        let deps = &self.deps;
        let topics = &self.topics;
        let results = join_all(due.into_iter().map(|(p, attempt)| async move {
            let span = info_span!("restore", partition = p, attempt);
            let result = restore(deps, topics, consumer, p).instrument(span).await;
            (p, attempt, result)
        }))
        .await;
        for (p, attempt, result) in results {
            // A revocation noted meanwhile wins: the slot is gone.
            if !self.slots.contains_key(&p) {
                continue;
            }
            let slot = match result {
                Ok(worker) => {
                    self.deps.metrics.restores.inc_by(1);
                    Slot::Active(Box::new(worker))
                }
                Err(RestoreError::Retry(reason)) => {
                    warn!(partition = p, attempt, reason = %reason, "restoring the partition failed; will try again");
                    Slot::Waiting {
                        retry_at: Instant::now()
                            + self
                                .deps
                                .settings
                                .retry_policy()
                                .jittered_delay(attempt + 3),
                        attempt: attempt + 1,
                        reason,
                    }
                }
                Err(RestoreError::Stop(reason)) => self.stop(consumer, p, reason),
            };
            self.slots.insert(p, slot);
        }
    }

    fn stop(
        &self,
        consumer: &StreamConsumer<GroupContext>,
        partition: i32,
        reason: String,
    ) -> Slot {
        error!(
            partition,
            reason = %reason,
            "PARTITION STOPPED: what fans were told and what the log gives differ, or the store and Kafka disagree; it is not processed again until an operator resolves it and restarts the processor"
        );
        self.pause(consumer, partition);
        Slot::Stopped { reason }
    }

    fn pause(&self, consumer: &StreamConsumer<GroupContext>, partition: i32) {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.topics.commands, partition);
        if let Err(e) = consumer.pause(&tpl) {
            debug!(partition, error = %e, "pausing the partition failed");
        }
    }

    /// Decides and commits one batch, each partition's share concurrently. `Err` stops the
    /// processor (something no retry can fix); nothing is ever skipped.
    async fn process(
        &mut self,
        consumer: &StreamConsumer<GroupContext>,
        batch: Vec<OwnedMessage>,
    ) -> Result<(), RunError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut by_partition: HashMap<i32, Vec<OwnedMessage>> = HashMap::new();
        for message in batch {
            by_partition
                .entry(message.partition())
                .or_default()
                .push(message);
        }
        let deps = &self.deps;
        let topics = &self.topics;
        let partition_count = self.partition_count;
        let mut jobs = Vec::new();
        for (partition, slot) in self.slots.iter_mut() {
            if let Slot::Active(worker) = slot
                && let Some(records) = by_partition.remove(partition)
            {
                let span = info_span!("batch", partition = *partition, records = records.len());
                let job = BatchJob {
                    deps,
                    topics,
                    partition_count,
                    consumer,
                };
                jobs.push(job.run(worker, records).instrument(span));
            }
        }
        let outcomes = join_all(jobs).await;
        for (partition, records) in by_partition {
            // Fetched before a revocation or while the partition waits for a restore: its
            // restore seeks to where the log must be read again.
            debug!(
                partition,
                records = records.len(),
                "records of a partition not processed here; dropped"
            );
        }
        for (partition, outcome) in outcomes {
            match outcome {
                BatchOutcome::Done => {}
                BatchOutcome::Rebuild { reason, after } => {
                    warn!(partition, reason = %reason, "partition given up; restoring it from the store and the log");
                    self.deps.metrics.rebuilds.inc_by(1);
                    self.pause(consumer, partition);
                    self.slots.insert(
                        partition,
                        Slot::Waiting {
                            retry_at: Instant::now() + after,
                            attempt: 0,
                            reason,
                        },
                    );
                }
                BatchOutcome::Stop(reason) => {
                    let slot = self.stop(consumer, partition, reason);
                    self.slots.insert(partition, slot);
                }
                BatchOutcome::Failed(reason) => {
                    error!(partition, reason = %reason, "batch cannot be processed; stopping");
                    return Err(RunError::Fatal(reason));
                }
            }
        }
        Ok(())
    }

    /// Produces `HoldExpired` for every hold whose deadline passed. The decision stays in the
    /// log: the core releases the hold only if the order is still unpaid when it reads it.
    async fn fire_due_timers(&mut self) {
        let now = now_millis();
        let mut sends = Vec::new();
        for slot in self.slots.values_mut() {
            let Slot::Active(worker) = slot else {
                continue;
            };
            while let Some(entry) = worker.timers.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                let ((deadline, order_id), (event_id, user_id)) = entry.remove_entry();
                worker.hold_index.remove(&order_id);
                let record = HoldExpired {
                    record_id: ids::record_id_for::<HoldExpired>(&[
                        &order_id,
                        &deadline.to_string(),
                    ]),
                    order_id,
                    event_id,
                    user_id,
                    hold_expires_at: deadline,
                    occurred_at: now,
                };
                sends.push((worker.partition, record));
            }
        }
        if sends.is_empty() {
            return;
        }
        let codec = &self.deps.codec;
        let producer = &self.command_producer;
        let topic = &self.topics.commands;
        let results = join_all(sends.into_iter().map(|(partition, record)| async move {
            let group = BookingCommand::HoldExpired(record.clone());
            let sent = async {
                let bytes = codec
                    .encode_group(topic, &group)
                    .await
                    .map_err(|e| e.to_string())?;
                producer
                    .send(
                        FutureRecord::to(topic)
                            .key(record.event_id.as_bytes())
                            .payload(&bytes),
                        Duration::from_secs(10),
                    )
                    .await
                    .map_err(|(e, _)| e.to_string())?;
                Ok::<_, String>(())
            }
            .instrument(info_span!("hold_expired", partition, order_id = %record.order_id))
            .await;
            (partition, record, sent)
        }))
        .await;
        for (partition, record, sent) in results {
            if let Err(e) = sent {
                // Try again shortly; until then the order stays reserved, which never oversells.
                warn!(partition, order_id = %record.order_id, error = %e, "producing a hold expiry failed; retrying");
                if let Some(Slot::Active(worker)) = self.slots.get_mut(&partition) {
                    worker.schedule(now + 1000, record.order_id, record.event_id, record.user_id);
                }
            }
        }
    }

    fn publish_gauges(&self) {
        let m = &self.deps.metrics;
        let mut active = 0;
        let mut waiting = 0;
        let mut stopped = 0;
        let mut holds = 0;
        let mut lost = 0;
        for slot in self.slots.values() {
            match slot {
                Slot::Active(worker) => {
                    active += 1;
                    holds += worker.timers.len();
                    lost += worker.events.values().filter(|t| t.lost.is_some()).count();
                }
                Slot::Waiting { .. } => waiting += 1,
                Slot::Stopped { .. } => stopped += 1,
            }
        }
        let gauge = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        m.partitions_assigned.set(gauge(self.slots.len()));
        m.partitions_owned.set(gauge(active));
        m.partitions_waiting.set(gauge(waiting));
        m.partitions_stopped.set(gauge(stopped));
        m.holds_active.set(gauge(holds));
        m.events_lost.set(gauge(lost));
        let mut why = Vec::new();
        for (p, slot) in &self.slots {
            match slot {
                Slot::Waiting { reason, .. } => {
                    why.push(format!("partition {p} waiting: {reason}"))
                }
                Slot::Stopped { reason } => why.push(format!("partition {p} STOPPED: {reason}")),
                Slot::Active(_) => {}
            }
        }
        why.sort();
        m.set_not_ready(why);
    }
}

/// What one partition's share of a batch needs.
struct BatchJob<'a> {
    deps: &'a BookingDeps,
    topics: &'a Topics,
    partition_count: i32,
    consumer: &'a StreamConsumer<GroupContext>,
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
}

impl BatchJob<'_> {
    fn retry_policy(&self) -> RetryPolicy {
        self.deps.settings.retry_policy()
    }

    /// Decides one partition's share of a batch, publishes its outputs and progress in one
    /// transaction, persists the touched events.
    async fn run(self, worker: &mut Worker, records: Vec<OwnedMessage>) -> (i32, BatchOutcome) {
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
        metrics.commands_refolded.inc_by(decided.refolded);
        metrics.batches.inc_by(1);
        metrics.batch_size.observe(records.len() as f64);
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
            store_ms = produced_at.elapsed().as_millis() as u64,
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
                match encode_output(&self.deps.codec, self.topics, &output, budget).await {
                    Ok(encoded) => out.outputs.push(encoded),
                    Err(e) => return Err(self.encode_failure("an output", e)),
                }
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

    async fn register_event(&self, partition: i32, event_id: &str) -> Result<(), BatchOutcome> {
        let mut retries = self.retry_policy().start(Instant::now());
        loop {
            let e = match self
                .deps
                .store
                .register_event(&self.topics.commands, partition, event_id)
                .await
            {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            let delay = e
                .is_retryable()
                .then(|| retries.next_delay(Instant::now()))
                .flatten();
            let Some(delay) = delay else {
                return Err(self.store_failure("registering an event", &e));
            };
            self.deps.metrics.store_retries.inc_by(1);
            let attempt = retries.attempts();
            warn!(partition, event_id, attempt, error = %e, "registering an event failed; retrying");
            tokio::time::sleep(delay).await;
        }
    }

    /// Writes an event's state, retrying while the store is unavailable, within the budget.
    async fn save_with_retry(
        &self,
        update: &StoredEventUpdate,
    ) -> Result<SaveOutcome, BatchOutcome> {
        let mut retries = self.retry_policy().start(Instant::now());
        loop {
            let e = match self.deps.store.save(update).await {
                // A retried save whose first attempt landed (it timed out, but was applied).
                Ok(SaveOutcome::Conflict {
                    current_offset: Some(current),
                }) if retries.attempts() > 0 && current == update.new_offset => {
                    return Ok(SaveOutcome::Applied);
                }
                Ok(outcome) => return Ok(outcome),
                Err(e) => e,
            };
            let delay = e
                .is_retryable()
                .then(|| retries.next_delay(Instant::now()))
                .flatten();
            let Some(delay) = delay else {
                return Err(self.store_failure("saving event state", &e));
            };
            self.deps.metrics.store_retries.inc_by(1);
            let attempt = retries.attempts();
            warn!(event_id = %update.event_id, attempt, error = %e, "saving event state failed; retrying");
            tokio::time::sleep(delay).await;
        }
    }

    fn store_failure(
        &self,
        what: &str,
        e: &boxoffice_store::inventory::StoreError,
    ) -> BatchOutcome {
        if e.is_retryable() {
            self.deps.metrics.retries_exhausted.inc_by(1);
            BatchOutcome::Rebuild {
                reason: format!(
                    "{what}: the store was unavailable for longer than the retry budget: {e}"
                ),
                after: Duration::ZERO,
            }
        } else {
            BatchOutcome::Failed(format!("{what}: {e}"))
        }
    }

    /// Decodes a command and checks it belongs here.
    async fn decode_command(
        &self,
        message: &OwnedMessage,
    ) -> Result<BookingCommand, DecodeFailure> {
        let Some(payload) = message.payload() else {
            return Err(DecodeFailure::Record(
                DeadLetterErrorKind::InvalidRecord,
                "record has no value".to_owned(),
            ));
        };
        let mut retries = self.retry_policy().start(Instant::now());
        let command = loop {
            match self
                .deps
                .codec
                .decode_group::<BookingCommand>(payload)
                .await
            {
                Ok(command) => break command,
                Err(e) if e.is_retryable() => {
                    let Some(delay) = retries.next_delay(Instant::now()) else {
                        return Err(DecodeFailure::Registry(
                            boxoffice_avro::CodecError::Registry(e.to_string()),
                        ));
                    };
                    let attempt = retries.attempts();
                    warn!(offset = message.offset(), attempt, error = %e, "registry unavailable while decoding; retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(DecodeFailure::Record(e.dead_letter_kind(), e.to_string())),
            }
        };
        let key = message.key().unwrap_or_default();
        if key != command.key().as_bytes() {
            return Err(DecodeFailure::Record(
                DeadLetterErrorKind::InvalidRecord,
                format!("record key does not match its event_id {}", command.key()),
            ));
        }
        let expected = partition_for(key, self.partition_count);
        if expected != message.partition() {
            // Another partition owns this event: deciding it here would make two writers.
            return Err(DecodeFailure::Record(
                DeadLetterErrorKind::InvalidRecord,
                format!(
                    "event {} belongs to partition {expected}, not {}",
                    command.key(),
                    message.partition()
                ),
            ));
        }
        Ok(command)
    }
}

/// Why a command could not be decoded.
enum DecodeFailure {
    /// The registry stayed unavailable for the whole budget (the bytes may be fine).
    Registry(boxoffice_avro::CodecError),
    /// The record itself is wrong: dead-letter it.
    Record(DeadLetterErrorKind, String),
}

fn order_id_of(command: &BookingCommand) -> Option<&str> {
    match command {
        BookingCommand::BookingRequested(r) => Some(&r.order_id),
        BookingCommand::CancelRequested(r) => Some(&r.order_id),
        BookingCommand::PaymentSucceeded(r) => Some(&r.order_id),
        BookingCommand::PaymentFailed(r) => Some(&r.order_id),
        BookingCommand::HoldExpired(r) => Some(&r.order_id),
        BookingCommand::EventUpserted(_) => None,
    }
}
