//! The notifier: consumes `notifications` (key `user_id`) and delivers every
//! `NotificationRequested` on independent channels:
//!
//! - `inapp`: the user's list in the `notifications` table (idempotent upsert keyed by the
//!   notification id and its `occurred_at`); ingest serves it and, separately, follows the
//!   topic itself for the live SSE stream;
//! - `email`: a plain-text email per kind over SMTP ([`templates`]), `Message-ID` =
//!   `<notification id@boxoffice>`;
//! - `webhook`: a signed POST to each of the user's enabled endpoints ([`webhook`]).
//!
//! Each channel is its own consumer group (`<group prefix>inapp`, `...email`, `...webhook`),
//! so a slow or failing channel never holds up another one, nor the booking path (which only
//! produces to the topic). Within a channel, records are spread over `--lanes` workers by user
//! id (the topic's key): one user's records go to one worker, one at a time, in partition
//! order, so a user's notifications (and so each order's) are delivered in the order the
//! booking processor decided them: never "confirmed" before "reserved". The committed offset
//! is the lowest record not yet final in any worker.
//!
//! ## Delivery guarantee (per channel, per target)
//!
//! Before a send the delivery row (`notification_deliveries`) is written `PENDING` with the
//! attempt counted; after it, `SENT` (or `DEAD`, `DISABLED`, `SKIPPED`). The consumer offset is
//! stored only after the row is final. So:
//!
//! - a redelivered record whose row is final is skipped: no second send;
//! - a crash after the send and before `SENT` sends **again, with the same id** (email
//!   `Message-ID`, webhook `X-Boxoffice-Delivery-Id`): delivery is at-least-once and a reader
//!   that deduplicates on that id sees exactly one. The window is the send in flight (one per
//!   lane, see `--lanes`);
//! - nothing is lost: a record is only passed once its row is final.
//!
//! Failures: a channel-wide outage (SMTP server unreachable, CQL down) is retried with capped
//! exponential backoff and jitter without using up attempts (it would fail every user alike);
//! a per-target failure (webhook 5xx/408/429/network error, SMTP 4xx) is retried up to
//! `--max-attempts` times (counted across restarts), then the record goes to the dead-letter
//! topic with the reason; a refusal (SMTP 5xx, webhook 4xx) is dead-lettered at once; a
//! webhook 410 disables the endpoint. A failing email target holds up only the users of its
//! worker, for at most its retry budget. Webhooks go further (`runner::endpoints`): each
//! endpoint has its own worker and bounded queue, a lane only hands deliveries over, and an
//! endpoint that keeps failing is suspended ([`endpoint_health`]) with its deliveries parked
//! (dead-lettered at once), so one user's endpoints never delay another's deliveries.

pub mod email;
pub mod endpoint_health;
pub mod runner;
pub use boxoffice_store::notifications as store;
pub mod templates;
pub mod webhook;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use boxoffice_avro::Codec;
use boxoffice_topics::kafka::KafkaArgs;
use boxoffice_topics::names::TopicPrefix;

use boxoffice_runtime::egress::EgressArgs;
use boxoffice_runtime::metrics::{
    Counter, Gauge, Histogram, LATENCY_BUCKETS_MS, Readiness, Registry, counter, gauge, histogram,
};
use boxoffice_runtime::retry::RetryPolicy;

pub use store::NotifyStore;

/// Why a send did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The whole channel is unreachable: retry without counting an attempt.
    #[error("channel unavailable: {0}")]
    Unavailable(String),
    /// This target failed; worth another attempt.
    #[error("retryable failure: {0}")]
    Retryable(String),
    /// This target refused for good.
    #[error("refused: {0}")]
    Permanent(String),
    /// The webhook endpoint is gone (410): disable it.
    #[error("gone: {0}")]
    Gone(String),
}

/// A delivery channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Channel {
    Inapp,
    Email,
    Webhook,
}

impl Channel {
    pub const ALL: [Channel; 3] = [Channel::Inapp, Channel::Email, Channel::Webhook];

    pub fn name(self) -> &'static str {
        match self {
            Channel::Inapp => "inapp",
            Channel::Email => "email",
            Channel::Webhook => "webhook",
        }
    }
}

/// The notifier's settings (flags and environment variables).
#[derive(Debug, Clone, clap::Args)]
pub struct NotifierSettings {
    #[command(flatten)]
    pub topic_prefix: TopicPrefix,

