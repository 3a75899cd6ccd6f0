//! The payment processor's settings (flags and environment variables) and the gateway they
//! build.

use std::path::PathBuf;
use std::time::Duration;

use boxoffice_runtime::retry::RetryPolicy;
use boxoffice_topics::names::{TopicPrefix, Topics};

use super::gateway::{Gateway, LedgerError, SandboxGateway, SandboxSettings};
use super::provider::{ProviderError, ProviderGateway, ProviderSettings};

/// How the payment processor batches, identifies itself and reaches its provider. The HTTP
/// provider's own settings are [`ProviderSettings`] (`--provider-*`).
#[derive(Debug, Clone, clap::Args)]
pub struct PaymentSettings {
    /// Consumer group of the payment processors; every instance of one deployment shares it.
    #[arg(
        long = "group-id",
        env = "PAYMENTS_GROUP_ID",
        default_value = "payment-processor"
    )]
    pub group_id: String,

    #[command(flatten)]
    pub topic_prefix: TopicPrefix,

    /// Most records taken in one batch.
    #[arg(long = "max-batch-records", env = "PAYMENTS_MAX_BATCH_RECORDS", default_value_t = 500,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_batch_records: u32,

    /// Longest a batch waits to fill up once its first record arrived (e.g. `20ms`).
    #[arg(long = "max-batch-wait", env = "PAYMENTS_MAX_BATCH_WAIT", default_value = "20ms",
          value_parser = humantime::parse_duration)]
    pub max_batch_wait: Duration,

    /// The payment provider: `sandbox` (in process, test mode, behaviour chosen by the token)
    /// or `provider` (the HTTP provider API at `--provider-url`).
    #[arg(long = "gateway", env = "PAYMENTS_GATEWAY", default_value = "sandbox",
          value_parser = ["sandbox", "provider"])]
    pub gateway: String,

    /// How long the sandbox's `tok_slow` takes.
    #[arg(long = "sandbox-slow", env = "PAYMENTS_SANDBOX_SLOW", default_value = "2s",
          value_parser = humantime::parse_duration)]
    pub sandbox_slow: Duration,

    /// How long a sandbox `tok_pending` charge stays pending.
    #[arg(long = "sandbox-pending", env = "PAYMENTS_SANDBOX_PENDING", default_value = "1s",
          value_parser = humantime::parse_duration)]
    pub sandbox_pending: Duration,

    /// File the sandbox keeps its ledger in (JSON lines), so it outlives a restart like a real
    /// provider; unset: in memory.
    #[arg(long = "sandbox-ledger", env = "PAYMENTS_SANDBOX_LEDGER")]
    pub sandbox_ledger: Option<PathBuf>,

    /// How long a store call, a produce or a registry call is retried before its partition is
    /// given up: paused, `/readyz` 503, `payments_retries_exhausted_total` counted, and taken
    /// again through the path of a new assignment once the fault clears (e.g. `30s`).
    #[arg(long = "retry-budget", env = "PAYMENTS_RETRY_BUDGET", default_value = "30s",
          value_parser = humantime::parse_duration)]
    pub retry_budget: Duration,

    /// The HTTP provider (`--provider-*`), used with `--gateway provider`.
    #[command(flatten)]
    pub provider: ProviderSettings,
}

/// The configured gateway could not be built.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Provider(#[from] ProviderError),
}

impl PaymentSettings {
    pub fn topics(&self) -> Topics {
        self.topic_prefix.topics()
    }

    /// How store calls, produces and registry calls are retried (see `--retry-budget`).
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy::with_budget(self.retry_budget)
    }

    /// The configured provider: the in-process sandbox, or the HTTP provider (`--provider-*`).
    pub fn gateway(&self) -> Result<Gateway, GatewayError> {
        if self.gateway == "provider" {
            return Ok(Gateway::Provider(ProviderGateway::new(&self.provider)?));
        }
        Ok(Gateway::Sandbox(SandboxGateway::new(SandboxSettings {
            slow: self.sandbox_slow,
            pending: self.sandbox_pending,
            ledger: self.sandbox_ledger.clone(),
        })?))
    }
}
