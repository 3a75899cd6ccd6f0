//! The payment processor: consumes `payments.requests`, charges and refunds through a
//! [`gateway::PaymentGateway`], and tells the booking processor the outcome on
//! `booking.commands`. `core` decides (pure, property-tested), `gateway` is the provider seam
//! and the sandbox provider, `provider` the HTTP provider, `store` maps state to the rows of
//! `boxoffice_store::payments`, `render` turns outcomes into records, `timers` holds the
//! in-memory timers and per-payment locks, `settings` and `metrics` are what it is configured
//! with and what it counts, and `runtime` runs it against Kafka and ScyllaDB.

pub mod core;
pub mod gateway;
pub mod metrics;
pub mod provider;
pub mod render;
pub mod runtime;
pub mod settings;
pub mod store;
pub mod timers;

#[cfg(test)]
mod tests;
