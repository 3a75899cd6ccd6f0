//! boxoffice processors: the booking processor (`booking`: the single writer of each event's
//! inventory, one Kafka partition of `booking.commands` at a time) and, later, the payment
//! processor. Each is a pure decision core inside a thin Kafka/ScyllaDB runtime.

pub mod booking;
pub mod metrics;
pub mod payments;
