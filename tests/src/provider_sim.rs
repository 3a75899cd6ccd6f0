//! The "boxoffice test provider": an in-memory payment provider shaped like Stripe, served over
//! real HTTP, that the payment processor's `ProviderGateway` charges through and that sends
//! signed webhooks to ingest's `POST /v1/payments/webhook`. [`start`] runs it in a test;
//! `src/bin/provider_sim.rs` runs it standalone (`cargo run -p boxoffice-tests --bin
//! provider_sim`).
//!
//! # The contract
//!
//! Every API call carries `Authorization: Bearer <api key>` (anything else: 401).
//!
//! - `POST /v1/charges`, header `Idempotency-Key: <payment id>`, body `{"amount_minor": i64,
//!   "currency": "EUR", "payment_method": "<token>", "metadata": {"payment_id", "order_id"}}`
//!   → 200 charge `{"id": "ch_...", "idempotency_key", "status": "pending" | "succeeded" |
//!   "failed", "amount_minor", "currency", "failure_code": null | "card_declined" |
//!   "insufficient_funds" | "processing_error", "failure_message", "metadata"}`. The same key
//!   again answers the same charge and never charges again (counted as a **replay**); the same
//!   key with another amount or currency → 409. A missing key or invalid body → 400.
//! - `GET /v1/charges/{idempotency_key}` → 200 charge | 404.
//! - `POST /v1/refunds`, header `Idempotency-Key: <refund id>`, body `{"charge": "ch_...",
//!   "amount_minor", "currency"}` → 200 `{"id": "re_...", "status": "succeeded", "charge",
//!   "amount_minor", "currency"}` | 400 `{"error"}` (unknown charge, not captured, other
//!   currency) | 402 `{"error"}` (more than captured). The same key again answers the same
//!   refund. `GET /v1/refunds/{idempotency_key}` → 200 | 404.
//! - `GET /_sim/stats` (no key) → [`SimStats`] as JSON.
//!
//! Tokens (`payment_method`):
//!
//! | Token | Answer | Then, after the completion delay (default 200 ms) |
//! |---|---|---|
//! | `tok_success` | `pending` | `succeeded`, webhook `charge.succeeded` |
//! | `tok_declined` | `pending` | `failed` `card_declined`, webhook `charge.failed` |
//! | `tok_insufficient_funds` | `pending` | `failed` `insufficient_funds`, webhook `charge.failed` |
//! | `tok_timeout` | **504** (the charge is recorded anyway: the outcome is unknown to the caller) | `succeeded`, webhook `charge.succeeded` |
//! | `tok_webhook_lost` | `pending` | `succeeded`, **no webhook** (only `GET` reveals it) |
//! | anything else | `failed` `card_declined` at once | webhook `charge.failed` at once |
//!
//! # Webhooks
//!
//! `POST <webhook url>` with body `{"id": "evt_<unique>", "type": "charge.succeeded" |
//! "charge.failed", "created": <unix s>, "data": {"object": <charge>}}` and header
//! `Boxoffice-Provider-Signature: t=<unix s>,v1=<lower-case hex HMAC-SHA256(secret,
//! "<t>.<raw body>")>`, `t` being the signing time of each attempt. A 2xx is delivered; any
//! other answer or a network error is retried with backoff (`webhook_backoff` doubling, at most
//! `webhook_max_attempts` attempts, the same event id and body, a fresh signature). With
//! `duplicate_webhooks` every event is delivered twice (two full deliveries, one after the
//! other), to exercise the receiver's deduplication.
//!
//! # Stats
//!
//! [`SimStats`]: charges created, captures (charges that succeeded), replays (charge calls
//! with a key already used), charge queries (`GET`), conflicts (409s), refunds, webhooks
//! delivered, webhook attempts that failed and deliveries given up. The ledger is in memory:
//! a restart of the simulator forgets everything (unlike a real provider); tests keep one
//! simulator for their duration.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::Sha256;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The local-development API key every side defaults to.
pub const DEFAULT_API_KEY: &str = "sk_boxoffice_local_dev";
/// The local-development webhook secret every side defaults to.
pub const DEFAULT_WEBHOOK_SECRET: &str = "whsec_boxoffice_local_dev_secret";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8090";
pub const DEFAULT_WEBHOOK_URL: &str = "http://127.0.0.1:8000/v1/payments/webhook";
/// The signature header of webhook deliveries.
pub const SIGNATURE_HEADER: &str = "Boxoffice-Provider-Signature";

