//! boxoffice topics: how every binary reaches Kafka (`kafka`), the topic catalogue
//! (`catalogue`, the file `topics/topics.yaml` and its per-environment overlays), and the
//! `topics` management CLI built on them:
//!
//! - `plan` diffs the catalogue against an observed cluster (pure, no I/O);
//! - `cluster` observes a cluster and carries out changes, every call bounded in time;
//! - `render` turns results into tables and JSON;
//! - `schemas` checks and registers the record schemas of every topic;
//! - `lag` reports consumer lag;
//! - `docs` generates the README's Topics table;
//! - `partitioner` is Kafka's murmur2 key partitioner, shared by producers and processors;
//! - `reader` reads one partition to its last stable offset, outside any group (recovery, audits);
//! - `names` is every topic's name as the services use it, and the shared `--topic-prefix`;
//! - `cli` parses arguments and runs the commands, returning the exit code.

pub mod catalogue;
pub mod cli;
pub mod cluster;
pub mod docs;
pub mod kafka;
pub mod lag;
pub mod names;
pub mod partitioner;
pub mod plan;
pub mod reader;
pub mod render;
pub mod schemas;

pub use cli::{Exit, run};
