//! Topic names as every service uses them: the catalogue's names
//! (`boxoffice_avro::records::topic`, checked against `topics/topics.yaml` by a test below)
//! behind an optional prefix, and the `--topic-prefix` / `BOXOFFICE_TOPIC_PREFIX` setting,
//! defined and validated once and flattened into each binary's settings.

use std::fmt;

use boxoffice_avro::records::topic;

/// Prefix of every topic name: empty in production; tests and side-by-side deployments set one.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct TopicPrefix {
    /// Prefix of every topic name (empty in production; tests and side-by-side deployments).
    #[arg(
        id = "topic_prefix",
        long = "topic-prefix",
        env = "BOXOFFICE_TOPIC_PREFIX",
        default_value = "",
        value_parser = parse_prefix,
    )]
    prefix: String,
}

impl TopicPrefix {
    /// A checked prefix; the error says which character is not allowed.
    pub fn new(prefix: &str) -> Result<Self, String> {
        parse_prefix(prefix).map(|prefix| TopicPrefix { prefix })
    }

    pub fn as_str(&self) -> &str {
        &self.prefix
    }

    /// Every topic's name under this prefix.
    pub fn topics(&self) -> Topics {
        Topics::with_prefix(&self.prefix)
    }
}

impl fmt::Display for TopicPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.prefix)
    }
}

/// A prefix must itself be a legal start of a topic name: `[a-zA-Z0-9._-]`, not starting with
/// `_` (reserved for Kafka's internal topics).
pub fn parse_prefix(raw: &str) -> Result<String, String> {
    if raw.starts_with('_') {
        return Err("a prefix may not start with `_` (reserved for internal topics)".to_owned());
    }
    match raw
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        Some(bad) => Err(format!(
            "`{bad}` is not allowed in a topic name; use [a-zA-Z0-9._-]"
        )),
        None => Ok(raw.to_owned()),
    }
}

/// The name of every topic the services read or write, under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub commands: String,
    pub orders: String,
    pub payments: String,
    pub availability: String,
    pub notifications: String,
    pub dead_letters: String,
    pub progress: String,
}

impl Topics {
    /// Names under `prefix`, which the caller has validated (see [`TopicPrefix`]).
    pub fn with_prefix(prefix: &str) -> Self {
        Topics {
            commands: format!("{prefix}{}", topic::BOOKING_COMMANDS),
            orders: format!("{prefix}{}", topic::ORDERS_EVENTS),
            payments: format!("{prefix}{}", topic::PAYMENTS_REQUESTS),
            availability: format!("{prefix}{}", topic::AVAILABILITY),
            notifications: format!("{prefix}{}", topic::NOTIFICATIONS),
            dead_letters: format!("{prefix}{}", topic::DEAD_LETTERS),
            progress: format!("{prefix}{}", topic::BOOKING_PROGRESS),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::catalogue::{Catalogue, repo_catalogue};

    #[test]
    fn the_services_topic_names_are_the_catalogues() {
        let catalogue = Catalogue::load(&repo_catalogue(), "local")
            .expect("topics/topics.yaml and its local overlay are part of the crate");
        let declared: BTreeSet<String> = catalogue.topics.iter().map(|t| t.name.clone()).collect();
        let t = Topics::with_prefix("");
        let used: BTreeSet<String> = [
            t.commands,
            t.orders,
            t.payments,
            t.availability,
            t.notifications,
            t.dead_letters,
            t.progress,
        ]
        .into_iter()
        .collect();
        assert_eq!(
            used, declared,
            "topics.yaml and boxoffice_avro::records::topic differ"
        );
    }

    #[test]
    fn prefixes_are_checked() {
        assert_eq!(
            TopicPrefix::new("").map(|p| p.topics().commands).as_deref(),
            Ok("booking.commands")
        );
        assert_eq!(
            TopicPrefix::new("t-1.").map(|p| p.to_string()).as_deref(),
            Ok("t-1.")
        );
        assert!(TopicPrefix::new("_x").is_err());
        assert!(TopicPrefix::new("a b").is_err());
        assert!(TopicPrefix::new("a/b").is_err());
    }
}
