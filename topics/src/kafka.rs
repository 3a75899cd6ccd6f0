//! Kafka connection settings shared by every binary (flags + environment variables, defaulting
//! to the local stack), the client configurations built from them, and the startup check that
//! names the setting when the cluster cannot be reached.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

/// The local stack's broker.
pub const DEFAULT_BOOTSTRAP_SERVERS: &str = "127.0.0.1:9092";

/// Where Kafka answers and how long to wait for it.
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, comma-separated `host:port` pairs.
    #[arg(
        id = "bootstrap_servers",
        long = "bootstrap-servers",
        env = "KAFKA_BOOTSTRAP_SERVERS",
        default_value = DEFAULT_BOOTSTRAP_SERVERS,
        value_parser = parse_bootstrap_servers,
    )]
    pub bootstrap_servers: String,

    /// How long a metadata or admin call may take before it counts as failed (e.g. `10s`).
    #[arg(
        id = "kafka_timeout",
        long = "kafka-timeout",
        env = "KAFKA_TIMEOUT",
        default_value = "10s",
        value_parser = humantime::parse_duration,
    )]
    pub timeout: Duration,
}

/// Kafka could not be used; every message names the setting to fix.
#[derive(Debug, thiserror::Error)]
pub enum KafkaConnectError {
    #[error(
        "Kafka client settings are invalid (--bootstrap-servers / KAFKA_BOOTSTRAP_SERVERS = {servers}): {source}"
    )]
    Settings {
        servers: String,
        source: rdkafka::error::KafkaError,
    },
    #[error(
        "Kafka is unreachable at {servers} (set --bootstrap-servers / KAFKA_BOOTSTRAP_SERVERS, or start the stack with `scripts/stack up`): {reason}"
    )]
    Unreachable { servers: String, reason: String },
}

/// What the startup check saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSummary {
    pub brokers: usize,
    pub topics: usize,
}

impl KafkaArgs {
    /// Settings every client shares.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.bootstrap_servers)
            .set("socket.timeout.ms", self.timeout.as_millis().to_string())
            // Fail a stuck connection attempt within the configured bound instead of retrying
            // forever in the background.
            .set(
                "socket.connection.setup.timeout.ms",
                self.timeout.as_millis().to_string(),
            );
        config
    }

    /// A producer configuration that never loses or duplicates an acknowledged record:
    /// idempotent, acks from every in-sync replica, ordered per partition.
    pub fn durable_producer_config(&self) -> ClientConfig {
        let mut config = self.client_config();
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("max.in.flight.requests.per.connection", "5")
            .set("compression.type", "lz4")
            .set("linger.ms", "5")
            // Java's partitioner: a key lands on the same partition whichever client wrote it.
            .set("partitioner", "murmur2_random");
        config
    }

    /// Fetches cluster metadata once, bounded by the configured timeout.
    pub async fn check(&self) -> Result<ClusterSummary, KafkaConnectError> {
        let servers = self.bootstrap_servers.clone();
        let consumer: BaseConsumer =
            self.client_config()
                .create()
                .map_err(|source| KafkaConnectError::Settings {
                    servers: servers.clone(),
                    source,
                })?;
        let timeout = self.timeout;
        // librdkafka's metadata call blocks its thread; keep it off the async workers.
        let metadata = tokio::task::spawn_blocking(move || consumer.fetch_metadata(None, timeout))
            .await
            .map_err(|e| KafkaConnectError::Unreachable {
                servers: servers.clone(),
                reason: e.to_string(),
            })?
            .map_err(|e| KafkaConnectError::Unreachable {
                servers: servers.clone(),
                reason: e.to_string(),
            })?;
        Ok(ClusterSummary {
            brokers: metadata.brokers().len(),
            topics: metadata.topics().len(),
        })
    }
}

/// Accepts a comma-separated list of `host:port` (see [`parse_host_port_list`]).
pub fn parse_bootstrap_servers(raw: &str) -> Result<String, String> {
    parse_host_port_list(raw)
}

/// Accepts a comma-separated list of `host:port` with a non-empty host and a port in 1..=65535,
/// and returns it normalised (no blanks). Shared by every address setting (Kafka, CQL).
pub fn parse_host_port_list(raw: &str) -> Result<String, String> {
    let servers: Vec<&str> = raw
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if servers.is_empty() {
        return Err("expected at least one host:port".to_owned());
    }
    for server in &servers {
        let (host, port) = server
            .rsplit_once(':')
            .ok_or_else(|| format!("`{server}` is not host:port"))?;
        if host.is_empty() {
            return Err(format!("`{server}` has no host"));
        }
        if !matches!(port.parse::<u16>(), Ok(p) if p > 0) {
            return Err(format!("`{server}` has no valid port (1-65535)"));
        }
    }
    Ok(servers.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_servers_are_normalised() {
        assert_eq!(
            parse_bootstrap_servers(" 127.0.0.1:9092 , broker-2:19092").unwrap(),
            "127.0.0.1:9092,broker-2:19092"
        );
    }

    #[test]
    fn bootstrap_servers_refuse_missing_or_bad_ports() {
        assert!(parse_bootstrap_servers("").is_err());
        assert!(
            parse_bootstrap_servers("localhost")
                .unwrap_err()
                .contains("host:port")
        );
        assert!(
            parse_bootstrap_servers(":9092")
                .unwrap_err()
                .contains("no host")
        );
        assert!(parse_bootstrap_servers("h:0").unwrap_err().contains("port"));
        assert!(
            parse_bootstrap_servers("h:99999")
                .unwrap_err()
                .contains("port")
        );
    }

    #[test]
    fn durable_producer_is_idempotent_with_acks_all() {
        let args = KafkaArgs {
            bootstrap_servers: "h:1".into(),
            timeout: Duration::from_secs(3),
        };
        let config = args.durable_producer_config();
        assert_eq!(config.get("enable.idempotence"), Some("true"));
        assert_eq!(config.get("acks"), Some("all"));
        assert_eq!(config.get("bootstrap.servers"), Some("h:1"));
    }
}
