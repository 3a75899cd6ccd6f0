//! Ingest's own settings (flags with environment variables, defaults pointing at the local
//! stack), the topic names it reads and writes, and the checks that refuse a bad value naming
//! the setting.

use std::net::SocketAddr;
use std::time::Duration;

pub use boxoffice_topics::names::{TopicPrefix, Topics};

/// Shortest JWT signing secret accepted, in bytes (HS256 wants at least the hash size).
pub const MIN_JWT_SECRET_BYTES: usize = 32;

/// Settings of the HTTP service.
#[derive(Clone, clap::Args)]
pub struct IngestSettings {
    /// Address the HTTP API listens on.
    #[arg(
        long = "listen",
        env = "INGEST_LISTEN",
        default_value = "127.0.0.1:8000"
    )]
    pub listen: SocketAddr,

    #[command(flatten)]
    pub topic_prefix: TopicPrefix,

    /// Secret that signs access tokens (HS256) and pagination tokens; at least 32 bytes.
    /// Required: there is no default.
    #[arg(long = "jwt-secret", env = "INGEST_JWT_SECRET", hide_env_values = true,
          value_parser = parse_jwt_secret)]
    pub jwt_secret: JwtSecret,

    /// `iss` of the access tokens this service issues and accepts.
    #[arg(
        long = "jwt-issuer",
        env = "INGEST_JWT_ISSUER",
        default_value = "boxoffice-ingest"
    )]
    pub jwt_issuer: String,

    /// `aud` of the access tokens this service issues and accepts.
    #[arg(
        long = "jwt-audience",
        env = "INGEST_JWT_AUDIENCE",
        default_value = "boxoffice-api"
    )]
    pub jwt_audience: String,

    /// Lifetime of an access token (e.g. `15m`).
    #[arg(long = "access-token-ttl", env = "INGEST_ACCESS_TOKEN_TTL", default_value = "15m",
          value_parser = humantime::parse_duration)]
    pub access_token_ttl: Duration,

    /// Lifetime of a refresh token (e.g. `30days`).
    #[arg(long = "refresh-token-ttl", env = "INGEST_REFRESH_TOKEN_TTL", default_value = "30days",
          value_parser = humantime::parse_duration)]
    pub refresh_token_ttl: Duration,

    /// How long a produce may wait for the broker's acknowledgement before the request answers
    /// 503 (librdkafka's `message.timeout.ms`).
    #[arg(long = "produce-timeout", env = "INGEST_PRODUCE_TIMEOUT", default_value = "5s",
          value_parser = humantime::parse_duration)]
    pub produce_timeout: Duration,

    /// Login attempts allowed per account in a burst; refilled one per `--login-account-refill`.
    #[arg(
        long = "login-account-burst",
        env = "INGEST_LOGIN_ACCOUNT_BURST",
        default_value_t = 10
    )]
    pub login_account_burst: u32,

    /// Time to regain one login attempt for an account.
    #[arg(long = "login-account-refill", env = "INGEST_LOGIN_ACCOUNT_REFILL", default_value = "6s",
          value_parser = humantime::parse_duration)]
    pub login_account_refill: Duration,

    /// Login attempts allowed per client address in a burst.
    #[arg(
        long = "login-ip-burst",
        env = "INGEST_LOGIN_IP_BURST",
        default_value_t = 60
    )]
    pub login_ip_burst: u32,

    /// Time to regain one login attempt for a client address.
    #[arg(long = "login-ip-refill", env = "INGEST_LOGIN_IP_REFILL", default_value = "200ms",
          value_parser = humantime::parse_duration)]
    pub login_ip_refill: Duration,
}

impl std::fmt::Debug for IngestSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngestSettings")
            .field("listen", &self.listen)
            .field("topic_prefix", &self.topic_prefix)
            .field("jwt_issuer", &self.jwt_issuer)
            .field("jwt_audience", &self.jwt_audience)
            .finish_non_exhaustive()
    }
}

/// The signing secret; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct JwtSecret(Vec<u8>);

impl JwtSecret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, String> {
        let bytes = bytes.into();
        if bytes.len() < MIN_JWT_SECRET_BYTES {
            return Err(format!(
                "the JWT secret must be at least {MIN_JWT_SECRET_BYTES} bytes (--jwt-secret / INGEST_JWT_SECRET), got {}",
                bytes.len()
            ));
        }
        Ok(JwtSecret(bytes))
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for JwtSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwtSecret(..)")
    }
}

pub fn parse_jwt_secret(raw: &str) -> Result<JwtSecret, String> {
    JwtSecret::new(raw.as_bytes().to_vec())
}

/// The default secret of the payment provider's webhook: for local development only (the
/// provider simulator signs with it too). A deployment sets its own.
pub const DEV_PROVIDER_WEBHOOK_SECRET: &str = "whsec_boxoffice_local_dev_secret";

