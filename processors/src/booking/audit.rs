//! `verify-event`: proves an event was never oversold. It re-reads the event's commands from
//! `booking.commands` from the beginning, folds them through the same pure core, checks the
//! invariant after every step, and compares the result with the state stored in ScyllaDB.

use std::time::Duration;

use boxoffice_avro::Codec;
use boxoffice_avro::records::{BookingCommand, RecordGroup};
use boxoffice_sinks::inventory::InventoryStore;
use boxoffice_topics::kafka::KafkaArgs;
use boxoffice_topics::partitioner::partition_for;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use super::partition::Partition;
use super::state::EventState;
use super::store;

/// What the audit found.
#[derive(Debug, Clone, Serialize)]
pub struct AuditReport {
    pub event_id: String,
    pub partition: i32,
    /// Commands of this event folded (up to the offset the stored state was written at).
    pub commands: u64,
    /// Records of this event that did not decode (they went to the dead-letter topic).
    pub undecodable: u64,
    pub stored_offset: Option<i64>,
    pub capacity: u32,
    pub available: u32,
    pub held: u32,
    pub sold: u32,
    pub orders: usize,
    pub violations: Vec<String>,
}

impl AuditReport {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("topic {0} not found")]
    MissingTopic(String),
    #[error("ScyllaDB: {0}")]
    Store(String),
    #[error("reading {topic} partition {partition} stalled at offset {at} before {until}")]
    Stalled {
        topic: String,
        partition: i32,
        at: i64,
        until: i64,
    },
}

/// Audits `event_id` on `commands_topic`.
pub async fn verify_event(
    kafka: &KafkaArgs,
    codec: &Codec,
    store: &InventoryStore,
    commands_topic: &str,
    event_id: &str,
) -> Result<AuditReport, AuditError> {
    let consumer: BaseConsumer = kafka
        .client_config()
        .set("group.id", "boxoffice-audit")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(commands_topic), kafka.timeout)?;
    let partitions = metadata
        .topics()
        .iter()
        .find(|t| t.name() == commands_topic && t.error().is_none())
        .map_or(0, |t| t.partitions().len());
    if partitions == 0 {
        return Err(AuditError::MissingTopic(commands_topic.to_owned()));
    }
    let partition = partition_for(
        event_id.as_bytes(),
        i32::try_from(partitions).unwrap_or(i32::MAX),
    );

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
    let (_, high) = consumer.fetch_watermarks(commands_topic, partition, kafka.timeout)?;
    // Fold exactly what the stored state reflects; with no stored state, everything there is.
    let until = stored_offset.map_or(high, |o| o + 1).min(high);

    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(commands_topic, partition, Offset::Beginning)?;
    consumer.assign(&tpl)?;

    let mut core = Partition::new();
    let mut report = AuditReport {
        event_id: event_id.to_owned(),
        partition,
        commands: 0,
        undecodable: 0,
        stored_offset,
        capacity: 0,
        available: 0,
        held: 0,
        sold: 0,
        orders: 0,
        violations: Vec::new(),
    };
    let mut position = 0;
    while position < until {
        let Some(message) = consumer.poll(Duration::from_secs(5)) else {
            return Err(AuditError::Stalled {
                topic: commands_topic.to_owned(),
                partition,
                at: position,
                until,
            });
        };
        let message = message?;
        position = message.offset() + 1;
        if message.offset() >= until || message.key() != Some(event_id.as_bytes()) {
            continue;
        }
        let Some(payload) = message.payload() else {
            continue;
        };
        let command = match codec.decode_group::<BookingCommand>(payload).await {
            Ok(command) if command.key() == event_id => command,
            Ok(_) | Err(_) => {
                report.undecodable += 1;
                continue;
            }
        };
        report.commands += 1;
        // `decide` asserts the capacity invariant itself; the full check (counters against
        // orders) runs here after every step.
        core.decide(&command);
        if let Some(state) = core.events.get(event_id)
            && let Err(violation) = state.check_invariant()
        {
            report
                .violations
                .push(format!("after offset {}: {violation}", message.offset()));
        }
    }

    let folded = core
        .events
        .remove(event_id)
        .unwrap_or_else(|| EventState::new(event_id));
    report.capacity = folded.capacity();
    report.available = folded.available();
    report.held = folded.held;
    report.sold = folded.sold;
    report.orders = folded.orders.len();
    match stored_state {
        Some(stored) => report.violations.extend(compare(&folded, &stored)),
        None if report.commands > 0 => {
            report
                .violations
                .push("the log has commands for this event but ScyllaDB has no state".into());
        }
        None => {}
    }
    Ok(report)
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
