//! The outside world's receivers, real and on loopback: an SMTP server (`scripts/smtp-sink`,
//! aiosmtpd, in a child process whose mailbox is a directory) and an HTTP webhook receiver
//! (axum) that verifies signatures and records deliveries. Used by the notifier tests, the
//! end-to-end test and the chaos suite.
#![allow(
    clippy::unwrap_used,
    reason = "test harness: a failed unwrap fails the test that uses it"
)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::task::JoinHandle;

use crate::names;

/// The secret webhook signatures are checked with unless an endpoint has its own.
pub const SECRET: &str = "whsec_test_secret_0123456789";

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A free loopback port (bound, then released for the child to take).
pub fn free_port() -> u16 {
    // Below the kernel's ephemeral range (32768-60999 here): a service's port that is free
    // while the chaos suite restarts it cannot be taken by an outgoing connection meanwhile
    // (it was: "Address already in use" on a restarted payment processor). Above the test
    // stack's fixed ports (17000-19093).
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let start = (std::process::id() % 600) * 20;
    // Bounded: at most one pass over the range.
    for _ in 0..SPAN {
        let offset = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Ok(port) = u16::try_from(FIRST + (start + offset) % SPAN) else {
            continue;
        };
        if StdListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    let listener = StdListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// The repository's root (where `scripts/` is).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
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

impl std::fmt::Debug for SmtpSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpSink")
            .field("port", &self.port)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
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
    /// Endpoints that never answer (the request hangs until the client gives up).
    hanging: Mutex<std::collections::HashSet<String>>,
    /// Requests to hanging endpoints, counted as they arrive.
    hung_requests: AtomicU64,
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
    if state.hanging.lock().unwrap().contains(&endpoint) {
        state.hung_requests.fetch_add(1, Ordering::Relaxed);
        // Longer than any client waits: the sender's timeout ends it.
        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
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

    /// `endpoint` never answers.
    pub fn endpoint_hangs(&self, endpoint: &str) {
        self.state
            .hanging
            .lock()
            .unwrap()
            .insert(endpoint.to_owned());
    }

    /// Requests that reached hanging endpoints.
    pub fn hung_requests(&self) -> u64 {
        self.state.hung_requests.load(Ordering::Relaxed)
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

impl std::fmt::Debug for WebhookReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookReceiver")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}
