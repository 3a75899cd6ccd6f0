//! Notification latency under load: the time from a booking decision to the email accepted by
//! the SMTP server and to the webhook delivered, at a steady booking rate.
//!
//! Runs the real booking processor and the real notifier (both in this process, with the
//! in-app, email and webhook channels), the real SMTP server (`scripts/smtp-sink`, aiosmtpd, in a
//! child process) and an HTTP webhook receiver (axum, in this process), on real Kafka, a real
//! CQL store and a real registry. Every booking is a reservation for a different fan (with an
//! email address and one registered webhook endpoint), so each one gives one email and one
//! webhook.
//!
//! - decision time: the Kafka timestamp of the `NotificationRequested` record (set by the
//!   booking processor when it produced the decision, inside its transaction);
//! - email accepted: the SMTP server's arrival time (the file name it writes);
//! - webhook delivered: when the receiver got the request.
//!
//! All clocks are this machine's. `cargo run --release -p boxoffice-tests --bin notify-latency
//! -- --rate 1000 --seconds 30` with the stack's environment (`eval "$(scripts/stack env)"`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use boxoffice_avro::ids;
use boxoffice_avro::records::{BookingCommand, BookingRequested, Record};
use boxoffice_sinks::notify::{
    Channel, NotifierDeps, NotifierMetrics, NotifierSettings, NotifyStore, run as run_notifier,
};
use boxoffice_store::schema::Keyspace;
use boxoffice_tests::load::{event_on_sale, now_ms, percentile};
use boxoffice_tests::pipeline::Pipeline;
use boxoffice_topics::names::TopicPrefix;
use clap::Parser;
use futures::StreamExt;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::FutureRecord;
use tokio::sync::oneshot;

#[derive(Debug, Parser)]
#[command(
    name = "notify-latency",
    about = "Decision -> email / webhook latency at a steady booking rate"
)]
struct Cli {
    /// Bookings per second.
    #[arg(long, default_value_t = 1_000)]
    rate: usize,
    /// How long to produce, in seconds.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Distinct fans (each with an email address and a webhook endpoint).
    #[arg(long, default_value_t = 5_000)]
    fans: usize,
    /// The notifier's lanes (concurrent deliveries per channel).
    #[arg(long, default_value_t = 16)]
    lanes: u16,
}

const EVENT: &str = "latency-event";

fn fan(i: usize) -> String {
    format!("fan-{i:06}")
}

fn request(i: usize, fans: usize) -> BookingCommand {
    let order_id = format!("order-{i:09}");
    BookingCommand::BookingRequested(BookingRequested {
        record_id: ids::record_id("latency-booking", &[&order_id]),
        order_id,
        event_id: EVENT.into(),
        user_id: fan(i % fans),
        number_slot: 1,
        idempotency_key: None,
        occurred_at: now_ms(),
    })
}

fn summary(name: &str, mut latencies: Vec<u64>, expected: usize) -> String {
    latencies.sort_unstable();
    format!(
        "{name}: {}/{expected} delivered; decision -> {name}: p50 {} ms, p90 {} ms, p99 {} ms, max {} ms",
        latencies.len(),
        percentile(&latencies, 50.0),
        percentile(&latencies, 90.0),
        percentile(&latencies, 99.0),
        latencies.last().copied().unwrap_or(0),
    )
}

/// Webhook arrivals: delivery id -> wall-clock ms of the first arrival.
type Arrivals = Arc<Mutex<HashMap<String, i64>>>;

async fn receive(State(arrivals): State<Arrivals>, headers: HeaderMap) -> StatusCode {
    let at = now_ms();
    let Some(id) = headers
        .get("x-boxoffice-delivery-id")
        .and_then(|v| v.to_str().ok())
    else {
        return StatusCode::BAD_REQUEST;
    };
    if let Ok(mut arrivals) = arrivals.lock() {
        arrivals.entry(id.to_owned()).or_insert(at);
    }
    StatusCode::NO_CONTENT
}

/// `scripts/smtp-sink` in a child process, killed on drop.
struct SmtpSink {
    dir: PathBuf,
    child: Child,
}

