//! The payment processor's runtime: `payments.requests` in, the pure core in the middle, the
//! gateway, ScyllaDB and `booking.commands` / `notifications` out, and the payments' timers.
//!
//! # Records
//!
//! Records are processed in log order per partition (partitions concurrently). For each
//! record the payment's lock is taken and the payment loaded from ScyllaDB; a record at or
//! below the payment's stored `applied_offset` is skipped. Then every decision step is carried
//! out in this order:
//!
//! 1. produce the step's outcome records (idempotent producer, deterministic record ids);
//! 2. write the payment's timer if the step set one, append the step's history entries, then
//!    write the payment row, conditional on the revision loaded (a zombie's write is refused);
//!    a step that settles the payment deletes its timer after the row;
//! 3. only then call the gateway (so a `CHARGING` intent is stored before any charge), and
//!    feed its answer back into the core, which is step 1 again.
//!
//! Finally the payment is written with the record's offset as `applied_offset`.
//!
//! # Nothing waits inside a record
//!
//! A record never waits for the provider to finish: a charge the provider reports pending is
//! stored `PROVIDER_PENDING` with a timer, and the partition goes on with its next record.
//! The provider's event (`PaymentProviderEvent`, produced by ingest from the provider's
//! webhook) settles it like any record. The core bounds the gateway calls of one input (an
//! unknown answer to the first charge is queried once at once; anything else waits for the
//! timer), so a record costs at most a few calls of `--provider-timeout` each.
//!
//! # Timers
//!
//! The core asks for a timer (`Effect::Schedule`) for every payment that is neither settled
//! nor new: the expiry deadline of an unsubmitted payment, the pending check of a charge in
//! flight or pending at the provider (`--provider-pending-check`, then backing off). Timers are
//! rows of `payment_timers`, keyed by the `payments.requests` partition that owns the payment
//! (one payment's records are all in one partition: the key is the order id), and the copy in
//! memory is a [`TimerWheel`] of the partitions this processor owns:
//!
//! - **Restart and rebalance.** When the group gives this processor a partition, it loads the
//!   partition's timer rows (one query); when it takes one away, its timers are dropped. Rows
//!   are re-read every minute too, so a timer a previous owner wrote while handing the
//!   partition over is not missed for long. A timer already past is due at once: a payment
//!   left waiting across a restart is checked as soon as its partition is back.
//! - **The timer loop** runs beside the record loop (same task, polled together) and wakes at
//!   most [`MAX_CONCURRENT_WAKES`] payments at once, each under its own lock: it feeds
//!   `Input::Wake` and carries out the effects exactly like a record's (a query, perhaps a
//!   charge with the same key, the next timer). A payment's lock is held only while that one
//!   payment is worked on: a wake waiting on a slow provider delays the records of that
//!   payment only (and, because a partition's records are applied in order, the records behind
//!   them in that partition, for at most one `--provider-timeout`).
//! - **Ordering with the store**: a timer row is written before the payment row that needs it,
//!   and deleted only after the row that settles the payment, so a crash leaves at worst a timer
//!   for a settled payment, which wakes it for nothing and deletes itself. A timer that is lost
//!   while a payment waits cannot happen short of a zombie's delete racing a new owner's
//!   refund timer (both would need a partition handover during the refund call).
//!
//! # Crashes
//!
//! A crash anywhere replays the record: a payment found `CHARGING` (or waiting for the
//! provider, or `REFUNDING`) is first resolved with `query` (same idempotency key), never with a
//! second blind charge, unless the record is the provider's event itself, which is the answer.
//! An outcome already produced is produced again with the same record id, which consumers
//! deduplicate. The booking processor ignores a second `PaymentSucceeded` or `PaymentFailed`
//! for an order that already moved on.
//!
//! Outputs are produced without a Kafka transaction: every output is keyed by a deterministic
//! id and every outcome is the gateway's answer for the payment's idempotency key, so a
//! duplicate (from a replay, a zombie or a wake racing a handover) can only repeat the same fact.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use boxoffice_avro::clock::now_millis;
use boxoffice_avro::ids;
use boxoffice_avro::records::{
    DeadLetterErrorKind, PaymentFailureReason, PaymentProviderEvent, PaymentRequest,
    ProviderChargeOutcome, RecordGroup,
};
use boxoffice_avro::{Codec, CodecError, DecodeError};
use boxoffice_runtime::dead_letter;
use boxoffice_runtime::metrics::Counter;
use boxoffice_runtime::retry::RetryPolicy;
use boxoffice_store::payments::{
    HistoryEntry, PaymentSaveOutcome, PaymentStore, PaymentStoreError,
};
use boxoffice_store::watermarks::{Resume, WatermarkStore};
use boxoffice_topics::kafka::KafkaArgs;
use boxoffice_topics::names::Topics;
use futures::StreamExt;
use futures::future::join_all;
use futures::stream::FuturesUnordered;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{Notify, watch};
use tracing::{Instrument, debug, error, info, info_span, warn};

