//! What every long-running boxoffice service shares around its domain logic: what a binary
//! does at start and stop (`startup`), how a batch is taken (`batch`), the one dead-letter
//! builder (`dead_letter`),
//! consumer-group membership and where a partition resumes (`rebalance`), the one bounded retry
//! policy (`retry`), the `/metrics`,
//! `/healthz` and `/readyz` every service serves (`metrics`), the HMAC signature of webhooks
//! in both directions (`signature`), secrets with the development mode (`secrets`), and where
//! user-chosen webhook URLs may lead (`egress`).

pub mod batch;
pub mod dead_letter;
pub mod egress;
pub mod metrics;
pub mod rebalance;
pub mod retry;
pub mod secrets;
pub mod signature;
pub mod startup;
