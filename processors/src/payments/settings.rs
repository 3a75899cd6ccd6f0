//! The payment processor's settings (flags and environment variables) and the gateway they
//! build.

use std::path::PathBuf;
use std::time::Duration;

use boxoffice_runtime::retry::RetryPolicy;
use boxoffice_topics::names::{TopicPrefix, Topics};

use super::gateway::{Gateway, LedgerError, SandboxGateway, SandboxSettings};
use super::provider::{ApiKey, DEFAULT_API_KEY, ProviderError, ProviderGateway, ProviderSettings};
use boxoffice_runtime::secrets::{SecretError, SecretSetting};

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

/// The API key of the HTTP provider, read from the environment or `*_FILE` (never a flag).
pub const PROVIDER_API_KEY: SecretSetting = SecretSetting {
    name: "PAYMENT_PROVIDER_API_KEY",
    hint: "the secret API key your payment provider issued",
};

/// A setting that is fine for development but not for taking real money.
#[derive(Debug, thiserror::Error)]
pub enum ProductionSettingError {
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error(
        "PAYMENTS_GATEWAY (--gateway) is `sandbox`, which charges nothing (`tok_success` always \
         pays): set it to `provider` with PAYMENT_PROVIDER_URL and PAYMENT_PROVIDER_API_KEY, or \
         pass --dev / BOXOFFICE_DEV=1 to run the development stack"
    )]
    Sandbox,
    #[error(
        "PAYMENT_PROVIDER_URL (--provider-url) {0} is not https: card payments travel encrypted; \
         plain http only with --dev / BOXOFFICE_DEV=1"
    )]
    PlainHttp(String),
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

    /// Reads the provider's API key and refuses what only development may use (see
    /// [`ProductionSettingError`]): outside the development mode (`dev`) the sandbox gateway,
    /// a plain-http provider and a missing or shipped API key; in it, a missing key falls back
    /// to the one the provider simulator accepts. `env` looks a variable up.
    pub fn read_secrets(
        &mut self,
        dev: bool,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ProductionSettingError> {
        if self.gateway != "provider" {
            return if dev {
                Ok(())
            } else {
                Err(ProductionSettingError::Sandbox)
            };
        }
        if self.provider.url.scheme() != "https" && !dev {
            return Err(ProductionSettingError::PlainHttp(
                self.provider.url.to_string(),
            ));
        }
        let key = PROVIDER_API_KEY.require_or_development(
            PROVIDER_API_KEY.read_with(env)?,
            dev,
            DEFAULT_API_KEY,
        )?;
        self.provider.api_key = ApiKey::new(key.text()).map_err(|why| SecretError::Invalid {
            name: PROVIDER_API_KEY.name,
            why,
        })?;
        Ok(())
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        settings: PaymentSettings,
    }

    fn settings(args: &[&str]) -> PaymentSettings {
        let argv = std::iter::once("payments").chain(args.iter().copied());
        Cli::try_parse_from(argv).unwrap().settings
    }

    fn env(key: &'static str, value: &'static str) -> impl Fn(&str) -> Option<String> {
        move |k| (k == key).then(|| value.to_owned())
    }

    const KEY: &str = "sk_live_Qw3Er5Ty7Ui9Op1As";

    #[test]
    fn production_refuses_the_sandbox_plain_http_and_shipped_keys() {
        let err = settings(&[]).read_secrets(false, |_| None).unwrap_err();
        assert!(matches!(err, ProductionSettingError::Sandbox), "{err}");
        assert!(err.to_string().contains("PAYMENTS_GATEWAY"), "{err}");

        let provider = ["--gateway", "provider", "--provider-url"];
        let mut http = settings(&[&provider[..], &["http://pay.example.com"]].concat());
        let err = http.read_secrets(false, env("PAYMENT_PROVIDER_API_KEY", KEY));
        assert!(
            matches!(err, Err(ProductionSettingError::PlainHttp(_))),
            "{err:?}"
        );

        let https = || settings(&[&provider[..], &["https://pay.example.com"]].concat());
        let err = https()
            .read_secrets(false, |_| None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("PAYMENT_PROVIDER_API_KEY"), "{err}");
        let shipped = https().read_secrets(false, env("PAYMENT_PROVIDER_API_KEY", DEFAULT_API_KEY));
        assert!(shipped.is_err(), "{shipped:?}");

        let mut good = https();
        good.read_secrets(false, env("PAYMENT_PROVIDER_API_KEY", KEY))
            .unwrap();
        assert_eq!(good.provider.api_key, ApiKey::new(KEY).unwrap());
    }

    #[test]
    fn the_development_mode_allows_the_sandbox_and_the_local_provider() {
        assert!(settings(&[]).read_secrets(true, |_| None).is_ok());
        let mut local = settings(&["--gateway", "provider"]);
        local.read_secrets(true, |_| None).unwrap();
        assert_eq!(
            local.provider.api_key,
            ApiKey::new(DEFAULT_API_KEY).unwrap()
        );
    }
}
