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
use boxoffice_store::session::transient_failures;
use boxoffice_store::watermarks::{Advanced, Resume, WatermarkStore, Written, check};
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

use super::core::{
    self, Effect, Input, Millis, PaymentState, Policy, ProviderMismatch, ProviderReport,
};
use super::gateway::{
    ChargeOutcome, ChargeRequest, DeclineReason, Gateway, PaymentGateway, RefundRequest,
};
pub use super::metrics::PaymentMetrics;
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

pub use crate::RunError;

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
    written: Mutex<HashMap<i32, Written>>,
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

/// What applying one record did.
enum Applied {
    /// Applied before (a replay): nothing done.
    Skipped,
    Done,
    /// A provider event that does not describe its payment: nothing changed; it goes to the
    /// dead-letter topic with the reason.
    Refused(ProviderMismatch),
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
            // The consumer loop: one batch a turn, until `shutdown`.
            let batch = tokio::select! {
                _ = &mut shutdown => break,
                batch = boxoffice_runtime::batch::collect(
                    consumer,
                    self.deps.settings.max_batch_records as usize,
                    self.deps.settings.max_batch_wait,
                ) => batch,
            };
            self.apply_membership(consumer, context).await;
            let taken = self.tend_parked(consumer).await;
            // Records of a partition taken again were fetched before its seek: it reads them
            // again from where it resumed, in order.
            let batch = if taken.is_empty() {
                batch
            } else {
                batch
                    .into_iter()
                    .filter(|m| !taken.contains(&m.partition()))
                    .collect()
            };
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
        let by_partition = boxoffice_runtime::batch::by_partition(batch);
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
            // committed this time (the next batch writes both; one whose store went backwards
            // is read again from the store's watermark).
            if let Some(last) = last
                && self.store_watermark(consumer, partition, last + 1).await
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
    /// not take it within a few attempts, or when it went backwards (the partition is then
    /// read again from it).
    async fn store_watermark(
        &self,
        consumer: &PaymentConsumer,
        partition: i32,
        next_offset: i64,
    ) -> bool {
        const ATTEMPTS: u32 = 5;
        for attempt in 1..=ATTEMPTS {
            let written = self
                .written_map()
                .get(&partition)
                .copied()
                .unwrap_or_else(|| Written::now(None));
            match self
                .deps
                .watermarks
                .advance(
                    &self.deps.settings.group_id,
                    &self.topics.payments,
                    partition,
                    written,
                    next_offset,
                )
                .await
            {
                Ok(Advanced::Saved(saved)) => {
                    self.written_map().insert(partition, saved);
                    return true;
                }
                Ok(read_again) => {
                    self.read_again_from_store(consumer, partition, read_again, written);
                    return false;
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
}

mod partitions;
mod records;
mod steps;
mod wakes;
