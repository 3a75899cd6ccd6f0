//! boxoffice processors: the booking processor (`booking`: the single writer of each event's
//! inventory, one Kafka partition of `booking.commands` at a time) and the payment processor
//! (`payments`). Each is a pure decision core inside a thin Kafka/ScyllaDB runtime; they share
//! their metrics rendering (`metrics`), consumer-group bookkeeping (`rebalance`) and why a
//! processor stops (`RunError`).

pub mod booking;
pub mod metrics;
pub mod payments;
/// Consumer-group membership, shared with the notifier (it lives in `boxoffice_runtime`).
pub use boxoffice_runtime::rebalance;

use rdkafka::error::KafkaError;

/// Why a processor (booking or payments) stopped.
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