/// Settings of `POST v1/payments/webhook`, the payment provider's callback.
///
/// Kept apart from [`IngestSettings`] (and passed with [`crate::run_with`] /
/// [`crate::state_with`]) so code that builds `IngestSettings` field by field keeps compiling;
/// [`crate::run`] and [`crate::state`] use [`ProviderWebhookSettings::default`].
#[derive(Clone, clap::Args)]
pub struct ProviderWebhookSettings {
    /// Secret shared with the payment provider: the key of the HMAC-SHA256 signature in
    /// `Boxoffice-Provider-Signature` (the string's bytes). The default is for local
    /// development only.
    #[arg(long = "payment-provider-webhook-secret", env = "PAYMENT_PROVIDER_WEBHOOK_SECRET",
          hide_env_values = true, default_value = DEV_PROVIDER_WEBHOOK_SECRET,
          value_parser = parse_provider_secret)]
    pub secret: ProviderSecret,

    /// Largest difference between the signature's timestamp and now (either way) that is
    /// accepted; older or later deliveries are refused (replay protection).
    #[arg(long = "payment-provider-webhook-tolerance", env = "PAYMENT_PROVIDER_WEBHOOK_TOLERANCE",
          default_value = "300s", value_parser = parse_tolerance)]
    pub tolerance: Duration,
}

impl Default for ProviderWebhookSettings {
    fn default() -> Self {
        ProviderWebhookSettings {
            secret: ProviderSecret(DEV_PROVIDER_WEBHOOK_SECRET.as_bytes().to_vec()),
            tolerance: Duration::from_secs(300),
        }
    }
}

impl ProviderWebhookSettings {
    /// Whether the secret is the local-development default (worth a warning at startup).
    pub fn uses_dev_secret(&self) -> bool {
        self.secret.bytes() == DEV_PROVIDER_WEBHOOK_SECRET.as_bytes()
    }
}

impl std::fmt::Debug for ProviderWebhookSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderWebhookSettings")
            .field("tolerance", &self.tolerance)
            .finish_non_exhaustive()
    }
}

/// The provider's webhook secret; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct ProviderSecret(Vec<u8>);

impl ProviderSecret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, String> {
        let bytes = bytes.into();
        if bytes.is_empty() {
            return Err("the payment provider webhook secret must not be empty \
                 (--payment-provider-webhook-secret / PAYMENT_PROVIDER_WEBHOOK_SECRET)"
                .to_owned());
        }
        Ok(ProviderSecret(bytes))
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for ProviderSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProviderSecret(..)")
    }
}

pub fn parse_provider_secret(raw: &str) -> Result<ProviderSecret, String> {
    ProviderSecret::new(raw.as_bytes().to_vec())
}

/// A tolerance of at least one second (zero would refuse every delivery).
pub fn parse_tolerance(raw: &str) -> Result<Duration, String> {
    let tolerance = humantime::parse_duration(raw).map_err(|e| {
        format!("--payment-provider-webhook-tolerance / PAYMENT_PROVIDER_WEBHOOK_TOLERANCE: {e}")
    })?;
    if tolerance < Duration::from_secs(1) {
        return Err(
            "--payment-provider-webhook-tolerance / PAYMENT_PROVIDER_WEBHOOK_TOLERANCE must be at least 1s"
                .to_owned(),
        );
    }
    Ok(tolerance)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_secrets_are_refused_naming_the_setting() {
        let err = parse_jwt_secret("short").unwrap_err();
        assert!(err.contains("INGEST_JWT_SECRET"), "{err}");
        assert!(parse_jwt_secret(&"x".repeat(32)).is_ok());
        assert_eq!(
            format!("{:?}", parse_jwt_secret(&"s".repeat(40)).unwrap()),
            "JwtSecret(..)"
        );
    }

    #[test]
    fn provider_webhook_settings_check_their_values_and_hide_the_secret() {
        assert!(parse_provider_secret("").is_err());
        let secret = parse_provider_secret("whsec_x").unwrap();
        assert_eq!(secret.bytes(), b"whsec_x");
        assert_eq!(format!("{secret:?}"), "ProviderSecret(..)");
        assert_eq!(parse_tolerance("5m").unwrap(), Duration::from_secs(300));
        let err = parse_tolerance("0s").unwrap_err();
        assert!(err.contains("PAYMENT_PROVIDER_WEBHOOK_TOLERANCE"), "{err}");
        assert!(parse_tolerance("soon").is_err());
        let defaults = ProviderWebhookSettings::default();
        assert!(defaults.uses_dev_secret());
        assert_eq!(defaults.tolerance, Duration::from_secs(300));
        assert!(!format!("{defaults:?}").contains("whsec"));
    }

    #[test]
    fn topics_take_the_prefix() {
        let topics = Topics::with_prefix("t1.");
        assert_eq!(topics.commands, "t1.booking.commands");
        assert_eq!(topics.availability, "t1.availability");
    }
}
