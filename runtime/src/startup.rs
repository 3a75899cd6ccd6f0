//! What every boxoffice binary does first and last: the flags every service shares
//! ([`ServiceArgs`]: Kafka, the schema registry, the CQL store and keyspace, the log format),
//! tracing on stderr, the startup checks of Kafka, the registry and the CQL store (each error
//! names the setting to fix), the CQL schema, the health endpoint, and the shutdown signal. The
//! binaries' `main.rs` stay thin by calling these.

use std::net::SocketAddr;
use std::sync::Arc;

use boxoffice_avro::registry::{RegistryArgs, RegistryError};
use boxoffice_topics::kafka::{KafkaArgs, KafkaConnectError};
use scylla::client::session::Session;
use tracing::info;

use boxoffice_store::schema::{SchemaArgs, SchemaError, SchemaSettings, ensure_schema};
use boxoffice_store::session::{ScyllaArgs, ScyllaConnectError};

use crate::secrets::DevMode;

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
    #[error("binding {setting} {addr}: {source}")]
    Bind {
        setting: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The flags every long-running service shares, defined once and flattened into each binary's
/// command line.
#[derive(Debug, Clone, clap::Args)]
pub struct ServiceArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub registry: RegistryArgs,
    #[command(flatten)]
    pub scylla: ScyllaArgs,
    #[command(flatten)]
    pub schema: SchemaArgs,
    #[command(flatten)]
    pub dev: DevMode,
    /// Log format: `text` or `json`.
    #[arg(long = "log-format", env = "BOXOFFICE_LOG_FORMAT", default_value = "text", global = true,
          value_parser = ["text", "json"])]
    pub log_format: String,
}

impl ServiceArgs {
    /// Starts tracing in the chosen format.
    pub fn init_tracing(&self) {
        init_tracing(&self.log_format);
    }

    /// [`connect_services`] with these flags: the CQL session, schema ensured.
    pub async fn connect(&self) -> Result<(Arc<Session>, SchemaSettings), StartupError> {
        let schema = self.schema.settings();
        let session = connect_services(&self.kafka, &self.registry, &self.scylla, &schema).await?;
        Ok((session, schema))
    }
}

/// Binds `addr` (the value of the flag named by `setting`) and serves `/metrics`, `/healthz`
/// and `/readyz` there in the background.
pub async fn serve_health<F, R>(
    addr: SocketAddr,
    setting: &'static str,
    render: F,
    ready: R,
) -> Result<(), StartupError>
where
    F: Fn() -> String + Clone + Send + Sync + 'static,
    R: Fn() -> Result<(), String> + Clone + Send + Sync + 'static,
{
    serve_router(addr, setting, crate::metrics::health_router(render, ready)).await
}

/// Binds `addr` (the value of the flag named by `setting`) and serves `router` there in the
/// background (a service with pages beside `/metrics`, `/healthz` and `/readyz`).
pub async fn serve_router(
    addr: SocketAddr,
    setting: &'static str,
    router: axum::Router,
) -> Result<(), StartupError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| StartupError::Bind {
            setting,
            addr,
            source,
        })?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::warn!(error = %e, "metrics server stopped");
        }
    });
    info!(%addr, "metrics at /metrics, health at /healthz and /readyz");
    Ok(())
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