pub const TOKEN_SUCCESS: &str = "tok_success";
pub const TOKEN_DECLINED: &str = "tok_declined";
pub const TOKEN_INSUFFICIENT_FUNDS: &str = "tok_insufficient_funds";
pub const TOKEN_TIMEOUT: &str = "tok_timeout";
pub const TOKEN_WEBHOOK_LOST: &str = "tok_webhook_lost";

/// How the simulator behaves.
#[derive(Clone)]
pub struct SimSettings {
    pub listen: SocketAddr,
    pub api_key: String,
    /// Where events are delivered; `None`: nowhere (only `GET` reveals outcomes).
    pub webhook_url: Option<String>,
    pub webhook_secret: String,
    /// How long a pending charge takes to complete.
    pub completion_delay: Duration,
    /// Deliver every event twice.
    pub duplicate_webhooks: bool,
    pub webhook_max_attempts: u32,
    /// The first retry's delay; doubles with every attempt.
    pub webhook_backoff: Duration,
}

impl Default for SimSettings {
    fn default() -> Self {
        SimSettings {
            listen: DEFAULT_LISTEN
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8090))),
            api_key: DEFAULT_API_KEY.to_owned(),
            webhook_url: Some(DEFAULT_WEBHOOK_URL.to_owned()),
            webhook_secret: DEFAULT_WEBHOOK_SECRET.to_owned(),
            completion_delay: Duration::from_millis(200),
            duplicate_webhooks: false,
            webhook_max_attempts: 8,
            webhook_backoff: Duration::from_millis(100),
        }
    }
}

impl std::fmt::Debug for SimSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key and the secret are never printed.
        f.debug_struct("SimSettings")
            .field("listen", &self.listen)
            .field("webhook_url", &self.webhook_url)
            .field("completion_delay", &self.completion_delay)
            .field("duplicate_webhooks", &self.duplicate_webhooks)
            .field("webhook_max_attempts", &self.webhook_max_attempts)
            .field("webhook_backoff", &self.webhook_backoff)
            .finish_non_exhaustive()
    }
}

/// What the simulator counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimStats {
    /// Charges created (one per idempotency key).
    pub charges: u64,
    /// Charges that succeeded.
    pub captures: u64,
    /// Charge calls with a key already used (answered with the existing charge).
    pub replays: u64,
    /// `GET /v1/charges/{key}` calls (found or not).
    pub queries: u64,
    /// Charge calls with a key already used for another amount or currency (409).
    pub conflicts: u64,
    pub refunds: u64,
    /// Webhook deliveries acknowledged with a 2xx.
    pub webhooks_sent: u64,
    /// Webhook attempts answered with anything else, or that failed on the network.
    pub webhook_attempts_failed: u64,
    /// Deliveries given up after the last attempt.
    pub webhooks_abandoned: u64,
}

#[derive(Debug, Default)]
struct Counters {
    charges: AtomicU64,
    captures: AtomicU64,
    replays: AtomicU64,
    queries: AtomicU64,
    conflicts: AtomicU64,
    refunds: AtomicU64,
    webhooks_sent: AtomicU64,
    webhook_attempts_failed: AtomicU64,
    webhooks_abandoned: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> SimStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        SimStats {
            charges: get(&self.charges),
            captures: get(&self.captures),
            replays: get(&self.replays),
            queries: get(&self.queries),
            conflicts: get(&self.conflicts),
            refunds: get(&self.refunds),
            webhooks_sent: get(&self.webhooks_sent),
            webhook_attempts_failed: get(&self.webhook_attempts_failed),
            webhooks_abandoned: get(&self.webhooks_abandoned),
        }
    }
}

/// The charge's metadata: what the caller attached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Metadata {
    #[serde(default)]
    pub payment_id: String,
    #[serde(default)]
    pub order_id: String,
}