    /// Prefix of the per-channel consumer groups (`<prefix>inapp`, `<prefix>email`,
    /// `<prefix>webhook`).
    #[arg(
        long = "group-prefix",
        env = "NOTIFIER_GROUP_PREFIX",
        default_value = "notifier-"
    )]
    pub group_prefix: String,

    /// Channels this instance runs (comma-separated).
    #[arg(
        long = "channels",
        env = "NOTIFIER_CHANNELS",
        value_delimiter = ',',
        default_value = "inapp,email,webhook"
    )]
    pub channels: Vec<Channel>,

    /// Workers per channel. A user's records always go to the same one, in order; a user
    /// whose target keeps failing holds up only the users sharing its worker, for at most the
    /// retry budget.
    #[arg(long = "lanes", env = "NOTIFIER_LANES", default_value_t = 16,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub lanes: u16,

    /// SMTP server host (plain SMTP; a local relay handles TLS and onward delivery).
    #[arg(
        long = "smtp-host",
        env = "NOTIFIER_SMTP_HOST",
        default_value = "127.0.0.1"
    )]
    pub smtp_host: String,

    /// SMTP server port.
    #[arg(long = "smtp-port", env = "NOTIFIER_SMTP_PORT", default_value_t = 2525)]
    pub smtp_port: u16,

    /// How long one SMTP conversation may take (e.g. `10s`).
    #[arg(long = "smtp-timeout", env = "NOTIFIER_SMTP_TIMEOUT", default_value = "10s",
          value_parser = humantime::parse_duration)]
    pub smtp_timeout: Duration,

    /// The sender of notification emails.
    #[arg(
        long = "email-from",
        env = "NOTIFIER_EMAIL_FROM",
        default_value = "boxoffice <notifications@boxoffice.local>"
    )]
    pub email_from: String,

    /// How long one webhook POST may take (e.g. `10s`).
    #[arg(long = "webhook-timeout", env = "NOTIFIER_WEBHOOK_TIMEOUT", default_value = "10s",
          value_parser = humantime::parse_duration)]
    pub webhook_timeout: Duration,

    /// Deliveries waiting per webhook endpoint (each endpoint has its own worker); beyond, a
    /// new one is parked at once (dead-lettered with the reason), so a slow endpoint holds no
    /// lane and no other endpoint's deliveries.
    #[arg(long = "webhook-endpoint-queue", env = "NOTIFIER_WEBHOOK_ENDPOINT_QUEUE",
          default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub webhook_endpoint_queue: u32,

    /// Failures in a row (5xx, 408, 429, timeouts) that suspend a webhook endpoint: while
    /// suspended its deliveries are parked instead of tried. Default: `--max-attempts`, so a
    /// passing outage costs no more deliveries than before (one delivery runs out of attempts
    /// first), while an endpoint that stays down holds the channel for one delivery's attempts,
    /// not for each of its deliveries.
    #[arg(long = "webhook-suspend-after", env = "NOTIFIER_WEBHOOK_SUSPEND_AFTER",
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub webhook_suspend_after: Option<u32>,

    /// The first suspension of a failing endpoint; doubles with each one after a failed trial,
    /// up to `--webhook-suspend-max` (e.g. `30s`).
    #[arg(long = "webhook-suspend-for", env = "NOTIFIER_WEBHOOK_SUSPEND_FOR", default_value = "30s",
          value_parser = humantime::parse_duration)]
    pub webhook_suspend_for: Duration,

    /// The longest suspension (e.g. `15m`).
    #[arg(long = "webhook-suspend-max", env = "NOTIFIER_WEBHOOK_SUSPEND_MAX", default_value = "15m",
          value_parser = humantime::parse_duration)]
    pub webhook_suspend_max: Duration,

    /// Which addresses webhooks may reach besides public ones (`WEBHOOK_ALLOW_NETWORKS`).
    #[command(flatten)]
    pub egress: EgressArgs,

    /// Attempts per target (webhook endpoint, email) before the record is dead-lettered.
    #[arg(long = "max-attempts", env = "NOTIFIER_MAX_ATTEMPTS", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_attempts: u32,

    /// First retry delay; doubles per attempt, with jitter (e.g. `500ms`).
    #[arg(long = "retry-base", env = "NOTIFIER_RETRY_BASE", default_value = "500ms",
          value_parser = humantime::parse_duration)]
    pub retry_base: Duration,

    /// Longest retry delay (e.g. `30s`).
    #[arg(long = "retry-max", env = "NOTIFIER_RETRY_MAX", default_value = "30s",
          value_parser = humantime::parse_duration)]
    pub retry_max: Duration,

    /// How long a store call, a dead letter or an unavailable channel (SMTP relay down) is
    /// retried before the record's partition is given up on this channel: paused,
    /// `/readyz` 503, `notifier_retries_exhausted_total` counted, and taken again from its
    /// committed offset (in-app: the store's watermark) once the fault clears (e.g. `60s`).
    #[arg(long = "retry-budget", env = "NOTIFIER_RETRY_BUDGET", default_value = "60s",
          value_parser = humantime::parse_duration)]
    pub retry_budget: Duration,
}