impl SmtpSink {
    fn start(port: u16) -> anyhow::Result<SmtpSink> {
        use std::io::{BufRead, BufReader};
        let dir = std::env::temp_dir().join(boxoffice_tests::names::unique("latency_smtp"));
        std::fs::create_dir_all(&dir)?;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/smtp-sink");
        let mut child = Command::new(script)
            .arg("--dir")
            .arg(&dir)
            .arg("--port")
            .arg(port.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting scripts/smtp-sink")?;
        let stdout = child.stdout.take().context("smtp-sink stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        anyhow::ensure!(
            line.contains("listening"),
            "smtp-sink did not start: {line:?}"
        );
        Ok(SmtpSink { dir, child })
    }

    /// Message-ID -> arrival ms, from the files the sink wrote (`<arrival ns>-<digest>.eml`).
    fn arrivals(&self) -> anyhow::Result<HashMap<String, i64>> {
        let mut out = HashMap::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if !name.ends_with(".eml") || name.starts_with('.') {
                continue;
            }
            let Some(ns) = name.split('-').next().and_then(|n| n.parse::<i128>().ok()) else {
                continue;
            };
            let text = std::fs::read_to_string(self.dir.join(&name))?;
            let message_id = text
                .lines()
                .take_while(|l| !l.is_empty() && *l != "\r")
                .find_map(|l| {
                    let (key, value) = l.split_once(':')?;
                    key.eq_ignore_ascii_case("message-id")
                        .then(|| value.trim().to_owned())
                });
            if let Some(id) = message_id {
                out.entry(id).or_insert((ns / 1_000_000) as i64);
            }
        }
        Ok(out)
    }

