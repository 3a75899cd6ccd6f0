//! The fans of the chaos suite, through ingest's public HTTP API as a browser or app would:
//! registered and logged in, some with a webhook endpoint; a flash sale where every request
//! carries an `Idempotency-Key` and a 503 (or a refused connection) is retried with the same
//! key until a deadline; and a payer that pays every reservation of the sale as it appears.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use boxoffice_avro::Codec;
use boxoffice_avro::records::OrderEvent;
use futures::StreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::Services;
use crate::names;
use crate::receivers::WebhookReceiver;

const PASSWORD: &str = "a chaos suite password";

/// One fan.
#[derive(Debug, Clone)]
pub struct Fan {
    pub user_id: String,
    pub login: String,
    pub email: String,
    pub token: String,
    /// The webhook receiver's endpoint name when the fan registered one.
    pub webhook: Option<String>,
}

/// A JSON answer.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
    /// The `Retry-After` header, if any.
    pub retry_after: Option<String>,
}

/// ingest's HTTP API.
#[derive(Debug, Clone)]
pub struct Api {
    pub base: String,
    http: reqwest::Client,
}

impl Api {
    pub fn new(base: &str) -> anyhow::Result<Api> {
        Ok(Api {
            base: base.to_owned(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .pool_max_idle_per_host(64)
                .build()?,
        })
    }

    /// One request; `Err` only when no answer came (connection refused, timeout).
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Result<Answer, reqwest::Error> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response.json::<Value>().await.unwrap_or(Value::Null);
        Ok(Answer {
            status,
            body,
            retry_after,
        })
    }

    async fn post(&self, path: &str, token: Option<&str>, body: Value) -> anyhow::Result<Answer> {
        Ok(self
            .send(reqwest::Method::POST, path, token, Some(body), &[])
            .await?)
    }

    pub async fn login(&self, login: &str, password: &str) -> anyhow::Result<String> {
        let answer = self
            .post(
                "/v1/login",
                None,
                json!({"login": login, "password": password}),
            )
            .await?;
        anyhow::ensure!(answer.status == StatusCode::OK, "login {login}: {answer:?}");
        answer.body["access_token"]
            .as_str()
            .map(str::to_owned)
            .context("no access token")
    }

    /// Creates a paid event (45.00 EUR, up to 4 per order) on sale now; returns its id.
    pub async fn create_event(
        &self,
        admin: &str,
        name: &str,
        capacity: u32,
    ) -> anyhow::Result<String> {
        let answer = self
            .post(
                "/v1/tickets",
                Some(admin),
                json!({"name": name, "description": "Chaos suite sale", "venue": "Main hall",
                       "starts_at": "2031-06-01T20:00:00Z", "price_minor": 4500, "currency": "EUR",
                       "capacity": capacity, "sale_starts_at": "2020-01-01T00:00:00Z",
                       "sale_ends_at": "2031-06-01T18:00:00Z", "max_per_order": 4,
                       // Each fan books many times; the invariants are about capacity.
                       "max_per_user": 0}),
            )
            .await?;
        anyhow::ensure!(
            answer.status == StatusCode::CREATED,
            "creating {name}: {answer:?}"
        );
        answer.body["id"]
            .as_str()
            .map(str::to_owned)
            .context("no event id")
    }

    /// Registers and logs in `count` fans (`admin` verifies their addresses); every fourth also
    /// registers a webhook endpoint.
    pub async fn fans(
        &self,
        admin: &str,
        count: usize,
        receiver: &WebhookReceiver,
    ) -> anyhow::Result<Vec<Fan>> {
        let prefix = names::unique("fan");
        let made = futures::stream::iter(0..count)
            .map(|i| {
                let prefix = prefix.clone();
                async move {
                    self.fan(admin, &format!("{prefix}_{i}"), i % 4 == 0, receiver)
                        .await
                }
            })
            .buffer_unordered(8)
            .collect::<Vec<_>>()
            .await;
        made.into_iter().collect()
    }

    async fn fan(
        &self,
        admin: &str,
        login: &str,
        webhook: bool,
        receiver: &WebhookReceiver,
    ) -> anyhow::Result<Fan> {
        let email = format!("{login}@example.com");
        let account = crate::accounts::register_verified(
            &self.http,
            &self.base,
            admin,
            &json!({"email": email, "user_name": login, "first_name": "Chaos", "last_name": "Fan",
                    "password": PASSWORD, "mobile_phone": "+49 30 1234567"}),
        )
        .await?;
        let mut fan = Fan {
            user_id: account.user_id,
            login: login.to_owned(),
            email,
            token: account.access_token,
            webhook: None,
        };
        if webhook {
            let endpoint = self
                .post(
                    "/v1/webhooks",
                    Some(&fan.token),
                    json!({"url": receiver.url(login), "description": "chaos"}),
                )
                .await?;
            anyhow::ensure!(
                endpoint.status == StatusCode::CREATED,
                "webhook of {login}: {endpoint:?}"
            );
            receiver.endpoint_secret(
                login,
                endpoint.body["secret"].as_str().context("no secret")?,
            );
            fan.webhook = Some(login.to_owned());
        }
        Ok(fan)
    }

