//! Load generator for ingest's accept path, `POST v1/orders`, against the real broker and the
//! real CQL store: accepted bookings per second, latency per request, and where the CPU goes.
//!
//! By default it starts ingest in this process on a private pipeline (topics under a unique
//! prefix, its own keyspace, both removed at the end), served on `127.0.0.1:0`, exactly as the
//! ingest end-to-end tests do; `--url` loads an ingest that runs elsewhere instead. Setup: one
//! admin, one event with a large capacity, `--users` registered and logged-in users. Then,
//! for each `--concurrency` (closed loop: that many requests in flight, each worker sends the
//! next as soon as the previous answered) and each `--rate` (open loop: requests start on a
//! fixed schedule, latency counted from the scheduled start, so a stall is not hidden), it
//! books 1 slot per request for `--seconds`, round-robin over the users, every request a new
//! order (no `Idempotency-Key`), and prints accepted/s, p50/p99/max of the 202s, the status
//! histogram and the CPU seconds per process (and per thread group of this process) spent
//! during the run.
//!
//! ```sh
//! cargo build --release -p boxoffice-tests --bin ingest-load
//! eval "$(scripts/stack env)"
//! target/release/ingest-load --concurrency 16,64,256 --rate 2000,5000 --seconds 15
//! ```
//!
//! The in-process ingest and the load generator run on separate Tokio runtimes (threads named
//! `srv` and `cli`), so their CPU time can be told apart; librdkafka's threads are `rdk:*`.
//! Runs are bounded in count and time and talk to loopback services only.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use boxoffice_ingest::bus::KafkaBus;
use boxoffice_ingest::config::{IngestSettings, JwtSecret, Topics};
use boxoffice_ingest::live::Live;
use boxoffice_ingest::stores::cql::CqlStores;
use boxoffice_ingest::{Deps, Follow};
use boxoffice_store::schema::Keyspace;
use boxoffice_tests::load::percentile;
use boxoffice_tests::pipeline::{Pipeline, RunningProcessor};
use boxoffice_topics::names::TopicPrefix;
use clap::Parser;
use rdkafka::consumer::{BaseConsumer, Consumer};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, oneshot};

/// The password of every account the generator creates.
const PASSWORD: &str = "a load test password";
/// The in-process ingest's admin.
const ADMIN_EMAIL: &str = "load-admin@boxoffice.test";
const ADMIN_LOGIN: &str = "loadadmin";
/// Linux's clock tick for `/proc/*/stat` times (`getconf CLK_TCK`).
const CLOCK_TICKS: f64 = 100.0;

#[derive(Debug, Parser)]
#[command(
    name = "ingest-load",
    about = "Load generator for ingest's POST v1/orders (accept path) against the real stack"
)]
struct Cli {
    /// Load an ingest running at this base URL (e.g. http://127.0.0.1:8000) instead of
    /// starting one in this process.
    #[arg(long)]
    url: Option<String>,
    /// Admin login for `--url` (creates the event).
    #[arg(long, default_value = "admin")]
    admin_login: String,
    /// Admin password for `--url`.
    #[arg(long, env = "INGEST_ADMIN_PASSWORD", hide_env_values = true)]
    admin_password: Option<String>,
    /// Also run the booking processor in this process (in-process ingest only). The accept
    /// path is what is measured either way.
    #[arg(long)]
    processor: bool,
    /// Partitions of `booking.commands` (in-process ingest only).
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Users registered and logged in; requests go round-robin over them.
    #[arg(long, default_value_t = 200)]
    users: usize,
    /// Closed-loop runs: requests in flight (comma-separated list, one run each).
    #[arg(long, value_delimiter = ',')]
    concurrency: Vec<usize>,
    /// Open-loop runs: requests per second (comma-separated list, one run each).
    #[arg(long, value_delimiter = ',')]
    rate: Vec<u64>,
    /// Length of each run, in seconds.
    #[arg(long, default_value_t = 15)]
    seconds: u64,
    /// Unrecorded warm-up before the first run (closed loop, 16 in flight), in seconds.
    #[arg(long, default_value_t = 3)]
    warmup_seconds: u64,
    /// Pause between runs, in seconds (lets the broker and the JVMs settle).
    #[arg(long, default_value_t = 3)]
    pause_seconds: u64,
    /// Open loop: most requests in flight; a request due while that many are in flight is
    /// not sent and counted as "shed" (the rate is then beyond what the machine sustains).
    #[arg(long, default_value_t = 4096)]
    max_in_flight: usize,
    /// Worker threads of the in-process ingest's runtime.
    #[arg(long, default_value_t = 2)]
    ingest_threads: usize,
    /// Worker threads of the load generator's runtime.
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// Where `scripts/stack` keeps its pid files (Kafka, Cassandra and registry CPU time).
    #[arg(long, default_value = ".stack")]
    stack_dir: PathBuf,
}

