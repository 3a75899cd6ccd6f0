//! `boxoffice-ingest`: parses configuration, starts tracing, builds the clients (Kafka and
//! registry checks, CQL connect and schema), then serves the API (`serve`, the default) or
//! creates an admin (`create-admin`). Everything else lives in the library.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use boxoffice_avro::Codec;
use boxoffice_ingest::RetryPolicy;
use boxoffice_ingest::bus::KafkaBus;
use boxoffice_ingest::config::{
    IngestSettings, ProviderWebhookSettings, read_admin_password, read_secrets,
};
use boxoffice_ingest::live::Live;
use boxoffice_ingest::metrics::IngestMetrics;
use boxoffice_ingest::stores::cql::CqlStores;
use boxoffice_ingest::{Deps, ExistingAccount, Follow, ensure_admin};
use boxoffice_runtime::startup::{ServiceArgs, serve_health, shutdown_signal};
use clap::{Parser, Subcommand};
use tracing::info;

// mimalloc, not glibc's malloc: about 12% less CPU per accepted booking end to end, for about
// 20 MiB more resident (BENCHMARKS.md, "Ingest's allocator").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "boxoffice-ingest", version, about = "boxoffice's HTTP API")]
struct Cli {
    #[command(flatten)]
    settings: IngestSettings,
    #[command(flatten)]
    provider_webhook: ProviderWebhookSettings,
    #[command(flatten)]
    service: ServiceArgs,
    /// Email of an admin created at startup (an existing account with it must be an admin
    /// already: startup never promotes one); the password is read from
    /// `INGEST_ADMIN_PASSWORD` or `INGEST_ADMIN_PASSWORD_FILE` (never a flag).
    #[arg(long = "admin-email", env = "INGEST_ADMIN_EMAIL")]
    admin_email: Option<String>,
    /// Where `/metrics` (OpenMetrics text), `/healthz` and `/readyz` (the live streams follow
    /// Kafka) answer; the API's own `/readyz` probes Kafka and the CQL store.
    #[arg(
        long = "metrics-addr",
        env = "INGEST_METRICS_ADDR",
        default_value = "127.0.0.1:9467"
    )]
    metrics_addr: std::net::SocketAddr,
    /// How long the live streams retry reaching their topics before the failure is counted
    /// (`ingest_live_retries_exhausted_total`) and `/readyz` on `--metrics-addr` says so; then
    /// they start over (e.g. `60s`).
    #[arg(long = "live-retry-budget", env = "INGEST_LIVE_RETRY_BUDGET", default_value = "60s",
          value_parser = parse_positive_duration)]
    live_retry_budget: std::time::Duration,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the HTTP API (the default).
    Serve,
    /// Create an admin account (or give an existing account the admin role), then exit.
    CreateAdmin {
        /// The admin's email address.
        #[arg(long)]
        email: String,
        /// The admin's user name (default: from the email address). The password is read from
        /// `INGEST_ADMIN_PASSWORD` or `INGEST_ADMIN_PASSWORD_FILE`.
        #[arg(long = "user-name")]
        user_name: Option<String>,
    },
}