    /// Logs every fan in again (access tokens last 15 minutes; a long run outlives them).
    pub async fn refresh(&self, fans: &mut [Fan]) -> anyhow::Result<()> {
        for fan in fans.iter_mut() {
            fan.token = self.login(&fan.login, PASSWORD).await?;
        }
        Ok(())
    }
}

/// How a sale is driven.
#[derive(Debug, Clone, Copy)]
pub struct SaleConfig {
    pub requests: usize,
    /// Requests started per second (open loop: a stall does not slow the schedule down).
    pub rate: u32,
    /// Requests in flight at most.
    pub concurrency: usize,
    /// How long one request is retried (503s, refused connections) before the fan gives up.
    pub give_up_after: Duration,
}

/// What the fans saw.
#[derive(Debug, Default)]
pub struct SaleOutcome {
    /// Order id → the fan's index, for every 200/202.
    pub accepted: HashMap<String, usize>,
    /// Answers that were neither accepted nor retryable: (status, body).
    pub refused: Vec<(u16, String)>,
    /// 5xx answers other than 503 (a server error is a defect).
    pub server_errors: Vec<(u16, String)>,
    /// Requests abandoned after `give_up_after` of 503s.
    pub gave_up: usize,
    /// 503s and refused connections that were retried.
    pub retries: usize,
    /// 503 answers, and those of them without a `Retry-After` header (a defect).
    pub unavailable: usize,
    pub unavailable_without_retry_after: usize,
    /// Requests that got no answer within the client's timeout or whose connection failed.
    pub no_answer: usize,
    /// The longest time any answer took.
    pub slowest_answer: Duration,
}

/// Books one slot per request, round-robin over the fans, every request with its own
/// Idempotency-Key kept across its retries.
pub async fn flash_sale(
    api: &Api,
    fans: &[Fan],
    event_id: &str,
    run: &str,
    config: SaleConfig,
) -> SaleOutcome {
    let outcome = Arc::new(Mutex::new(SaleOutcome::default()));
    let permits = Arc::new(Semaphore::new(config.concurrency));
    let started = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..config.requests {
        let at = started + Duration::from_secs_f64(i as f64 / f64::from(config.rate.max(1)));
        tokio::time::sleep_until(at).await;
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            break;
        };
        let (api, outcome) = (api.clone(), Arc::clone(&outcome));
        let fan_index = i % fans.len();
        let token = fans[fan_index].token.clone();
        let key = format!("{run}-{i}");
        let body = json!({"event_id": event_id, "number_slot": 1});
        tasks.spawn(async move {
            let _permit = permit;
            book(
                &api,
                &token,
                &key,
                body,
                fan_index,
                config.give_up_after,
                &outcome,
            )
            .await;
        });
    }
    while tasks.join_next().await.is_some() {}
    Arc::try_unwrap(outcome)
        .map(|m| m.into_inner().unwrap_or_else(|p| p.into_inner()))
        .unwrap_or_default()
}

