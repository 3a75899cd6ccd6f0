//! boxoffice record contracts.
//!
//! - `schemas`: the `.avsc` files in `avro/schemas/` (the source of truth), compiled in.
//! - `records`: the Rust types that mirror them, the `Record` trait and the per-topic enums.
//! - `clock`: the wall clock records' timestamps are read from (ms since the Unix epoch).
//! - `ids`: deterministic (UUID v5) ids, so replays produce the same ids and consumers dedupe.
//! - `codec`: the Confluent wire format through schema_registry_converter against a registry.
//! - `compat`: a pure BACKWARD-compatibility check that names the field that breaks.
//! - `registry`: where the schema registry is (flag + environment variable).
//!
//! See avro/README.md for the records table, the subject naming strategy and evolution rules.

pub mod clock;
pub mod codec;
pub mod compat;
pub mod ids;
pub mod records;
pub mod registry;
pub mod schemas;

pub use codec::{Codec, CodecError, DecodeError, Decoded};
pub use records::{BookingCommand, OrderEvent, PaymentRequest, Record, RecordGroup};
