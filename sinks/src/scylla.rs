//! CQL store settings shared by every binary (flags + environment variables, defaulting to the
//! local stack) and the session builder whose errors name the setting to fix.

use std::time::Duration;

use boxoffice_topics::kafka::parse_host_port_list;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;

/// The local stack's CQL port (Cassandra 5 here, ScyllaDB for users with Docker).
pub const DEFAULT_SCYLLA_URI: &str = "127.0.0.1:9042";

/// Where the CQL store answers.
#[derive(Debug, Clone, clap::Args)]
pub struct ScyllaArgs {
    /// CQL contact points, comma-separated `host:port` pairs.
    #[arg(
        id = "scylla_uri",
        long = "scylla-uri",
        env = "SCYLLA_URI",
        default_value = DEFAULT_SCYLLA_URI,
        value_parser = parse_host_port_list,
    )]
    pub uri: String,

    /// How long connecting may take before it counts as failed (e.g. `10s`).
    #[arg(
        id = "scylla_timeout",
        long = "scylla-timeout",
        env = "SCYLLA_TIMEOUT",
        default_value = "10s",
        value_parser = humantime::parse_duration,
    )]
    pub timeout: Duration,
}

/// The CQL store could not be used; the message names the setting to fix.
#[derive(Debug, thiserror::Error)]
#[error(
    "CQL store is unreachable at {uri} (set --scylla-uri / SCYLLA_URI, or start the stack with `scripts/stack up`): {reason}"
)]
pub struct ScyllaConnectError {
    pub uri: String,
    pub reason: String,
}

impl ScyllaArgs {
    pub fn contact_points(&self) -> Vec<String> {
        self.uri.split(',').map(str::to_owned).collect()
    }

    /// Opens a session to the cluster, bounded by the configured timeout.
    pub async fn connect(&self) -> Result<Session, ScyllaConnectError> {
        let failed = |reason: String| ScyllaConnectError {
            uri: self.uri.clone(),
            reason,
        };
        let mut builder = SessionBuilder::new();
        builder = builder
            .known_nodes(self.contact_points())
            .connection_timeout(self.timeout);
        match tokio::time::timeout(self.timeout, builder.build()).await {
            Ok(Ok(session)) => Ok(session),
            Ok(Err(e)) => Err(failed(e.to_string())),
            Err(_) => Err(failed(format!(
                "no answer within {}",
                humantime::format_duration(self.timeout)
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contact_points_split_on_commas() {
        let args = ScyllaArgs {
            uri: "a:9042,b:9043".into(),
            timeout: Duration::from_secs(1),
        };
        assert_eq!(args.contact_points(), vec!["a:9042", "b:9043"]);
    }
}