/// A charge as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Charge {
    pub id: String,
    pub idempotency_key: String,
    pub status: String,
    pub amount_minor: i64,
    pub currency: String,
    pub failure_code: Option<String>,
    pub failure_message: Option<String>,
    pub metadata: Metadata,
}

/// A refund as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refund {
    pub id: String,
    pub idempotency_key: String,
    pub status: String,
    pub charge: String,
    pub amount_minor: i64,
    pub currency: String,
}

/// One webhook event the simulator sent (or tried to).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentEvent {
    pub event_id: String,
    pub event_type: String,
    pub idempotency_key: String,
}

#[derive(Debug, Default)]
struct Ledger {
    charges: HashMap<String, Charge>,
    /// Charge id → idempotency key.
    by_id: HashMap<String, String>,
    refunds: HashMap<String, Refund>,
    /// Refunded amount per charge id.
    refunded: HashMap<String, i64>,
    events: Vec<SentEvent>,
}

struct Shared {
    settings: SimSettings,
    ledger: Mutex<Ledger>,
    counters: Counters,
    http: reqwest::Client,
    /// Completions and deliveries in flight, aborted on shutdown.
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Shared {
    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        // A panic while holding the ledger leaves it whole (every change is a few inserts).
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn spawn(self: &Arc<Self>, task: impl Future<Output = ()> + Send + 'static) {
        let handle = tokio::spawn(task);
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.retain(|t| !t.is_finished());
        tasks.push(handle);
    }
}

/// A running simulator.
pub struct ProviderSim {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

impl std::fmt::Debug for ProviderSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderSim")
            .field("addr", &self.addr)
            .field("settings", &self.shared.settings)
            .finish_non_exhaustive()
    }
}

/// Why the simulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error(
        "the provider simulator cannot listen on {0} (check --listen / PROVIDER_SIM_LISTEN): {1}"
    )]
    Bind(SocketAddr, #[source] std::io::Error),
    #[error("the provider simulator's HTTP client could not be built: {0}")]
    Client(#[from] reqwest::Error),
}

/// Starts a simulator; `settings.listen` may use port 0 (see [`ProviderSim::addr`]).
pub async fn start(settings: SimSettings) -> Result<ProviderSim, SimError> {
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|e| SimError::Bind(settings.listen, e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| SimError::Bind(settings.listen, e))?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(SimError::Client)?;
    let shared = Arc::new(Shared {
        settings,
        ledger: Mutex::new(Ledger::default()),
        counters: Counters::default(),
        http,
        tasks: Mutex::new(Vec::new()),
    });
    let app = Router::new()
        .route("/v1/charges", post(create_charge))
        .route("/v1/charges/{key}", get(get_charge))
        .route("/v1/refunds", post(create_refund))
        .route("/v1/refunds/{key}", get(get_refund))
        .route("/_sim/stats", get(stats))
        .with_state(shared.clone());
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });
    tracing::info!(%addr, webhook_url = ?shared.settings.webhook_url, "provider simulator listening");
    Ok(ProviderSim {
        addr,
        shared,
        stop: Some(stop),
        server: Some(server),
    })
}

impl ProviderSim {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`: the processor's `--provider-url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn stats(&self) -> SimStats {
        self.shared.counters.snapshot()
    }

    /// The charge made with `idempotency_key`, as it stands now.
    pub fn charge(&self, idempotency_key: &str) -> Option<Charge> {
        self.shared.ledger().charges.get(idempotency_key).cloned()
    }

    /// Every event created so far (once per event, however often it was delivered).
    pub fn events(&self) -> Vec<SentEvent> {
        self.shared.ledger().events.clone()
    }

    /// Stops serving and abandons completions and deliveries still pending.
    pub async fn shutdown(mut self) {
        self.stop_now().await;
    }

    async fn stop_now(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
        }
        let tasks =
            std::mem::take(&mut *self.shared.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for task in tasks {
            task.abort();
        }
    }
}

impl Drop for ProviderSim {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        for task in self
            .shared
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            task.abort();
        }
    }
}

