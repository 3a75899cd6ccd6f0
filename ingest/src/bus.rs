//! The way out to Kafka: one shared idempotent producer (acks=all, murmur2 partitioner) and
//! the registry codec. A send returns only once the broker acknowledged the record, or fails
//! within the produce timeout; callers answer 503 on failure, never a false 202.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use boxoffice_avro::records::{NotificationRequested, Record, RecordGroup};
use boxoffice_avro::{BookingCommand, Codec, CodecError, PaymentRequest};
use boxoffice_topics::kafka::KafkaArgs;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

use crate::config::Topics;
use crate::metrics::IngestMetrics;

/// A record could not be handed to Kafka.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("Kafka did not acknowledge the record: {0}")]
    Unavailable(String),
    #[error("the schema registry is unavailable: {0}")]
    Registry(String),
}

/// Where ingest's records go.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Produces to `booking.commands`, keyed by event id; resolves after the broker's ack.
    async fn send_command(&self, command: &BookingCommand) -> Result<(), BusError>;
    /// Produces to `payments.requests`, keyed by order id; resolves after the broker's ack.
    async fn send_payment(&self, request: &PaymentRequest) -> Result<(), BusError>;
    /// Produces an account notice to `notifications`, keyed by its user id; resolves after the
    /// broker's ack (the notifier's email channel sends it).
    async fn send_notice(&self, notice: &NotificationRequested) -> Result<(), BusError>;
    /// Fetches cluster metadata (readiness).
    async fn ping(&self) -> Result<(), BusError>;
}

/// The real bus.
pub struct KafkaBus {
    producer: FutureProducer,
    codec: Arc<Codec>,
    topics: Topics,
    timeout: Duration,
    /// Where produce latencies are observed (the binary's registry; none in some tools).
    metrics: Option<Arc<IngestMetrics>>,
}

impl std::fmt::Debug for KafkaBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBus")
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

impl KafkaBus {
    /// One producer for the whole process; `timeout` bounds every delivery.
    pub fn new(
        kafka: &KafkaArgs,
        codec: Arc<Codec>,
        topics: Topics,
        timeout: Duration,
    ) -> Result<Self, rdkafka::error::KafkaError> {
        let millis = timeout.as_millis().max(1).to_string();
        let producer: FutureProducer = kafka
            .durable_producer_config()
            .set("message.timeout.ms", &millis)
            // Idempotence wants delivery timeout >= linger + request timeout.
            .set("request.timeout.ms", &millis)
            .create()?;
        Ok(KafkaBus {
            producer,
            codec,
            topics,
            timeout,
            metrics: None,
        })
    }

    /// Observes every produce in `ingest_kafka_produce_duration_ms{topic, result}`.
    pub fn with_metrics(mut self, metrics: Arc<IngestMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    async fn send<G: RecordGroup>(&self, topic: &str, record: &G) -> Result<(), BusError> {
        let payload = self.codec.encode_group(topic, record).await;
        self.produce(topic, record.key(), payload).await
    }

    async fn produce(
        &self,
        topic: &str,
        key: &str,
        payload: Result<Vec<u8>, CodecError>,
    ) -> Result<(), BusError> {
        let payload = payload.map_err(|e| {
            if e.is_retryable() {
                BusError::Registry(e.to_string())
            } else {
                BusError::Unavailable(e.to_string())
            }
        })?;
        let delivery = self.producer.send(
            FutureRecord::to(topic)
                .key(key.as_bytes())
                .payload(&payload),
            Timeout::After(self.timeout),
        );
        let started = std::time::Instant::now();
        // librdkafka fails the delivery at `message.timeout.ms`; the outer bound is a guard.
        let result =
            match tokio::time::timeout(self.timeout + Duration::from_secs(1), delivery).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((e, _))) => Err(BusError::Unavailable(e.to_string())),
                Err(_) => Err(BusError::Unavailable(format!(
                    "no acknowledgement within {}",
                    humantime::format_duration(self.timeout)
                ))),
            };
        if let Some(metrics) = &self.metrics {
            metrics.observe_produce(topic, result.is_ok(), started.elapsed());
        }
        result
    }
}

#[async_trait]
impl Bus for KafkaBus {
    async fn send_command(&self, command: &BookingCommand) -> Result<(), BusError> {
        self.send(&self.topics.commands, command).await
    }

    async fn send_payment(&self, request: &PaymentRequest) -> Result<(), BusError> {
        self.send(&self.topics.payments, request).await
    }

    async fn send_notice(&self, notice: &NotificationRequested) -> Result<(), BusError> {
        let topic = &self.topics.notifications;
        let payload = self.codec.encode(topic, notice).await;
        self.produce(topic, notice.key(), payload).await
    }

    async fn ping(&self) -> Result<(), BusError> {
        let producer = self.producer.clone();
        let topic = self.topics.commands.clone();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&topic), Duration::from_secs(2))
                .map(|_| ())
                .map_err(|e| BusError::Unavailable(e.to_string()))
        })
        .await
        .map_err(|e| BusError::Unavailable(e.to_string()))?
    }
}

impl Drop for KafkaBus {
    fn drop(&mut self) {
        // Deliver what is in flight before the process goes (graceful shutdown).
        let _ = self.producer.flush(Timeout::After(self.timeout));
    }
}
