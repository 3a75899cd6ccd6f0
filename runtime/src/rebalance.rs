//! Consumer-group membership as the consumers see it: rdkafka's rebalance callbacks only
//! note which partitions came and went; each consumer's record loop acts on the notes
//! between batches (so a revocation never finds a batch half done). A pausing context keeps a
//! new partition paused until the loop decided where it resumes ([`seek_and_resume`]).

use std::sync::{Arc, Mutex};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::{ClientContext, TopicPartitionList};

/// A change of the partitions this instance owns.
#[derive(Debug)]
pub enum Membership {
    Assigned(Vec<i32>),
    Revoked(Vec<i32>),
}

/// Records rebalance callbacks for the record loop.
#[derive(Debug, Default, Clone)]
pub struct GroupContext {
    changes: Arc<Mutex<Vec<Membership>>>,
    /// Pause every newly assigned partition inside the callback, before anything is fetched:
    /// the record loop recovers the partition first and then seeks and resumes it.
    pause_on_assign: bool,
}

impl GroupContext {
    /// A context whose assigned partitions stay paused until the record loop resumes them.
    pub fn pausing() -> Self {
        GroupContext {
            pause_on_assign: true,
            ..GroupContext::default()
        }
    }

    /// The changes noted since the last call, oldest first.
    pub fn take(&self) -> Vec<Membership> {
        match self.changes.lock() {
            Ok(mut changes) => changes.drain(..).collect(),
            Err(_) => Vec::new(),
        }
    }

    fn note(&self, change: Membership) {
        if let Ok(mut changes) = self.changes.lock() {
            changes.push(change);
        }
    }
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            self.note(Membership::Revoked(partitions_of(tpl)));
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            if self.pause_on_assign
                && tpl.count() > 0
                && let Err(e) = consumer.pause(tpl)
            {
                // The record loop seeks every recovered partition anyway; a record fetched
                // before that is dropped, never decided.
                tracing::warn!(error = %e, "pausing newly assigned partitions failed");
            }
            self.note(Membership::Assigned(partitions_of(tpl)));
        }
    }
}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<i32> {
    tpl.elements().iter().map(|e| e.partition()).collect()
}

/// Attempts to seek a freshly assigned partition whose fetcher has not started yet.
const SEEK_ATTEMPTS: u32 = 20;

/// Moves `consumer` to `offset` on `topic`/`partition` (`None`: the log start) and resumes the
/// partition. A partition assigned a moment ago may not have started fetching yet (librdkafka
/// answers a state error): tried again shortly, [`SEEK_ATTEMPTS`] times.
pub async fn seek_and_resume<C: ConsumerContext>(
    consumer: &rdkafka::consumer::StreamConsumer<C>,
    topic: &str,
    partition: i32,
    offset: Option<i64>,
    timeout: std::time::Duration,
) -> Result<(), rdkafka::error::KafkaError> {
    let target = offset.map_or(rdkafka::Offset::Beginning, rdkafka::Offset::Offset);
    let mut attempt = 0;
    loop {
        // Bounded: SEEK_ATTEMPTS.
        match consumer.seek(topic, partition, target, timeout) {
            Ok(()) => break,
            Err(e) if attempt < SEEK_ATTEMPTS => {
                attempt += 1;
                tracing::debug!(partition, attempt, error = %e, "seek not possible yet");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e),
        }
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    consumer.resume(&tpl)
}

/// The group's committed offset of `topic`/`partition` (`None`: the group never committed one).
/// Blocks for at most `timeout` (librdkafka asks the group coordinator).
pub fn committed_offset<C: ConsumerContext>(
    consumer: &rdkafka::consumer::StreamConsumer<C>,
    topic: &str,
    partition: i32,
    timeout: std::time::Duration,
) -> Result<Option<i64>, rdkafka::error::KafkaError> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    let committed = consumer.committed_offsets(tpl, timeout)?;
    Ok(committed
        .find_partition(topic, partition)
        .and_then(|e| match e.offset() {
            rdkafka::Offset::Offset(at) => Some(at),
            _ => None,
        }))
}