// ------------------------------------------------------------------------------ measurements

/// What one run saw.
#[derive(Debug, Default)]
struct Stats {
    /// Microseconds per accepted (202) request.
    accepted_us: Vec<u64>,
    statuses: BTreeMap<u16, u64>,
    errors: u64,
    first_error: Option<String>,
    /// Open loop: requests not sent because `max_in_flight` were in flight.
    shed: u64,
}

impl Stats {
    fn record(&mut self, outcome: Result<u16, String>, latency: Duration) {
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

fn ms(us: u64) -> String {
    format!("{:.1} ms", us as f64 / 1000.0)
}

/// CPU time (user + system), in clock ticks, from a `/proc/.../stat` line.
fn stat_ticks(stat: &str) -> Option<(String, u64)> {
    // pid (comm) state ppid ... : comm may hold spaces; fields after ')' start at `state`.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = stat.get(close + 2..)?.split_whitespace().collect();
    // utime and stime are fields 14 and 15 (1-based) of the whole line: 11 and 12 after comm.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

/// A snapshot of CPU time: the machine, the stack's processes, this process by thread group.
#[derive(Debug, Clone, Default)]
struct CpuSnapshot {
    at: Option<Instant>,
    /// (busy, total) ticks of all cores.
    machine: (u64, u64),
    /// Ticks per stack service.
    services: BTreeMap<String, u64>,
    /// Ticks per thread of this process, keyed by (thread id, group).
    threads: BTreeMap<(String, &'static str), u64>,
}

impl CpuSnapshot {
    /// Ticks per thread group between `before` and `self`, thread by thread (a thread that
    /// ended in between, like an idle blocking-pool thread, is left out instead of making its
    /// group's total go down).
    fn groups_since(&self, before: &CpuSnapshot) -> BTreeMap<String, u64> {
        let mut groups = BTreeMap::new();
        for (key, ticks) in &self.threads {
            let earlier = before.threads.get(key).copied().unwrap_or(0);
            *groups.entry(key.1.to_owned()).or_default() += ticks.saturating_sub(earlier);
        }
        groups
    }
}

fn thread_group(comm: &str) -> &'static str {
    if comm.starts_with("srv") {
        "ingest (srv)"
    } else if comm.starts_with("cli") {
        "load client (cli)"
    } else if comm.starts_with("rdk:") {
        "librdkafka (rdk:*)"
    } else {
        "other threads"
    }
}

fn snapshot(stack_pids: &[(String, u32)]) -> CpuSnapshot {
    let mut snap = CpuSnapshot {
        at: Some(Instant::now()),
        ..CpuSnapshot::default()
    };
    if let Ok(stat) = std::fs::read_to_string("/proc/stat")
        && let Some(line) = stat.lines().next()
    {
        let values: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        let total: u64 = values.iter().take(8).sum();
        let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
        snap.machine = (total.saturating_sub(idle), total);
    }
    for (name, pid) in stack_pids {
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            && let Some((_, ticks)) = stat_ticks(&stat)
        {
            snap.services.insert(name.clone(), ticks);
        }
    }
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            if let Ok(stat) = std::fs::read_to_string(task.path().join("stat"))
                && let Some((comm, ticks)) = stat_ticks(&stat)
            {
                let tid = task.file_name().to_string_lossy().into_owned();
                snap.threads.insert((tid, thread_group(&comm)), ticks);
            }
        }
    }
    snap
}

/// The stack's services and their pids (`<stack>/<service>/<service>.pid`).
fn stack_pids(dir: &Path) -> Vec<(String, u32)> {
    ["kafka", "cassandra", "registry"]
        .iter()
        .filter_map(|name| {
            let pid = std::fs::read_to_string(dir.join(name).join(format!("{name}.pid"))).ok()?;
            Some(((*name).to_owned(), pid.trim().parse().ok()?))
        })
        .collect()
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Prints one run's figures.
fn report(
    label: &str,
    stats: &mut Stats,
    elapsed: Duration,
    before: &CpuSnapshot,
    after: &CpuSnapshot,
) {
    stats.accepted_us.sort_unstable();
    let accepted = stats.accepted_us.len() as u64;
    let secs = elapsed.as_secs_f64();
    let sent: u64 = stats.statuses.values().sum::<u64>() + stats.errors;
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
        ms(percentile(&stats.accepted_us, 50.0)),
        ms(percentile(&stats.accepted_us, 90.0)),
        ms(percentile(&stats.accepted_us, 99.0)),
        ms(percentile(&stats.accepted_us, 99.9)),
        ms(stats.accepted_us.last().copied().unwrap_or(0))
    );
    let histogram: Vec<String> = stats
        .statuses
        .iter()
        .map(|(status, n)| format!("{status}: {n}"))
        .collect();
    println!(
        "   statuses: {}; transport errors: {}{}{}",
        histogram.join(", "),
        stats.errors,
        stats
            .first_error
            .as_deref()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default(),
        if stats.shed > 0 {
            format!("; shed (in-flight cap): {}", stats.shed)
        } else {
            String::new()
        }
    );
    let wall = match (before.at, after.at) {
        (Some(b), Some(a)) => a.duration_since(b).as_secs_f64(),
        _ => secs,
    };
    let (busy, total) = (
        after.machine.0.saturating_sub(before.machine.0),
        after.machine.1.saturating_sub(before.machine.1),
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    println!(
        "   machine: {:.0}% of {} cores busy; load average now {}",
        if total > 0 {
            100.0 * busy as f64 / total as f64
        } else {
            0.0
        },
        cores,
        load_average()
    );
    let per_request = |ticks: u64| {
        if accepted == 0 {
            0.0
        } else {
            ticks as f64 / CLOCK_TICKS * 1e6 / accepted as f64
        }
    };
    let mut parts = Vec::new();
    let mut known = 0u64;
    let services = after.services.iter().map(|(name, ticks)| {
        let earlier = before.services.get(name).copied().unwrap_or(0);
        (name.clone(), ticks.saturating_sub(earlier))
    });
    for (name, ticks) in services.chain(after.groups_since(before)) {
        known += ticks;
        parts.push(format!(
            "{name} {:.2} cores ({:.0} µs/202)",
            ticks as f64 / CLOCK_TICKS / wall,
            per_request(ticks)
        ));
    }
    let rest = (busy as f64 - known as f64).max(0.0);
    parts.push(format!(
        "everything else {:.2} cores",
        rest / CLOCK_TICKS / wall
    ));
    println!("   cpu: {}", parts.join("; "));
}

// ------------------------------------------------------------------------------ the client

/// What every request needs.
struct Target {
    http: reqwest::Client,
    orders_url: String,
    /// The order body, serialised once.
    body: Vec<u8>,
    tokens: Vec<HeaderValue>,
    next: AtomicUsize,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("orders_url", &self.orders_url)
            .field("users", &self.tokens.len())
            .finish_non_exhaustive()
    }
}

impl Target {
    /// Books one slot as the next user; the status, or the transport error.
    async fn book(&self) -> Result<u16, String> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.tokens.len();
        let response = self
            .http
            .post(&self.orders_url)
            .header(AUTHORIZATION, self.tokens[i].clone())
            .header(CONTENT_TYPE, "application/json")
            .body(self.body.clone())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        // Read the body so the connection goes back to the pool.
        response.bytes().await.map_err(|e| e.to_string())?;
        Ok(status)
    }
}

