//! Rebuilding one partition before it is processed, on every path (first assignment,
//! rebalance, restart, after a fault): fence first, then read what Kafka says was published,
//! then load what the store holds, plan with `recovery`, build the worker and move the
//! consumer to the planned read position. Nothing of the previous worker is reused: state comes
//! from the store and the log, never from memory that may be stale.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use boxoffice_avro::records::EventProgress;
use boxoffice_topics::reader::{read_to_end, span};
use futures::StreamExt;
use rdkafka::consumer::StreamConsumer;
use rdkafka::producer::{FutureProducer, Producer};
use tracing::{error, info, warn};

use super::partition::Partition;
use super::recovery::{EventPlan, Plan, Published, Stored, plan};
use super::runtime::{BookingDeps, Tracked, Worker};
use super::state::{DecisionDigest, EventState};
use super::store;
use super::topics::Topics;
use crate::rebalance::{GroupContext, committed_offset, seek_and_resume};

/// Events loaded from the store at once during a restore.
const LOAD_CONCURRENCY: usize = 16;
/// How long a read of the progress topic may see no progress before the restore is retried.
const PROGRESS_STALL: Duration = Duration::from_secs(10);

/// Why a partition could not be restored.
#[derive(Debug)]
pub enum RestoreError {
    /// Something outside was unavailable (Kafka, the store, the registry): try again later.
    Retry(String),
    /// The store and Kafka disagree in a way no store fault explains: never processed again
    /// by this instance without an operator.
    Stop(String),
}

fn retry<E: std::fmt::Display>(what: &str) -> impl Fn(E) -> RestoreError + '_ {
    move |e| RestoreError::Retry(format!("{what}: {e}"))
}

/// What the log, the group and the store say about one partition, read after fencing.
struct Gathered {
    producer: FutureProducer,
    log_start: i64,
    committed: Option<i64>,
    progress: HashMap<String, EventProgress>,
    registered: Vec<String>,
    states: BTreeMap<String, (EventState, Option<i64>)>,
}

/// Fences earlier owners of `partition`, rebuilds its worker and seeks the consumer to where
/// processing resumes. The partition stays paused unless this returns `Ok`.
pub async fn restore(
    deps: &BookingDeps,
    topics: &Topics,
    consumer: &StreamConsumer<GroupContext>,
    partition: i32,
) -> Result<Worker, RestoreError> {
    let started = Instant::now();
    let gathered = gather(deps, topics, consumer, partition).await?;
    let published: HashMap<String, Published> = gathered
        .progress
        .iter()
        .map(|(id, p)| (id.clone(), published_of(p)))
        .collect();
    let stored: HashMap<String, Stored> = gathered
        .states
        .iter()
        .map(|(id, (state, offset))| {
            (
                id.clone(),
                Stored {
                    applied_offset: *offset,
                    digest: state.digest,
                },
            )
        })
        .collect();
    let plan = plan(
        &published,
        &stored,
        gathered.committed,
        gathered.log_start,
        deps.settings.recovery_source,
    );
    if let Some((event_id, reason)) = plan.inconsistency() {
        return Err(RestoreError::Stop(format!("event {event_id}: {reason}")));
    }
    let (log_start, committed) = (gathered.log_start, gathered.committed);
    let mut worker = build_worker(deps, topics, partition, &plan, gathered);
    worker.schedule_active_holds();
    seek_and_resume(
        consumer,
        &topics.commands,
        partition,
        Some(plan.read_from),
        deps.kafka.timeout,
    )
    .await
    .map_err(retry("seeking to the read position"))?;
    info!(
        partition,
        events = plan.events.len(),
        refolded = plan.refolds(),
        read_from = plan.read_from,
        published_until = plan.published_until,
        log_start,
        committed = ?committed,
        holds = worker.hold_count(),
        took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "partition restored: fenced, compared with Kafka, resuming"
    );
    Ok(worker)
}

/// Fences, then reads the log's bounds, the group's offset, the published progress and the
/// stored state of every event the partition registered or published.
async fn gather(
    deps: &BookingDeps,
    topics: &Topics,
    consumer: &StreamConsumer<GroupContext>,
    partition: i32,
) -> Result<Gathered, RestoreError> {
    let producer = fence(deps, topics, partition).await?;
    let kafka = deps.kafka.clone();
    let commands_topic = topics.commands.clone();
    let log = tokio::task::spawn_blocking(move || span(&kafka, &commands_topic, partition))
        .await
        .map_err(|e| RestoreError::Retry(e.to_string()))?
        .map_err(|e| RestoreError::Retry(format!("watermarks of {}: {e}", topics.commands)))?;
    // Exact: the group's offset moves only inside the transactions.
    let committed = committed_offset(consumer, &topics.commands, partition, deps.kafka.timeout)
        .map_err(retry("committed offset"))?;
    let progress = read_progress(deps, topics, partition).await?;
    let registered: Vec<String> = deps
        .store
        .events_of_partition(&topics.commands, partition)
        .await
        .map_err(|e| RestoreError::Retry(format!("events of partition {partition}: {e}")))?;
    let mut ids: Vec<String> = registered.clone();
    ids.extend(
        progress
            .keys()
            .filter(|id| !registered.contains(id))
            .cloned(),
    );
    let states = load_states(deps, ids).await?;
    Ok(Gathered {
        producer,
        log_start: log.start,
        committed,
        progress,
        registered,
        states,
    })
}

