//! The HTTP side of the load generators: `POST v1/orders` in a closed loop (N in flight) or an
//! open loop (a fixed rate, latency from the scheduled start), with or without
//! `Idempotency-Key`s, and what a run saw.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use boxoffice_avro::ids;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use serde_json::json;
use tokio::sync::Semaphore;

use super::percentile;
use crate::accounts::VerifiedAccount;

/// What one run saw.
#[derive(Debug, Default)]
pub struct Stats {
    /// Microseconds per accepted (202) request.
    pub accepted_us: Vec<u64>,
    pub statuses: BTreeMap<u16, u64>,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Open loop: requests not sent because `max_in_flight` were in flight.
    pub shed: u64,
}

impl Stats {
    pub fn record(&mut self, outcome: Result<u16, String>, latency: Duration) {
        match outcome {
            Ok(status) => {
                *self.statuses.entry(status).or_default() += 1;
                if status == 202 {
                    self.accepted_us
                        .push(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
                }
            }
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }
}

pub fn ms(us: u64) -> String {
    format!("{:.1} ms", us as f64 / 1000.0)
}

impl Stats {
    fn merge(&mut self, other: Stats) {
        self.accepted_us.extend(other.accepted_us);
        for (status, n) in other.statuses {
            *self.statuses.entry(status).or_default() += n;
        }
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.shed += other.shed;
    }

    /// Prints the run's throughput, the latency of its 202s and its statuses (sorts the
    /// latencies).
    pub fn print(&mut self, label: &str, elapsed: Duration) {
        self.accepted_us.sort_unstable();
        let accepted = self.accepted_us.len() as u64;
        let secs = elapsed.as_secs_f64();
        let sent: u64 = self.statuses.values().sum::<u64>() + self.errors;
        println!("== {label}");
        println!(
            "   {} requests answered in {:.2} s: {} accepted (202) = {:.0} accepted/s",
            sent,
            secs,
            accepted,
            accepted as f64 / secs
        );
        println!(
            "   latency of 202s: p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            ms(percentile(&self.accepted_us, 50.0)),
            ms(percentile(&self.accepted_us, 90.0)),
            ms(percentile(&self.accepted_us, 99.0)),
            ms(percentile(&self.accepted_us, 99.9)),
            ms(self.accepted_us.last().copied().unwrap_or(0))
        );
        let histogram: Vec<String> = self
            .statuses
            .iter()
            .map(|(status, n)| format!("{status}: {n}"))
            .collect();
        println!(
            "   statuses: {}; transport errors: {}{}{}",
            histogram.join(", "),
            self.errors,
            self.first_error
                .as_deref()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default(),
            if self.shed > 0 {
                format!("; shed (in-flight cap): {}", self.shed)
            } else {
                String::new()
            }
        );
    }
}

/// What every request needs.
pub struct Target {
    http: reqwest::Client,
    orders_url: String,
    event_id: String,
    /// The order body, serialised once.
    body: Vec<u8>,
    /// (user id, `Bearer <token>`) per user; requests go round-robin over them.
    users: Vec<(String, HeaderValue)>,
    next: AtomicUsize,
    /// With keys: every request carries a new `Idempotency-Key`, and its order id (derived
    /// from user and key, as ingest does) is handed to this with the moment it was sent.
    keyed: Option<Keyed>,
}

/// Idempotency keys and the hook that learns each keyed request's order id.
pub struct Keyed {
    /// Unique per run, so keys never repeat across runs on one event.
    pub prefix: String,
    pub on_sent: Box<dyn Fn(String, Instant) + Send + Sync>,
}

impl std::fmt::Debug for Keyed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyed")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Target {
    /// Books one slot of `event_id` per request at `base`, as `users` in turn.
    pub fn new(
        http: reqwest::Client,
        base: &str,
        event_id: &str,
        users: &[VerifiedAccount],
        keyed: Option<Keyed>,
    ) -> anyhow::Result<Target> {
        Ok(Target {
            http,
            orders_url: format!("{base}/v1/orders"),
            event_id: event_id.to_owned(),
            body: serde_json::to_vec(&json!({"event_id": event_id, "number_slot": 1}))?,
            users: users
                .iter()
                .map(|u| {
                    HeaderValue::from_str(&format!("Bearer {}", u.access_token))
                        .map(|token| (u.user_id.clone(), token))
                })
                .collect::<Result<_, _>>()?,
            next: AtomicUsize::new(0),
            keyed,
        })
    }
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("orders_url", &self.orders_url)
            .field("users", &self.users.len())
            .field("keyed", &self.keyed.is_some())
            .finish_non_exhaustive()
    }
}

impl Target {
    /// Books one slot as the next user; the status, or the transport error.
    pub async fn book(&self) -> Result<u16, String> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let (user_id, token) = &self.users[n % self.users.len()];
        let mut request = self
            .http
            .post(&self.orders_url)
            .header(AUTHORIZATION, token.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(self.body.clone());
        if let Some(keyed) = &self.keyed {
            let key = format!("{}-{n}", keyed.prefix);
            (keyed.on_sent)(
                ids::order_id_for_request(user_id, &key, &self.event_id, 1),
                Instant::now(),
            );
            request = request.header("idempotency-key", key);
        }
        let response = request.send().await.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        // Read the body so the connection goes back to the pool.
        response.bytes().await.map_err(|e| e.to_string())?;
        Ok(status)
    }
}

/// `concurrency` workers, each sending its next request when the previous one answered.
pub async fn closed_loop(
    target: Arc<Target>,
    concurrency: usize,
    duration: Duration,
) -> (Stats, Duration) {
    let started = Instant::now();
    let deadline = started + duration;
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let target = target.clone();
            tokio::spawn(async move {
                let mut stats = Stats::default();
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    let outcome = target.book().await;
                    stats.record(outcome, sent.elapsed());
                }
                stats
            })
        })
        .collect();
    let mut total = Stats::default();
    for worker in workers {
        if let Ok(stats) = worker.await {
            total.merge(stats);
        }
    }
    (total, started.elapsed())
}

/// Requests start on a fixed schedule (`rate` per second); each one's latency counts from its
/// scheduled start, so queueing in the generator or the server is part of it.
pub async fn open_loop(
    target: Arc<Target>,
    rate: u64,
    duration: Duration,
    max_in_flight: usize,
) -> (Stats, Duration) {
    let stats = Arc::new(Mutex::new(Stats::default()));
    let permits = Arc::new(Semaphore::new(max_in_flight));
    let total = rate.saturating_mul(duration.as_secs()).max(1);
    let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut next = 0u64;
    let mut shed = 0u64;
    while next < total {
        tick.tick().await;
        let due = ((started.elapsed().as_secs_f64() * rate as f64) as u64 + 1).min(total);
        while next < due {
            let scheduled = started + interval.mul_f64(next as f64);
            next += 1;
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                shed += 1;
                continue;
            };
            let target = target.clone();
            let stats = stats.clone();
            tokio::spawn(async move {
                let outcome = target.book().await;
                let latency = scheduled.elapsed();
                if let Ok(mut stats) = stats.lock() {
                    stats.record(outcome, latency);
                }
                drop(permit);
            });
        }
    }
    // Every request has a 10 s client timeout: the in-flight ones end within it.
    let all = u32::try_from(max_in_flight).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(Duration::from_secs(15), permits.acquire_many(all)).await;
    let elapsed = started.elapsed();
    let mut stats = match stats.lock() {
        Ok(mut stats) => std::mem::take(&mut *stats),
        Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
    };
    stats.shed = shed;
    (stats, elapsed)
}