async fn book(
    api: &Api,
    token: &str,
    key: &str,
    body: Value,
    fan: usize,
    give_up_after: Duration,
    outcome: &Mutex<SaleOutcome>,
) {
    let deadline = Instant::now() + give_up_after;
    let mut pause = Duration::from_millis(100);
    let record = |f: &mut dyn FnMut(&mut SaleOutcome)| {
        let mut guard = outcome.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard);
    };
    // Bounded: every turn either returns or waits, and gives up at the deadline.
    loop {
        let sent = Instant::now();
        let answer = api
            .send(
                reqwest::Method::POST,
                "/v1/orders",
                Some(token),
                Some(body.clone()),
                &[("Idempotency-Key", key)],
            )
            .await;
        let took = sent.elapsed();
        record(&mut |o| match &answer {
            Ok(a) => {
                o.slowest_answer = o.slowest_answer.max(took);
                if a.status == StatusCode::SERVICE_UNAVAILABLE {
                    o.unavailable += 1;
                    if a.retry_after.is_none() {
                        o.unavailable_without_retry_after += 1;
                    }
                }
            }
            Err(_) => o.no_answer += 1,
        });
        match answer {
            Ok(a) if a.status == StatusCode::ACCEPTED || a.status == StatusCode::OK => {
                let id = a.body["id"].as_str().unwrap_or_default().to_owned();
                record(&mut |o| {
                    o.accepted.insert(id.clone(), fan);
                });
                return;
            }
            Ok(a) if a.status == StatusCode::SERVICE_UNAVAILABLE => {}
            Ok(a) if a.status.is_server_error() => {
                record(&mut |o| {
                    o.server_errors
                        .push((a.status.as_u16(), a.body.to_string()))
                });
            }
            Ok(a) => {
                record(&mut |o| o.refused.push((a.status.as_u16(), a.body.to_string())));
                return;
            }
            // No answer (ingest busy or restarting): the same key again.
            Err(_) => {}
        }
        if Instant::now() >= deadline {
            record(&mut |o| o.gave_up += 1);
            return;
        }
        record(&mut |o| o.retries += 1);
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

/// Pays every reservation of one event as it appears on `orders.events`, as its fan would.
#[derive(Debug)]
pub struct Payer {
    pub paid: Arc<Mutex<HashSet<String>>>,
    pub failures: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Payer {
    pub fn start(
        services: &Services,
        codec: Arc<Codec>,
        api: Api,
        fans: &[Fan],
        event_id: &str,
    ) -> anyhow::Result<Payer> {
        let consumer: StreamConsumer = services
            .kafka()
            .client_config()
            .set("group.id", names::unique("chaos_payer"))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create()?;
        consumer.subscribe(&[boxoffice_avro::records::topic::ORDERS_EVENTS])?;
        let tokens: HashMap<String, String> = fans
            .iter()
            .map(|f| (f.user_id.clone(), f.token.clone()))
            .collect();
        let paid = Arc::new(Mutex::new(HashSet::new()));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let (paid_in, failures_in, event_id) =
            (paid.clone(), failures.clone(), event_id.to_owned());
        let task = tokio::spawn(async move {
            let permits = Arc::new(Semaphore::new(32));
            let mut seen = HashSet::new();
            let mut stream = consumer.stream();
            // Consumer errors (the broker restarting) are passed over: the consumer reconnects.
            while let Some(item) = stream.next().await {
                let Ok(message) = item else { continue };
                let Some(payload) = message.payload() else {
                    continue;
                };
                let Ok(OrderEvent::OrderReserved(r)) =
                    codec.decode_group::<OrderEvent>(payload).await
                else {
                    continue;
                };
                if r.event_id != event_id || !seen.insert(r.order_id.clone()) {
                    continue;
                }
                let Some(token) = tokens.get(&r.user_id).cloned() else {
                    continue;
                };
                let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                    break;
                };
                let (api, paid, failures) = (api.clone(), paid_in.clone(), failures_in.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    match pay(&api, &token, &r.order_id, r.amount_minor).await {
                        Ok(()) => {
                            paid.lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .insert(r.order_id);
                        }
                        Err(e) => failures
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(format!("paying {}: {e:#}", r.order_id)),
                    }
                });
            }
        });
        Ok(Payer {
            paid,
            failures,
            task,
        })
    }

    pub fn paid(&self) -> HashSet<String> {
        self.paid.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn failures(&self) -> Vec<String> {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for Payer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How long a fan keeps trying to pay one order.
pub const PAY_WITHIN: Duration = Duration::from_secs(90);

/// Pays an order with `tok_success`, retrying while ingest cannot take it yet (503, no
/// answer) or does not see the reservation yet (404/409 while its store catches up).
async fn pay(api: &Api, token: &str, order_id: &str, price: i64) -> anyhow::Result<()> {
    let deadline = Instant::now() + PAY_WITHIN;
    let mut pause = Duration::from_millis(200);
    loop {
        let answer = api
            .send(
                reqwest::Method::POST,
                "/v1/payments",
                Some(token),
                Some(
                    json!({"order_id": order_id, "price": price, "payment_method": "tok_success"}),
                ),
                &[],
            )
            .await;
        let last = match answer {
            Ok(a) if a.status == StatusCode::ACCEPTED || a.status == StatusCode::OK => {
                return Ok(());
            }
            Ok(a) if matches!(a.status.as_u16(), 404 | 409 | 503) => {
                format!("{} {}", a.status, a.body)
            }
            Ok(a) => anyhow::bail!("{} {}", a.status, a.body),
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            anyhow::bail!("gave up; last answer {last}");
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(3));
    }
}