use super::core::{self, Effect, Input, Millis, PaymentState, Policy};
use super::gateway::{
    ChargeOutcome, ChargeRequest, DeclineReason, Gateway, PaymentGateway, RefundRequest,
};
pub use super::metrics::{PaymentMetrics, serve_metrics};
use super::render::{Output, render};
pub use super::settings::{GatewayError, PaymentSettings};
use super::store::{self, Stored};
use super::timers::{PaymentLocks, TimerWheel};
use crate::rebalance::{GroupContext, Membership, committed_offset, seek_and_resume};

/// Most payments the timer loop works on at once (each is a few provider and store calls).
pub const MAX_CONCURRENT_WAKES: usize = 16;
/// How often the owned partitions' timer rows are read again.
const TIMER_RESCAN: Duration = Duration::from_secs(60);
/// How often the owned partitions' stored watermarks are compared with what this instance
/// wrote (a store that lost writes shows an older one).
const WATERMARK_CHECK: Duration = Duration::from_secs(5);
/// How long one produce may wait for the broker's acknowledgement (then it is retried).
const PRODUCE_TIMEOUT: Duration = Duration::from_secs(30);
/// Most decision steps one input may chain (the core bounds them far lower; this only stops a
/// broken core from spinning: the payment's timer brings it back).
const MAX_STEPS: u32 = 32;

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
pub struct PaymentDeps {
    pub kafka: KafkaArgs,
    pub codec: Arc<Codec>,
    pub store: Arc<PaymentStore>,
    /// Where each partition may resume (see `boxoffice_store::watermarks`).
    pub watermarks: Arc<WatermarkStore>,
    pub gateway: Arc<Gateway>,
    pub settings: PaymentSettings,
    pub policy: Policy,
    pub metrics: Arc<PaymentMetrics>,
}

impl std::fmt::Debug for PaymentDeps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaymentDeps")
            .field("settings", &self.settings)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

type PaymentConsumer = StreamConsumer<GroupContext>;

struct Runtime {
    deps: PaymentDeps,
    topics: Topics,
    producer: FutureProducer,
    locks: PaymentLocks,
    timers: Mutex<TimerWheel>,
    /// Wakes the timer loop when a timer is set (it may be sooner than what it sleeps on).
    timer_set: Notify,
    /// The watermark this instance last stored per owned partition.
    written: Mutex<HashMap<i32, Option<i64>>>,
    /// Owned partitions given up after a fault outlasted the retry budget (see [`Parked`]).
    parked: Mutex<BTreeMap<i32, Parked>>,
}

/// A partition given up: its records are not applied and its timers are dropped until it is
/// taken again through the path of a new assignment (timers loaded, resume point decided from
/// the store's watermark and the group's offset), never from what memory held.
#[derive(Debug)]
struct Parked {
    reason: String,
    /// Paused on the consumer yet (a wake may park a partition; the record loop pauses it).
    paused: bool,
    /// Tries to take it again so far.
    attempt: u32,
    retry_at: Instant,
}

/// Why a record could not be decoded.
enum DecodeFailure {
    /// The record itself is bad: it goes to the dead-letter topic.
    Record(DeadLetterErrorKind, String),
    /// The registry stayed unavailable for the retry budget.
    GaveUp(String),
}

/// Why a retried call ended without a value.
enum Failed<E> {
    /// Not transient: no retry fixes it.
    Permanent(E),
    /// Still failing when the retry budget ran out.
    GaveUp(E),
}

impl<E: std::fmt::Display> Failed<E> {
    fn into_step(self, what: &str) -> StepError {
        match self {
            Failed::Permanent(e) => StepError::Fatal(format!("{what}: {e}")),
            Failed::GaveUp(e) => StepError::GaveUp(format!("{what}: {e}")),
        }
    }
}

