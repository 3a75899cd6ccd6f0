//! The booking processor: the single writer of each event's inventory. `state` is what it
//! knows per event, `core` decides (pure), `render` turns decisions into records (pure), and
//! `partition` folds a partition's commands through both. `runtime` runs it against Kafka and
//! ScyllaDB, `store` maps state to stored rows, and `audit` re-folds the log to prove an event
//! was never oversold.

pub mod audit;
pub mod core;
pub mod demo;
pub mod partition;
pub mod render;
pub mod runtime;
pub mod state;
pub mod store;

#[cfg(test)]
mod tests;
