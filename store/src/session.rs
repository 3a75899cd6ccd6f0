//! CQL store settings shared by every binary (flags + environment variables, defaulting to the
//! local stack), the session builder whose errors name the setting to fix, which CQL
//! failures are transient (the stores retry those), and how many this process has seen.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use boxoffice_topics::kafka::parse_host_port_list;
pub use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::errors::{
    DbError, ExecutionError, NextPageError, PrepareError, RequestAttemptError, RequestError,
};

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

// Transient failures: what the stores retry (with backoff) instead of reporting as bad data.

/// Protocol v5 error code `CAS_WRITE_UNKNOWN`: a lightweight transaction may or may not have
/// been applied.
pub(crate) const CAS_WRITE_UNKNOWN: i32 = 0x1700;

pub(crate) fn db_is_transient(e: &DbError) -> bool {
    match e {
        DbError::Unavailable { .. }
        | DbError::Overloaded
        | DbError::IsBootstrapping
        | DbError::ReadTimeout { .. }
        | DbError::WriteTimeout { .. }
        | DbError::ReadFailure { .. }
        | DbError::WriteFailure { .. }
        | DbError::RateLimitReached { .. }
        | DbError::TruncateError => true,
        DbError::Other(code) => *code == CAS_WRITE_UNKNOWN,
        _ => false,
    }
}

pub(crate) fn attempt_is_transient(e: &RequestAttemptError) -> bool {
    match e {
        RequestAttemptError::UnableToAllocStreamId
        | RequestAttemptError::BrokenConnectionError(_) => true,
        RequestAttemptError::DbError(db, _) => db_is_transient(db),
        _ => false,
    }
}

/// Transient store failures this process has seen (every failure classified below as one that
/// may mean the store went away). A store that crashed may have lost
/// writes it acknowledged; the consumers that resume from a store watermark compare this count
/// across their watermark writes (`watermarks::Written`) and read a partition again when it
/// moved.
static TRANSIENT_FAILURES: AtomicU64 = AtomicU64::new(0);

/// How many transient store failures this process has seen so far.
pub fn transient_failures() -> u64 {
    TRANSIENT_FAILURES.load(Ordering::SeqCst)
}

/// Counts the failure when `transient`.
fn counted(transient: bool) -> bool {
    if transient {
        TRANSIENT_FAILURES.fetch_add(1, Ordering::SeqCst);
    }
    transient
}

/// True when a failed CQL request may succeed if retried (the store is unavailable, overloaded
/// or timed out, or a lightweight transaction's outcome is unknown). Counted when true.
pub(crate) fn execution_is_transient(e: &ExecutionError) -> bool {
    counted(execution_kind(e))
}

/// [`execution_is_transient`] for preparing a statement. Counted when true.
pub(crate) fn prepare_is_transient(e: &PrepareError) -> bool {
    counted(prepare_kind(e))
}

/// [`execution_is_transient`] for fetching a page. Counted when true.
pub(crate) fn next_page_is_transient(e: &NextPageError) -> bool {
    counted(match e {
        NextPageError::RequestFailure(r) => match r {
            RequestError::ConnectionPoolError(_) | RequestError::RequestTimeout(_) => true,
            RequestError::LastAttemptError(a) => attempt_is_transient(a),
            _ => false,
        },
        _ => false,
    })
}

fn execution_kind(e: &ExecutionError) -> bool {
    match e {
        ExecutionError::ConnectionPoolError(_)
        | ExecutionError::RequestTimeout(_)
        | ExecutionError::SchemaAgreementError(_)
        | ExecutionError::MetadataError(_) => true,
        ExecutionError::LastAttemptError(a) => attempt_is_transient(a),
        ExecutionError::PrepareError(p) => prepare_kind(p),
        _ => false,
    }
}

fn prepare_kind(e: &PrepareError) -> bool {
    match e {
        PrepareError::ConnectionPoolError(_) => true,
        PrepareError::AllAttemptsFailed { first_attempt } => attempt_is_transient(first_attempt),
        _ => false,
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
