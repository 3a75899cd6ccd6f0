//! Ingest's own settings (flags with environment variables, defaults pointing at the local
//! stack), the topic names it reads and writes, and the checks that refuse a bad value naming
//! the setting.

use std::net::SocketAddr;
use std::time::Duration;

use boxoffice_runtime::egress::EgressArgs;
use boxoffice_runtime::secrets::{SecretError, SecretSetting};

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

    /// Secret that signs access tokens (HS256) and pagination tokens; at least 32 bytes. Not a
    /// flag: read from `INGEST_JWT_SECRET` or `INGEST_JWT_SECRET_FILE` by [`read_secrets`].
    #[arg(skip)]
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

    /// Lifetime of a login session (e.g. `30days`): its refresh tokens rotate but never
    /// outlive it; then the user signs in again.
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

    /// Orders (`POST v1/orders`) allowed per account in a burst; refilled one per
    /// `--order-user-refill`. Per replica; the hard cap per fan is the event's `max_per_user`.
    #[arg(
        long = "order-user-burst",
        env = "INGEST_ORDER_USER_BURST",
        default_value_t = 5
    )]
    pub order_user_burst: u32,

    /// Time to regain one order for an account.
    #[arg(long = "order-user-refill", env = "INGEST_ORDER_USER_REFILL", default_value = "2s",
          value_parser = humantime::parse_duration)]
    pub order_user_refill: Duration,

    /// Orders allowed per client address in a burst (many fans may share an address).
    #[arg(
        long = "order-ip-burst",
        env = "INGEST_ORDER_IP_BURST",
        default_value_t = 100
    )]
    pub order_ip_burst: u32,

    /// Time to regain one order for a client address.
    #[arg(long = "order-ip-refill", env = "INGEST_ORDER_IP_REFILL", default_value = "50ms",
          value_parser = humantime::parse_duration)]
    pub order_ip_refill: Duration,

    /// Registrations allowed per client address in a burst; refilled one per
    /// `--register-ip-refill`. Registration costs an Argon2 hash (19 MiB, tens of ms).
    #[arg(
        long = "register-ip-burst",
        env = "INGEST_REGISTER_IP_BURST",
        default_value_t = 10
    )]
    pub register_ip_burst: u32,

    /// Time to regain one registration for a client address.
    #[arg(long = "register-ip-refill", env = "INGEST_REGISTER_IP_REFILL", default_value = "1m",
          value_parser = humantime::parse_duration)]
    pub register_ip_refill: Duration,

    /// Password hashes (register, login) computed at once; each holds 19 MiB while it runs.
    #[arg(long = "password-hash-concurrency", env = "INGEST_PASSWORD_HASH_CONCURRENCY",
          default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub password_hash_concurrency: u16,

    /// Password hashes waiting for a turn; beyond that a request is answered 429 at once.
    #[arg(long = "password-hash-queue", env = "INGEST_PASSWORD_HASH_QUEUE",
          default_value_t = 64, value_parser = clap::value_parser!(u16).range(0..=10_000))]
    pub password_hash_queue: u16,

    /// Live streams (SSE) one account may hold open at once (per replica; then 429).
    #[arg(long = "streams-per-user", env = "INGEST_STREAMS_PER_USER", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub streams_per_user: u32,

    /// Public availability streams one client address may hold open at once (per replica).
    #[arg(long = "streams-per-address", env = "INGEST_STREAMS_PER_ADDRESS", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub streams_per_address: u32,

    /// Live streams open at once on this replica, all kinds together (then 429).
    #[arg(long = "streams-total", env = "INGEST_STREAMS_TOTAL", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub streams_total: u32,

    /// Proxies (networks in CIDR form, comma-separated) whose `X-Forwarded-For` names the
    /// client for the per-address limits; from any other peer the header is ignored. Empty:
    /// the TCP peer is the client.
    #[arg(long = "trusted-proxies", env = "INGEST_TRUSTED_PROXIES", value_delimiter = ',',
          value_parser = boxoffice_runtime::egress::parse_network)]
    pub trusted_proxies: Vec<ipnet::IpNet>,

    /// Where the links in account emails (email verification, password reset) lead: the
    /// frontend, which posts the token from the link to `v1/verify-email` or
    /// `v1/password-reset/confirm`. Links are `{base}/verify-email#token=...` and
    /// `{base}/reset-password#token=...`.
    #[arg(long = "account-link-base", env = "INGEST_ACCOUNT_LINK_BASE",
          default_value = "http://localhost:8888", value_parser = parse_link_base)]
    pub account_link_base: url::Url,

    /// Which non-public addresses users' webhook endpoints may point at
    /// (`WEBHOOK_ALLOW_NETWORKS`, shared with the notifier).
    #[command(flatten)]
    pub egress: EgressArgs,
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

