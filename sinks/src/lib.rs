//! boxoffice sinks: how every binary reaches the CQL store (`scylla`), the CQL schema
//! (`schema`), the booking processor's per-event state store (`inventory`), and, as the
//! pipeline lands, the other stores and the notification channels.

pub mod inventory;
pub mod notify;
pub mod payments;
pub mod schema;
pub mod scylla;
