//! boxoffice topics: how every binary reaches Kafka (`kafka`), and, as the contracts land, the
//! topic catalogue and the topic management CLI.

pub mod kafka;
