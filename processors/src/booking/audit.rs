//! `verify-event`: proves an event was never oversold and that fans were told only what the
//! log gives. It re-reads the event's commands from the start of its partition, folds them
//! through the same pure core checking the invariant after every step, and compares the result
//! with three things:
//!
//! - **the CQL store**: the state stored must equal the fold at the stored offset;
//! - **`booking.progress`**: the published digest must equal the fold's at the published
//!   offset;
//! - **what was published** (`orders.events`, `availability`): every order fact published for
//!   the event must be one the fold renders (a RESERVED the log gives as REJECTED is a fan told
//!   two things), no order told RESERVED and later REJECTED, every fact of a command up to the
//!   published offset published, every availability record within capacity, and tickets issued
//!   to confirmed orders equal to the slots sold.
//!
//! Availability is compacted: only the records compaction has not removed yet can be checked.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use boxoffice_avro::Codec;
use boxoffice_avro::records::{
    AvailabilityChanged, BookingCommand, EventProgress, OrderEvent, RecordGroup,
};
use boxoffice_store::inventory::InventoryStore;
use boxoffice_topics::kafka::KafkaArgs;
use boxoffice_topics::partitioner::partition_for;
use boxoffice_topics::reader::{ReadError, read_to_end};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use serde::Serialize;

use super::core::refusal;
use super::partition::Partition;
use super::render::Output;
use super::state::{DecisionDigest, EventState, OrderStatus};
use super::store;
use super::topics::Topics;

/// How long reading a topic may make no progress.
const STALL: Duration = Duration::from_secs(10);
const CLIENT: &str = "boxoffice-audit";

/// What the audit found.
#[derive(Debug, Clone, Serialize)]
pub struct AuditReport {
    pub event_id: String,
    pub partition: i32,
    /// Commands of this event folded (everything in the log up to its last stable offset).
    pub commands: u64,
    /// Records of this event that did not decode (they went to the dead-letter topic).
    pub undecodable: u64,
    /// The offset the CQL store's state reflects.
    pub stored_offset: Option<i64>,
    /// The offset `booking.progress` says was published.
    pub published_offset: Option<i64>,
    /// The offset of the event's last command in the log.
    pub last_command_offset: Option<i64>,
    pub capacity: u32,
    pub available: u32,
    pub held: u32,
    pub sold: u32,
    pub orders: usize,
    /// Order facts of this event read from `orders.events`.
    pub published_facts: u64,
    /// Availability records of this event read (those compaction kept).
    pub availability_records: u64,
    /// Tickets issued to orders that are confirmed.
    pub tickets_issued: u64,
    pub violations: Vec<String>,
}

impl AuditReport {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }

    /// Whether the store and Kafka both reflect every command of the event in the log (the
    /// processor caught up and saved).
    pub fn settled(&self) -> bool {
        self.last_command_offset.is_none_or(|last| {
            self.stored_offset.is_some_and(|s| s >= last)
                && self.published_offset.is_some_and(|p| p >= last)
        }) && self.stored_offset == self.published_offset
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("reading the log: {0}")]
    Read(#[from] ReadError),
    #[error("topic {0} not found")]
    MissingTopic(String),
    #[error("ScyllaDB: {0}")]
    Store(String),
    #[error("{0} does not decode: {1}")]
    Decode(String, String),
}

