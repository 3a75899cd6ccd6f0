//! Turning a batch's decisions into Kafka records and publishing them: encoding (outputs,
//! progress, dead letters) and the per-partition transaction that carries them together with
//! the consumer offset, so what Kafka holds is exactly what was decided and nothing else.

use std::sync::Arc;
use std::time::{Duration, Instant};

use boxoffice_avro::clock::now_millis;
use boxoffice_avro::ids;
use boxoffice_avro::records::{DeadLetterErrorKind, EventProgress, Record, RecordGroup};
use boxoffice_avro::{Codec, CodecError};
use boxoffice_runtime::dead_letter;
use boxoffice_runtime::retry::RetryPolicy;
use futures::future::join_all;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use tracing::warn;

use super::render::Output;
use super::state::EventState;
use super::topics::{Topics, topic_for};

/// A record to produce, encoded.
#[derive(Debug)]
pub struct Encoded {
    pub topic: String,
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
    pub headers: Option<OwnedHeaders>,
}

/// Encodes with `encode`, waiting out registry outages for at most `budget`; `Err` for what no
/// retry fixes, or when the budget ran out (then `is_retryable()` is still true).
async fn encode_with_retry<F, Fut>(
    budget: Duration,
    what: &str,
    mut encode: F,
) -> Result<Vec<u8>, CodecError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Vec<u8>, CodecError>>,
{
    let mut retries = RetryPolicy::with_budget(budget).start(Instant::now());
    loop {
        // Bounded: `retries` gives up after `budget`.
        match encode().await {
            Ok(bytes) => return Ok(bytes),
            Err(e) if e.is_retryable() => {
                let Some(delay) = retries.next_delay(Instant::now()) else {
                    return Err(e);
                };
                let attempt = retries.attempts();
                warn!(attempt, what, error = %e, "registry unavailable while encoding; retrying");
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Encodes one decision's output for its topic.
pub async fn encode_output(
    codec: &Codec,
    topics: &Topics,
    output: &Output,
    budget: Duration,
) -> Result<Encoded, CodecError> {
    let topic = topic_for(topics, output);
    let payload = encode_with_retry(budget, "output", || async {
        match output {
            Output::Order(r) => codec.encode_group(topic, r).await,
            Output::Payment(r) => codec.encode_group(topic, r).await,
            Output::Availability(r) => codec.encode(topic, r).await,
            Output::Notification(r) => codec.encode(topic, r).await,
        }
    })
    .await?;
    let key = match output {
        Output::Order(r) => r.key(),
        Output::Payment(r) => r.key(),
        Output::Availability(r) => r.key(),
        Output::Notification(r) => r.key(),
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

/// The progress record of `state` as published at `applied_offset` (see `EventProgress`).
pub fn progress_record(
    state: &EventState,
    applied_offset: i64,
    first_offset: i64,
) -> EventProgress {
    let digest = state.digest.unwrap_or_default();
    let count = |v: u32| i32::try_from(v).unwrap_or(i32::MAX);
    EventProgress {
        record_id: ids::record_id_for::<EventProgress>(&[
            &state.event_id,
            &applied_offset.to_string(),
        ]),
        event_id: state.event_id.clone(),
        applied_offset,
        first_offset,
        decisions: i64::try_from(digest.decisions).unwrap_or(i64::MAX),
        // Empty: a state saved before digests existed, which cannot be checked.
        decision_digest: state.digest.map(|d| d.hex()).unwrap_or_default(),
        capacity: count(state.capacity()),
        held: count(state.held),
        sold: count(state.sold),
        sequence: state.sequence,
        occurred_at: now_millis(),
    }
}

pub async fn encode_progress(
    codec: &Codec,
    topics: &Topics,
    record: &EventProgress,
    budget: Duration,
) -> Result<Encoded, CodecError> {
    let payload = encode_with_retry(budget, "progress", || {
        codec.encode(&topics.progress, record)
    })
    .await?;
    Ok(Encoded {
        topic: topics.progress.clone(),
        key: record.event_id.as_bytes().to_vec(),
        payload,
        headers: None,
    })
}

/// The dead-letter record for `message`, with the reason in headers too (readable without the
/// registry).
pub async fn dead_letter(
    codec: &Codec,
    topics: &Topics,
    consumer: &str,
    message: &OwnedMessage,
    kind: DeadLetterErrorKind,
    reason: &str,
    budget: Duration,
) -> Result<Encoded, CodecError> {
    let record = dead_letter::dead_letter(consumer, message, kind, reason, now_millis());
    let payload = encode_with_retry(budget, "dead letter", || {
        codec.encode(&topics.dead_letters, &record)
    })
    .await?;
    Ok(Encoded {
        topic: topics.dead_letters.clone(),
        key: dead_letter::key(&record).unwrap_or_default().to_vec(),
        payload,
        headers: Some(dead_letter::headers(&record)),
    })
}

/// Why a batch's transaction did not commit.
#[derive(Debug)]
pub enum TxnError {
    /// Worth another attempt (a broker moved, a timeout).
    Retry(String),
    /// The consumer group moved on (rebalance, new generation): the partition's ownership is
    /// being decided again.
    Rebalance(String),
    /// This producer was fenced by a newer owner of the partition, or failed fatally.
    Fenced(String),
}

fn classify(e: KafkaError) -> TxnError {
    let code = e.rdkafka_error_code();
    if matches!(
        code,
        Some(
            RDKafkaErrorCode::IllegalGeneration
                | RDKafkaErrorCode::UnknownMemberId
                | RDKafkaErrorCode::RebalanceInProgress
                | RDKafkaErrorCode::FencedInstanceId
        )
    ) {
        return TxnError::Rebalance(e.to_string());
    }
    match &e {
        KafkaError::Transaction(inner) if inner.is_fatal() => TxnError::Fenced(e.to_string()),
        KafkaError::Transaction(inner) if inner.txn_requires_abort() || inner.is_retriable() => {
            TxnError::Retry(e.to_string())
        }
        KafkaError::Transaction(_) => TxnError::Fenced(e.to_string()),
        _ => TxnError::Retry(e.to_string()),
    }
}

/// What a batch's transaction carries besides its records: the consumer offset to commit with
/// it (Kafka's consume-transform-produce pattern, so the group's committed offset is exactly
/// what was published).
#[derive(Clone)]
pub struct OffsetCommit {
    pub topic: String,
    pub partition: i32,
    pub next_offset: i64,
    pub group: Arc<ConsumerGroupMetadata>,
}

impl std::fmt::Debug for OffsetCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OffsetCommit")
            .field("topic", &self.topic)
            .field("partition", &self.partition)
            .field("next_offset", &self.next_offset)
            .finish_non_exhaustive()
    }
}

/// Produces `outputs` and commits `offsets` in one transaction.
pub async fn transaction(
    producer: &FutureProducer,
    outputs: &[Encoded],
    offsets: &OffsetCommit,
    timeout: Duration,
) -> Result<(), TxnError> {
    producer.begin_transaction().map_err(classify)?;
    let mut deliveries = Vec::with_capacity(outputs.len());
    for out in outputs {
        let mut record = FutureRecord::to(&out.topic)
            .key(&out.key)
            .payload(&out.payload);
        if let Some(headers) = &out.headers {
            record = record.headers(headers.clone());
        }
        // Bounded: a full local queue drains as deliveries complete; give up after `timeout`.
        let enqueue_deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Bounded: until `enqueue_deadline`.
            match producer.send_result(record) {
                Ok(delivery) => {
                    deliveries.push(delivery);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                    if tokio::time::Instant::now() < enqueue_deadline =>
                {
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
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(
        &offsets.topic,
        offsets.partition,
        Offset::Offset(offsets.next_offset),
    )
    .map_err(|e| TxnError::Retry(e.to_string()))?;
    let sending = producer.clone();
    let group = Arc::clone(&offsets.group);
    tokio::task::spawn_blocking(move || sending.send_offsets_to_transaction(&tpl, &group, timeout))
        .await
        .map_err(|e| TxnError::Retry(e.to_string()))?
        .map_err(classify)?;
    let committing = producer.clone();
    tokio::task::spawn_blocking(move || committing.commit_transaction(timeout))
        .await
        .map_err(|e| TxnError::Retry(e.to_string()))?
        .map_err(classify)
}

/// Aborts the open transaction after a failed attempt (errors only logged: the next
/// `begin_transaction` or a rebuild reports what is wrong).
pub async fn abort(producer: &FutureProducer, timeout: Duration) {
    let aborting = producer.clone();
    match tokio::task::spawn_blocking(move || aborting.abort_transaction(timeout)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(error = %e, "aborting the failed transaction failed"),
        Err(e) => warn!(error = %e, "aborting the failed transaction panicked"),
    }
}