// ------------------------------------------------------------------------------------ HTTP

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// The 401 for a call without the right API key; `None` when it has it.
fn unauthorised(shared: &Shared, headers: &HeaderMap) -> Option<Response> {
    let expected = format!("Bearer {}", shared.settings.api_key);
    match headers.get("authorization").and_then(|v| v.to_str().ok()) {
        Some(value) if value == expected => None,
        _ => Some(error(StatusCode::UNAUTHORIZED, "invalid API key")),
    }
}

fn idempotency_key(headers: &HeaderMap) -> Option<String> {
    headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty() && k.len() <= 255)
        .map(str::to_owned)
}

#[derive(Debug, Deserialize)]
struct ChargeBody {
    amount_minor: i64,
    currency: String,
    payment_method: String,
    #[serde(default)]
    metadata: Metadata,
}

#[derive(Debug, Deserialize)]
struct RefundBody {
    charge: String,
    amount_minor: i64,
    currency: String,
}

fn valid_currency(currency: &str) -> bool {
    currency.len() == 3 && currency.bytes().all(|b| b.is_ascii_uppercase())
}

fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// What a token does (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    /// Pending, then this final status (and failure code), with or without a webhook.
    Completes {
        failure: Option<(&'static str, &'static str)>,
        webhook: bool,
    },
    /// Recorded and completing like `tok_success`, but the call answers 504.
    TimesOut,
    /// Failed at once with `card_declined`.
    DeclinedAtOnce,
}

fn behaviour(token: &str) -> Behaviour {
    match token {
        TOKEN_SUCCESS => Behaviour::Completes {
            failure: None,
            webhook: true,
        },
        TOKEN_DECLINED => Behaviour::Completes {
            failure: Some(("card_declined", "Your card was declined.")),
            webhook: true,
        },
        TOKEN_INSUFFICIENT_FUNDS => Behaviour::Completes {
            failure: Some(("insufficient_funds", "Your card has insufficient funds.")),
            webhook: true,
        },
        TOKEN_WEBHOOK_LOST => Behaviour::Completes {
            failure: None,
            webhook: false,
        },
        TOKEN_TIMEOUT => Behaviour::TimesOut,
        _ => Behaviour::DeclinedAtOnce,
    }
}

async fn create_charge(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Some(refused) = unauthorised(&shared, &headers) {
        return refused;
    }
    let Some(key) = idempotency_key(&headers) else {
        return error(StatusCode::BAD_REQUEST, "Idempotency-Key header required");
    };
    let body: ChargeBody = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("invalid body: {e}")),
    };
    if body.amount_minor <= 0 || !valid_currency(&body.currency) || body.payment_method.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "amount_minor > 0, a currency and a payment_method are required",
        );
    }
    let behaviour = behaviour(&body.payment_method);
    let charge = {
        let mut ledger = shared.ledger();
        if let Some(existing) = ledger.charges.get(&key) {
            if existing.amount_minor != body.amount_minor || existing.currency != body.currency {
                shared.counters.conflicts.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(idempotency_key = %key, "idempotency key reused with another amount");
                return error(
                    StatusCode::CONFLICT,
                    "idempotency key already used with another amount or currency",
                );
            }
            shared.counters.replays.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(idempotency_key = %key, "charge replayed (answered with the existing charge)");
            return (StatusCode::OK, Json(existing.clone())).into_response();
        }
        let declined_now = behaviour == Behaviour::DeclinedAtOnce;
        let charge = Charge {
            id: unique("ch"),
            idempotency_key: key.clone(),
            status: if declined_now { "failed" } else { "pending" }.to_owned(),
            amount_minor: body.amount_minor,
            currency: body.currency.clone(),
            failure_code: declined_now.then(|| "card_declined".to_owned()),
            failure_message: declined_now.then(|| "Your card was declined.".to_owned()),
            metadata: body.metadata,
        };
        ledger.by_id.insert(charge.id.clone(), key.clone());
        ledger.charges.insert(key.clone(), charge.clone());
        charge
    };
    shared.counters.charges.fetch_add(1, Ordering::Relaxed);
    tracing::info!(idempotency_key = %key, charge_id = %charge.id, status = %charge.status, "charge created");
    match behaviour {
        Behaviour::DeclinedAtOnce => {
            send_event(&shared, "charge.failed", charge.clone());
            (StatusCode::OK, Json(charge)).into_response()
        }
        Behaviour::Completes { failure, webhook } => {
            complete_later(&shared, key, failure, webhook);
            (StatusCode::OK, Json(charge)).into_response()
        }
        Behaviour::TimesOut => {
            complete_later(&shared, key, None, true);
            error(StatusCode::GATEWAY_TIMEOUT, "upstream timeout")
        }
    }
}