/// The partition's worker as the plan says: current events as stored, events behind what was
/// published marked for a re-fold, lost events refusing their commands.
fn build_worker(
    deps: &BookingDeps,
    topics: &Topics,
    partition: i32,
    plan: &Plan,
    gathered: Gathered,
) -> Worker {
    let Gathered {
        producer,
        log_start,
        progress,
        registered,
        mut states,
        ..
    } = gathered;
    let mut core = Partition::new();
    let mut events = HashMap::new();
    for (event_id, event_plan) in &plan.events {
        let mut tracked = Tracked {
            registered: registered.contains(event_id),
            first_offset: progress
                .get(event_id)
                .map_or(Some(log_start), |p| Some(p.first_offset)),
            ..Tracked::default()
        };
        match event_plan {
            EventPlan::Current { applied } => tracked.offset = *applied,
            EventPlan::Refold { stored, target, .. } => {
                tracked.offset = *stored;
                tracked.refold = Some(*target);
                deps.metrics.events_refolded.inc_by(1);
                warn!(
                    partition,
                    event_id,
                    stored_offset = ?stored,
                    published_offset = target.applied_offset,
                    "the store is behind what was published (it lost acknowledged writes): re-folding the event from the log"
                );
            }
            EventPlan::Lost {
                needed_from,
                log_start,
            } => {
                tracked.lost = Some(format!(
                    "event {event_id}: its state is gone from the store and the commands needed \
                     to rebuild it (from offset {needed_from}) are below the log start \
                     ({log_start}) of {} partition {partition}; restore the store from a \
                     backup, then replay this dead letter",
                    topics.commands
                ));
                error!(
                    partition,
                    event_id,
                    needed_from,
                    log_start,
                    "event lost: its commands are below the log start; its new commands go to dead letters until an operator restores it"
                );
            }
            EventPlan::Inconsistent { .. } => {}
        }
        if !matches!(event_plan, EventPlan::Lost { .. })
            && let Some((state, _)) = states.remove(event_id)
        {
            core.events.insert(event_id.clone(), state);
        }
        events.insert(event_id.clone(), tracked);
    }
    Worker::new(
        partition,
        core,
        events,
        producer,
        plan.read_from,
        plan.published_until,
    )
}

/// A transactional producer for the partition, after `init_transactions`: any earlier owner's
/// producer with the same transactional id is fenced, and its open transaction aborted, before
/// anything is read.
async fn fence(
    deps: &BookingDeps,
    topics: &Topics,
    partition: i32,
) -> Result<FutureProducer, RestoreError> {
    let transactional_id = format!("{}-{}-{partition}", deps.settings.group_id, topics.commands);
    let producer: FutureProducer = deps
        .kafka
        .durable_producer_config()
        .set("transactional.id", &transactional_id)
        .set("transaction.timeout.ms", "30000")
        .create()
        .map_err(|e| RestoreError::Retry(e.to_string()))?;
    let init = producer.clone();
    let timeout = deps.kafka.timeout;
    tokio::task::spawn_blocking(move || init.init_transactions(timeout))
        .await
        .map_err(|e| RestoreError::Retry(e.to_string()))?
        .map_err(|e| RestoreError::Retry(format!("init_transactions({transactional_id}): {e}")))?;
    Ok(producer)
}

/// The partition's `booking.progress`, latest per event.
async fn read_progress(
    deps: &BookingDeps,
    topics: &Topics,
    partition: i32,
) -> Result<HashMap<String, EventProgress>, RestoreError> {
    let kafka = deps.kafka.clone();
    let topic = topics.progress.clone();
    let client = format!("{}-recovery", deps.settings.group_id);
    let payloads = tokio::task::spawn_blocking(move || {
        let mut payloads = Vec::new();
        read_to_end(
            &kafka,
            &client,
            &topic,
            partition,
            None,
            PROGRESS_STALL,
            |message| {
                if let Some(payload) = rdkafka::Message::payload(message) {
                    payloads.push(payload.to_vec());
                }
            },
        )
        .map(|_| payloads)
    })
    .await
    .map_err(|e| RestoreError::Retry(e.to_string()))?
    .map_err(|e| RestoreError::Retry(format!("reading {}: {e}", topics.progress)))?;
    let mut latest = HashMap::new();
    for payload in payloads {
        match deps.codec.decode_as::<EventProgress>(&payload).await {
            Ok(record) => {
                // Compaction keeps the latest per key; before it runs, later records win.
                latest.insert(record.event_id.clone(), record);
            }
            Err(e) if e.is_retryable() => {
                return Err(RestoreError::Retry(format!("decoding progress: {e}")));
            }
            // Only the processor writes this topic: a record it cannot read is a bug, and
            // guessing past it could skip a lost write.
            Err(e) => {
                return Err(RestoreError::Stop(format!(
                    "a record of {} partition {partition} does not decode: {e}",
                    topics.progress
                )));
            }
        }
    }
    Ok(latest)
}

fn published_of(p: &EventProgress) -> Published {
    Published {
        applied_offset: p.applied_offset,
        first_offset: p.first_offset,
        digest: DecisionDigest::parse(p.decisions, &p.decision_digest),
    }
}

/// Loads every listed event's state; events the store does not hold are left out.
async fn load_states(
    deps: &BookingDeps,
    ids: Vec<String>,
) -> Result<BTreeMap<String, (EventState, Option<i64>)>, RestoreError> {
    let loads = futures::stream::iter(ids.into_iter().map(|id| {
        let store = &deps.store;
        async move { (id.clone(), store.load_for_assignment(&id).await) }
    }))
    .buffer_unordered(LOAD_CONCURRENCY)
    .collect::<Vec<_>>()
    .await;
    let mut states = BTreeMap::new();
    for (id, loaded) in loads {
        let loaded = loaded.map_err(|e| RestoreError::Retry(format!("loading event {id}: {e}")))?;
        if let Some(stored) = loaded {
            let (state, offset) =
                store::restore(stored).map_err(|e| RestoreError::Stop(e.to_string()))?;
            states.insert(id, (state, offset));
        }
    }
    Ok(states)
}
