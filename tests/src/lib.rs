//! The integration harness every end-to-end test uses: it finds the real Kafka, CQL store and
//! schema registry (`services`), hands out names no other test uses (`names`), and waits for
//! conditions with a bound, never a bare sleep (`wait`).

pub mod names;
pub mod services;
pub mod wait;

pub use services::{Services, services};
