//! boxoffice sinks: how every binary reaches the CQL store (`scylla`), the CQL schema
//! (`schema`), the booking processor's per-event state store (`inventory`), the payment store
//! (`payments`), the notifier (`notify`), the `/metrics` every service serves (`metrics`),
//! consumer-group membership (`rebalance`), where a consumer whose effects live in the store
//! resumes (`watermarks`), and what every binary does at start and stop (`startup`).

pub mod inventory;
pub mod metrics;
pub mod notify;
pub mod payments;
pub mod rebalance;
pub mod schema;
pub mod scylla;
pub mod startup;
pub mod watermarks;
