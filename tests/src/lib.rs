//! The integration harness every end-to-end test uses: it finds the real Kafka, CQL store and
//! schema registry (`services`), hands out names no other test uses (`names`), waits for
//! conditions with a bound, never a bare sleep (`wait`), and sets up a private pipeline of
//! topics, keyspace and processors per test (`pipeline`). Also the local payment provider
//! (`provider_sim`), a TCP relay a test can cut (`tcp_cut`), verified accounts over HTTP (`accounts`), the chaos suite (`chaos`: a private stack, every service as a process,
//! faults during a flash sale), the outside world's receivers (`receivers`: SMTP, webhooks) and what the
//! load generators share (`load`).

pub mod accounts;
pub mod chaos;
pub mod load;
pub mod names;
pub mod pipeline;
pub mod provider_sim;
pub mod receivers;
pub mod services;
pub mod tcp_cut;
pub mod wait;

pub use services::{Services, services};
