//! The booking processor's runtime: Kafka in, the pure core in the middle, Kafka and ScyllaDB
//! out. It owns the consumer-group membership, one worker per assigned partition, the
//! hold-expiry timer, dead-lettering, and the order of side effects that makes processing
//! effectively once:
//!
//! 1. take a batch (bounded count and time) and decide it, partition by partition, in log order;
//! 2. produce every resulting record in one Kafka transaction per partition and commit it
//!    (transactional id per partition, so a new owner fences a zombie's producer);
//! 3. persist each touched event's state with its applied offset, conditional on the offset
//!    stored before (a zombie's stale write is refused);
//! 4. commit the consumer offset (a hint: restarts skip anything at or below an event's stored
//!    offset anyway).
//!
//! A crash between 2 and 3 replays the batch on the same stored state: the same decisions,
//! records with the same deterministic ids, which consumers deduplicate.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use boxoffice_avro::ids;
use boxoffice_avro::records::{
    BookingCommand, DeadLetter, DeadLetterErrorKind, HoldExpired, Record, RecordGroup, topic,
};
use boxoffice_avro::{Codec, CodecError};
use boxoffice_sinks::inventory::{InventoryStore, SaveOutcome};
use boxoffice_topics::kafka::KafkaArgs;
use boxoffice_topics::partitioner::partition_for;
use futures::future::join_all;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use tracing::{Instrument, debug, error, info, info_span, warn};

use super::partition::{Partition, TimerChange};
use super::render::Output;
use super::state::Millis;
use super::store;
use crate::metrics::BookingMetrics;
use crate::rebalance::{GroupContext, Membership};

/// The topics the processor reads and writes. Production names by default; tests use a prefix
/// so each gets its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub commands: String,
    pub orders: String,
    pub payments: String,
    pub availability: String,
    pub notifications: String,
    pub dead_letters: String,
}

impl Topics {
    pub fn with_prefix(prefix: &str) -> Self {
        Topics {
            commands: format!("{prefix}{}", topic::BOOKING_COMMANDS),
            orders: format!("{prefix}{}", topic::ORDERS_EVENTS),
            payments: format!("{prefix}{}", topic::PAYMENTS_REQUESTS),
            availability: format!("{prefix}{}", topic::AVAILABILITY),
            notifications: format!("{prefix}{}", topic::NOTIFICATIONS),
            dead_letters: format!("{prefix}{}", topic::DEAD_LETTERS),
        }
    }

    fn for_output(&self, output: &Output) -> &str {
        match output {
            Output::Order(_) => &self.orders,
            Output::Payment(_) => &self.payments,
            Output::Availability(_) => &self.availability,
            Output::Notification(_) => &self.notifications,
        }
    }
}

/// How the booking processor batches and identifies itself.
#[derive(Debug, Clone, clap::Args)]
pub struct BookingSettings {
    /// Consumer group of the booking processors; every instance of one deployment shares it.
    #[arg(
        long = "group-id",
        env = "BOOKING_GROUP_ID",
        default_value = "booking-processor"
    )]
    pub group_id: String,

    /// Prefix of every topic name (empty in production; tests and side-by-side deployments).
    #[arg(
        long = "topic-prefix",
        env = "BOXOFFICE_TOPIC_PREFIX",
        default_value = ""
    )]
    pub topic_prefix: String,

    /// Most records decided in one batch (one transaction and one state write per event).
    #[arg(long = "max-batch-records", env = "BOOKING_MAX_BATCH_RECORDS", default_value_t = 2000,
          value_parser = clap::value_parser!(u32).range(1..=20_000))]
    pub max_batch_records: u32,

    /// Longest a batch waits to fill up once its first record arrived (e.g. `20ms`).
    #[arg(long = "max-batch-wait", env = "BOOKING_MAX_BATCH_WAIT", default_value = "20ms",
          value_parser = humantime::parse_duration)]
    pub max_batch_wait: Duration,
}