impl NotifierSettings {
    pub fn notifications_topic(&self) -> String {
        self.topic_prefix.topics().notifications
    }

    pub fn dead_letters_topic(&self) -> String {
        self.topic_prefix.topics().dead_letters
    }

    pub fn group_id(&self, channel: Channel) -> String {
        format!("{}{}", self.group_prefix, channel.name())
    }

    /// How store calls, dead letters and channel outages are retried: `--retry-base`
    /// doubling to `--retry-max`, within `--retry-budget`.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            base: self.retry_base,
            max_delay: self.retry_max,
            budget: self.retry_budget,
        }
    }

    /// When a failing webhook endpoint is suspended.
    pub fn webhook_health_limits(&self) -> endpoint_health::HealthLimits {
        endpoint_health::HealthLimits {
            suspend_after: self.webhook_suspend_after.unwrap_or(self.max_attempts),
            first_cooldown: self.webhook_suspend_for,
            max_cooldown: self.webhook_suspend_max.max(self.webhook_suspend_for),
        }
    }

    /// The delay before retry `attempt` (1-based): `base * 2^(attempt-1)` capped at `max`,
    /// then "equal jitter" (half fixed, half random) so retries of many targets spread out.
    pub fn backoff(&self, attempt: u32) -> Duration {
        self.retry_policy().jittered_delay(attempt)
    }
}

/// Counters and latencies, per process (all channels), served on `/metrics`.
#[derive(Debug)]
pub struct NotifierMetrics {
    pub records: Counter,
    pub in_app_stored: Counter,
    pub emails_sent: Counter,
    pub webhooks_sent: Counter,
    /// Records whose delivery row was already final (redeliveries).
    pub already_delivered: Counter,
    /// Sends repeated because a PENDING row was found (a crash or rebalance mid-send).
    pub resent_pending: Counter,
    pub retries: Counter,
    pub dead_lettered: Counter,
    pub endpoints_disabled: Counter,
    /// Webhook endpoints suspended after failing repeatedly.
    pub endpoints_suspended: Counter,
    /// Webhook deliveries parked (dead-lettered at once): the endpoint's queue was full or it
    /// was suspended.
    pub webhooks_parked: Counter,
    pub skipped_no_address: Counter,
    /// In-app partitions replayed because the store's watermark was behind Kafka or went
    /// backwards (the store lost rows it had acknowledged).
    pub store_loss_replays: Counter,
    pub store_fault_replays: Counter,
    /// Calls still failing when their retry budget ran out (their partition was given up).
    pub retries_exhausted: Counter,
    /// Partitions given up on some channel, waiting to be taken again (gauge).
    pub partitions_parked: Gauge,
    /// Why the notifier is not ready, per channel: the partitions given up.
    pub readiness: Readiness,
    /// From the notification record's broker timestamp (the booking decision) to the email
    /// accepted by the SMTP server.
    pub email_latency_ms: Histogram,
    /// From the record's broker timestamp to the webhook answered 2xx.
    pub webhook_latency_ms: Histogram,
    registry: Registry,
}

impl Default for NotifierMetrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let r = &mut registry;
        NotifierMetrics {
            records: counter(
                r,
                "notifier_records_total",
                "Notification records handled (per channel)",
            ),
            in_app_stored: counter(
                r,
                "notifier_in_app_stored_total",
                "In-app notifications stored",
            ),
            emails_sent: counter(
                r,
                "notifier_emails_sent_total",
                "Emails accepted by the SMTP server",
            ),
            webhooks_sent: counter(r, "notifier_webhooks_sent_total", "Webhooks answered 2xx"),
            already_delivered: counter(
                r,
                "notifier_already_delivered_total",
                "Redelivered records already final",
            ),
            resent_pending: counter(
                r,
                "notifier_resent_pending_total",
                "Sends repeated after a crash or rebalance mid-send",
            ),
            retries: counter(r, "notifier_retries_total", "Delivery attempts retried"),
            dead_lettered: counter(
                r,
                "notifier_dead_lettered_total",
                "Deliveries given up and dead-lettered",
            ),
            endpoints_disabled: counter(
                r,
                "notifier_endpoints_disabled_total",
                "Webhook endpoints disabled after 410 Gone",
            ),
            endpoints_suspended: counter(
                r,
                "notifier_webhook_endpoints_suspended_total",
                "Webhook endpoints suspended after failing repeatedly",
            ),
            webhooks_parked: counter(
                r,
                "notifier_webhooks_parked_total",
                "Webhook deliveries parked (dead-lettered at once): endpoint queue full or endpoint suspended",
            ),
            skipped_no_address: counter(
                r,
                "notifier_skipped_no_address_total",
                "Emails skipped: the user has no address",
            ),
            store_loss_replays: counter(
                r,
                "notifier_store_loss_replays_total",
                "In-app partitions replayed from the store's watermark (the store lost rows)",
            ),
            store_fault_replays: counter(
                r,
                "notifier_store_fault_replays_total",
                "In-app partitions replayed from the store's watermark after a failed store call (rows written since may be lost)",
            ),
            retries_exhausted: counter(
                r,
                "notifier_retries_exhausted_total",
                "Calls still failing after the retry budget (their partition was given up)",
            ),
            partitions_parked: gauge(
                r,
                "notifier_partitions_parked",
                "Partitions given up on a channel after a fault outlasted the retry budget",
            ),
            readiness: Default::default(),
            email_latency_ms: histogram(
                r,
                "notifier_email_latency_ms",
                "Booking decision (record timestamp) to email accepted by SMTP, milliseconds",
                &LATENCY_BUCKETS_MS,
            ),
            webhook_latency_ms: histogram(
                r,
                "notifier_webhook_latency_ms",
                "Booking decision (record timestamp) to webhook answered 2xx, milliseconds",
                &LATENCY_BUCKETS_MS,
            ),
            registry,
        }
    }
}

