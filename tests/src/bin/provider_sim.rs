//! `provider_sim`: the "boxoffice test provider" as a standalone process, for local development
//! (`scripts/run`-style setups) and manual testing. The contract (API, tokens, webhooks) is in
//! `boxoffice_tests::provider_sim`; this binary only parses settings and runs it until SIGINT
//! or SIGTERM, then prints its stats.
//!
//! ```sh
//! cargo run -p boxoffice-tests --bin provider_sim
//! boxoffice-processor payments --gateway provider      # charges through it
//! curl -s localhost:8090/_sim/stats                    # what it counted
//! ```

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use boxoffice_tests::provider_sim::{self, SimSettings};
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "provider_sim",
    about = "The boxoffice test payment provider: charges, refunds and signed webhooks, in memory"
)]
struct Cli {
    /// Address the provider API listens on.
    #[arg(long = "listen", env = "PROVIDER_SIM_LISTEN", default_value = provider_sim::DEFAULT_LISTEN)]
    listen: SocketAddr,

    /// API key callers must send (`Authorization: Bearer <key>`).
    #[arg(long = "api-key", env = "PAYMENT_PROVIDER_API_KEY", hide_env_values = true,
          default_value = provider_sim::DEFAULT_API_KEY, value_parser = non_empty("--api-key"))]
    api_key: String,

    /// Where events are delivered (ingest's `POST /v1/payments/webhook`); `none` sends none.
    #[arg(long = "webhook-url", env = "PROVIDER_SIM_WEBHOOK_URL",
          default_value = provider_sim::DEFAULT_WEBHOOK_URL, value_parser = parse_webhook_url)]
    webhook_url: WebhookUrl,

    /// Secret the webhook signatures are made with (shared with ingest).
    #[arg(long = "webhook-secret", env = "PAYMENT_PROVIDER_WEBHOOK_SECRET", hide_env_values = true,
          default_value = provider_sim::DEFAULT_WEBHOOK_SECRET,
          value_parser = non_empty("--webhook-secret"))]
    webhook_secret: String,

    /// How long a pending charge takes to complete (e.g. `200ms`).
    #[arg(long = "completion-delay", env = "PROVIDER_SIM_COMPLETION_DELAY", default_value = "200ms",
          value_parser = humantime::parse_duration)]
    completion_delay: Duration,

    /// Deliver every webhook event twice (exercises the receiver's deduplication).
    #[arg(long = "duplicate-webhooks", env = "PROVIDER_SIM_DUPLICATE_WEBHOOKS")]
    duplicate_webhooks: bool,

    /// Attempts per webhook delivery before it is given up.
    #[arg(long = "webhook-max-attempts", env = "PROVIDER_SIM_WEBHOOK_MAX_ATTEMPTS", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    webhook_max_attempts: u32,

    /// Delay before the first webhook retry; doubles with every attempt.
    #[arg(long = "webhook-backoff", env = "PROVIDER_SIM_WEBHOOK_BACKOFF", default_value = "100ms",
          value_parser = humantime::parse_duration)]
    webhook_backoff: Duration,
}

/// `None`: no webhooks.
#[derive(Clone)]
struct WebhookUrl(Option<String>);

fn parse_webhook_url(value: &str) -> Result<WebhookUrl, String> {
    if value == "none" {
        return Ok(WebhookUrl(None));
    }
    let url = reqwest::Url::parse(value).map_err(|e| format!("not a URL: {e}"))?;
    if url.scheme() != "http" {
        // The simulator is a local-development tool: it talks to a local ingest only.
        return Err("must be an http:// URL (a local ingest) or `none`".to_owned());
    }
    Ok(WebhookUrl(Some(value.to_owned())))
}

fn non_empty(flag: &'static str) -> impl Fn(&str) -> Result<String, String> + Clone {
    move |value: &str| {
        if value.is_empty() {
            Err(format!("{flag} must not be empty"))
        } else {
            Ok(value.to_owned())
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let settings = SimSettings {
        listen: cli.listen,
        api_key: cli.api_key,
        webhook_url: cli.webhook_url.0,
        webhook_secret: cli.webhook_secret,
        completion_delay: cli.completion_delay,
        duplicate_webhooks: cli.duplicate_webhooks,
        webhook_max_attempts: cli.webhook_max_attempts,
        webhook_backoff: cli.webhook_backoff,
    };
    let sim = match provider_sim::start(settings).await {
        Ok(sim) => sim,
        Err(e) => {
            eprintln!("provider_sim: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "provider simulator on {} (stats: {}/_sim/stats); Ctrl-C or SIGTERM stops it",
        sim.url(),
        sim.url()
    );
    boxoffice_runtime::startup::shutdown_signal().await;
    println!("final stats: {:?}", sim.stats());
    sim.shutdown().await;
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed_and_refuses_bad_values_naming_the_flag() {
        Cli::command().debug_assert();
        for (flag, value) in [
            ("--listen", "nowhere"),
            ("--webhook-url", "https://x"),
            ("--completion-delay", "soon"),
            ("--api-key", ""),
        ] {
            let err = Cli::try_parse_from(["provider_sim", flag, value])
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(flag), "{flag}: {err}");
        }
    }
}