impl BookingSettings {
    pub fn topics(&self) -> Topics {
        Topics::with_prefix(&self.topic_prefix)
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

/// One owned partition: its events' state, their stored offsets, its transactional producer
/// and its hold timers.
struct Worker {
    partition: i32,
    core: Partition,
    /// Offset stored with each event's state (`None`: never stored).
    stored_offsets: HashMap<String, Option<i64>>,
    registered: HashSet<String>,
    producer: FutureProducer,
    /// (Deadline, order id) → (event id, user id), soonest first.
    timers: BTreeMap<(Millis, String), (String, String)>,
    /// Order id → its deadline in `timers`.
    hold_index: HashMap<String, Millis>,
    /// The last offset whose batch is fully produced and stored.
    processed_through: Option<i64>,
}

impl Worker {
    fn schedule(
        &mut self,
        at: Millis,
        order_id: String,
        event_id: String,
        user_id: String,
    ) -> bool {
        if let Some(previous) = self.hold_index.insert(order_id.clone(), at) {
            self.timers.remove(&(previous, order_id.clone()));
        }
        self.timers
            .insert((at, order_id), (event_id, user_id))
            .is_none()
    }

    fn clear(&mut self, order_id: &str) -> bool {
        match self.hold_index.remove(order_id) {
            Some(at) => self.timers.remove(&(at, order_id.to_owned())).is_some(),
            None => false,
        }
    }
}

/// The outcome of one batch for one partition.
enum BatchOutcome {
    Done,
    /// Another owner took over (transaction fenced or state write refused): let go.
    Fenced(String),
    /// Something no retry can fix (a schema the registry refuses): stop rather than skip.
    Failed(String),
}

fn now_millis() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Millis)
}

struct Runtime {
    deps: BookingDeps,
    topics: Topics,
    partition_count: i32,
    workers: HashMap<i32, Worker>,
    /// Partitions given up after a fencing, and when.
    fenced: HashMap<i32, Instant>,
    /// Plain idempotent producer for hold expiries (commands, like ingest's).
    command_producer: FutureProducer,
}

/// Runs the booking processor until `shutdown` resolves; then finishes the batch in flight and
/// leaves the group.
pub async fn run(deps: BookingDeps, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    let topics = deps.settings.topics();
    let context = GroupContext::default();
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
        "booking processor joined its group; waiting for partitions"
    );

    let mut runtime = Runtime {
        deps,
        topics,
        partition_count,
        workers: HashMap::new(),
        fenced: HashMap::new(),
        command_producer,
    };
    tokio::pin!(shutdown);
    loop {
        let batch = tokio::select! {
            _ = &mut shutdown => break,
            batch = collect_batch(&consumer, &runtime.deps.settings) => batch,
        };
        runtime.apply_membership(&context).await;
        runtime.process(&consumer, batch).await?;
        runtime.fire_due_timers().await;
    }
    info!("booking processor stopping: batch finished, leaving the group");
    runtime.workers.clear();
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

