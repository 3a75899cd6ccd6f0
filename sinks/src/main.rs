//! `boxoffice-notifier`: parses configuration, starts tracing, builds the clients and runs the
//! notification channels (in-app, email, webhooks). Everything else lives in
//! `boxoffice_sinks::notify`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use boxoffice_avro::Codec;
use boxoffice_avro::registry::RegistryArgs;
use boxoffice_runtime::startup::{connect_services, init_tracing, shutdown_signal};
use boxoffice_sinks::notify::{NotifierDeps, NotifierMetrics, NotifierSettings, NotifyStore, run};
use boxoffice_store::schema::SchemaArgs;
use boxoffice_store::session::ScyllaArgs;
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
    /// Where `/metrics` (OpenMetrics text), `/healthz` and `/readyz` answer.
    #[arg(
        long = "metrics-addr",
        env = "NOTIFIER_METRICS_ADDR",
        default_value = "127.0.0.1:9466"
    )]
    metrics_addr: SocketAddr,
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

async fn start(cli: Cli) -> anyhow::Result<()> {
    let schema = cli.schema.settings();
    let session = connect_services(&cli.kafka, &cli.registry, &cli.scylla, &schema).await?;
    let metrics = Arc::new(NotifierMetrics::default());
    let listener = tokio::net::TcpListener::bind(cli.metrics_addr)
        .await
        .with_context(|| {
            format!(
                "binding --metrics-addr / NOTIFIER_METRICS_ADDR {}",
                cli.metrics_addr
            )
        })?;
    let (served, ready) = (metrics.clone(), metrics.clone());
    tokio::spawn(boxoffice_runtime::metrics::serve_with_readiness(
        listener,
        move || served.render(),
        move || ready.readiness.check(),
    ));
    info!(metrics_addr = %cli.metrics_addr, "metrics at /metrics, readiness at /readyz");
    let deps = NotifierDeps {
        kafka: cli.kafka,
        codec: Arc::new(Codec::new(&cli.registry)?),
        watermarks: Arc::new(
            boxoffice_store::watermarks::WatermarkStore::new(
                Arc::clone(&session),
                &schema.keyspace,
            )
            .await?,
        ),
        store: Arc::new(NotifyStore::new(session, &schema.keyspace).await?),
        settings: cli.settings,
        metrics,
    };
    info!(channels = ?deps.settings.channels, smtp = %format!("{}:{}", deps.settings.smtp_host, deps.settings.smtp_port),
          "notifier starting");
    run(deps, shutdown_signal()).await?;
    Ok(())
}
