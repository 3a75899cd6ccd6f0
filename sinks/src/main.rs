//! `boxoffice-notifier`: parses configuration, starts tracing, builds the clients and runs the
//! notification channels (in-app, email, webhooks). Everything else lives in
//! `boxoffice_sinks::notify`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use boxoffice_avro::Codec;
use boxoffice_runtime::startup::{ServiceArgs, serve_health, shutdown_signal};
use boxoffice_sinks::notify::{NotifierDeps, NotifierMetrics, NotifierSettings, NotifyStore, run};
use boxoffice_store::watermarks::WatermarkStore;
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
    service: ServiceArgs,
    #[command(flatten)]
    settings: NotifierSettings,
    /// Where `/metrics` (OpenMetrics text), `/healthz` and `/readyz` answer.
    #[arg(
        long = "metrics-addr",
        env = "NOTIFIER_METRICS_ADDR",
        default_value = "127.0.0.1:9466"
    )]
    metrics_addr: SocketAddr,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    cli.service.init_tracing();
    match start(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("boxoffice-notifier: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn start(cli: Cli) -> anyhow::Result<()> {
    let (session, schema) = cli.service.connect().await?;
    let metrics = Arc::new(NotifierMetrics::default());
    let (served, ready) = (Arc::clone(&metrics), Arc::clone(&metrics));
    serve_health(
        cli.metrics_addr,
        "--metrics-addr / NOTIFIER_METRICS_ADDR",
        move || served.render(),
        move || ready.readiness.check(),
    )
    .await?;
    let deps = NotifierDeps {
        codec: Arc::new(Codec::new(&cli.service.registry)?),
        watermarks: Arc::new(WatermarkStore::new(Arc::clone(&session), &schema.keyspace).await?),
        store: Arc::new(NotifyStore::new(session, &schema.keyspace).await?),
        kafka: cli.service.kafka,
        settings: cli.settings,
        metrics,
    };
    info!(channels = ?deps.settings.channels, smtp = %format!("{}:{}", deps.settings.smtp_host, deps.settings.smtp_port),
          "notifier starting");
    run(deps, shutdown_signal()).await?;
    Ok(())
}