/// Completes a pending charge after the completion delay, then sends its event.
fn complete_later(
    shared: &Arc<Shared>,
    key: String,
    failure: Option<(&'static str, &'static str)>,
    webhook: bool,
) {
    let task_shared = shared.clone();
    shared.spawn(async move {
        let shared = task_shared;
        tokio::time::sleep(shared.settings.completion_delay).await;
        let completed = {
            let mut ledger = shared.ledger();
            let Some(charge) = ledger.charges.get_mut(&key) else {
                return;
            };
            match failure {
                None => charge.status = "succeeded".to_owned(),
                Some((code, message)) => {
                    charge.status = "failed".to_owned();
                    charge.failure_code = Some(code.to_owned());
                    charge.failure_message = Some(message.to_owned());
                }
            }
            charge.clone()
        };
        if failure.is_none() {
            shared.counters.captures.fetch_add(1, Ordering::Relaxed);
        }
        tracing::info!(idempotency_key = %key, status = %completed.status, webhook, "charge completed");
        if webhook {
            let kind = if failure.is_none() {
                "charge.succeeded"
            } else {
                "charge.failed"
            };
            send_event(&shared, kind, completed);
        }
    });
}

async fn get_charge(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(key): Path<String>,
) -> Response {
    if let Some(refused) = unauthorised(&shared, &headers) {
        return refused;
    }
    shared.counters.queries.fetch_add(1, Ordering::Relaxed);
    let found = shared.ledger().charges.get(&key).cloned();
    tracing::info!(idempotency_key = %key, found = found.is_some(), "charge queried");
    match found {
        Some(charge) => (StatusCode::OK, Json(charge)).into_response(),
        None => error(StatusCode::NOT_FOUND, "no such charge"),
    }
}

async fn create_refund(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Some(refused) = unauthorised(&shared, &headers) {
        return refused;
    }
    let Some(key) = idempotency_key(&headers) else {
        return error(StatusCode::BAD_REQUEST, "Idempotency-Key header required");
    };
    let body: RefundBody = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("invalid body: {e}")),
    };
    let mut ledger = shared.ledger();
    if let Some(existing) = ledger.refunds.get(&key) {
        return (StatusCode::OK, Json(existing.clone())).into_response();
    }
    let Some(charge) = ledger
        .by_id
        .get(&body.charge)
        .and_then(|k| ledger.charges.get(k))
        .cloned()
    else {
        return error(StatusCode::BAD_REQUEST, "no such charge");
    };
    if charge.status != "succeeded" {
        return error(StatusCode::BAD_REQUEST, "the charge is not captured");
    }
    if body.currency != charge.currency {
        return error(
            StatusCode::BAD_REQUEST,
            "the currency differs from the charge's",
        );
    }
    let already = ledger.refunded.get(&charge.id).copied().unwrap_or(0);
    if body.amount_minor <= 0 || already + body.amount_minor > charge.amount_minor {
        return error(
            StatusCode::PAYMENT_REQUIRED,
            "the refund exceeds the captured amount",
        );
    }
    let refund = Refund {
        id: unique("re"),
        idempotency_key: key.clone(),
        status: "succeeded".to_owned(),
        charge: charge.id.clone(),
        amount_minor: body.amount_minor,
        currency: body.currency,
    };
    *ledger.refunded.entry(charge.id).or_default() += body.amount_minor;
    ledger.refunds.insert(key, refund.clone());
    drop(ledger);
    shared.counters.refunds.fetch_add(1, Ordering::Relaxed);
    (StatusCode::OK, Json(refund)).into_response()
}