    fn count(&self) -> usize {
        std::fs::read_dir(&self.dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".eml"))
                    .count()
            })
            .unwrap_or(0)
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    boxoffice_tests::load::init_tracing();
    let services = boxoffice_tests::services().await;
    let pipeline = Pipeline::create_with(services, "latency", 1).await?;
    let total = cli.rate * cli.seconds as usize;
    println!(
        "machine: {} cores; {total} bookings at {}/s for {} s, {} fans; topics {}*",
        std::thread::available_parallelism()?.get(),
        cli.rate,
        cli.seconds,
        cli.fans,
        pipeline.prefix
    );

    // Receivers.
    let arrivals: Arrivals = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let hook_base = format!("http://{}/hook", listener.local_addr()?);
    let app = axum::Router::new()
        .route("/hook/{fan}", axum::routing::post(receive))
        .with_state(arrivals.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let smtp_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let smtp = SmtpSink::start(smtp_port)?;

    // Fans: an email address and a webhook endpoint each, as ingest writes them.
    let insert_user = pipeline
        .session
        .prepare(format!(
            "INSERT INTO \"{}\".users (id, email, user_name) VALUES (?, ?, ?)",
            pipeline.keyspace
        ))
        .await?;
    let insert_endpoint = pipeline
        .session
        .prepare(format!(
            "INSERT INTO \"{}\".webhook_endpoints (user_id, endpoint_id, url, secret, disabled, \
             created_at) VALUES (?, ?, ?, ?, false, toTimestamp(now()))",
            pipeline.keyspace
        ))
        .await?;
    let started = Instant::now();
    futures::stream::iter(0..cli.fans)
        .map(|i| {
            let (session, insert_user, insert_endpoint) =
                (&pipeline.session, &insert_user, &insert_endpoint);
            let hook = format!("{hook_base}/{i}");
            async move {
                let user = fan(i);
                session
                    .execute_unpaged(insert_user, (&user, format!("{user}@bench.local"), &user))
                    .await?;
                session
                    .execute_unpaged(
                        insert_endpoint,
                        (&user, "main", hook, "whsec_latency_benchmark"),
                    )
                    .await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<()>>>()?;
    println!("{} fans set up in {:.2?}", cli.fans, started.elapsed());

    // The services.
    let processor = pipeline.start_processor().await?;
    let keyspace = Keyspace::new(&pipeline.keyspace).map_err(|e| anyhow::anyhow!("{e}"))?;
    let notifier_metrics = Arc::new(NotifierMetrics::default());
    let deps = NotifierDeps {
        kafka: services.kafka(),
        codec: pipeline.codec.clone(),
        store: Arc::new(NotifyStore::new(pipeline.session.clone(), &keyspace).await?),
        watermarks: pipeline.watermarks().await?,
        settings: NotifierSettings {
            topic_prefix: TopicPrefix::new(&pipeline.prefix)
                .expect("test prefixes are valid topic-name starts"),
            group_prefix: format!("{}notifier-", pipeline.prefix),
            channels: Channel::ALL.to_vec(),
            lanes: cli.lanes,
            smtp_host: "127.0.0.1".to_owned(),
            smtp_port,
            smtp_timeout: Duration::from_secs(10),
            email_from: "boxoffice <notifications@boxoffice.test>".to_owned(),
            webhook_timeout: Duration::from_secs(10),
            webhook_endpoint_queue: 32,
            webhook_suspend_after: None,
            webhook_suspend_for: Duration::from_secs(30),
            webhook_suspend_max: Duration::from_secs(900),
            // The receivers listen on loopback.
            egress: boxoffice_runtime::egress::EgressArgs::loopback(),
            max_attempts: 8,
            retry_base: Duration::from_millis(100),
            retry_max: Duration::from_secs(2),
            retry_budget: Duration::from_secs(60),
        },
        metrics: notifier_metrics.clone(),
    };
    let (stop_notifier, notifier_stopped) = oneshot::channel::<()>();
    let notifier = tokio::spawn(run_notifier(deps, async {
        let _ = notifier_stopped.await;
    }));

    // Decision times: the notifications as the booking processor produced them.
    let reader: StreamConsumer = services
        .kafka()
        .client_config()
        .set("group.id", format!("{}latency-reader", pipeline.prefix))
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()?;
    reader.subscribe(&[&pipeline.topics.notifications])?;
    let codec = pipeline.codec.clone();
    let reader_deadline = Duration::from_secs(cli.seconds + 180);
    let decisions = tokio::spawn(async move {
        let mut decided: HashMap<String, i64> = HashMap::with_capacity(total);
        let mut stream = reader.stream();
        let deadline = tokio::time::Instant::now() + reader_deadline;
        while decided.len() < total {
            match tokio::time::timeout_at(deadline, stream.next()).await {
                Ok(Some(Ok(message))) => {
                    let at = message.timestamp().to_millis().unwrap_or(0);
                    let payload = message.payload().unwrap_or_default();
                    if let Ok(n) = codec
                        .decode_as::<boxoffice_avro::records::NotificationRequested>(payload)
                        .await
                    {
                        decided.insert(n.record_id().to_owned(), at);
                    }
                }
                Ok(Some(Err(e))) => return Err(anyhow::anyhow!("reader: {e}")),
                Ok(None) | Err(_) => break,
            }
        }
        Ok(decided)
    });

    // The event, then the bookings at a steady rate.
    let upsert_frame = pipeline
        .codec
        .encode_group(
            &pipeline.topics.commands,
            &event_on_sale(EVENT, total as i32),
        )
        .await?;
    pipeline
        .producer
        .send(
            FutureRecord::to(&pipeline.topics.commands)
                .key(EVENT)
                .payload(&upsert_frame),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| anyhow::anyhow!("produce: {e}"))?;
    let per_tick = (cli.rate / 100).max(1);
    let mut ticker = tokio::time::interval(Duration::from_millis(10));
    let started = Instant::now();
    let mut pending = Vec::with_capacity(total);
    let mut next = 0;
    while next < total {
        ticker.tick().await;
        for i in next..(next + per_tick).min(total) {
            let frame = pipeline
                .codec
                .encode_group(&pipeline.topics.commands, &request(i, cli.fans))
                .await?;
            let delivery = pipeline
                .producer
                .send_result(
                    FutureRecord::to(&pipeline.topics.commands)
                        .key(EVENT)
                        .payload(&frame),
                )
                .map_err(|(e, _)| anyhow::anyhow!("enqueue: {e}"))?;
            pending.push(delivery);
        }
        next += per_tick;
    }
    for delivery in futures::future::join_all(pending).await {
        delivery
            .map_err(|_| anyhow::anyhow!("delivery cancelled"))?
            .map_err(|(e, _)| anyhow::anyhow!("produce: {e}"))?;
    }
    let produced_in = started.elapsed();
    println!("produced {total} bookings in {produced_in:.2?}");

    // Wait for every email and webhook (bounded).
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let hooks = arrivals.lock().map(|a| a.len()).unwrap_or(0);
        let emails = smtp.count();
        if (hooks >= total && emails >= total) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let all_delivered_in = started.elapsed();
    let decided = decisions.await.context("reader task")??;
    let email_arrivals = smtp.arrivals()?;
    let hook_arrivals = arrivals.lock().map(|a| a.clone()).unwrap_or_default();
    let mut email_latency = Vec::new();
    let mut hook_latency = Vec::new();
    for (id, at) in &decided {
        // Millisecond clocks of one machine: never negative but for rounding.
        if let Some(arrived) = email_arrivals.get(&format!("<{id}@boxoffice>")) {
            email_latency.push(u64::try_from(arrived - at).unwrap_or(0));
        }
        if let Some(arrived) = hook_arrivals.get(id) {
            hook_latency.push(u64::try_from(arrived - at).unwrap_or(0));
        }
    }
    println!(
        "{} decisions read; everything delivered {all_delivered_in:.2?} after the first booking",
        decided.len()
    );
    println!("{}", summary("email", email_latency, total));
    println!("{}", summary("webhook", hook_latency, total));
    println!(
        "notifier: {} emails, {} webhooks, {} retries, {} dead-lettered; booking processor: {} batches",
        notifier_metrics.emails_sent.get(),
        notifier_metrics.webhooks_sent.get(),
        notifier_metrics.retries.get(),
        notifier_metrics.dead_lettered.get(),
        processor.metrics.batches.get(),
    );

    let _ = stop_notifier.send(());
    let _ = tokio::time::timeout(Duration::from_secs(30), notifier).await;
    processor.stop().await?;
    drop(smtp);
    Ok(())
}