/// What the fold of the log gives.
#[derive(Debug, Default)]
struct Fold {
    /// Record id → (order id, fact name) of every order fact the fold renders.
    facts: HashMap<String, (String, &'static str)>,
    /// Record ids of facts rendered by commands at or below the published offset.
    facts_until_published: HashSet<String>,
    at_stored: Option<EventState>,
    digest_at_published: Option<DecisionDigest>,
}

/// Audits `event_id` on `topics`.
pub async fn verify_event(
    kafka: &KafkaArgs,
    codec: &Codec,
    store: &InventoryStore,
    topics: &Topics,
    event_id: &str,
) -> Result<AuditReport, AuditError> {
    let partition = partition_of(kafka, &topics.commands, event_id)?;
    let stored = store
        .load(event_id)
        .await
        .map_err(|e| AuditError::Store(e.to_string()))?;
    let (stored_state, stored_offset) = match stored {
        Some(stored) => {
            let (state, offset) =
                store::restore(stored).map_err(|e| AuditError::Store(e.to_string()))?;
            (Some(state), offset)
        }
        None => (None, None),
    };
    let progress = latest_progress(kafka, codec, &topics.progress, partition, event_id).await?;
    let published_offset = progress.as_ref().map(|p| p.applied_offset);

    let mut report = AuditReport {
        event_id: event_id.to_owned(),
        partition,
        commands: 0,
        undecodable: 0,
        stored_offset,
        published_offset,
        last_command_offset: None,
        capacity: 0,
        available: 0,
        held: 0,
        sold: 0,
        orders: 0,
        published_facts: 0,
        availability_records: 0,
        tickets_issued: 0,
        violations: Vec::new(),
    };

    // Fold every command of the event in the log.
    let commands = read_keyed(kafka, &topics.commands, partition, event_id).await?;
    let mut core = Partition::new();
    let mut fold = Fold::default();
    for (offset, payload) in commands {
        let command = match codec.decode_group::<BookingCommand>(&payload).await {
            Ok(command) if command.key() == event_id && refusal(&command).is_none() => command,
            Ok(_) | Err(_) => {
                report.undecodable += 1;
                continue;
            }
        };
        if stored_offset.is_some_and(|s| offset > s) && fold.at_stored.is_none() {
            fold.at_stored = Some(folded(&core, event_id));
        }
        if published_offset.is_some_and(|p| offset > p) && fold.digest_at_published.is_none() {
            fold.digest_at_published = Some(folded(&core, event_id).digest.unwrap_or_default());
        }
        report.commands += 1;
        report.last_command_offset = Some(offset);
        // `decide` asserts the capacity invariant itself; the checks below add the counters
        // against the orders.
        let decision = core.decide(&command);
        for output in &decision.outputs {
            if let Output::Order(fact) = output {
                fold.facts.insert(
                    fact.record_id().to_owned(),
                    (fact.order_id().to_owned(), fact_name(fact)),
                );
                if published_offset.is_some_and(|p| offset <= p) {
                    fold.facts_until_published
                        .insert(fact.record_id().to_owned());
                }
            }
        }
        // The counters against capacity after every step (cheap); the counters against every
        // order (a pass over all of them) every `FULL_CHECK_EVERY` commands and at the end, so
        // an audit of a stadium-sized event stays linear.
        if let Some(state) = core.events.get(event_id) {
            let full = report.commands.is_multiple_of(FULL_CHECK_EVERY);
            let checked = if full {
                state.check_invariant()
            } else {
                state.check_capacity()
            };
            if let Err(violation) = checked {
                report
                    .violations
                    .push(format!("after offset {offset}: {violation}"));
            }
        }
    }
    if let Some(state) = core.events.get(event_id)
        && let Err(violation) = state.check_invariant()
    {
        report.violations.push(format!("at the end: {violation}"));
    }
    let end = folded(&core, event_id);
    let at_stored = fold.at_stored.take().unwrap_or_else(|| end.clone());
    let digest_at_published = fold
        .digest_at_published
        .unwrap_or(end.digest.unwrap_or_default());
    report.capacity = end.capacity();
    report.available = end.available();
    report.held = end.held;
    report.sold = end.sold;
    report.orders = end.orders.len();

    // The store against the fold at the stored offset.
    match &stored_state {
        Some(stored) => report.violations.extend(compare(&at_stored, stored)),
        None if report.commands > 0 => report
            .violations
            .push("the log has commands for this event but ScyllaDB has no state".into()),
        None => {}
    }
    // Kafka's progress against the fold at the published offset.
    if let Some(p) = &progress
        && let Some(published) = DecisionDigest::parse(p.decisions, &p.decision_digest)
        && published != digest_at_published
    {
        report.violations.push(format!(
            "booking.progress at offset {} says {} order facts (digest {}) were published; the log gives {} (digest {})",
            p.applied_offset,
            published.decisions,
            published.hex(),
            digest_at_published.decisions,
            digest_at_published.hex()
        ));
    }
    if let (Some(s), Some(p)) = (stored_offset, published_offset)
        && s > p
    {
        report.violations.push(format!(
            "the store holds offset {s}, ahead of the {p} Kafka says was published"
        ));
    }

    check_published_facts(kafka, codec, topics, event_id, &fold, &end, &mut report).await?;
    check_availability(kafka, codec, topics, partition, event_id, &mut report).await?;
    Ok(report)
}

fn partition_of(kafka: &KafkaArgs, commands: &str, event_id: &str) -> Result<i32, AuditError> {
    let consumer: BaseConsumer = kafka.client_config().set("group.id", CLIENT).create()?;
    let metadata = consumer.fetch_metadata(Some(commands), kafka.timeout)?;
    let partitions = metadata
        .topics()
        .iter()
        .find(|t| t.name() == commands && t.error().is_none())
        .map_or(0, |t| t.partitions().len());
    if partitions == 0 {
        return Err(AuditError::MissingTopic(commands.to_owned()));
    }
    Ok(partition_for(
        event_id.as_bytes(),
        i32::try_from(partitions).unwrap_or(i32::MAX),
    ))
}

fn partitions_of(kafka: &KafkaArgs, topic: &str) -> Result<Vec<i32>, AuditError> {
    let consumer: BaseConsumer = kafka.client_config().set("group.id", CLIENT).create()?;
    let metadata = consumer.fetch_metadata(Some(topic), kafka.timeout)?;
    let found = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .ok_or_else(|| AuditError::MissingTopic(topic.to_owned()))?;
    Ok(found.partitions().iter().map(|p| p.id()).collect())
}

/// (offset, payload) of every record of `partition` keyed `key`.
async fn read_keyed(
    kafka: &KafkaArgs,
    topic: &str,
    partition: i32,
    key: &str,
) -> Result<Vec<(i64, Vec<u8>)>, AuditError> {
    let kafka = kafka.clone();
    let topic = topic.to_owned();
    let key = key.to_owned();
    let records = tokio::task::spawn_blocking(move || {
        let mut records = Vec::new();
        read_to_end(&kafka, CLIENT, &topic, partition, None, STALL, |m| {
            if m.key() == Some(key.as_bytes())
                && let Some(payload) = m.payload()
            {
                records.push((m.offset(), payload.to_vec()));
            }
        })
        .map(|_| records)
    })
    .await
    .map_err(|e| AuditError::Store(e.to_string()))??;
    Ok(records)
}

async fn latest_progress(
    kafka: &KafkaArgs,
    codec: &Codec,
    topic: &str,
    partition: i32,
    event_id: &str,
) -> Result<Option<EventProgress>, AuditError> {
    let mut latest = None;
    for (_, payload) in read_keyed(kafka, topic, partition, event_id).await? {
        let record = codec
            .decode_as::<EventProgress>(&payload)
            .await
            .map_err(|e| AuditError::Decode(topic.to_owned(), e.to_string()))?;
        latest = Some(record);
    }
    Ok(latest)
}

/// What was published on `orders.events` for the event, against the fold.
async fn check_published_facts(
    kafka: &KafkaArgs,
    codec: &Codec,
    topics: &Topics,
    event_id: &str,
    fold: &Fold,
    end: &EventState,
    report: &mut AuditReport,
) -> Result<(), AuditError> {
    let mut payloads = Vec::new();
    for partition in partitions_of(kafka, &topics.orders)? {
        let kafka = kafka.clone();
        let topic = topics.orders.clone();
        let read = tokio::task::spawn_blocking(move || {
            let mut records = Vec::new();
            read_to_end(&kafka, CLIENT, &topic, partition, None, STALL, |m| {
                if let Some(payload) = m.payload() {
                    records.push(payload.to_vec());
                }
            })
            .map(|_| records)
        })
        .await
        .map_err(|e| AuditError::Store(e.to_string()))??;
        payloads.extend(read);
    }
    let mut published: HashSet<String> = HashSet::new();
    let mut told: BTreeMap<String, Vec<&'static str>> = BTreeMap::new();
    let mut tickets: HashMap<String, usize> = HashMap::new();
    for payload in payloads {
        let fact = match codec.decode_group::<OrderEvent>(&payload).await {
            Ok(fact) => fact,
            Err(e) => return Err(AuditError::Decode(topics.orders.clone(), e.to_string())),
        };
        if fact.event_id() != event_id || !published.insert(fact.record_id().to_owned()) {
            continue;
        }
        report.published_facts += 1;
        let order = fact.order_id().to_owned();
        told.entry(order.clone())
            .or_default()
            .push(fact_name(&fact));
        if let OrderEvent::TicketsIssued(t) = &fact {
            tickets.insert(order.clone(), t.ticket_ids.len());
        }
        if !fold.facts.contains_key(fact.record_id()) {
            let log_gives: Vec<&str> = fold
                .facts
                .values()
                .filter(|(o, _)| *o == order)
                .map(|(_, name)| *name)
                .collect();
            report.violations.push(format!(
                "order {order}: fans were told {} but the log gives {log_gives:?}",
                fact_name(&fact)
            ));
        }
    }
    for (order, names) in &told {
        if names.contains(&"RESERVED") && names.contains(&"REJECTED") {
            report
                .violations
                .push(format!("order {order} was told RESERVED and REJECTED"));
        }
    }
    let mut missing: Vec<&String> = fold
        .facts_until_published
        .iter()
        .filter(|id| !published.contains(*id))
        .collect();
    missing.sort();
    if let Some(first) = missing.first() {
        let (order, name) = &fold.facts[*first];
        report.violations.push(format!(
            "{} order facts decided up to the published offset were never published (first: {name} of order {order})",
            missing.len()
        ));
    }
    let issued: usize = tickets
        .iter()
        .filter(|(order, _)| {
            end.orders
                .get(*order)
                .is_some_and(|o| matches!(o.status, OrderStatus::Confirmed { .. }))
        })
        .map(|(_, n)| n)
        .sum();
    report.tickets_issued = issued as u64;
    // Only meaningful once everything decided was published.
    if report.settled() && issued != end.sold as usize {
        report.violations.push(format!(
            "{issued} tickets issued to confirmed orders, but {} slots sold",
            end.sold
        ));
    }
    Ok(())
}

/// How often (in commands) the audit checks the counters against every order.
const FULL_CHECK_EVERY: u64 = 1_000;

/// Every availability record of the event still in the (compacted) topic is within capacity.
async fn check_availability(
    kafka: &KafkaArgs,
    codec: &Codec,
    topics: &Topics,
    partition: i32,
    event_id: &str,
    report: &mut AuditReport,
) -> Result<(), AuditError> {
    for (offset, payload) in read_keyed(kafka, &topics.availability, partition, event_id).await? {
        let a = codec
            .decode_as::<AvailabilityChanged>(&payload)
            .await
            .map_err(|e| AuditError::Decode(topics.availability.clone(), e.to_string()))?;
        report.availability_records += 1;
        let used = i64::from(a.held) + i64::from(a.sold);
        if used > i64::from(a.total)
            || i64::from(a.available) + used != i64::from(a.total)
            || a.available < 0
            || a.held < 0
            || a.sold < 0
        {
            report.violations.push(format!(
                "availability sequence {} (offset {offset}) shows total {} = available {} + held {} + sold {}: oversold or inconsistent",
                a.sequence, a.total, a.available, a.held, a.sold
            ));
        }
    }
    Ok(())
}

fn folded(core: &Partition, event_id: &str) -> EventState {
    core.events
        .get(event_id)
        .cloned()
        .unwrap_or_else(|| EventState::new(event_id))
}

fn fact_name(fact: &OrderEvent) -> &'static str {
    match fact {
        OrderEvent::OrderReserved(_) => "RESERVED",
        OrderEvent::OrderRejected(_) => "REJECTED",
        OrderEvent::OrderConfirmed(_) => "CONFIRMED",
        OrderEvent::OrderCancelled(_) => "CANCELLED",
        OrderEvent::OrderExpired(_) => "EXPIRED",
        OrderEvent::TicketsIssued(_) => "TICKETS_ISSUED",
    }
}

