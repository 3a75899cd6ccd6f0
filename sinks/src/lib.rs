//! boxoffice sinks: how every binary reaches the CQL store (`scylla`), and, as the pipeline
//! lands, the ScyllaDB schema and stores and the notification channels.

pub mod scylla;