/// A duration of at least a millisecond (a zero retry budget would give up before trying).
fn parse_positive_duration(raw: &str) -> Result<std::time::Duration, String> {
    let duration = humantime::parse_duration(raw).map_err(|e| e.to_string())?;
    if duration < std::time::Duration::from_millis(1) {
        return Err(format!("{raw:?} is shorter than 1ms"));
    }
    Ok(duration)
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    cli.service.init_tracing();
    match start(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("boxoffice-ingest: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn start(mut cli: Cli) -> anyhow::Result<()> {
    // Secrets first: a deployment missing one stops before connecting to anything.
    let dev = cli.service.dev.dev;
    let env = |key: &str| std::env::var(key).ok();
    read_secrets(&mut cli.settings, &mut cli.provider_webhook, dev, env)?;
    let admin_password = read_admin_password(dev, env)?;
    if dev {
        tracing::warn!("development mode (--dev / BOXOFFICE_DEV): development secrets allowed");
    } else if cli.settings.account_link_base.host_str() == Some("localhost") {
        // Links in verification and reset emails would lead nowhere for real fans.
        tracing::warn!(
            base = %cli.settings.account_link_base,
            "INGEST_ACCOUNT_LINK_BASE points at localhost: set it to the frontend's public URL"
        );
    }
    let (session, schema) = cli.service.connect().await?;
    // Adds ingest's columns to an older keyspace, then prepares the statements.
    let stores = CqlStores::new(session, &schema.keyspace)
        .await
        .context("preparing ingest's CQL statements")?
        .into_stores();
    let codec = Arc::new(Codec::new(&cli.service.registry)?);
    let topics = cli.settings.topic_prefix.topics();
    let metrics = Arc::new(IngestMetrics::default());
    let bus = Arc::new(
        KafkaBus::new(
            &cli.service.kafka,
            Arc::clone(&codec),
            topics,
            cli.settings.produce_timeout,
        )
        .context(
            "creating the Kafka producer (check --bootstrap-servers / KAFKA_BOOTSTRAP_SERVERS)",
        )?
        .with_metrics(Arc::clone(&metrics)),
    );

    if let Some(Command::CreateAdmin { email, user_name }) = &cli.command {
        let password = admin_password
            .as_deref()
            .context("create-admin reads the password from INGEST_ADMIN_PASSWORD (or _FILE)")?;
        let state = boxoffice_ingest::state(&cli.settings, stores, bus, Arc::new(Live::new()));
        let promote = ExistingAccount::Promote;
        let id = ensure_admin(&state, email, password, user_name.as_deref(), promote).await?;
        println!("admin {email} is user {id}");
        return Ok(());
    }

    let listener = tokio::net::TcpListener::bind(cli.settings.listen)
        .await
        .with_context(|| format!("binding --listen / INGEST_LISTEN {}", cli.settings.listen))?;
    match (&cli.admin_email, &admin_password) {
        (Some(email), Some(password)) => {
            let state = boxoffice_ingest::state(
                &cli.settings,
                stores.clone(),
                bus.clone(),
                Arc::new(Live::new()),
            );
            let existing = ExistingAccount::RequireAdmin;
            let id = ensure_admin(&state, email, password, None, existing).await?;
            info!(%email, user_id = %id, "admin ensured (INGEST_ADMIN_EMAIL)");
        }
        (Some(_), None) | (None, Some(_)) => {
            anyhow::bail!("set both INGEST_ADMIN_EMAIL and INGEST_ADMIN_PASSWORD (or neither)");
        }
        (None, None) => {}
    }
    if cli.provider_webhook.uses_dev_secret() {
        tracing::warn!(
            "POST /v1/payments/webhook uses the local-development secret (development mode)"
        );
    }
    let (served, ready) = (Arc::clone(&metrics), Arc::clone(&metrics));
    serve_health(
        cli.metrics_addr,
        "--metrics-addr / INGEST_METRICS_ADDR",
        move || served.render(),
        move || ready.readiness.check(),
    )
    .await?;
    let deps = Deps {
        settings: cli.settings,
        stores,
        bus,
        follow: Some(Follow {
            kafka: cli.service.kafka,
            codec,
            retry: RetryPolicy::with_budget(cli.live_retry_budget),
        }),
        metrics,
    };
    boxoffice_ingest::run_with(deps, cli.provider_webhook, listener, shutdown_signal()).await?;
    info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn a_zero_live_retry_budget_is_refused_naming_the_flag() {
        let err = Cli::try_parse_from(["boxoffice-ingest", "--live-retry-budget", "0s"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--live-retry-budget"), "{err}");
    }

    #[test]
    fn secrets_are_not_flags() {
        for flag in [
            "--jwt-secret",
            "--payment-provider-webhook-secret",
            "--admin-password",
        ] {
            let err = Cli::try_parse_from(["boxoffice-ingest", flag, "x"]).unwrap_err();
            assert_eq!(
                err.kind(),
                clap::error::ErrorKind::UnknownArgument,
                "{flag}"
            );
        }
    }

    #[test]
    fn the_provider_webhook_tolerance_is_checked() {
        let cli = Cli::try_parse_from([
            "boxoffice-ingest",
            "--payment-provider-webhook-tolerance",
            "2m",
        ])
        .unwrap();
        assert_eq!(
            cli.provider_webhook.tolerance,
            std::time::Duration::from_secs(120)
        );
        let err = Cli::try_parse_from([
            "boxoffice-ingest",
            "--payment-provider-webhook-tolerance",
            "0s",
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("PAYMENT_PROVIDER_WEBHOOK_TOLERANCE"), "{err}");
    }
}
