//! Shared parts of the notifier tests: a real SMTP server (`scripts/smtp-sink`, aiosmtpd) in a
//! child process whose mailbox is a directory, a real HTTP webhook receiver (axum) that
//! verifies signatures and counts deliveries, the notifier in-process or as its binary, and
//! notifications produced the way the booking processor does (keyed by user id).
#![allow(
    dead_code,
    clippy::unwrap_used,
    reason = "shared by several test binaries; a failed unwrap fails the test"
)]

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use boxoffice_avro::ids;
use boxoffice_avro::records::{NotificationKind, NotificationRequested, Record};
use boxoffice_sinks::notify::{
    Channel, NotifierDeps, NotifierMetrics, NotifierSettings, NotifyStore, run,
};
use boxoffice_sinks::schema::Keyspace;
use boxoffice_tests::names;
use boxoffice_tests::pipeline::Pipeline;
use hmac::{Hmac, Mac};
use rdkafka::producer::FutureRecord;
use sha2::Sha256;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const SECRET: &str = "whsec_test_secret_0123456789";

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A free loopback port (bound, then released for the child to take).
pub fn free_port() -> u16 {
    let listener = StdListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

// ------------------------------------------------------------------------------ notifications

/// A notification as the booking processor renders it (same id scheme).
pub fn notification(
    user_id: &str,
    order_id: &str,
    kind: NotificationKind,
    params: &[(&str, &str)],
    occurred_at: i64,
) -> NotificationRequested {
    let kind_name = boxoffice_sinks::notify::templates::kind_name(kind);
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
        topic_prefix: pipeline.prefix.clone(),
        group_prefix: format!("{}notifier-", pipeline.prefix),
        channels: channels.to_vec(),
        lanes: 8,
        smtp_host: "127.0.0.1".to_owned(),
        smtp_port,
        smtp_timeout: Duration::from_secs(5),
        email_from: "boxoffice <notifications@boxoffice.test>".to_owned(),
        webhook_timeout: Duration::from_secs(5),
        max_attempts: 6,
        retry_base: Duration::from_millis(100),
        retry_max: Duration::from_millis(800),
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
        let metrics = Arc::new(NotifierMetrics::default());
        let deps = NotifierDeps {
            kafka: pipeline.services.kafka(),
            codec: pipeline.codec.clone(),
            store: notify_store(pipeline).await,
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
            .env("RUST_LOG", "warn,boxoffice_sinks=info")
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

// ------------------------------------------------------------------------------ SMTP sink

/// `scripts/smtp-sink` (aiosmtpd) on a loopback port, storing messages in a directory.
pub struct SmtpSink {
    pub port: u16,
    pub dir: PathBuf,
    child: Option<Child>,
}

/// One received message.
#[derive(Debug, Clone)]
pub struct Email {
    pub file: String,
    pub message_id: String,
    pub to: String,
    pub subject: String,
    pub body: String,
}

impl SmtpSink {
    pub fn start() -> Self {
        let dir = std::env::temp_dir().join(names::unique("smtp_sink"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut sink = SmtpSink {
            port: free_port(),
            dir,
            child: None,
        };
        sink.restart();
        sink
    }

    /// A sink that is not running yet, on a port nobody listens on (SMTP down).
    pub fn down() -> Self {
        let dir = std::env::temp_dir().join(names::unique("smtp_sink"));
        std::fs::create_dir_all(&dir).unwrap();
        SmtpSink {
            port: free_port(),
            dir,
            child: None,
        }
    }

    /// Starts the server (again) on the same port and directory; returns once it listens.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "smtp-sink already running");
        let mut child = Command::new(repo_root().join("scripts/smtp-sink"))
            .arg("--dir")
            .arg(&self.dir)
            .arg("--port")
            .arg(self.port.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("scripts/smtp-sink (needs python3 and, once, network for aiosmtpd)");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        // The script prints one line once it accepts connections (or exits on failure).
        BufReader::new(stdout).read_line(&mut line).unwrap();
        assert!(
            line.contains("listening"),
            "smtp-sink did not start: {line:?}"
        );
        self.child = Some(child);
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Every message received so far, in arrival order (duplicates included).
    pub fn messages(&self) -> Vec<Email> {
        let mut files: Vec<String> = std::fs::read_dir(&self.dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".eml") && !name.starts_with('.'))
            .collect();
        files.sort_by_key(|name| {
            name.split('-')
                .next()
                .and_then(|ns| ns.parse::<u128>().ok())
                .unwrap_or(0)
        });
        files
            .into_iter()
            .map(|file| {
                let text = std::fs::read_to_string(self.dir.join(&file)).unwrap();
                parse_email(file, &text)
            })
            .collect()
    }

    /// Messages by Message-ID: what a reader that deduplicates sees.
    pub fn distinct(&self) -> HashMap<String, Vec<Email>> {
        let mut by_id: HashMap<String, Vec<Email>> = HashMap::new();
        for email in self.messages() {
            by_id
                .entry(email.message_id.clone())
                .or_default()
                .push(email);
        }
        by_id
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn parse_email(file: String, text: &str) -> Email {
    let (head, body) = text
        .split_once("\r\n\r\n")
        .or_else(|| text.split_once("\n\n"))
        .unwrap_or((text, ""));
    // Unfold continuation lines.
    let head = head
        .replace("\r\n ", " ")
        .replace("\r\n\t", " ")
        .replace("\n ", " ");
    let mut headers: HashMap<String, String> = HashMap::new();
    for line in head.lines() {
        if let Some((name, value)) = line.split_once(':') {
            headers
                .entry(name.trim().to_ascii_lowercase())
                .or_insert_with(|| value.trim().to_owned());
        }
    }
    let mut body = body.replace("\r\n", "\n");
    let encoding = headers.get("content-transfer-encoding").cloned();
    if encoding.is_some_and(|e| e.eq_ignore_ascii_case("quoted-printable")) {
        body = decode_quoted_printable(&body);
    }
    Email {
        file,
        message_id: headers.get("message-id").cloned().unwrap_or_default(),
        to: headers.get("to").cloned().unwrap_or_default(),
        subject: headers.get("subject").cloned().unwrap_or_default(),
        body,
    }
}

/// Soft line breaks removed, `=XX` decoded (enough for the notifier's ASCII/UTF-8 texts).
fn decode_quoted_printable(text: &str) -> String {
    let joined = text.replace("=\n", "");
    let bytes = joined.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'='
            && i + 2 < bytes.len()
            && let Some(byte) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ------------------------------------------------------------------------- webhook receiver

/// One delivery the receiver accepted (answered 2xx).
#[derive(Debug, Clone)]
pub struct Received {
    pub endpoint: String,
    pub delivery_id: String,
    pub body: serde_json::Value,
}

#[derive(Default)]
struct ReceiverState {
    received: Mutex<Vec<Received>>,
    /// Every request, including refused ones.
    requests: AtomicU64,
    bad_signatures: AtomicU64,
    /// While non-zero, every request is answered with this status.
    forced_status: AtomicU16,
    /// Endpoint name → status it always answers (410, 400, ...).
    endpoint_status: Mutex<HashMap<String, u16>>,
    /// Endpoint name → the secret its signatures are checked with ([`SECRET`] otherwise).
    endpoint_secrets: Mutex<HashMap<String, String>>,
}

/// A real HTTP server on 127.0.0.1 that verifies every signature (HMAC-SHA256 with [`SECRET`],
/// or the endpoint's own secret, over `<timestamp>.<body>`, implemented here independently of the notifier) and records
/// accepted deliveries.
pub struct WebhookReceiver {
    pub base_url: String,
    state: Arc<ReceiverState>,
    task: JoinHandle<()>,
}

async fn receive(
    State(state): State<Arc<ReceiverState>>,
    UrlPath(endpoint): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    state.requests.fetch_add(1, Ordering::Relaxed);
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let timestamp = header("x-boxoffice-timestamp");
    let secret = state
        .endpoint_secrets
        .lock()
        .unwrap()
        .get(&endpoint)
        .cloned()
        .unwrap_or_else(|| SECRET.to_owned());
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(&body);
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let fresh = timestamp
        .parse::<i64>()
        .is_ok_and(|t| (t - now_ms() / 1000).abs() < 300);
    if header("x-boxoffice-signature") != format!("v1={expected}") || !fresh {
        state.bad_signatures.fetch_add(1, Ordering::Relaxed);
        return StatusCode::UNAUTHORIZED;
    }
    if let Some(status) = state.endpoint_status.lock().unwrap().get(&endpoint) {
        return StatusCode::from_u16(*status).unwrap();
    }
    let forced = state.forced_status.load(Ordering::Relaxed);
    if forced != 0 {
        return StatusCode::from_u16(forced).unwrap();
    }
    state.received.lock().unwrap().push(Received {
        endpoint,
        delivery_id: header("x-boxoffice-delivery-id"),
        body: serde_json::from_slice(&body).unwrap_or_default(),
    });
    StatusCode::NO_CONTENT
}

impl WebhookReceiver {
    pub async fn start() -> Self {
        let state = Arc::new(ReceiverState::default());
        let app = axum::Router::new()
            .route("/hooks/{endpoint}", axum::routing::post(receive))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        WebhookReceiver {
            base_url,
            state,
            task,
        }
    }

    pub fn url(&self, endpoint: &str) -> String {
        format!("{}/hooks/{endpoint}", self.base_url)
    }

    /// Answer every request with `status` (0: behave normally again).
    pub fn force_status(&self, status: u16) {
        self.state.forced_status.store(status, Ordering::Relaxed);
    }

    /// `endpoint` always answers `status`.
    pub fn endpoint_answers(&self, endpoint: &str, status: u16) {
        self.state
            .endpoint_status
            .lock()
            .unwrap()
            .insert(endpoint.to_owned(), status);
    }

    /// Signatures for `endpoint` are checked with `secret` (one the API generated).
    pub fn endpoint_secret(&self, endpoint: &str, secret: &str) {
        self.state
            .endpoint_secrets
            .lock()
            .unwrap()
            .insert(endpoint.to_owned(), secret.to_owned());
    }

    /// `endpoint` behaves normally again.
    pub fn endpoint_recovers(&self, endpoint: &str) {
        self.state.endpoint_status.lock().unwrap().remove(endpoint);
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::Relaxed)
    }

    pub fn bad_signatures(&self) -> u64 {
        self.state.bad_signatures.load(Ordering::Relaxed)
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}
