//! How every consumer takes a batch: wait for the first record (or a quiet 200 ms, so the
//! caller's timers, restores and membership changes still run), then take what else arrives
//! within `max_wait`, up to `max_records`; and how a batch splits into each partition's share.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::Message;
use rdkafka::consumer::{ConsumerContext, StreamConsumer};
use rdkafka::message::OwnedMessage;
use tracing::warn;

/// How long an empty poll waits before giving the caller its turn.
pub const QUIET: Duration = Duration::from_millis(200);

/// A batch of at most `max_records` records (empty after a quiet [`QUIET`] or an error).
pub async fn collect<C: ConsumerContext + 'static>(
    consumer: &StreamConsumer<C>,
    max_records: usize,
    max_wait: Duration,
) -> Vec<OwnedMessage> {
    let mut batch = Vec::new();
    match tokio::time::timeout(QUIET, consumer.recv()).await {
        Ok(Ok(message)) => batch.push(message.detach()),
        Ok(Err(e)) => {
            warn!(error = %e, "consumer error");
            return batch;
        }
        Err(_) => return batch,
    }
    let deadline = tokio::time::Instant::now() + max_wait;
    while batch.len() < max_records {
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

/// The batch's records by partition, each partition's in log order.
pub fn by_partition(batch: Vec<OwnedMessage>) -> HashMap<i32, Vec<OwnedMessage>> {
    let mut shares: HashMap<i32, Vec<OwnedMessage>> = HashMap::new();
    for message in batch {
        shares.entry(message.partition()).or_default().push(message);
    }
    shares
}