async fn get_refund(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(key): Path<String>,
) -> Response {
    if let Some(refused) = unauthorised(&shared, &headers) {
        return refused;
    }
    match shared.ledger().refunds.get(&key) {
        Some(refund) => (StatusCode::OK, Json(refund.clone())).into_response(),
        None => error(StatusCode::NOT_FOUND, "no such refund"),
    }
}

async fn stats(State(shared): State<Arc<Shared>>) -> Json<SimStats> {
    Json(shared.counters.snapshot())
}

// -------------------------------------------------------------------------------- webhooks

fn unix_seconds() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// `t=<t>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
pub fn signature(secret: &[u8], t: i64, body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        // HMAC takes keys of any length.
        Err(_) => unreachable!("HMAC accepts every key length"),
    };
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut hex = String::with_capacity(digest.len() * 2);
    for byte in digest {
        use std::fmt::Write as _;
        let _ = write!(hex, "{byte:02x}");
    }
    format!("t={t},v1={hex}")
}

/// Creates an event for `charge` and delivers it (twice with `duplicate_webhooks`).
fn send_event(shared: &Arc<Shared>, kind: &str, charge: Charge) {
    let Some(url) = shared.settings.webhook_url.clone() else {
        return;
    };
    let event_id = unique("evt");
    shared.ledger().events.push(SentEvent {
        event_id: event_id.clone(),
        event_type: kind.to_owned(),
        idempotency_key: charge.idempotency_key.clone(),
    });
    let body = json!({
        "id": event_id,
        "type": kind,
        "created": unix_seconds(),
        "data": { "object": charge },
    })
    .to_string()
    .into_bytes();
    let task_shared = shared.clone();
    shared.spawn(async move {
        let shared = task_shared;
        let deliveries = if shared.settings.duplicate_webhooks {
            2
        } else {
            1
        };
        for _ in 0..deliveries {
            deliver(&shared, &url, &event_id, &body).await;
        }
    });
}

/// One delivery: attempts with backoff until a 2xx or the last attempt.
async fn deliver(shared: &Shared, url: &str, event_id: &str, body: &[u8]) {
    let settings = &shared.settings;
    let mut pause = settings.webhook_backoff;
    for attempt in 1..=settings.webhook_max_attempts.max(1) {
        let header = signature(settings.webhook_secret.as_bytes(), unix_seconds(), body);
        let sent = shared
            .http
            .post(url)
            .header("content-type", "application/json")
            .header(SIGNATURE_HEADER, header)
            .body(body.to_vec())
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => {
                shared
                    .counters
                    .webhooks_sent
                    .fetch_add(1, Ordering::Relaxed);
                tracing::info!(event_id, attempt, "webhook delivered");
                return;
            }
            Ok(response) => {
                shared
                    .counters
                    .webhook_attempts_failed
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    event_id,
                    attempt,
                    status = response.status().as_u16(),
                    "webhook refused; retrying"
                );
            }
            Err(e) => {
                shared
                    .counters
                    .webhook_attempts_failed
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(event_id, attempt, error = %e, "webhook not delivered; retrying");
            }
        }
        if attempt < settings.webhook_max_attempts {
            tokio::time::sleep(pause).await;
            pause = pause.saturating_mul(2);
        }
    }
    shared
        .counters
        .webhooks_abandoned
        .fetch_add(1, Ordering::Relaxed);
    tracing::error!(event_id, "webhook abandoned after the last attempt");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_t_dot_body_in_lower_case_hex() {
        // Computed independently (Python's hmac module).
        assert_eq!(
            signature(
                DEFAULT_WEBHOOK_SECRET.as_bytes(),
                1_700_000_000,
                br#"{"id":"evt_1"}"#
            ),
            "t=1700000000,v1=afde0764d88db77838f5e39cbc5267152865aa0bf38f200e808b3cf33c0bfb00"
        );
    }

    #[test]
    fn tokens_choose_the_behaviour() {
        assert_eq!(behaviour("tok_timeout"), Behaviour::TimesOut);
        assert_eq!(behaviour("4242424242424242"), Behaviour::DeclinedAtOnce);
        assert!(matches!(
            behaviour("tok_webhook_lost"),
            Behaviour::Completes {
                webhook: false,
                failure: None
            }
        ));
    }
}