/// The signing secret; never printed. The default is empty and refused by [`crate::state`]'s
/// callers' checks: a binary always fills it through [`read_secrets`].
#[derive(Clone, Default, PartialEq, Eq)]
pub struct JwtSecret(Vec<u8>);

impl JwtSecret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, String> {
        let bytes = bytes.into();
        if bytes.len() < MIN_JWT_SECRET_BYTES {
            return Err(format!(
                "the JWT secret must be at least {MIN_JWT_SECRET_BYTES} bytes (INGEST_JWT_SECRET), got {}",
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
    /// `Boxoffice-Provider-Signature` (the string's bytes). Not a flag: read from
    /// `PAYMENT_PROVIDER_WEBHOOK_SECRET` or `..._FILE` by [`read_secrets`]; the development
    /// value only in the development mode.
    #[arg(skip = ProviderSecret(DEV_PROVIDER_WEBHOOK_SECRET.as_bytes().to_vec()))]
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

/// Ingest's secret settings, read from the environment or `*_FILE` (never flags).
pub const JWT_SECRET: SecretSetting = SecretSetting {
    name: "INGEST_JWT_SECRET",
    hint: "at least 32 random bytes, e.g. `head -c 48 /dev/urandom | base64`",
};
pub const PROVIDER_WEBHOOK_SECRET: SecretSetting = SecretSetting {
    name: "PAYMENT_PROVIDER_WEBHOOK_SECRET",
    hint: "the signing secret your payment provider shows for this endpoint",
};
pub const ADMIN_PASSWORD: SecretSetting = SecretSetting {
    name: "INGEST_ADMIN_PASSWORD",
    hint: "a password of at least 12 characters, e.g. `head -c 18 /dev/urandom | base64`",
};

/// Reads ingest's secrets into its settings and checks them: outside the development mode
/// (`dev`), a missing, shipped or guessable secret is refused naming its variable; in it, a
/// missing provider webhook secret falls back to [`DEV_PROVIDER_WEBHOOK_SECRET`] (what the
/// provider simulator signs with). `env` looks a variable up.
pub fn read_secrets(
    settings: &mut IngestSettings,
    webhook: &mut ProviderWebhookSettings,
    dev: bool,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(), SecretError> {
    let jwt = JWT_SECRET.require(JWT_SECRET.read_with(&env)?, dev)?;
    settings.jwt_secret = JwtSecret::new(jwt.bytes()).map_err(|why| SecretError::Invalid {
        name: JWT_SECRET.name,
        why,
    })?;
    let provider = PROVIDER_WEBHOOK_SECRET.require_or_development(
        PROVIDER_WEBHOOK_SECRET.read_with(&env)?,
        dev,
        DEV_PROVIDER_WEBHOOK_SECRET,
    )?;
    webhook.secret = ProviderSecret(provider.bytes().to_vec());
    Ok(())
}

/// The first admin's password (`INGEST_ADMIN_PASSWORD` or `..._FILE`), checked like every
/// secret; `None` when it is not set.
pub fn read_admin_password(
    dev: bool,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<String>, SecretError> {
    let Some(password) = ADMIN_PASSWORD.read_with(env)? else {
        return Ok(None);
    };
    let password = ADMIN_PASSWORD.require(Some(password), dev)?;
    if password.text().chars().count() < 12 && !dev {
        return Err(SecretError::Invalid {
            name: ADMIN_PASSWORD.name,
            why: "shorter than 12 characters".to_owned(),
        });
    }
    Ok(Some(password.text().to_owned()))
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
                 (PAYMENT_PROVIDER_WEBHOOK_SECRET)"
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

/// An `http` or `https` URL without credentials, query or fragment (links are built on it).
pub fn parse_link_base(text: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(text).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{text:?}: only http and https links work in email"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("{text:?}: no credentials in a link"));
    }
    if url.query().is_some() || url.fragment().is_some() || url.host().is_none() {
        return Err(format!(
            "{text:?}: a base with a host and no query or fragment"
        ));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_links_need_a_plain_http_base() {
        assert!(parse_link_base("https://tickets.example/app").is_ok());
        assert!(parse_link_base("http://localhost:8888").is_ok());
        for bad in [
            "tickets.example",
            "javascript:alert(1)",
            "ftp://tickets.example",
            "https://user:pw@tickets.example",
            "https://tickets.example/?next=x",
            "https://tickets.example/#top",
        ] {
            assert!(parse_link_base(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn short_secrets_are_refused_naming_the_setting() {
        let err = JwtSecret::new(b"short".to_vec()).unwrap_err();
        assert!(err.contains("INGEST_JWT_SECRET"), "{err}");
        assert!(JwtSecret::new("x".repeat(32).into_bytes()).is_ok());
        assert_eq!(
            format!("{:?}", JwtSecret::new("s".repeat(40).into_bytes()).unwrap()),
            "JwtSecret(..)"
        );
    }

    #[test]
    fn provider_webhook_settings_check_their_values_and_hide_the_secret() {
        assert!(ProviderSecret::new(b"".to_vec()).is_err());
        let secret = ProviderSecret::new(b"whsec_x".to_vec()).unwrap();
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

    fn env(pairs: &[(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let pairs = pairs.to_vec();
        move |key| {
            pairs
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    const JWT: &str = "kR3vX9pQ2mZ7tY1wB5nC8dF0gH4jL6sA";
    const HOOK: &str = "whsec_Hq2Zr8Kc1Vt5Xn9Lm3Pw";

    fn read(
        dev: bool,
        vars: &[(&'static str, &'static str)],
    ) -> Result<(IngestSettings, ProviderWebhookSettings), SecretError> {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            settings: IngestSettings,
            #[command(flatten)]
            webhook: ProviderWebhookSettings,
        }
        let mut cli = Cli::try_parse_from(["ingest"]).unwrap();
        read_secrets(&mut cli.settings, &mut cli.webhook, dev, env(vars))?;
        Ok((cli.settings, cli.webhook))
    }

    #[test]
    fn production_refuses_missing_and_shipped_secrets_naming_the_variable() {
        let refused = |vars: &[(&'static str, &'static str)], name: &str| {
            let err = read(false, vars).unwrap_err().to_string();
            assert!(err.contains(name), "{vars:?}: {err}");
        };
        refused(
            &[("PAYMENT_PROVIDER_WEBHOOK_SECRET", HOOK)],
            "INGEST_JWT_SECRET",
        );
        refused(
            &[("INGEST_JWT_SECRET", JWT)],
            "PAYMENT_PROVIDER_WEBHOOK_SECRET",
        );
        refused(
            &[
                ("INGEST_JWT_SECRET", JWT),
                (
                    "PAYMENT_PROVIDER_WEBHOOK_SECRET",
                    DEV_PROVIDER_WEBHOOK_SECRET,
                ),
            ],
            "PAYMENT_PROVIDER_WEBHOOK_SECRET",
        );
        refused(
            &[
                (
                    "INGEST_JWT_SECRET",
                    "dev-only-secret-change-me-0123456789abcdef",
                ),
                ("PAYMENT_PROVIDER_WEBHOOK_SECRET", HOOK),
            ],
            "INGEST_JWT_SECRET",
        );
        let one_character = "s".repeat(40).leak();
        refused(
            &[
                ("INGEST_JWT_SECRET", one_character),
                ("PAYMENT_PROVIDER_WEBHOOK_SECRET", HOOK),
            ],
            "INGEST_JWT_SECRET",
        );
        let (settings, webhook) = read(
            false,
            &[
                ("INGEST_JWT_SECRET", JWT),
                ("PAYMENT_PROVIDER_WEBHOOK_SECRET", HOOK),
            ],
        )
        .unwrap();
        assert_eq!(settings.jwt_secret.bytes(), JWT.as_bytes());
        assert_eq!(webhook.secret.bytes(), HOOK.as_bytes());
        assert!(!webhook.uses_dev_secret());
    }

    #[test]
    fn the_development_mode_falls_back_to_the_development_webhook_secret() {
        let (_, webhook) = read(true, &[("INGEST_JWT_SECRET", JWT)]).unwrap();
        assert!(webhook.uses_dev_secret());
        let err = read(true, &[]).unwrap_err().to_string();
        assert!(
            err.contains("INGEST_JWT_SECRET"),
            "the JWT secret stays required: {err}"
        );
    }

    #[test]
    fn the_admin_password_is_checked_like_a_secret() {
        assert_eq!(read_admin_password(false, env(&[])).unwrap(), None);
        let shipped = [("INGEST_ADMIN_PASSWORD", "dev-only-admin-password")];
        let err = read_admin_password(false, env(&shipped))
            .unwrap_err()
            .to_string();
        assert!(err.contains("INGEST_ADMIN_PASSWORD"), "{err}");
        assert!(read_admin_password(true, env(&shipped)).unwrap().is_some());
        let short = [("INGEST_ADMIN_PASSWORD", "Zq8$kP2w")];
        assert!(read_admin_password(false, env(&short)).is_err());
        let good = [("INGEST_ADMIN_PASSWORD", "Zq8$kP2wLm5#xR")];
        assert!(read_admin_password(false, env(&good)).unwrap().is_some());
    }

    #[test]
    fn topics_take_the_prefix() {
        let topics = Topics::with_prefix("t1.");
        assert_eq!(topics.commands, "t1.booking.commands");
        assert_eq!(topics.availability, "t1.availability");
    }
}
