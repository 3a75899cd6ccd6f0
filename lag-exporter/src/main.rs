//! `lag-exporter`: parses configuration, starts tracing, serves `/metrics`, `/healthz` and
//! `/readyz`, and runs the collections (`boxoffice_lag_exporter::run`).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use boxoffice_lag_exporter::{ExporterSettings, Published, run};
use boxoffice_runtime::metrics::health_router;
use boxoffice_runtime::startup::{init_tracing, serve_router, shutdown_signal};
use boxoffice_topics::kafka::KafkaArgs;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "lag-exporter",
    version,
    about = "boxoffice's consumer-lag exporter: lag against the last stable offset, time lag, status"
)]
struct Cli {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    settings: ExporterSettings,
    /// Where the lag page (`/`, live), `/api/lag`, `/metrics` (OpenMetrics text), `/healthz`
    /// and `/readyz` answer.
    #[arg(
        long = "listen",
        env = "LAG_EXPORTER_LISTEN",
        default_value = "127.0.0.1:9490"
    )]
    listen: SocketAddr,
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
            eprintln!("lag-exporter: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn start(cli: Cli) -> anyhow::Result<()> {
    let published = Arc::new(Published::default());
    let (text, ready) = (Arc::clone(&published), Arc::clone(&published));
    let health = health_router(move || text.text(), move || ready.ready());
    let router = health.merge(published.page_router());
    serve_router(cli.listen, "--listen / LAG_EXPORTER_LISTEN", router).await?;
    cli.kafka.check().await?;
    tracing::info!(interval = ?cli.settings.interval, "lag exporter collecting");
    run(cli.kafka, cli.settings, published, shutdown_signal()).await?;
    Ok(())
}