/// Runs the payment processor until `shutdown` resolves; then finishes the batch and the wakes
/// in flight and leaves the group.
pub async fn run(deps: PaymentDeps, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    let topics = deps.settings.topics();
    // New partitions stay paused until their resume point is decided (`reposition`).
    let context = GroupContext::pausing();
    let consumer: PaymentConsumer = deps
        .kafka
        .client_config()
        .set("group.id", &deps.settings.group_id)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        // The booking processor writes its requests in transactions.
        .set("isolation.level", "read_committed")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set("fetch.wait.max.ms", "10")
        .create_with_context(context.clone())?;
    let metadata = consumer.fetch_metadata(Some(&topics.payments), deps.kafka.timeout)?;
    let exists = metadata
        .topics()
        .iter()
        .any(|t| t.name() == topics.payments && t.error().is_none() && !t.partitions().is_empty());
    if !exists {
        return Err(RunError::MissingTopic {
            topic: topics.payments.clone(),
        });
    }
    consumer.subscribe(&[&topics.payments])?;
    let producer: FutureProducer = deps.kafka.durable_producer_config().create()?;
    info!(
        group = %deps.settings.group_id,
        topic = %topics.payments,
        gateway = deps.gateway.kind(),
        pending_check_ms = deps.policy.pending_check_ms,
        "payment processor joined its group"
    );
    let runtime = Runtime {
        deps,
        topics,
        producer,
        locks: PaymentLocks::default(),
        timers: Mutex::new(TimerWheel::default()),
        timer_set: Notify::new(),
        written: Mutex::new(HashMap::new()),
        parked: Mutex::new(BTreeMap::new()),
    };
    let (stop, stopping) = watch::channel(false);
    let records = async {
        let result = runtime.consume(&consumer, &context, shutdown).await;
        // The timer loop finishes the wakes it started, then ends too.
        let _ = stop.send(true);
        result
    };
    let (result, ()) = tokio::join!(records, runtime.drive_timers(stopping));
    info!("payment processor stopping: batch and wakes finished, leaving the group");
    consumer.unsubscribe();
    result
}

