//! Reads one partition from an offset up to the end a `read_committed` consumer can see (the
//! last stable offset), outside any consumer group: recovery reads its progress topic with it,
//! and audits read what was published.
//!
//! The end is fixed when reading starts: `fetch_watermarks` on a `read_committed` client answers
//! the last stable offset (librdkafka sends ListOffsets with the client's isolation level).
//! Transaction markers take offsets but are never delivered; librdkafka still moves the
//! position past them while polling, so "done" is "position reached the end", not "saw a record
//! at end - 1". Blocking (librdkafka's poll): call it from `spawn_blocking` in a service.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};

use crate::kafka::KafkaArgs;

/// Why a partition could not be read to its end.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error(
        "reading {topic} partition {partition} made no progress for {stalled:?} at offset {at} (end {end})"
    )]
    Stalled {
        topic: String,
        partition: i32,
        at: i64,
        end: i64,
        stalled: Duration,
    },
}

/// The offsets a partition spans for a `read_committed` reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// First offset still in the log.
    pub start: i64,
    /// Last stable offset: everything below it is decided (committed or aborted).
    pub end: i64,
}

fn reader(kafka: &KafkaArgs, client: &str) -> Result<BaseConsumer, KafkaError> {
    kafka
        .client_config()
        // Never joins or commits: the id only names the client in broker logs.
        .set("group.id", client)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "false")
        .create()
}

/// The partition's span as a `read_committed` reader sees it.
pub fn span(kafka: &KafkaArgs, topic: &str, partition: i32) -> Result<Span, KafkaError> {
    let consumer = reader(kafka, "boxoffice-reader")?;
    let (start, end) = consumer.fetch_watermarks(topic, partition, kafka.timeout)?;
    Ok(Span { start, end })
}

/// Calls `each` for every record of `topic`/`partition` from `from` (clamped to the log start)
/// up to the last stable offset as it was when reading started; returns that span. Fails when
/// no record and no marker arrives for `stall`.
pub fn read_to_end(
    kafka: &KafkaArgs,
    client: &str,
    topic: &str,
    partition: i32,
    from: Option<i64>,
    stall: Duration,
    mut each: impl FnMut(&BorrowedMessage<'_>),
) -> Result<Span, ReadError> {
    let consumer = reader(kafka, client)?;
    let (start, end) = consumer.fetch_watermarks(topic, partition, kafka.timeout)?;
    let span = Span { start, end };
    let first = from.unwrap_or(start).max(start);
    if first >= end {
        return Ok(span);
    }
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, partition, Offset::Offset(first))?;
    consumer.assign(&assignment)?;
    let mut position = first;
    let mut last_progress = Instant::now();
    // Bounded: every turn either moves the position or counts towards `stall`.
    while position < end {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                position = message.offset() + 1;
                last_progress = Instant::now();
                if message.offset() < end {
                    each(&message);
                }
            }
            Some(Err(e)) => return Err(e.into()),
            None => {
                // Only markers may be left: the position moves past them without a record.
                let moved = consumer
                    .position()
                    .ok()
                    .and_then(|tpl| {
                        tpl.find_partition(topic, partition)
                            .and_then(|e| e.offset().to_raw())
                    })
                    .filter(|&at| at > position);
                if let Some(at) = moved {
                    position = at;
                    last_progress = Instant::now();
                } else if last_progress.elapsed() >= stall {
                    return Err(ReadError::Stalled {
                        topic: topic.to_owned(),
                        partition,
                        at: position,
                        end,
                        stalled: stall,
                    });
                }
            }
        }
    }
    Ok(span)
}
