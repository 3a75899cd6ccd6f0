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
//! 4. write the rows of the orders decided in the batch (`orders`, `orders_by_user`;
//!    idempotent; beside step 3), then persist each touched event's state with its applied offset,
//!    conditional on the offset stored before (a zombie's stale write is refused). The save is
//!    the commit point: one that survived a store crash kept the rows written before it, one
//!    that was lost is re-folded on the next restore, which writes the rows again.
//!
//! Pipelined: steps 3 and 4 of batch n run as a task while batch n+1 is collected and decided
//! (step 2 only needs the state in memory). Batch n+1's records, progress and state writes are
//! built from the state right after n+1, and its commit starts only once n's has finished, so
//! per partition the transactions and the fenced writes happen in log order exactly as before.
//! When n's commit fails the partition is restored and n+1's decisions are thrown away with
//! the worker (its records are read again after the restore). Rebalances and restores wait for
//! the commit in flight.
//!
//! A crash between 3 and 4 leaves the store behind Kafka; the next restore re-folds the gap
//! from the log and checks the decisions against the published digest.
//!
//! A partition that is assigned but not processed (being restored, waiting after a fault,
//! stopped) is re-checked on a timer, never on incoming traffic; `/readyz` answers 503 and the
//! `booking_partitions_waiting` / `booking_partitions_stopped` gauges show it.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use boxoffice_avro::Codec;
use boxoffice_avro::clock::now_millis;
use boxoffice_avro::ids;
use boxoffice_avro::records::{BookingCommand, DeadLetterErrorKind, HoldExpired, RecordGroup};
use boxoffice_runtime::retry::RetryPolicy;
use boxoffice_store::inventory::{InventoryStore, SaveOutcome, StoredEventUpdate};
use boxoffice_store::orders::{NewOrder, OrderRows};
use boxoffice_topics::kafka::KafkaArgs;
use boxoffice_topics::names::TopicPrefix;
use boxoffice_topics::partitioner::partition_for;
use futures::future::join_all;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, error, info, info_span, warn};

use super::partition::TimerChange;
use super::publish::{
    Encoded, OffsetCommit, TxnError, abort, dead_letter, encode_output, encode_progress,
    progress_record, transaction,
};
use super::recovery::{Published, RecoverySource, RefoldCheck, check_refold};
use super::restore::{RestoreError, restore};
use super::store;
pub use super::topics::Topics;
use crate::metrics::BookingMetrics;
use crate::rebalance::{GroupContext, Membership};

/// The largest `--max-batch-records` (see there; `store::tests` checks that such a batch fits
/// one save).
pub const MAX_BATCH_RECORDS: u32 = 8_000;

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
    /// At most 8,000: a record changes at most one order, and 8,000 orders with the longest
    /// order id (64 bytes) and Idempotency-Key (128 characters), about 470 bytes an order with
    /// its index entry (3.8 MB), stay inside one save's `MAX_SAVE_BYTES` (4 MiB).
    #[arg(long = "max-batch-records", env = "BOOKING_MAX_BATCH_RECORDS", default_value_t = 2000,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_BATCH_RECORDS)))]
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

pub use crate::RunError;

/// What the processor needs from the outside world.
pub struct BookingDeps {
    pub kafka: KafkaArgs,
    pub codec: Arc<Codec>,
    pub store: Arc<InventoryStore>,
    /// The orders read model, written after each state save.
    pub order_rows: OrderRows,
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
    deps: Arc<BookingDeps>,
    topics: Arc<Topics>,
    slots: HashMap<i32, Slot>,
    /// Plain idempotent producer for hold expiries (commands, like ingest's).
    command_producer: FutureProducer,
    /// What each partition's batch is decided and committed with.
    job: BatchJob,
}

