//! What every boxoffice binary does first and last: tracing on stderr, the startup checks of
//! Kafka, the schema registry and the CQL store (each error names the setting to fix), the CQL
//! schema, and the shutdown signal. The binaries' `main.rs` stay thin by calling these.

use std::sync::Arc;

use boxoffice_avro::registry::{RegistryArgs, RegistryError};
use boxoffice_topics::kafka::{KafkaArgs, KafkaConnectError};
use scylla::client::session::Session;
use tracing::info;

use boxoffice_store::schema::{SchemaError, SchemaSettings, ensure_schema};
use boxoffice_store::session::{ScyllaArgs, ScyllaConnectError};

/// A service the binary needs did not answer, or the schema could not be created.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Kafka(#[from] KafkaConnectError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Scylla(#[from] ScyllaConnectError),
    #[error("creating the CQL schema: {0}")]
    Schema(#[from] SchemaError),
}

/// Logs to stderr, `text` (coloured on a terminal) or `json`; `RUST_LOG` overrides the filter.
pub fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rdkafka=warn,scylla=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Checks Kafka and the registry, connects to the CQL store and ensures the schema; returns
/// the session.
pub async fn connect_services(
    kafka: &KafkaArgs,
    registry: &RegistryArgs,
    scylla: &ScyllaArgs,
    schema: &SchemaSettings,
) -> Result<Arc<Session>, StartupError> {
    let summary = kafka.check().await?;
    info!(brokers = summary.brokers, servers = %kafka.bootstrap_servers, "Kafka reachable");
    registry.check().await?;
    info!(url = %registry.url, "schema registry reachable");
    let session = Arc::new(scylla.connect().await?);
    ensure_schema(&session, schema).await?;
    info!(uri = %scylla.uri, keyspace = %schema.keyspace.as_str(), "CQL store ready");
    Ok(session)
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    info!("shutdown requested");
}
