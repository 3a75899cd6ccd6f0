//! `boxoffice-notifier`: parses configuration, starts tracing, builds the clients and runs the
//! notification channels (in-app, email, webhooks). Everything else lives in
//! `boxoffice_sinks::notify`.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use boxoffice_avro::Codec;
use boxoffice_avro::registry::RegistryArgs;
use boxoffice_sinks::notify::{NotifierDeps, NotifierMetrics, NotifierSettings, NotifyStore, run};
use boxoffice_sinks::schema::{SchemaArgs, ensure_schema};
use boxoffice_sinks::scylla::ScyllaArgs;
use boxoffice_topics::kafka::KafkaArgs;
use clap::Parser;
use tracing::info;

#[derive(Debug, Parser)]
#[command(
    name = "boxoffice-notifier",
    version,
    about = "boxoffice's notifier: in-app list, email over SMTP and signed webhooks"
)]
struct Cli {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    registry: RegistryArgs,
    #[command(flatten)]
    scylla: ScyllaArgs,
    #[command(flatten)]
    schema: SchemaArgs,
    #[command(flatten)]
    settings: NotifierSettings,
    /// Log format: `text` or `json`.
    #[arg(long = "log-format", env = "BOXOFFICE_LOG_FORMAT", default_value = "text",
          value_parser = ["text", "json"])]
    log_format: String,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.log_format);
    match start(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("boxoffice-notifier: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: &str) {
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

async fn start(cli: Cli) -> anyhow::Result<()> {
    let summary = cli.kafka.check().await?;
    info!(brokers = summary.brokers, servers = %cli.kafka.bootstrap_servers, "Kafka reachable");
    cli.registry.check().await?;
    info!(url = %cli.registry.url, "schema registry reachable");
    let session = Arc::new(cli.scylla.connect().await?);
    let schema = cli.schema.settings();
    ensure_schema(&session, &schema)
        .await
        .context("creating the CQL schema")?;
    info!(uri = %cli.scylla.uri, keyspace = %schema.keyspace.as_str(), "CQL store ready");
    let deps = NotifierDeps {
        kafka: cli.kafka,
        codec: Arc::new(Codec::new(&cli.registry)?),
        store: Arc::new(NotifyStore::new(session, &schema.keyspace).await?),
        settings: cli.settings,
        metrics: Arc::new(NotifierMetrics::default()),
    };
    info!(channels = ?deps.settings.channels, smtp = %format!("{}:{}", deps.settings.smtp_host, deps.settings.smtp_port),
          "notifier starting");
    run(deps, shutdown_signal()).await?;
    Ok(())
}

/// SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