/// Differences between the state re-folded from the log and the stored one.
fn compare(folded: &EventState, stored: &EventState) -> Vec<String> {
    let mut differences = Vec::new();
    let counters = |s: &EventState| (s.capacity(), s.held, s.sold, s.sequence);
    if counters(folded) != counters(stored) {
        differences.push(format!(
            "counters differ: log gives (capacity, held, sold, sequence) = {:?}, ScyllaDB has {:?}",
            counters(folded),
            counters(stored)
        ));
    }
    if let (Some(log), Some(db)) = (folded.digest, stored.digest)
        && log != db
    {
        differences.push(format!(
            "decisions differ: log gives {} facts (digest {}), ScyllaDB has {} (digest {})",
            log.decisions,
            log.hex(),
            db.decisions,
            db.hex()
        ));
    }
    for (order_id, order) in &folded.orders {
        match stored.orders.get(order_id) {
            Some(s) if s == order => {}
            Some(s) => differences.push(format!(
                "order {order_id}: log gives {:?}, ScyllaDB has {:?}",
                order.status, s.status
            )),
            None => differences.push(format!(
                "order {order_id} is in the log but not in ScyllaDB"
            )),
        }
    }
    for order_id in stored.orders.keys() {
        if !folded.orders.contains_key(order_id) {
            differences.push(format!(
                "order {order_id} is in ScyllaDB but not in the log"
            ));
        }
    }
    differences
}