async fn collect_batch(
    consumer: &PaymentConsumer,
    settings: &PaymentSettings,
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

/// A step could not be completed; the record is retried from the stored state.
enum StepError {
    /// Another processor wrote the payment meanwhile.
    Conflict(String),
    /// A fault outlasted the retry budget: the partition is given up (see [`Parked`]).
    GaveUp(String),
    /// Nothing a retry can fix.
    Fatal(String),
}

impl Runtime {
    /// The record loop: batches until `shutdown`, membership changes between batches.
    async fn consume(
        &self,
        consumer: &PaymentConsumer,
        context: &GroupContext,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), RunError> {
        tokio::pin!(shutdown);
        let mut rescanned = Instant::now();
        let mut checked = Instant::now();
        loop {
            let batch = tokio::select! {
                _ = &mut shutdown => break,
                batch = collect_batch(consumer, &self.deps.settings) => batch,
            };
            self.apply_membership(consumer, context).await;
            self.tend_parked(consumer).await;
            if rescanned.elapsed() >= TIMER_RESCAN {
                rescanned = Instant::now();
                self.rescan_timers().await;
            }
            if checked.elapsed() >= WATERMARK_CHECK {
                checked = Instant::now();
                self.check_watermarks(consumer).await;
            }
            self.process(consumer, batch).await?;
        }
        Ok(())
    }

    fn wheel(&self) -> std::sync::MutexGuard<'_, TimerWheel> {
        // A panic while holding the wheel leaves it whole (every change is a few map edits).
        self.timers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Acts on rebalances noted since the last batch: drops revoked partitions' timers, takes
    /// the assigned ones (see [`take`](Self::take)).
    async fn apply_membership(&self, consumer: &PaymentConsumer, context: &GroupContext) {
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
    async fn take(
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

    fn parked_map(&self) -> std::sync::MutexGuard<'_, BTreeMap<i32, Parked>> {
        // A panic while holding the map leaves it whole (single inserts and removes).
        self.parked.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_parked(&self, partition: i32) -> bool {
        self.parked_map().contains_key(&partition)
    }

    /// Gives a partition up after a fault outlasted the retry budget: its timers are dropped,
    /// its records are not applied, `/readyz` answers 503, and [`tend_parked`](Self::tend_parked)
    /// takes it again later. `paused`: the consumer already paused it.
    fn park(&self, partition: i32, reason: String, paused: bool) {
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
    async fn tend_parked(&self, consumer: &PaymentConsumer) {
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
                Ok(()) => {
                    self.parked_map().remove(&partition);
                    info!(partition, "parked partition taken again: the fault cleared");
                }
                Err(reason) => self.park(partition, reason, true),
            }
        }
        self.publish_parked();
    }

    fn publish_parked(&self) {
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

    fn policy(&self) -> RetryPolicy {
        self.deps.settings.retry_policy()
    }

    /// Calls `call` (given the number of retries so far) until it succeeds, fails for good
    /// (`transient` says no), or `policy`'s budget is spent; `counter` counts the retries.
    async fn retrying<T, E, F, Fut>(
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
    async fn load_timers(&self, partition: i32, policy: RetryPolicy) -> Result<usize, String> {
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

    fn written_map(&self) -> std::sync::MutexGuard<'_, HashMap<i32, Option<i64>>> {
        // A panic while holding the map leaves it whole (single inserts and removes).
        self.written.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Decides where a newly assigned partition resumes: at the group's committed offset, or
    /// at the store's watermark when the store is behind Kafka (it lost writes: the records
    /// after it are applied again, idempotently), and resumes it there. The partition stays
    /// paused until then.
    async fn reposition(
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
        self.written_map().insert(partition, stored);
        info!(partition, resume = ?resume, "partition resumes");
        Ok(())
    }

    /// Compares each owned partition's stored watermark with the one this instance wrote: an
    /// older one means the store lost writes since, and the partition is read again from it.
    async fn check_watermarks(&self, consumer: &PaymentConsumer) {
        let owned: Vec<(i32, Option<i64>)> =
            self.written_map().iter().map(|(p, w)| (*p, *w)).collect();
        for (partition, written) in owned {
            let Some(written) = written else { continue };
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
            if stored.is_some_and(|s| s >= written) {
                continue;
            }
            self.deps.metrics.store_loss_replays.inc_by(1);
            warn!(
                partition,
                ?stored,
                written,
                "the store's watermark went backwards (it lost writes it had acknowledged): reading the partition again from it"
            );
            let target = stored.map_or(Offset::Beginning, Offset::Offset);
            match consumer.seek(
                &self.topics.payments,
                partition,
                target,
                self.deps.kafka.timeout,
            ) {
                Ok(()) => {
                    self.written_map().insert(partition, stored);
                }
                Err(e) => {
                    warn!(partition, error = %e, "seeking back failed; the next check tries again")
                }
            }
        }
    }

    /// Reads the owned partitions' timers again (see the module docs); a failure waits for the
    /// next round.
    async fn rescan_timers(&self) {
        let owned = self.wheel().owned();
        for partition in owned {
            match self
                .deps
                .store
                .timers(&self.topics.payments, partition)
                .await
            {
                Ok(timers) => {
                    let mut wheel = self.wheel();
                    for timer in timers {
                        wheel.merge(partition, &timer.payment_id, timer.due_at);
                    }
                }
                Err(e) => warn!(partition, error = %e, "re-reading payment timers failed"),
            }
        }
        self.timer_set.notify_one();
        self.update_timer_gauge();
    }

    fn update_timer_gauge(&self) {
        let len = self.wheel().len();
        self.deps
            .metrics
            .timers
            .set(i64::try_from(len).unwrap_or(i64::MAX));
    }

    async fn process(
        &self,
        consumer: &PaymentConsumer,
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
        let jobs = by_partition.into_iter().map(|(partition, records)| {
            let span = info_span!("payments", partition, records = records.len());
            async move {
                let mut last = None;
                for message in &records {
                    // A parked partition's records are read again once it is taken again.
                    if self.is_parked(partition) {
                        break;
                    }
                    match self.process_record(message).await {
                        Ok(()) => last = Some(message.offset()),
                        Err(StepError::GaveUp(reason)) => {
                            return Ok((partition, last, Some(reason)));
                        }
                        Err(StepError::Fatal(reason) | StepError::Conflict(reason)) => {
                            return Err(RunError::Fatal(reason));
                        }
                    }
                }
                Ok::<_, RunError>((partition, last, None))
            }
            .instrument(span)
        });
        let mut commit = TopicPartitionList::new();
        for outcome in join_all(jobs).await {
            let (partition, last, gave_up) = outcome?;
            if let Some(reason) = gave_up {
                // Applied records before the one that failed are committed below; that one
                // and the rest are read again when the partition is taken again.
                self.park(partition, reason, false);
            }
            // The group's offset never passes what the store says it holds: the watermark is
            // written first, and a partition whose watermark could not be written is not
            // committed this time (the next batch writes both).
            if let Some(last) = last
                && self.store_watermark(partition, last + 1).await
            {
                let _ = commit.add_partition_offset(
                    &self.topics.payments,
                    partition,
                    Offset::Offset(last + 1),
                );
            }
        }
        if commit.count() > 0
            && let Err(e) = consumer.commit(&commit, CommitMode::Async)
        {
            // A restart resumes at the older committed offset; records are skipped by their
            // payment's applied offset.
            debug!(error = %e, "offset commit failed");
        }
        Ok(())
    }

    /// Stores the partition's watermark after its records' writes; `false` when the store did
    /// not take it within a few attempts.
    async fn store_watermark(&self, partition: i32, next_offset: i64) -> bool {
        const ATTEMPTS: u32 = 5;
        for attempt in 1..=ATTEMPTS {
            match self
                .deps
                .watermarks
                .save(
                    &self.deps.settings.group_id,
                    &self.topics.payments,
                    partition,
                    next_offset,
                )
                .await
            {
                Ok(()) => {
                    self.written_map().insert(partition, Some(next_offset));
                    return true;
                }
                Err(e) if e.is_retryable() && attempt < ATTEMPTS => {
                    self.deps.metrics.store_retries.inc_by(1);
                    tokio::time::sleep(self.policy().jittered_delay(attempt)).await;
                }
                Err(e) => {
                    warn!(partition, next_offset, error = %e, "storing the watermark failed; the offset is not committed this time");
                    return false;
                }
            }
        }
        false
    }

    /// Applies one record fully (or dead-letters it). `Err`: a fault outlasted the retry budget
    /// (`GaveUp`), or nothing a retry fixes (`Fatal`).
    async fn process_record(&self, message: &OwnedMessage) -> Result<(), StepError> {
        let metrics = &self.deps.metrics;
        let (partition, offset) = (message.partition(), message.offset());
        let request = match self.decode(message).await {
            Ok(request) => request,
            Err(DecodeFailure::Record(kind, reason)) => {
                warn!(partition, offset, ?kind, reason = %reason, "dead-lettering a record");
                self.dead_letter(message, kind, &reason).await?;
                metrics.dead_letters.inc_by(1);
                return Ok(());
            }
            Err(DecodeFailure::GaveUp(reason)) => return Err(StepError::GaveUp(reason)),
        };
        let payment_id = payment_id_of(&request).to_owned();
        let order_id = request.key().to_owned();
        let mut retries = self.policy().start(Instant::now());
        loop {
            let applied = {
                let _lock = self.locks.lock(&payment_id).await;
                self.apply_record(partition, &payment_id, &request, offset)
                    .await
            };
            match applied {
                Ok(applied) => {
                    let counter = if applied {
                        &metrics.records_processed
                    } else {
                        &metrics.records_skipped
                    };
                    counter.inc_by(1);
                    return Ok(());
                }
                Err(StepError::Conflict(reason)) => {
                    metrics.conflicts.inc_by(1);
                    let Some(delay) = retries.next_delay(Instant::now()) else {
                        metrics.retries_exhausted.inc_by(1);
                        return Err(StepError::GaveUp(format!(
                            "payment {payment_id} kept being written by another processor: {reason}"
                        )));
                    };
                    let attempt = retries.attempts();
                    warn!(payment_id, order_id, partition, offset, attempt, reason = %reason, "payment written by another processor; reloading");
                    tokio::time::sleep(delay).await;
                }
                Err(StepError::Fatal(reason)) => {
                    error!(payment_id, order_id, partition, offset, reason = %reason, "record cannot be applied; stopping");
                    return Err(StepError::Fatal(reason));
                }
                Err(gave_up @ StepError::GaveUp(_)) => return Err(gave_up),
            }
        }
    }

    /// Loads the payment, resolves anything in flight, applies the record, stores the offset.
    /// `Ok(false)`: already applied. The caller holds the payment's lock.
    async fn apply_record(
        &self,
        partition: i32,
        payment_id: &str,
        request: &PaymentRequest,
        offset: i64,
    ) -> Result<bool, StepError> {
        let (mut state, mut stored) = self.load(payment_id).await?;
        if stored
            .applied_offset
            .is_some_and(|applied| offset <= applied)
        {
            return Ok(false);
        }
        let input = match request {
            PaymentRequest::PaymentRequested(r) => Input::Requested(r.clone()),
            PaymentRequest::PaymentSubmitted(s) => Input::Submitted(s.clone()),
            PaymentRequest::RefundRequested(r) => Input::RefundRequested(r.clone()),
            PaymentRequest::PaymentProviderEvent(e) => {
                info!(
                    payment_id,
                    order_id = %e.order_id,
                    partition,
                    offset,
                    provider_event_id = %e.provider_event_id,
                    outcome = ?e.outcome,
                    "provider event"
                );
                Input::ProviderEvent(provider_outcome(e))
            }
        };
        // The provider's event is itself the answer; anything else first learns what a call
        // in flight did (a crash may have lost its answer).
        if state.status.is_in_flight() && !matches!(input, Input::ProviderEvent(_)) {
            info!(
                payment_id,
                partition,
                offset,
                status = state.status.name(),
                "payment in flight; asking the provider first"
            );
            self.run_input(partition, &mut state, &mut stored, Input::Recover)
                .await?;
        }
        self.run_input(partition, &mut state, &mut stored, input)
            .await?;
        stored.applied_offset = Some(offset);
        self.persist(&state, &mut stored, &[]).await?;
        Ok(true)
    }

    async fn load(&self, payment_id: &str) -> Result<(PaymentState, Stored), StepError> {
        let store = &self.deps.store;
        let row = self
            .retrying(
                self.policy(),
                "loading a payment",
                Some(&self.deps.metrics.store_retries),
                PaymentStoreError::is_retryable,
                |_| store.load(payment_id),
            )
            .await
            .map_err(|f| f.into_step("loading a payment"))?;
        match row {
            None => Ok((
                PaymentState::new(payment_id),
                Stored {
                    applied_offset: None,
                    revision: 0,
                },
            )),
            Some(row) => store::restore(row).map_err(StepError::Fatal),
        }
    }

    /// Feeds `input` to the core and carries out every effect, feeding the gateway's answers
    /// back until nothing is left to do now (what is left waits for the payment's timer).
    async fn run_input(
        &self,
        partition: i32,
        state: &mut PaymentState,
        stored: &mut Stored,
        input: Input,
    ) -> Result<(), StepError> {
        let metrics = &self.deps.metrics;
        let gateway = &self.deps.gateway;
        let mut queue = VecDeque::from([input]);
        let mut steps = 0u32;
        while let Some(input) = queue.pop_front() {
            steps += 1;
            if steps > MAX_STEPS {
                error!(payment_id = %state.payment_id, partition, steps, "too many steps for one input; the payment's timer resumes it");
                break;
            }
            let now = now_millis();
            let first_seq = state.history_seq;
            let effects = core::apply_with(&self.deps.policy, state, input, now);
            // 1. Outcomes first: a crash after them replays the step, which produces them again.
            for effect in &effects {
                if let Effect::Emit(outcome) = effect {
                    self.produce(&render(state, outcome, now)).await?;
                }
            }
            // 2. The timer, the history, then the row: the intent is stored before any gateway
            //    call, and a state that needs a timer is never stored without one.
            let mut history = Vec::new();
            let mut unschedule = false;
            for effect in &effects {
                match effect {
                    Effect::History { status, detail } => {
                        history.push(HistoryEntry {
                            at: now,
                            seq: first_seq + i32::try_from(history.len()).unwrap_or(i32::MAX),
                            status: (*status).to_owned(),
                            detail: detail.clone(),
                        });
                    }
                    Effect::Schedule { at } => self.schedule(partition, state, *at).await?,
                    Effect::Unschedule => unschedule = true,
                    Effect::Ignored { reason } => {
                        debug!(payment_id = %state.payment_id, partition, reason = %reason, "input changed nothing");
                    }
                    _ => {}
                }
            }
            if !history.is_empty() {
                self.persist(state, stored, &history).await?;
            }
            if unschedule {
                self.unschedule(partition, &state.payment_id).await?;
            }
            // 3. The gateway.
            for effect in effects {
                match effect {
                    Effect::Charge {
                        payment_id,
                        order_id,
                        amount_minor,
                        currency,
                        token,
                    } => {
                        metrics.charges.inc_by(1);
                        let request = ChargeRequest {
                            idempotency_key: payment_id,
                            order_id,
                            amount_minor,
                            currency,
                            token,
                        };
                        let outcome = gateway.charge(&request).await;
                        info!(payment_id = %state.payment_id, order_id = %state.order_id, partition, outcome = outcome_name(&outcome), "charge answered");
                        queue.push_back(Input::ChargeResult(outcome));
                    }
                    Effect::Query { payment_id } => {
                        metrics.queries.inc_by(1);
                        let outcome = gateway.query(&payment_id).await;
                        info!(payment_id = %state.payment_id, order_id = %state.order_id, partition, outcome = outcome_name(&outcome), "charge queried");
                        queue.push_back(Input::QueryResult(outcome));
                    }
                    Effect::Refund {
                        refund_id,
                        charge_reference,
                        amount_minor,
                        currency,
                    } => {
                        metrics.refunds.inc_by(1);
                        let request = RefundRequest {
                            idempotency_key: refund_id,
                            charge_reference,
                            amount_minor,
                            currency,
                        };
                        queue.push_back(Input::RefundResult(gateway.refund(&request).await));
                    }
                    Effect::QueryRefund { refund_id } => {
                        metrics.queries.inc_by(1);
                        queue.push_back(Input::RefundQueryResult(
                            gateway.query_refund(&refund_id).await,
                        ));
                    }
                    Effect::Emit(core::Outcome::Succeeded { .. }) => {
                        metrics.captured.inc_by(1);
                    }
                    Effect::Emit(core::Outcome::Failed { .. }) => {
                        metrics.failed.inc_by(1);
                    }
                    Effect::Emit(_)
                    | Effect::History { .. }
                    | Effect::Schedule { .. }
                    | Effect::Unschedule
                    | Effect::Ignored { .. } => {}
                }
            }
        }
        Ok(())
    }

    /// Writes the payment's timer (retrying outages), then puts it in the wheel.
    async fn schedule(
        &self,
        partition: i32,
        state: &PaymentState,
        at: Millis,
    ) -> Result<(), StepError> {
        let payment_id = &state.payment_id;
        let (store, topic) = (&self.deps.store, &self.topics.payments);
        self.retrying(
            self.policy(),
            "writing a payment timer",
            Some(&self.deps.metrics.store_retries),
            PaymentStoreError::is_retryable,
            |_| store.schedule(topic, partition, payment_id, at),
        )
        .await
        .map_err(|f| f.into_step("writing a payment timer"))?;
        debug!(payment_id, order_id = %state.order_id, partition, due_in_ms = at - now_millis(), status = state.status.name(), "payment timer set");
        self.wheel().set(partition, payment_id, at);
        self.timer_set.notify_one();
        self.update_timer_gauge();
        Ok(())
    }

    /// Deletes the payment's timer (retrying outages) and takes it out of the wheel.
    async fn unschedule(&self, partition: i32, payment_id: &str) -> Result<(), StepError> {
        let (store, topic) = (&self.deps.store, &self.topics.payments);
        self.retrying(
            self.policy(),
            "deleting a payment timer",
            Some(&self.deps.metrics.store_retries),
            PaymentStoreError::is_retryable,
            |_| store.unschedule(topic, partition, payment_id),
        )
        .await
        .map_err(|f| f.into_step("deleting a payment timer"))?;
        self.wheel().cancel(payment_id);
        self.update_timer_gauge();
        Ok(())
    }

    /// The timer loop (see the module docs): wakes due payments, at most
    /// [`MAX_CONCURRENT_WAKES`] at once, until `stopping` turns true and the wakes it started
    /// are over.
    async fn drive_timers(&self, mut stopping: watch::Receiver<bool>) {
        let mut running = FuturesUnordered::new();
        loop {
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
    async fn wake(&self, partition: i32, payment_id: String) {
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

    async fn wake_payment(&self, partition: i32, payment_id: &str) -> Result<(), StepError> {
        let (mut state, mut stored) = self.load(payment_id).await?;
        if stored.revision == 0 {
            // A timer without a payment row (written just before a crash): nothing to wait for.
            return self.unschedule(partition, payment_id).await;
        }
        debug!(order_id = %state.order_id, status = state.status.name(), "payment timer due");
        self.run_input(partition, &mut state, &mut stored, Input::Wake)
            .await
    }

    /// Appends `history` and writes the payment as the next revision, retrying outages.
    async fn persist(
        &self,
        state: &PaymentState,
        stored: &mut Stored,
        history: &[HistoryEntry],
    ) -> Result<(), StepError> {
        let store = &self.deps.store;
        let counter = Some(&self.deps.metrics.store_retries);
        self.retrying(
            self.policy(),
            "appending payment history",
            counter,
            PaymentStoreError::is_retryable,
            |_| store.append_history(&state.payment_id, history),
        )
        .await
        .map_err(|f| f.into_step("appending payment history"))?;
        let next = stored.revision + 1;
        let row = store::to_stored(state, stored.applied_offset, next);
        let expected = (stored.revision > 0).then_some(stored.revision);
        let saved = self
            .retrying(
                self.policy(),
                "saving the payment",
                counter,
                PaymentStoreError::is_retryable,
                |retried| {
                    let row = &row;
                    async move {
                        match store.save(row, expected).await {
                            // A retried save whose first attempt landed.
                            Ok(PaymentSaveOutcome::Conflict {
                                current_revision: Some(current),
                            }) if retried > 0 && current == next => Ok(PaymentSaveOutcome::Applied),
                            other => other,
                        }
                    }
                },
            )
            .await
            .map_err(|f| f.into_step("saving the payment"))?;
        if let PaymentSaveOutcome::Conflict { current_revision } = saved {
            return Err(StepError::Conflict(format!(
                "stored revision {current_revision:?}, expected {expected:?}"
            )));
        }
        stored.revision = next;
        Ok(())
    }

    /// Produces one output, waiting out outages (the same record again is deduplicated by id).
    async fn produce(&self, output: &Output) -> Result<(), StepError> {
        let (topic, payload) = self.encode(output).await?;
        let headers = OwnedHeaders::new().insert(Header {
            key: "record_id",
            value: Some(output.record_id()),
        });
        let (producer, topic) = (&self.producer, topic.as_str());
        self.retrying(
            self.policy(),
            "producing an outcome",
            None,
            |_: &KafkaError| true,
            |_| {
                let record = FutureRecord::to(topic)
                    .key(output.key())
                    .payload(&payload)
                    .headers(headers.clone());
                async move {
                    producer
                        .send(record, PRODUCE_TIMEOUT)
                        .await
                        .map_err(|(e, _)| e)
                }
            },
        )
        .await
        .map_err(|f| f.into_step("producing an outcome"))?;
        self.deps.metrics.outputs_produced.inc_by(1);
        Ok(())
    }

    async fn encode(&self, output: &Output) -> Result<(String, Vec<u8>), StepError> {
        let (codec, topics) = (&self.deps.codec, &self.topics);
        self.retrying(
            self.policy(),
            "encoding an output",
            None,
            CodecError::is_retryable,
            |_| async move {
                match output {
                    Output::Command(r) => codec
                        .encode_group(&topics.commands, r)
                        .await
                        .map(|p| (topics.commands.clone(), p)),
                    Output::Notification(r) => codec
                        .encode(&topics.notifications, r)
                        .await
                        .map(|p| (topics.notifications.clone(), p)),
                }
            },
        )
        .await
        .map_err(|f| f.into_step("encoding an output"))
    }

    /// Decodes a request and checks it is consistent. Registry outages are waited out.
    async fn decode(&self, message: &OwnedMessage) -> Result<PaymentRequest, DecodeFailure> {
        let Some(payload) = message.payload() else {
            return Err(DecodeFailure::Record(
                DeadLetterErrorKind::InvalidRecord,
                "record has no value".to_owned(),
            ));
        };
        let codec = &self.deps.codec;
        let decoded = self
            .retrying(
                self.policy(),
                "decoding a request (registry unavailable)",
                None,
                DecodeError::is_retryable,
                |_| codec.decode_group::<PaymentRequest>(payload),
            )
            .await;
        let request = match decoded {
            Ok(request) => request,
            Err(Failed::Permanent(e)) => {
                return Err(DecodeFailure::Record(e.dead_letter_kind(), e.to_string()));
            }
            Err(Failed::GaveUp(e)) => {
                return Err(DecodeFailure::GaveUp(format!(
                    "decoding a request: registry unavailable: {e}"
                )));
            }
        };
        let order_id = request.key();
        if message.key().unwrap_or_default() != order_id.as_bytes() {
            return Err(DecodeFailure::Record(
                DeadLetterErrorKind::InvalidRecord,
                format!("record key does not match its order_id {order_id}"),
            ));
        }
        // One payment per order: a request naming another payment id is not ours to act on.
        if payment_id_of(&request) != ids::payment_id(order_id) {
            return Err(DecodeFailure::Record(
                DeadLetterErrorKind::InvalidRecord,
                format!(
                    "payment id {} is not the payment of order {order_id}",
                    payment_id_of(&request)
                ),
            ));
        }
        Ok(request)
    }

    async fn dead_letter(
        &self,
        message: &OwnedMessage,
        kind: DeadLetterErrorKind,
        reason: &str,
    ) -> Result<(), StepError> {
        let record = dead_letter::dead_letter(
            &self.deps.settings.group_id,
            message,
            kind,
            reason,
            now_millis(),
        );
        let (codec, topic) = (&self.deps.codec, self.topics.dead_letters.as_str());
        let payload = self
            .retrying(
                self.policy(),
                "encoding a dead letter",
                None,
                CodecError::is_retryable,
                |_| codec.encode(topic, &record),
            )
            .await
            .map_err(|f| f.into_step("encoding a dead letter"))?;
        let headers = dead_letter::headers(&record);
        let key = dead_letter::key(&record).unwrap_or_default();
        let producer = &self.producer;
        self.retrying(
            self.policy(),
            "producing a dead letter",
            None,
            |_: &KafkaError| true,
            |_| {
                let out = FutureRecord::to(topic)
                    .key(key)
                    .payload(&payload)
                    .headers(headers.clone());
                async move {
                    producer
                        .send(out, PRODUCE_TIMEOUT)
                        .await
                        .map_err(|(e, _)| e)
                }
            },
        )
        .await
        .map_err(|f| f.into_step("producing a dead letter"))?;
        Ok(())
    }
}

fn payment_id_of(request: &PaymentRequest) -> &str {
    match request {
        PaymentRequest::PaymentRequested(r) => &r.payment_id,
        PaymentRequest::PaymentSubmitted(r) => &r.payment_id,
        PaymentRequest::RefundRequested(r) => &r.payment_id,
        PaymentRequest::PaymentProviderEvent(r) => &r.payment_id,
    }
}

/// A provider's asynchronous event as the charge outcome it reports.
fn provider_outcome(event: &PaymentProviderEvent) -> ChargeOutcome {
    match event.outcome {
        ProviderChargeOutcome::Captured => ChargeOutcome::Captured {
            provider_reference: event.provider_reference.clone(),
        },
        ProviderChargeOutcome::Declined => ChargeOutcome::Declined {
            reason: match event.failure_reason {
                Some(PaymentFailureReason::InsufficientFunds) => DeclineReason::InsufficientFunds,
                Some(PaymentFailureReason::ProviderError | PaymentFailureReason::Timeout) => {
                    DeclineReason::ProviderError
                }
                Some(PaymentFailureReason::Declined) | None => DeclineReason::Declined,
            },
            message: event.detail.clone().unwrap_or_default(),
        },
    }
}

/// For logs: the outcome's kind only (never a token; references are not secret but not needed).
fn outcome_name(outcome: &super::gateway::ChargeOutcome) -> &'static str {
    use super::gateway::ChargeOutcome as C;
    match outcome {
        C::Captured { .. } => "captured",
        C::Declined { .. } => "declined",
        C::Pending { .. } => "pending",
        C::Unknown { .. } => "unknown",
        C::NotFound => "not_found",
    }
}
