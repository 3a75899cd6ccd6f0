//! Shared parts of the notifier tests: a real SMTP server (`scripts/smtp-sink`, aiosmtpd) in a
//! child process whose mailbox is a directory, a real HTTP webhook receiver (axum) that
//! verifies signatures and counts deliveries, the notifier in-process or as its binary, and
//! notifications produced the way the booking processor does (keyed by user id).
#![allow(
    dead_code,
    clippy::unwrap_used,
    reason = "shared by several test binaries; a failed unwrap fails the test"
)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use boxoffice_avro::ids;
use boxoffice_avro::records::{NotificationKind, NotificationRequested, Record};
use boxoffice_sinks::notify::{
    Channel, NotifierDeps, NotifierMetrics, NotifierSettings, NotifyStore, run,
};
use boxoffice_store::schema::Keyspace;
use boxoffice_store::watermarks::WatermarkStore;
use boxoffice_tests::pipeline::Pipeline;
use boxoffice_topics::names::TopicPrefix;
use rdkafka::producer::FutureRecord;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[allow(
    unused_imports,
    reason = "each test binary that includes this module uses a different subset"
)]
pub use boxoffice_tests::receivers::{
    Email, Received, SECRET, SmtpSink, WebhookReceiver, free_port, repo_root,
};

// ------------------------------------------------------------------------------ notifications

/// A notification as the booking processor renders it (same id scheme).
pub fn notification(
    user_id: &str,
    order_id: &str,
    kind: NotificationKind,
    params: &[(&str, &str)],
    occurred_at: i64,
) -> NotificationRequested {
    let kind_name = kind.wire_name();
    NotificationRequested {
        record_id: ids::record_id("notification", &[order_id, kind_name]),
        user_id: user_id.to_owned(),
        order_id: Some(order_id.to_owned()),
        event_id: Some("00000000-0000-0000-0000-00000000e001".to_owned()),
        kind,
        params: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        occurred_at,
    }
}

/// The usual life of an order: reserved, then confirmed with tickets (two notifications).
pub fn order_life(user_id: &str, order_id: &str, at: i64) -> Vec<NotificationRequested> {
    let deadline = (at + 600_000).to_string();
    let tickets = ids::ticket_ids(order_id, 2).join(",");
    vec![
        notification(
            user_id,
            order_id,
            NotificationKind::OrderReserved,
            &[
                ("event_name", "Night Gig"),
                ("number_slot", "2"),
                ("amount_minor", "5000"),
                ("currency", "EUR"),
                ("hold_expires_at", &deadline),
            ],
            at,
        ),
        notification(
            user_id,
            order_id,
            NotificationKind::OrderConfirmed,
            &[
                ("event_name", "Night Gig"),
                ("number_slot", "2"),
                ("amount_minor", "5000"),
                ("currency", "EUR"),
                ("ticket_ids", &tickets),
            ],
            at + 1,
        ),
    ]
}

pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Produces notifications to the pipeline's topic, keyed by user id, one after the other (so
/// each user's are in order in their partition).
pub async fn produce(pipeline: &Pipeline, notifications: &[NotificationRequested]) {
    for n in notifications {
        let payload = pipeline
            .codec
            .encode(&pipeline.topics.notifications, n)
            .await
            .unwrap();
        pipeline
            .producer
            .send(
                FutureRecord::to(&pipeline.topics.notifications)
                    .key(n.key().as_bytes())
                    .payload(&payload),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
}

/// Writes a `users` row as ingest does (only the columns the notifier reads matter).
pub async fn add_user(pipeline: &Pipeline, user_id: &str, email: Option<&str>) {
    pipeline
        .session
        .query_unpaged(
            format!(
                "INSERT INTO \"{}\".users (id, email, user_name) VALUES (?, ?, ?)",
                pipeline.keyspace
            ),
            (user_id, email.unwrap_or_default(), user_id),
        )
        .await
        .unwrap();
}

pub async fn notify_store(pipeline: &Pipeline) -> Arc<NotifyStore> {
    let keyspace = Keyspace::new(&pipeline.keyspace).unwrap();
    Arc::new(
        NotifyStore::new(pipeline.session.clone(), &keyspace)
            .await
            .unwrap(),
    )
}

// ------------------------------------------------------------------------------- notifier

pub fn settings(pipeline: &Pipeline, channels: &[Channel], smtp_port: u16) -> NotifierSettings {
    NotifierSettings {
        topic_prefix: TopicPrefix::new(&pipeline.prefix)
            .expect("test prefixes are valid topic-name starts"),
        group_prefix: format!("{}notifier-", pipeline.prefix),
        channels: channels.to_vec(),
        lanes: 8,
        smtp_host: "127.0.0.1".to_owned(),
        smtp_port,
        smtp_timeout: Duration::from_secs(5),
        email_from: "boxoffice <notifications@boxoffice.test>".to_owned(),
        webhook_timeout: Duration::from_secs(5),
        webhook_endpoint_queue: 32,
        // The default: suspended once a delivery has run out of attempts (the isolation test
        // sets its own).
        webhook_suspend_after: None,
        webhook_suspend_for: Duration::from_secs(30),
        webhook_suspend_max: Duration::from_secs(900),
        // The receivers listen on loopback.
        egress: boxoffice_runtime::egress::EgressArgs::loopback(),
        max_attempts: 6,
        retry_base: Duration::from_millis(100),
        retry_max: Duration::from_millis(800),
        retry_budget: Duration::from_secs(60),
    }
}

/// The notifier running in this process.
pub struct RunningNotifier {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
    pub metrics: Arc<NotifierMetrics>,
}

impl RunningNotifier {
    pub async fn start(pipeline: &Pipeline, settings: NotifierSettings) -> Self {
        let watermarks = pipeline.watermarks().await.unwrap();
        Self::start_with(pipeline, settings, watermarks).await
    }

    /// [`start`](Self::start) with its watermarks read and written through `watermarks`.
    pub async fn start_with(
        pipeline: &Pipeline,
        settings: NotifierSettings,
        watermarks: Arc<WatermarkStore>,
    ) -> Self {
        let metrics = Arc::new(NotifierMetrics::default());
        let deps = NotifierDeps {
            kafka: pipeline.services.kafka(),
            codec: pipeline.codec.clone(),
            store: notify_store(pipeline).await,
            watermarks,
            settings,
            metrics: metrics.clone(),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            run(deps, async {
                let _ = stopped.await;
            })
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
        });
        RunningNotifier {
            stop: Some(stop),
            task,
            metrics,
        }
    }

    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), self.task).await??
    }
}

/// The `boxoffice-notifier` binary next to the test binaries (`cargo build --workspace --bins`).
pub fn notifier_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let binary = exe
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .join("boxoffice-notifier");
    assert!(
        binary.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test does)",
        binary.display()
    );
    binary
}

/// The notifier binary as a child process (killed on drop).
pub struct NotifierChild(pub Child);

impl NotifierChild {
    pub fn start(pipeline: &Pipeline, smtp_port: u16, lanes: usize) -> Self {
        let services = &pipeline.services;
        let child = Command::new(notifier_binary())
            .env("BOXOFFICE_DEV", "1")
            // Webhook receivers in the tests listen on loopback.
            .env(
                "WEBHOOK_ALLOW_NETWORKS",
                boxoffice_runtime::egress::LOCAL_STACK_NETWORKS,
            )
            .env("KAFKA_BOOTSTRAP_SERVERS", &services.kafka_bootstrap)
            .env("SCYLLA_URI", &services.scylla_uri)
            .env("SCHEMA_REGISTRY_URL", &services.registry_url)
            .env("SCYLLA_KEYSPACE", &pipeline.keyspace)
            .env("BOXOFFICE_TOPIC_PREFIX", &pipeline.prefix)
            .env(
                "NOTIFIER_GROUP_PREFIX",
                format!("{}notifier-", pipeline.prefix),
            )
            .env("NOTIFIER_SMTP_PORT", smtp_port.to_string())
            .env("NOTIFIER_LANES", lanes.to_string())
            .env("NOTIFIER_METRICS_ADDR", "127.0.0.1:0")
            .env("NOTIFIER_RETRY_BASE", "100ms")
            .env("NOTIFIER_RETRY_MAX", "800ms")
            .env(
                "RUST_LOG",
                "warn,boxoffice_sinks=info,boxoffice_store=info,boxoffice_runtime=info",
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        NotifierChild(child)
    }

    /// SIGKILL: no shutdown, no final commit.
    pub fn kill9(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for NotifierChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