/// `concurrency` workers, each sending its next request when the previous one answered.
async fn closed_loop(
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
            total.accepted_us.extend(stats.accepted_us);
            for (status, n) in stats.statuses {
                *total.statuses.entry(status).or_default() += n;
            }
            total.errors += stats.errors;
            if total.first_error.is_none() {
                total.first_error = stats.first_error;
            }
        }
    }
    (total, started.elapsed())
}

/// Requests start on a fixed schedule (`rate` per second); each one's latency counts from its
/// scheduled start, so queueing in the generator or the server is part of it.
async fn open_loop(
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

// ------------------------------------------------------------------------------ setup

/// POSTs JSON; (status, body).
async fn post(
    http: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    body: &Value,
) -> anyhow::Result<(u16, Value)> {
    let mut request = http.post(url).json(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if status == 429 {
        return Ok((
            429,
            json!({"retry_after": retry_after.unwrap_or(1), "body": body}),
        ));
    }
    Ok((status, body))
}

/// Logs in (waiting out 429s from the login limits, at most 10 times); the access token.
async fn login(
    http: &reqwest::Client,
    base: &str,
    login: &str,
    password: &str,
) -> anyhow::Result<String> {
    for _ in 0..10 {
        let (status, body) = post(
            http,
            &format!("{base}/v1/login"),
            None,
            &json!({"login": login, "password": password}),
        )
        .await?;
        match status {
            200 => {
                return body["access_token"]
                    .as_str()
                    .map(str::to_owned)
                    .context("login answer without access_token");
            }
            429 => {
                let wait = body["retry_after"].as_u64().unwrap_or(1).min(30);
                tokio::time::sleep(Duration::from_secs(wait)).await;
            }
            _ => anyhow::bail!("login {login}: {status} {body}"),
        }
    }
    anyhow::bail!("login {login}: still rate limited after 10 attempts")
}

/// Creates the hot event (admin); its id.
async fn create_event(http: &reqwest::Client, base: &str, admin: &str) -> anyhow::Result<String> {
    let (status, body) = post(
        http,
        &format!("{base}/v1/tickets"),
        Some(admin),
        &json!({"name": "Flash sale load test", "description": "ingest-load", "venue": "Main hall",
                "starts_at": "2031-06-01T20:00:00Z", "price_minor": 4500, "currency": "EUR",
                "capacity": 1_000_000, "sale_starts_at": "2020-01-01T00:00:00Z",
                "sale_ends_at": "2031-06-01T18:00:00Z", "max_per_order": 10,
                // Load users book many times each: no per-account cap (measured as before).
                "max_per_user": 0}),
    )
    .await?;
    anyhow::ensure!(status == 201, "creating the event: {status} {body}");
    body["id"]
        .as_str()
        .map(str::to_owned)
        .context("event answer without id")
}

/// Registers and logs in `count` users (4 at a time: Argon2 costs CPU; `admin` verifies their
/// addresses); their access tokens.
async fn users(
    http: &reqwest::Client,
    base: &str,
    admin: &str,
    count: usize,
) -> anyhow::Result<Vec<String>> {
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let next = AtomicUsize::new(0);
    let tokens = Mutex::new(Vec::with_capacity(count));
    let worker = || async {
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= count {
                return anyhow::Ok(());
            }
            let name = format!("ld{tag}_{i}");
            let account = boxoffice_tests::accounts::register_verified(
                http,
                base,
                admin,
                &json!({"email": format!("{name}@example.com"), "user_name": name,
                        "first_name": "Load", "last_name": "User", "password": PASSWORD,
                        "mobile_phone": "+49 30 1234567"}),
            )
            .await?;
            let token = account.access_token;
            tokens
                .lock()
                .map_err(|_| anyhow::anyhow!("token list poisoned"))?
                .push(token);
        }
    };
    futures::future::try_join_all((0..4).map(|_| worker())).await?;
    tokens
        .into_inner()
        .map_err(|_| anyhow::anyhow!("token list poisoned"))
}

/// The in-process ingest's settings: the login limits are raised so one address can log in
/// every user at once (defaults: 60 per address, then one every 200 ms).
fn settings(prefix: &str, users: usize) -> anyhow::Result<IngestSettings> {
    let secret = uuid::Uuid::new_v4().simple().to_string().repeat(2);
    Ok(IngestSettings {
        listen: "127.0.0.1:0".parse()?,
        topic_prefix: TopicPrefix::new(prefix).expect("test prefixes are valid topic-name starts"),
        jwt_secret: JwtSecret::new(secret.into_bytes()).map_err(|e| anyhow::anyhow!("{e}"))?,
        jwt_issuer: "boxoffice-ingest".into(),
        jwt_audience: "boxoffice-api".into(),
        access_token_ttl: Duration::from_secs(3600),
        refresh_token_ttl: Duration::from_secs(3600),
        produce_timeout: Duration::from_secs(5),
        login_account_burst: 10,
        login_account_refill: Duration::from_secs(6),
        login_ip_burst: u32::try_from(users + 100).unwrap_or(u32::MAX),
        login_ip_refill: Duration::from_millis(1),
        // A load generator: the limits would measure themselves, not the accept path.
        order_user_burst: u32::MAX,
        order_user_refill: Duration::from_millis(1),
        order_ip_burst: u32::MAX,
        order_ip_refill: Duration::from_millis(1),
        register_ip_burst: u32::try_from(users + 100).unwrap_or(u32::MAX),
        register_ip_refill: Duration::from_millis(1),
        trusted_proxies: Vec::new(),
        streams_per_user: 1_000,
        streams_per_address: 10_000,
        streams_total: 100_000,
        password_hash_concurrency: 2,
        password_hash_queue: u16::try_from(users + 100).unwrap_or(u16::MAX),
        account_link_base: "http://localhost:8888".parse()?,
        egress: Default::default(),
    })
}

/// Ingest running in this process.
struct Local {
    pipeline: Pipeline,
    base: String,
    stop: oneshot::Sender<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    processor: Option<RunningProcessor>,
}

impl std::fmt::Debug for Local {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Local")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

async fn start_local(cli: &Cli) -> anyhow::Result<Local> {
    let services = boxoffice_tests::services().await;
    let pipeline = Pipeline::create_with(services, "ingestload", cli.partitions).await?;
    let keyspace = Keyspace::new(&pipeline.keyspace).map_err(|e| anyhow::anyhow!("{e}"))?;
    let stores = CqlStores::new(pipeline.session.clone(), &keyspace)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .into_stores();
    let settings = settings(&pipeline.prefix, cli.users)?;
    let kafka = pipeline.services.kafka();
    let bus = Arc::new(KafkaBus::new(
        &kafka,
        pipeline.codec.clone(),
        Topics::with_prefix(&pipeline.prefix),
        settings.produce_timeout,
    )?);
    let state = boxoffice_ingest::state(
        &settings,
        stores.clone(),
        bus.clone(),
        Arc::new(Live::new()),
    );
    boxoffice_ingest::ensure_admin(
        &state,
        ADMIN_EMAIL,
        PASSWORD,
        Some(ADMIN_LOGIN),
        boxoffice_ingest::ExistingAccount::RequireAdmin,
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = oneshot::channel::<()>();
    let deps = Deps {
        settings,
        stores,
        bus,
        follow: Some(Follow {
            kafka,
            codec: pipeline.codec.clone(),
            retry: boxoffice_ingest::RetryPolicy::with_budget(std::time::Duration::from_secs(60)),
        }),
        metrics: Default::default(),
    };
    let server = tokio::spawn(boxoffice_ingest::run(deps, listener, async {
        let _ = stopped.await;
    }));
    let processor = if cli.processor {
        Some(pipeline.start_processor().await?)
    } else {
        None
    };
    Ok(Local {
        pipeline,
        base,
        stop,
        server,
        processor,
    })
}

/// Records in the commands topic (all partitions): what the broker holds after the runs.
fn commands_in_topic(pipeline: &Pipeline) -> anyhow::Result<i64> {
    let consumer: BaseConsumer = pipeline.services.kafka().client_config().create()?;
    let metadata =
        consumer.fetch_metadata(Some(&pipeline.topics.commands), Duration::from_secs(10))?;
    let mut total = 0;
    for topic in metadata.topics() {
        for partition in topic.partitions() {
            let (low, high) = consumer.fetch_watermarks(
                &pipeline.topics.commands,
                partition.id(),
                Duration::from_secs(10),
            )?;
            total += high - low;
        }
    }
    Ok(total)
}

// ------------------------------------------------------------------------------ main

fn main() -> anyhow::Result<()> {
    let mut cli = Cli::parse();
    if cli.concurrency.is_empty() && cli.rate.is_empty() {
        cli.concurrency.push(64);
    }
    anyhow::ensure!(cli.users > 0, "--users must be at least 1");
    anyhow::ensure!(
        cli.seconds > 0 && cli.seconds <= 600,
        "--seconds must be 1 to 600"
    );
    anyhow::ensure!(
        cli.concurrency.iter().all(|c| (1..=4096).contains(c)),
        "--concurrency must be 1 to 4096"
    );
    anyhow::ensure!(
        cli.rate.iter().all(|r| (1..=200_000).contains(r)),
        "--rate must be 1 to 200000"
    );
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();

    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.ingest_threads.max(1))
        .thread_name("srv")
        .enable_all()
        .build()?;
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.client_threads.max(1))
        .thread_name("cli")
        .enable_all()
        .build()?;

    let local = match &cli.url {
        Some(_) => None,
        None => Some(server_rt.block_on(start_local(&cli))?),
    };
    let (base, admin_login, admin_password) = match (&local, &cli.url) {
        (Some(local), _) => (
            local.base.clone(),
            ADMIN_LOGIN.to_owned(),
            PASSWORD.to_owned(),
        ),
        (None, Some(url)) => (
            url.trim_end_matches('/').to_owned(),
            cli.admin_login.clone(),
            cli.admin_password
                .clone()
                .context("--url needs --admin-password (INGEST_ADMIN_PASSWORD)")?,
        ),
        (None, None) => unreachable!("either a URL or a local ingest"),
    };
    let stack = stack_pids(&cli.stack_dir);
    println!(
        "ingest-load: {} ({}), {} cores, load average {}; stack pids: {:?}",
        base,
        match &local {
            Some(l) => format!(
                "in-process, topics {}*, keyspace {}, {} command partitions, booking processor {}",
                l.pipeline.prefix,
                l.pipeline.keyspace,
                cli.partitions,
                if cli.processor { "on" } else { "off" }
            ),
            None => "external".to_owned(),
        },
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        load_average(),
        stack
    );

    let outcome = client_rt.block_on(async {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(usize::MAX)
            .tcp_nodelay(true)
            .build()?;
        let setup = Instant::now();
        let admin = login(&http, &base, &admin_login, &admin_password).await?;
        let event = create_event(&http, &base, &admin).await?;
        let tokens = users(&http, &base, &admin, cli.users).await?;
        println!(
            "setup: event {event}, {} users registered and logged in, {:.1} s",
            tokens.len(),
            setup.elapsed().as_secs_f64()
        );
        let target = Arc::new(Target {
            http,
            orders_url: format!("{base}/v1/orders"),
            body: serde_json::to_vec(&json!({"event_id": event, "number_slot": 1}))?,
            tokens: tokens
                .iter()
                .map(|t| HeaderValue::from_str(&format!("Bearer {t}")))
                .collect::<Result<_, _>>()?,
            next: AtomicUsize::new(0),
        });
        if cli.warmup_seconds > 0 {
            let (stats, _) =
                closed_loop(target.clone(), 16, Duration::from_secs(cli.warmup_seconds)).await;
            println!(
                "warm-up: {} accepted, statuses {:?}, errors {}",
                stats.accepted_us.len(),
                stats.statuses,
                stats.errors
            );
        }
        let duration = Duration::from_secs(cli.seconds);
        let mut accepted = 0usize;
        let runs = cli
            .concurrency
            .iter()
            .map(|c| (Some(*c), None))
            .chain(cli.rate.iter().map(|r| (None, Some(*r))));
        for (i, (concurrency, rate)) in runs.enumerate() {
            if i > 0 {
                tokio::time::sleep(Duration::from_secs(cli.pause_seconds)).await;
            }
            let before = snapshot(&stack);
            let (mut stats, elapsed, label) = match (concurrency, rate) {
                (Some(c), _) => {
                    let (s, e) = closed_loop(target.clone(), c, duration).await;
                    (
                        s,
                        e,
                        format!("closed loop, {c} in flight, {} s", cli.seconds),
                    )
                }
                (_, Some(r)) => {
                    let (s, e) = open_loop(target.clone(), r, duration, cli.max_in_flight).await;
                    (s, e, format!("open loop, {r}/s for {} s", cli.seconds))
                }
                _ => unreachable!("every run has a concurrency or a rate"),
            };
            let after = snapshot(&stack);
            accepted += stats.accepted_us.len();
            report(&label, &mut stats, elapsed, &before, &after);
        }
        anyhow::Ok(accepted)
    });

    let mut result = outcome.map(|_| ());
    if let Some(local) = local {
        match commands_in_topic(&local.pipeline) {
            Ok(n) => println!("records in {}: {n}", local.pipeline.topics.commands),
            Err(e) => eprintln!("counting records: {e}"),
        }
        let stopped = server_rt.block_on(async {
            let _ = local.stop.send(());
            tokio::time::timeout(Duration::from_secs(15), local.server)
                .await
                .context("ingest did not stop within 15 s")???;
            if let Some(processor) = local.processor {
                processor.stop().await?;
            }
            anyhow::Ok(())
        });
        if result.is_ok() {
            result = stopped;
        }
        // Dropping the pipeline removes its keyspace and topics.
        drop(local.pipeline);
    }
    client_rt.shutdown_timeout(Duration::from_secs(5));
    server_rt.shutdown_timeout(Duration::from_secs(5));
    result
}
