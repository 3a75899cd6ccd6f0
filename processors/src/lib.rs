//! boxoffice processors: the booking processor (`booking`: the single writer of each event's
//! inventory, one Kafka partition of `booking.commands` at a time) and the payment processor
//! (`payments`). Each is a pure decision core inside a thin Kafka/ScyllaDB runtime; they share
//! their metrics rendering (`metrics`) and consumer-group bookkeeping (`rebalance`).

pub mod booking;
pub mod metrics;
pub mod payments;
/// Consumer-group membership, shared with the notifier (it lives in `boxoffice_runtime`).
pub use boxoffice_runtime::rebalance;