impl NotifierMetrics {
    /// The Prometheus text of every counter and histogram.
    pub fn render(&self) -> String {
        boxoffice_runtime::metrics::render(&self.registry)
    }
}

/// What the notifier needs from the outside world.
pub struct NotifierDeps {
    pub kafka: KafkaArgs,
    pub codec: Arc<Codec>,
    pub store: Arc<NotifyStore>,
    /// Where the in-app channel may resume (see `boxoffice_store::watermarks`).
    pub watermarks: Arc<boxoffice_store::watermarks::WatermarkStore>,
    pub settings: NotifierSettings,
    pub metrics: Arc<NotifierMetrics>,
}

impl std::fmt::Debug for NotifierDeps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotifierDeps")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Why the notifier stopped.
#[derive(Debug, thiserror::Error)]
pub enum NotifierError {
    #[error(
        "Kafka client could not be created (check --bootstrap-servers / KAFKA_BOOTSTRAP_SERVERS): {0}"
    )]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("{0}")]
    Settings(String),
    #[error("channel {channel} stopped: {reason}")]
    Channel {
        channel: &'static str,
        reason: String,
    },
}

/// Runs every configured channel until `shutdown` resolves; each finishes the record in hand
/// (or gives it back uncommitted) and leaves its group.
pub async fn run(
    deps: NotifierDeps,
    shutdown: impl Future<Output = ()>,
) -> Result<(), NotifierError> {
    let deps = Arc::new(deps);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let mut channels: Vec<Channel> = Vec::new();
    for channel in &deps.settings.channels {
        if !channels.contains(channel) {
            channels.push(*channel);
        }
    }
    for channel in channels {
        let runner = runner::ChannelRunner::new(deps.clone(), channel)?;
        let stop = stop_rx.clone();
        tasks.spawn(async move { runner.run(stop).await });
    }
    tokio::pin!(shutdown);
    let mut result = Ok(());
    tokio::select! {
        _ = &mut shutdown => {}
        Some(first) = tasks.join_next() => {
            result = flatten(first);
        }
    }
    let _ = stop_tx.send(true);
    while let Some(done) = tasks.join_next().await {
        if let Err(e) = flatten(done)
            && result.is_ok()
        {
            result = Err(e);
        }
    }
    result
}

fn flatten(
    joined: Result<Result<(), NotifierError>, tokio::task::JoinError>,
) -> Result<(), NotifierError> {
    joined.map_err(|e| NotifierError::Channel {
        channel: "?",
        reason: e.to_string(),
    })?
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        settings: NotifierSettings,
    }

    #[test]
    fn defaults_and_backoff() {
        let cli = Cli::try_parse_from(["x", "--channels", "email,webhook"]).unwrap();
        let s = cli.settings;
        assert_eq!(s.channels, vec![Channel::Email, Channel::Webhook]);
        assert_eq!(s.group_id(Channel::Email), "notifier-email");
        assert_eq!(s.smtp_port, 2525);
        for attempt in 1..30 {
            let d = s.backoff(attempt);
            assert!(d <= s.retry_max, "{attempt}: {d:?}");
        }
        let first = s.backoff(1);
        assert!(first >= Duration::from_millis(250) && first <= Duration::from_millis(500));
        assert!(s.backoff(10) >= Duration::from_secs(15));
    }
}