/// Runs the booking processor until `shutdown` resolves; then finishes the batch in flight and
/// leaves the group.
pub async fn run(deps: BookingDeps, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    let topics = deps.settings.topics();
    let context = GroupContext::pausing();
    let consumer: Arc<StreamConsumer<GroupContext>> = deps
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
        .create_with_context(context.clone())
        .map(Arc::new)?;
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

    let deps = Arc::new(deps);
    let topics = Arc::new(topics);
    let mut runtime = Runtime {
        job: BatchJob {
            deps: deps.clone(),
            topics: topics.clone(),
            partition_count,
            consumer: consumer.clone(),
        },
        deps,
        topics,
        slots: HashMap::new(),
        command_producer,
    };
    // The previous batch's commit, running while the next batch is collected and decided.
    let mut in_flight: Option<JoinHandle<Vec<Committed>>> = None;
    tokio::pin!(shutdown);
    loop {
        // The consumer loop: one batch a turn, until `shutdown`.
        let batch = tokio::select! {
            _ = &mut shutdown => break,
            batch = boxoffice_runtime::batch::collect(
                &consumer,
                runtime.deps.settings.max_batch_records as usize,
                runtime.deps.settings.max_batch_wait,
            ) => batch,
        };
        if runtime.apply_membership(&context) {
            // Partitions came or went: settle the commit in flight before acting on them.
            runtime.finish(&consumer, in_flight.take()).await?;
        }
        let prepared = runtime.prepare(&consumer, batch).await?;
        runtime.finish(&consumer, in_flight.take()).await?;
        in_flight = runtime.start_commit(prepared);
        // A task spawned from a worker waits in that worker's LIFO slot, which other workers
        // cannot steal: without a yield the commit would start only when this loop next waits
        // (collecting and deciding the next batch rarely does), and nothing would overlap.
        tokio::task::yield_now().await;
        if runtime.restore_is_due() {
            runtime.finish(&consumer, in_flight.take()).await?;
            runtime.restore_due(&consumer).await;
        }
        runtime.fire_due_timers().await;
        runtime.publish_gauges();
    }
    runtime.finish(&consumer, in_flight.take()).await?;
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

impl Runtime {
    /// Acts on rebalances noted since the last batch: drops revoked partitions, marks new ones
    /// for a restore. `true` when anything changed.
    fn apply_membership(&mut self, context: &GroupContext) -> bool {
        let changes = context.take();
        let changed = !changes.is_empty();
        for change in changes {
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
        changed
    }

    /// Whether a waiting partition's restore is due.
    fn restore_is_due(&self) -> bool {
        let now = Instant::now();
        self.slots
            .values()
            .any(|slot| matches!(slot, Slot::Waiting { retry_at, .. } if *retry_at <= now))
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

    /// Decides one batch, each partition's share concurrently, and plans the commits. `Err`
    /// stops the processor (something no retry can fix); nothing is ever skipped.
    async fn prepare(
        &mut self,
        consumer: &StreamConsumer<GroupContext>,
        batch: Vec<OwnedMessage>,
    ) -> Result<Vec<Prepared>, RunError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut by_partition = boxoffice_runtime::batch::by_partition(batch);
        let job = &self.job;
        let mut jobs = Vec::new();
        for (partition, slot) in self.slots.iter_mut() {
            if let Slot::Active(worker) = slot
                && let Some(records) = by_partition.remove(partition)
            {
                let partition = *partition;
                let span = info_span!("batch", partition, records = records.len());
                jobs.push(
                    async move { (partition, job.prepare(worker, records).await) }.instrument(span),
                );
            }
        }
        let results = join_all(jobs).await;
        for (partition, records) in by_partition {
            // Fetched before a revocation or while the partition waits for a restore: its
            // restore seeks to where the log must be read again.
            debug!(
                partition,
                records = records.len(),
                "records of a partition not processed here; dropped"
            );
        }
        let mut prepared = Vec::with_capacity(results.len());
        for (partition, result) in results {
            match result {
                Ok(Some(batch)) => prepared.push(batch),
                Ok(None) => {}
                Err(outcome) => self.settle(consumer, partition, outcome)?,
            }
        }
        Ok(prepared)
    }

    /// Starts the commits of `prepared` as one task (each partition's concurrently), dropping
    /// those whose worker was replaced or released since they were decided.
    fn start_commit(&self, prepared: Vec<Prepared>) -> Option<JoinHandle<Vec<Committed>>> {
        let current: Vec<Prepared> = prepared
            .into_iter()
            .filter(|p| {
                matches!(self.slots.get(&p.partition), Some(Slot::Active(w)) if w.epoch == p.epoch)
            })
            .collect();
        if current.is_empty() {
            return None;
        }
        let job = self.job.clone();
        Some(tokio::spawn(join_all(
            current.into_iter().map(move |p| job.clone().commit(p)),
        )))
    }

    /// Waits for the commit in flight (if any) and acts on its outcomes: timer changes of what
    /// was committed, restores or stops for what failed.
    async fn finish(
        &mut self,
        consumer: &StreamConsumer<GroupContext>,
        in_flight: Option<JoinHandle<Vec<Committed>>>,
    ) -> Result<(), RunError> {
        let Some(task) = in_flight else {
            return Ok(());
        };
        let committed = task.await.map_err(|e| {
            RunError::Fatal(format!("a batch commit panicked or was cancelled: {e}"))
        })?;
        for c in committed {
            // A revocation (or a restore) since: the result belongs to a worker that is gone.
            let current =
                matches!(self.slots.get(&c.partition), Some(Slot::Active(w)) if w.epoch == c.epoch);
            if !current {
                continue;
            }
            match c.outcome {
                BatchOutcome::Done => {
                    if let Some(Slot::Active(worker)) = self.slots.get_mut(&c.partition) {
                        worker.apply_timers(c.timers);
                        worker.evict_ended(c.last_offset);
                    }
                }
                outcome => self.settle(consumer, c.partition, outcome)?,
            }
        }
        Ok(())
    }

    /// Acts on a partition's failed batch: restore it later, stop it, or stop the processor.
    fn settle(
        &mut self,
        consumer: &StreamConsumer<GroupContext>,
        partition: i32,
        outcome: BatchOutcome,
    ) -> Result<(), RunError> {
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
        Ok(())
    }

    fn publish_gauges(&self) {
        let m = &self.deps.metrics;
        // Reasons first: whoever sees a gauge move also finds why.
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
        let mut active = 0;
        let mut waiting = 0;
        let mut stopped = 0;
        let mut holds = 0;
        let mut orders = 0;
        let mut lost = 0;
        for slot in self.slots.values() {
            match slot {
                Slot::Active(worker) => {
                    active += 1;
                    holds += worker.timers.len();
                    orders += worker.orders_in_memory();
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
        m.orders_in_memory.set(gauge(orders));
        m.events_lost.set(gauge(lost));
    }
}

mod batch;
mod decode;
mod holds;
mod store_calls;
mod worker;

use batch::{BatchJob, Committed, Prepared};
pub use worker::{Tracked, Worker};
