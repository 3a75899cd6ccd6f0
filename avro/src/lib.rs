//! boxoffice record contracts: where the schema registry is (`registry`), and, as the contracts
//! land, the `.avsc` schemas, their Rust types and the Confluent wire-format codec.

pub mod registry;
