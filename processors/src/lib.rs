//! boxoffice processors: the booking processor (the single writer of each event's inventory,
//! one Kafka partition of `booking.commands` at a time) and the payment processor. Both are a
//! pure decision core (`apply(state, input) -> effects`) inside a thin Kafka/ScyllaDB runtime.
//! Nothing lives here yet: see the booking processor and payments issues.