/// Waits for the first record (or a quiet second, so timers still fire), then takes what else
/// arrives within `max_batch_wait`, up to `max_batch_records`.
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
    /// Acts on rebalances noted since the last batch: drops revoked workers, builds new ones
    /// from ScyllaDB.
    async fn apply_membership(&mut self, context: &GroupContext) {
        for change in context.take() {
            match change {
                Membership::Revoked(partitions) => {
                    for p in partitions {
                        if let Some(worker) = self.workers.remove(&p) {
                            self.deps
                                .metrics
                                .holds_active
                                .fetch_sub(worker.timers.len() as i64, Ordering::Relaxed);
                            info!(partition = p, "partition revoked; state released");
                        }
                    }
                }
                Membership::Assigned(partitions) => {
                    for p in partitions {
                        if self.workers.contains_key(&p) {
                            continue;
                        }
                        let worker = self.load_worker(p).await;
                        self.deps
                            .metrics
                            .holds_active
                            .fetch_add(worker.timers.len() as i64, Ordering::Relaxed);
                        self.workers.insert(p, worker);
                    }
                }
            }
        }
        self.deps
            .metrics
            .partitions_owned
            .store(self.workers.len() as i64, Ordering::Relaxed);
    }

    /// Restores a partition's events from ScyllaDB and fences any earlier owner's producer.
    /// Retries until it succeeds: a partition is never processed without its state.
    async fn load_worker(&self, partition: i32) -> Worker {
        let started = Instant::now();
        let mut attempt = 0u32;
        loop {
            match self.try_load_worker(partition).await {
                Ok(worker) => {
                    info!(
                        partition,
                        events = worker.core.events.len(),
                        holds = worker.timers.len(),
                        max_offset = worker.stored_offsets.values().flatten().max(),
                        took_ms = started.elapsed().as_millis() as u64,
                        "partition assigned; state restored"
                    );
                    return worker;
                }
                Err(e) => {
                    attempt += 1;
                    warn!(partition, attempt, error = %e, "restoring partition failed; retrying");
                    tokio::time::sleep(backoff(attempt)).await;
                }
            }
        }
    }

    async fn try_load_worker(&self, partition: i32) -> Result<Worker, String> {
        let store = &self.deps.store;
        let event_ids = store
            .events_of_partition(&self.topics.commands, partition)
            .await
            .map_err(|e| e.to_string())?;
        let loads = event_ids.iter().map(|id| store.load(id));
        let mut core = Partition::new();
        let mut stored_offsets = HashMap::new();
        let mut holds = Vec::new();
        for loaded in join_all(loads).await {
            let Some(stored) = loaded.map_err(|e| e.to_string())? else {
                continue;
            };
            let (state, offset) = store::restore(stored).map_err(|e| e.to_string())?;
            for (order_id, at) in state.active_holds() {
                let user = state
                    .orders
                    .get(order_id)
                    .map(|o| o.user_id.clone())
                    .unwrap_or_default();
                holds.push((at, order_id.to_owned(), state.event_id.clone(), user));
            }
            stored_offsets.insert(state.event_id.clone(), offset);
            core.events.insert(state.event_id.clone(), state);
        }
        let transactional_id = format!(
            "{}-{}-{partition}",
            self.deps.settings.group_id, self.topics.commands
        );
        let producer: FutureProducer = self
            .deps
            .kafka
            .durable_producer_config()
            .set("transactional.id", &transactional_id)
            .set("transaction.timeout.ms", "30000")
            .create()
            .map_err(|e| e.to_string())?;
        let init = producer.clone();
        let timeout = self.deps.kafka.timeout;
        tokio::task::spawn_blocking(move || init.init_transactions(timeout))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("init_transactions({transactional_id}): {e}"))?;
        let mut worker = Worker {
            partition,
            core,
            registered: stored_offsets.keys().cloned().collect(),
            stored_offsets,
            producer,
            timers: BTreeMap::new(),
            hold_index: HashMap::new(),
            processed_through: None,
        };
        for (at, order_id, event_id, user_id) in holds {
            worker.schedule(at, order_id, event_id, user_id);
        }
        Ok(worker)
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
        for (partition, worker) in self.workers.iter_mut() {
            if let Some(records) = by_partition.remove(partition) {
                let span = info_span!("batch", partition = *partition, records = records.len());
                jobs.push(
                    process_partition(deps, topics, partition_count, worker, records)
                        .instrument(span),
                );
            }
        }
        let outcomes = join_all(jobs).await;
        for (partition, records) in by_partition {
            self.recover_unowned(consumer, partition, records.len())
                .await;
        }
        let mut commit = TopicPartitionList::new();
        for (partition, outcome) in outcomes {
            match outcome {
                BatchOutcome::Done => {}
                BatchOutcome::Fenced(reason) => {
                    warn!(partition, reason = %reason, "fenced by a newer owner; letting the partition go");
                    if let Some(worker) = self.workers.remove(&partition) {
                        self.deps
                            .metrics
                            .holds_active
                            .fetch_sub(worker.timers.len() as i64, Ordering::Relaxed);
                    }
                    self.fenced.insert(partition, Instant::now());
                    continue;
                }
                BatchOutcome::Failed(reason) => {
                    error!(partition, reason = %reason, "batch cannot be processed; stopping");
                    return Err(RunError::Fatal(reason));
                }
            }
            if let Some(next) = self
                .workers
                .get(&partition)
                .and_then(|w| w.processed_through)
            {
                let _ = commit.add_partition_offset(
                    &self.topics.commands,
                    partition,
                    Offset::Offset(next + 1),
                );
            }
        }
        if commit.count() > 0
            && let Err(e) = consumer.commit(&commit, CommitMode::Async)
        {
            // Only a hint for restarts; stored offsets decide what is skipped.
            debug!(error = %e, "offset commit failed");
        }
        Ok(())
    }

    /// Records arrived for a partition without a worker. Fetched just before a revocation:
    /// the new owner reads them again. Still ours long after a fencing (no revocation came):
    /// rebuild the worker from ScyllaDB and read again from the committed offset.
    async fn recover_unowned(
        &mut self,
        consumer: &StreamConsumer<GroupContext>,
        partition: i32,
        records: usize,
    ) {
        let still_assigned = consumer
            .assignment()
            .map(|a| {
                a.elements_for_topic(&self.topics.commands)
                    .iter()
                    .any(|e| e.partition() == partition)
            })
            .unwrap_or(false);
        let fenced_recently = self
            .fenced
            .get(&partition)
            .is_some_and(|at| at.elapsed() < Duration::from_secs(15));
        if !still_assigned || fenced_recently {
            debug!(
                partition,
                records, "records of a partition not owned; left to its owner"
            );
            return;
        }
        self.fenced.remove(&partition);
        let worker = self.load_worker(partition).await;
        let resume = consumer
            .committed_offsets(
                {
                    let mut tpl = TopicPartitionList::new();
                    tpl.add_partition(&self.topics.commands, partition);
                    tpl
                },
                self.deps.kafka.timeout,
            )
            .ok()
            .and_then(|tpl| {
                tpl.find_partition(&self.topics.commands, partition)
                    .map(|e| e.offset())
            })
            .filter(|o| matches!(o, Offset::Offset(_)))
            .unwrap_or(Offset::Beginning);
        if let Err(e) = consumer.seek(
            &self.topics.commands,
            partition,
            resume,
            self.deps.kafka.timeout,
        ) {
            warn!(partition, error = %e, "seek after rebuilding a partition failed");
        }
        info!(
            partition,
            ?resume,
            "partition rebuilt after fencing; reading again"
        );
        self.deps
            .metrics
            .holds_active
            .fetch_add(worker.timers.len() as i64, Ordering::Relaxed);
        self.workers.insert(partition, worker);
    }

    /// Produces `HoldExpired` for every hold whose deadline passed. The decision stays in the
    /// log: the core releases the hold only if the order is still unpaid when it reads it.
    async fn fire_due_timers(&mut self) {
        let now = now_millis();
        let mut sends = Vec::new();
        for worker in self.workers.values_mut() {
            while let Some(entry) = worker.timers.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                let ((deadline, order_id), (event_id, user_id)) = entry.remove_entry();
                worker.hold_index.remove(&order_id);
                self.deps
                    .metrics
                    .holds_active
                    .fetch_sub(1, Ordering::Relaxed);
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
                if let Some(worker) = self.workers.get_mut(&partition)
                    && worker.schedule(now + 1000, record.order_id, record.event_id, record.user_id)
                {
                    self.deps
                        .metrics
                        .holds_active
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// A record to produce, encoded.
struct Encoded {
    topic: String,
    key: Vec<u8>,
    payload: Vec<u8>,
    headers: Option<OwnedHeaders>,
}

/// Decides one partition's share of a batch, produces its outputs transactionally, persists
/// the touched events. Returns the partition and what happened.
async fn process_partition(
    deps: &BookingDeps,
    topics: &Topics,
    partition_count: i32,
    worker: &mut Worker,
    records: Vec<OwnedMessage>,
) -> (i32, BatchOutcome) {
    let partition = worker.partition;
    let metrics = &deps.metrics;
    let batch_started = Instant::now();
    let mut outputs: Vec<Encoded> = Vec::new();
    // Event id → order ids changed in this batch (each once).
    let mut touched: HashMap<String, BTreeSet<String>> = HashMap::new();
    let mut timer_changes: Vec<TimerChange> = Vec::new();
    let mut last_offset = None;
    let mut oldest_timestamp: Option<i64> = None;
    let mut decided = 0u64;

    for message in &records {
        last_offset = Some(message.offset());
        let command = match decode_command(deps, message, partition_count).await {
            Ok(command) => command,
            Err((kind, reason)) => {
                warn!(partition, offset = message.offset(), kind = ?kind, reason = %reason, "dead-lettering a record");
                match dead_letter(deps, topics, message, kind, &reason).await {
                    Ok(encoded) => outputs.push(encoded),
                    Err(e) => {
                        return (
                            partition,
                            BatchOutcome::Failed(format!("encoding a dead letter: {e}")),
                        );
                    }
                }
                metrics.dead_letters.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        let event_id = command.key().to_owned();
        let stored = worker.stored_offsets.get(&event_id).copied().flatten();
        if stored.is_some_and(|s| message.offset() <= s) {
            metrics.records_skipped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let decision = worker.core.decide(&command);
        decided += 1;
        if let Some(ts) = message.timestamp().to_millis() {
            oldest_timestamp = Some(oldest_timestamp.map_or(ts, |o: i64| o.min(ts)));
        }
        for reason in &decision.ignored {
            debug!(partition, offset = message.offset(), event_id = %event_id, reason = %reason, "command changed nothing");
        }
        let changed = touched.entry(event_id.clone()).or_default();
        if let Some(order_id) = order_id_of(&command) {
            changed.insert(order_id.to_owned());
        }
        timer_changes.extend(decision.timers);
        for output in decision.outputs {
            match encode_output(deps, topics, &output).await {
                Ok(encoded) => outputs.push(encoded),
                Err(e) => {
                    return (
                        partition,
                        BatchOutcome::Failed(format!("encoding an output: {e}")),
                    );
                }
            }
        }
    }
    let Some(last_offset) = last_offset else {
        return (partition, BatchOutcome::Done);
    };
    let decided_at = Instant::now();

    if let Err(reason) = produce_transaction(worker, &outputs, metrics).await {
        return (partition, BatchOutcome::Fenced(reason));
    }
    let produced_at = Instant::now();
    metrics
        .outputs_produced
        .fetch_add(outputs.len() as u64, Ordering::Relaxed);

    // Every event the batch touched — and, when the batch only skipped or dead-lettered, none.
    for (event_id, changed_orders) in &touched {
        if !worker.registered.contains(event_id) {
            register_event(deps, topics, partition, event_id).await;
            worker.registered.insert(event_id.clone());
        }
        let Some(state) = worker.core.events.get(event_id) else {
            continue;
        };
        let previous = worker.stored_offsets.get(event_id).copied().flatten();
        let changed_orders: Vec<String> = changed_orders.iter().cloned().collect();
        let update = store::update(state, previous, last_offset, &changed_orders);
        match save_with_retry(deps, &update).await {
            Err(reason) => return (partition, BatchOutcome::Failed(reason)),
            Ok(SaveOutcome::Applied) => {
                worker
                    .stored_offsets
                    .insert(event_id.clone(), Some(last_offset));
            }
            Ok(SaveOutcome::Conflict { current_offset }) => {
                return (
                    partition,
                    BatchOutcome::Fenced(format!(
                        "event {event_id}: stored offset is {current_offset:?}, expected {previous:?}"
                    )),
                );
            }
        }
    }
    worker.processed_through = Some(last_offset);

    for change in timer_changes {
        match change {
            TimerChange::Schedule {
                event_id,
                order_id,
                user_id,
                at,
            } => {
                if worker.schedule(at, order_id, event_id, user_id) {
                    metrics.holds_active.fetch_add(1, Ordering::Relaxed);
                }
            }
            TimerChange::Clear { order_id, .. } => {
                if worker.clear(&order_id) {
                    metrics.holds_active.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
    }
    metrics
        .records_processed
        .fetch_add(decided, Ordering::Relaxed);
    metrics.batches.fetch_add(1, Ordering::Relaxed);
    metrics.batch_size.observe(records.len() as u64);
    if let Some(oldest) = oldest_timestamp {
        metrics
            .decision_latency_ms
            .observe(u64::try_from(now_millis() - oldest).unwrap_or(0));
    }
    debug!(
        partition,
        last_offset,
        decided,
        outputs = outputs.len(),
        decide_and_encode_ms = decided_at.duration_since(batch_started).as_millis() as u64,
        transaction_ms = produced_at.duration_since(decided_at).as_millis() as u64,
        store_ms = produced_at.elapsed().as_millis() as u64,
        "batch committed"
    );
    (partition, BatchOutcome::Done)
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

/// Decodes a command and checks it belongs here. Registry outages are retried (never
/// dead-lettered: the bytes are fine); anything wrong with the record itself is returned.
async fn decode_command(
    deps: &BookingDeps,
    message: &OwnedMessage,
    partition_count: i32,
) -> Result<BookingCommand, (DeadLetterErrorKind, String)> {
    let Some(payload) = message.payload() else {
        return Err((
            DeadLetterErrorKind::InvalidRecord,
            "record has no value".to_owned(),
        ));
    };
    let mut attempt = 0;
    let command = loop {
        match deps.codec.decode_group::<BookingCommand>(payload).await {
            Ok(command) => break command,
            Err(e) if e.is_retryable() => {
                attempt += 1;
                warn!(offset = message.offset(), attempt, error = %e, "registry unavailable while decoding; retrying");
                tokio::time::sleep(backoff(attempt)).await;
            }
            Err(e) => return Err((e.dead_letter_kind(), e.to_string())),
        }
    };
    let key = message.key().unwrap_or_default();
    if key != command.key().as_bytes() {
        return Err((
            DeadLetterErrorKind::InvalidRecord,
            format!("record key does not match its event_id {}", command.key()),
        ));
    }
    let expected = partition_for(key, partition_count);
    if expected != message.partition() {
        // Another partition owns this event: deciding it here would make two writers.
        return Err((
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

/// Encodes an output, waiting out registry outages; `Err` only for what no retry fixes.
async fn encode_output(
    deps: &BookingDeps,
    topics: &Topics,
    output: &Output,
) -> Result<Encoded, CodecError> {
    let topic = topics.for_output(output);
    let mut attempt = 0;
    let (payload, key) = loop {
        let encoded = match output {
            Output::Order(r) => deps
                .codec
                .encode_group(topic, r)
                .await
                .map(|p| (p, r.key())),
            Output::Payment(r) => deps
                .codec
                .encode_group(topic, r)
                .await
                .map(|p| (p, r.key())),
            Output::Availability(r) => deps.codec.encode(topic, r).await.map(|p| (p, r.key())),
            Output::Notification(r) => deps.codec.encode(topic, r).await.map(|p| (p, r.key())),
        };
        match encoded {
            Ok(done) => break done,
            Err(e) if e.is_retryable() => {
                attempt += 1;
                warn!(attempt, error = %e, "registry unavailable while encoding; retrying");
                tokio::time::sleep(backoff(attempt)).await;
            }
            Err(e) => return Err(e),
        }
    };
    let headers = OwnedHeaders::new().insert(Header {
        key: "record_id",
        value: Some(output.record_id()),
    });
    Ok(Encoded {
        topic: topic.to_owned(),
        key: key.as_bytes().to_vec(),
        payload,
        headers: Some(headers),
    })
}

/// The dead-letter record for `message`, with the reason in headers too (readable without the
/// registry). Waits out registry outages; `Err` only if the registry refuses the schema.
async fn dead_letter(
    deps: &BookingDeps,
    topics: &Topics,
    message: &OwnedMessage,
    kind: DeadLetterErrorKind,
    reason: &str,
) -> Result<Encoded, CodecError> {
    let now = now_millis();
    let record = DeadLetter {
        record_id: DeadLetter::record_id_for(
            &deps.settings.group_id,
            message.topic(),
            message.partition(),
            message.offset(),
        ),
        source_topic: message.topic().to_owned(),
        source_partition: message.partition(),
        source_offset: message.offset(),
        key: message.key().map(<[u8]>::to_vec),
        payload: message.payload().map(<[u8]>::to_vec),
        reason: reason.to_owned(),
        error_kind: kind,
        consumer: deps.settings.group_id.clone(),
        failed_at: now,
        occurred_at: message.timestamp().to_millis().unwrap_or(now),
    };
    let mut attempt = 0;
    let payload = loop {
        match deps.codec.encode(&topics.dead_letters, &record).await {
            Ok(payload) => break payload,
            Err(e) if e.is_retryable() => {
                attempt += 1;
                warn!(attempt, error = %e, "registry unavailable while dead-lettering; retrying");
                tokio::time::sleep(backoff(attempt)).await;
            }
            Err(e) => return Err(e),
        }
    };
    let kind_name = format!("{kind:?}");
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "dlq.reason",
            value: Some(reason),
        })
        .insert(Header {
            key: "dlq.error_kind",
            value: Some(kind_name.as_str()),
        })
        .insert(Header {
            key: "dlq.source",
            value: Some(&format!(
                "{}/{}/{}",
                message.topic(),
                message.partition(),
                message.offset()
            )),
        });
    Ok(Encoded {
        topic: topics.dead_letters.clone(),
        key: message.key().map(<[u8]>::to_vec).unwrap_or_default(),
        payload,
        headers: Some(headers),
    })
}

/// Produces `outputs` in one transaction, retrying the whole transaction on transient errors.
/// `Err` when the producer was fenced (another owner) or failed fatally.
async fn produce_transaction(
    worker: &Worker,
    outputs: &[Encoded],
    metrics: &BookingMetrics,
) -> Result<(), String> {
    if outputs.is_empty() {
        return Ok(());
    }
    let mut attempt = 0u32;
    loop {
        match try_transaction(&worker.producer, outputs).await {
            Ok(()) => return Ok(()),
            Err(TxnError::Fatal(reason)) => return Err(reason),
            Err(TxnError::Retry(reason)) => {
                attempt += 1;
                metrics.produce_retries.fetch_add(1, Ordering::Relaxed);
                warn!(partition = worker.partition, attempt, reason = %reason, "output transaction failed; retrying the batch");
                let producer = worker.producer.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    producer.abort_transaction(Duration::from_secs(10))
                })
                .await;
                tokio::time::sleep(backoff(attempt)).await;
            }
        }
    }
}

enum TxnError {
    Retry(String),
    Fatal(String),
}

fn classify(e: KafkaError) -> TxnError {
    match &e {
        KafkaError::Transaction(inner) if inner.is_fatal() => TxnError::Fatal(e.to_string()),
        KafkaError::Transaction(inner) if inner.txn_requires_abort() || inner.is_retriable() => {
            TxnError::Retry(e.to_string())
        }
        KafkaError::Transaction(_) => TxnError::Fatal(e.to_string()),
        _ => TxnError::Retry(e.to_string()),
    }
}

async fn try_transaction(producer: &FutureProducer, outputs: &[Encoded]) -> Result<(), TxnError> {
    producer.begin_transaction().map_err(classify)?;
    let mut deliveries = Vec::with_capacity(outputs.len());
    for out in outputs {
        let mut record = FutureRecord::to(&out.topic)
            .key(&out.key)
            .payload(&out.payload);
        if let Some(headers) = &out.headers {
            record = record.headers(headers.clone());
        }
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    deliveries.push(delivery);
                    break;
                }
                Err((
                    KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                    back,
                )) => {
                    // The local queue is full: let deliveries drain, then enqueue again.
                    record = back;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => return Err(TxnError::Retry(e.to_string())),
            }
        }
    }
    for delivery in join_all(deliveries).await {
        match delivery {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => return Err(classify(e)),
            Err(_) => return Err(TxnError::Retry("delivery cancelled".to_owned())),
        }
    }
    let committing = producer.clone();
    tokio::task::spawn_blocking(move || committing.commit_transaction(Duration::from_secs(30)))
        .await
        .map_err(|e| TxnError::Retry(e.to_string()))?
        .map_err(classify)
}

async fn register_event(deps: &BookingDeps, topics: &Topics, partition: i32, event_id: &str) {
    let mut attempt = 0;
    while let Err(e) = deps
        .store
        .register_event(&topics.commands, partition, event_id)
        .await
    {
        // Registration is an idempotent insert of three ids: only an outage fails it.
        attempt += 1;
        deps.metrics.store_retries.fetch_add(1, Ordering::Relaxed);
        warn!(partition, event_id, attempt, error = %e, "registering an event failed; retrying");
        tokio::time::sleep(backoff(attempt)).await;
    }
}

/// Writes an event's state, retrying while ScyllaDB is unavailable: nothing is skipped.
/// `Err` for what no retry fixes (the update itself is refused).
async fn save_with_retry(
    deps: &BookingDeps,
    update: &boxoffice_sinks::inventory::StoredEventUpdate,
) -> Result<SaveOutcome, String> {
    let mut attempt = 0;
    loop {
        match deps.store.save(update).await {
            // A retried save whose first attempt landed (it timed out, but was applied).
            Ok(SaveOutcome::Conflict {
                current_offset: Some(current),
            }) if attempt > 0 && current == update.new_offset => {
                return Ok(SaveOutcome::Applied);
            }
            Ok(outcome) => return Ok(outcome),
            Err(e) if e.is_retryable() => {
                attempt += 1;
                deps.metrics.store_retries.fetch_add(1, Ordering::Relaxed);
                warn!(event_id = %update.event_id, attempt, error = %e, "saving event state failed; retrying");
                tokio::time::sleep(backoff(attempt)).await;
            }
            Err(e) => return Err(format!("saving event {}: {e}", update.event_id)),
        }
    }
}

/// 50 ms doubling to 5 s.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(50u64.saturating_mul(1 << attempt.min(7)).min(5_000))
}
