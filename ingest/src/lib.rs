//! boxoffice ingest: the stateless axum HTTP layer (auth, users, catalogue, orders, payments,
//! live streams) that turns booking commands into Kafka records keyed by event id.
//! Nothing lives here yet: see the ingest issue.
