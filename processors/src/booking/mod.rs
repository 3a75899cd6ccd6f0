//! The booking processor: the single writer of each event's inventory. `state` is what it
//! knows per event, `core` decides (pure), `render` turns decisions into records (pure), and
//! `partition` folds a partition's commands through both, `coalesce` keeps a batch's latest
//! availability per event (pure); `recovery` plans, from what Kafka
//! says was published and what the store holds, how a partition resumes (pure). `runtime` runs
//! it against Kafka and ScyllaDB (`restore` rebuilds a partition, `publish` encodes and
//! commits a batch's records in one transaction), `store` maps state to stored rows, and
//! `audit` re-folds the log and reads what was published to prove an event was never
//! oversold.

pub mod audit;
pub mod coalesce;
pub mod core;
pub mod demo;
pub mod partition;
pub mod publish;
pub mod recovery;
pub mod render;
pub mod restore;
pub mod runtime;
pub mod state;
pub mod store;
pub mod topics;

#[cfg(test)]
mod tests;
