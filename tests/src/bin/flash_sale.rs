//! The end-to-end flash-sale benchmark: fans book one hot event over HTTP (keep-alive, every
//! request with a new `Idempotency-Key`), measured from request to 202 and from request to the
//! decision being readable by a `read_committed` consumer of `orders.events`, on the real
//! stack (Kafka, the CQL store, the registry) with ingest and the booking processor running in
//! this process on their own runtimes (threads `srv` and `proc`, the client on `cli`, so the
//! CPU of each shows separately; `--ingest-binary` runs the real ingest binary as a child
//! process instead, so its resident memory shows too). In the same run it runs the PostgreSQL
//! row-lock baseline (a throwaway server, `tests/pg-baseline/`) and prints the ratio; at the
//! end it audits the event (`verify-event`) and fails when the audit does.
//!
//! ```sh
//! cargo build --release -p boxoffice-tests --bin flash-sale
//! eval "$(scripts/stack env)"
//! target/release/flash-sale --users 500 --concurrency 256 --seconds 30
//! ```
//!
//! Decisions are told apart by key: `orders.events` is keyed by order id, and the first record
//! of an order there is its decision (`OrderReserved` or `OrderRejected`; no payment runs here
//! and holds outlast the run), so the consumer reads keys only and decodes nothing. Each order
//! id is derived from user and key as ingest derives it. Bounded: one closed-loop run of
//! `--seconds`, then at most `--drain-seconds` waiting for the last decisions.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use boxoffice_processors::booking::audit::verify_event;
use boxoffice_tests::load::client::{Keyed, Target, closed_loop, ms, open_loop};
use boxoffice_tests::load::cpu::{CpuSnapshot, resident_mib, stack_pids, status_mib};
use boxoffice_tests::load::ingest::{
    ADMIN_LOGIN, Local, PASSWORD, create_event, login, start_local, start_process, users,
};
use boxoffice_tests::load::{percentile, postgres};
use clap::Parser;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

#[derive(Debug, Parser)]
#[command(
    name = "flash-sale",
    about = "End-to-end flash sale over HTTP on the real stack, next to the PostgreSQL row-lock baseline"
)]
struct Cli {
    /// Fans registered and signed in; requests go round-robin over them.
    #[arg(long, default_value_t = 500)]
    users: usize,
    /// Requests in flight (closed loop: each sends its next as soon as the previous answered).
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Open loop instead: this many requests per second on a fixed schedule (latency counted
    /// from the scheduled start; at most 4,096 in flight, the rest counted as shed). What a
    /// sustained rate is measured with: decisions keep up or they do not.
    #[arg(long)]
    rate: Option<u64>,
    /// Length of the measured run, in seconds.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Slots on sale: the first this many requests reserve, the rest are rejected (sold out).
    #[arg(long, default_value_t = 100_000)]
    capacity: u32,
    /// Partitions of `booking.commands` (the hot event lives on one of them).
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Unrecorded warm-up before the run (16 in flight), in seconds.
    #[arg(long, default_value_t = 3)]
    warmup_seconds: u64,
    /// Most seconds to wait, after the run, for the decisions still owed.
    #[arg(long, default_value_t = 120)]
    drain_seconds: u64,
    /// Skip the PostgreSQL baseline (the figures then stand without their anchor).
    #[arg(long)]
    no_baseline: bool,
    /// Length of the PostgreSQL baseline run, in seconds.
    #[arg(long, default_value_t = 15)]
    baseline_seconds: u64,
    /// pgbench connections for the baseline.
    #[arg(long, default_value_t = 32)]
    baseline_clients: u32,
    /// Worker threads of ingest's runtime.
    #[arg(long, default_value_t = 2)]
    ingest_threads: usize,
    /// Worker threads of the booking processor's runtime.
    #[arg(long, default_value_t = 1)]
    processor_threads: usize,
    /// Worker threads of the load client's runtime.
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// Run ingest as this binary (e.g. `target/release/boxoffice-ingest`) in a child process
    /// instead of in this one, so its resident memory and CPU are its own (printed after the
    /// run); the processor and the client stay in this process.
    #[arg(long)]
    ingest_binary: Option<PathBuf>,
    /// Where `scripts/stack` keeps its pid files (Kafka, Cassandra and registry CPU time).
    #[arg(long, default_value = ".stack")]
    stack_dir: PathBuf,
}

/// Request send times by order id, and the request-to-decision latencies seen so far.
#[derive(Debug, Default)]
struct Decisions {
    sent: HashMap<String, Instant>,
    /// (when decided, microseconds from request to decision).
    decided: Vec<(Instant, u64)>,
}

/// Reads `orders.events` (`read_committed`, every partition from its end) on a thread of its
/// own (`cli-decisions`) until `stop`; each key seen for the first time that a request is
/// waiting for is a decision.
fn follow_decisions(
    local: &Local,
    decisions: Arc<Mutex<Decisions>>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let pipeline = &local.pipeline;
    let consumer: BaseConsumer = pipeline
        .services
        .kafka()
        .client_config()
        .set(
            "group.id",
            format!("{}flash-sale-decisions", pipeline.prefix),
        )
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "10")
        .create()?;
    let topic = pipeline.topics.orders.clone();
    let metadata = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
    let mut assignment = TopicPartitionList::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            assignment.add_partition_offset(&topic, p.id(), Offset::End)?;
        }
    }
    consumer.assign(&assignment)?;
    Ok(std::thread::Builder::new()
        .name("cli-decisions".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let Some(Ok(message)) = consumer.poll(Duration::from_millis(50)) else {
                    continue;
                };
                let now = Instant::now();
                let Some(order_id) = message.key().and_then(|k| std::str::from_utf8(k).ok()) else {
                    continue;
                };
                let Ok(mut d) = decisions.lock() else {
                    return;
                };
                if let Some(sent) = d.sent.remove(order_id) {
                    let us =
                        u64::try_from(now.duration_since(sent).as_micros()).unwrap_or(u64::MAX);
                    d.decided.push((now, us));
                }
            }
        })?)
}

/// A memory figure of process `pid` (`VmRSS`, `VmHWM`), for printing.
fn process_memory(pid: u32, field: &str) -> String {
    status_mib(&pid.to_string(), field).map_or_else(
        || format!("{field} unreadable"),
        |mib| format!("{mib:.0} MiB"),
    )
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    anyhow::ensure!(cli.users > 0, "--users must be at least 1");
    anyhow::ensure!(
        (1..=600).contains(&cli.seconds),
        "--seconds must be 1 to 600"
    );
    anyhow::ensure!(
        (1..=4096).contains(&cli.concurrency),
        "--concurrency must be 1 to 4096"
    );
    anyhow::ensure!(
        cli.rate.is_none_or(|r| (1..=200_000).contains(&r)),
        "--rate must be 1 to 200000"
    );
    boxoffice_tests::load::init_tracing();
    // Refuse early rather than after the run: the figures are meant to stand next to it.
    let pg_tools = if cli.no_baseline {
        None
    } else {
        Some(postgres::find_tools().map_err(anyhow::Error::msg)?)
    };
    let runtime = |name: &str, threads: usize| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name(name)
            .enable_all()
            .build()
    };
    let server_rt = runtime("srv", cli.ingest_threads)?;
    let processor_rt = runtime("proc", cli.processor_threads)?;
    let client_rt = runtime("cli", cli.client_threads)?;

    let local = server_rt.block_on(async {
        match &cli.ingest_binary {
            Some(binary) => start_process("flashsale", cli.partitions, cli.users, binary).await,
            None => start_local("flashsale", cli.partitions, cli.users).await,
        }
    })?;
    let processor = processor_rt.block_on(local.pipeline.start_processor())?;
    let mut stack = stack_pids(&cli.stack_dir);
    if let Some(pid) = local.pid() {
        stack.push(("ingest (process)".to_owned(), pid));
    }
    println!(
        "flash-sale: {} (topics {}*, keyspace {}), {} cores; stack pids {:?}",
        local.base,
        local.pipeline.prefix,
        local.pipeline.keyspace,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        stack
    );
    let decisions = Arc::new(Mutex::new(Decisions::default()));
    let stop_following = Arc::new(AtomicBool::new(false));
    let follower = follow_decisions(&local, decisions.clone(), stop_following.clone())?;

    let run = client_rt.block_on(async {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(usize::MAX)
            .tcp_nodelay(true)
            .build()?;
        let setup = Instant::now();
        let admin = login(&http, &local.base, ADMIN_LOGIN, PASSWORD).await?;
        let event = create_event(&http, &local.base, &admin, cli.capacity).await?;
        let fans = users(&http, &local.base, &admin, cli.users).await?;
        println!(
            "setup: event {event} ({} slots), {} fans registered and signed in, {:.1} s",
            cli.capacity,
            fans.len(),
            setup.elapsed().as_secs_f64()
        );
        if let Some(pid) = local.pid() {
            // Registrations and logins hash passwords (Argon2, 19 MiB each): what they leave
            // behind shows here, before any order.
            println!(
                "   ingest process resident after setup: {}",
                process_memory(pid, "VmRSS")
            );
        }
        let recorder = decisions.clone();
        let keyed = Keyed {
            prefix: uuid::Uuid::new_v4().simple().to_string(),
            on_sent: Box::new(move |order_id, at| {
                if let Ok(mut d) = recorder.lock() {
                    d.sent.insert(order_id, at);
                }
            }),
        };
        let target = Arc::new(Target::new(
            http,
            &local.base,
            &event,
            &fans,
            Some(keyed),
        )?);
        if cli.warmup_seconds > 0 {
            let (warmup, _) =
                closed_loop(target.clone(), 16, Duration::from_secs(cli.warmup_seconds)).await;
            println!(
                "warm-up: {} accepted, statuses {:?}",
                warmup.accepted_us.len(),
                warmup.statuses
            );
            // Only the measured run's requests count.
            tokio::time::sleep(Duration::from_secs(2)).await;
            if let Ok(mut d) = decisions.lock() {
                *d = Decisions::default();
            }
        }
        let before = CpuSnapshot::take(&stack);
        let duration = Duration::from_secs(cli.seconds);
        let (mut stats, elapsed, label) = match cli.rate {
            Some(rate) => {
                let (stats, elapsed) = open_loop(target.clone(), rate, duration, 4096).await;
                (stats, elapsed, format!("open loop, {rate}/s"))
            }
            None => {
                let (stats, elapsed) = closed_loop(target.clone(), cli.concurrency, duration).await;
                (stats, elapsed, format!("closed loop, {} in flight", cli.concurrency))
            }
        };
        let ended = Instant::now();
        let after = CpuSnapshot::take(&stack);
        let accepted = stats.accepted_us.len();
        stats.print(
            &format!(
                "{label}, {} s, Idempotency-Key on every request",
                cli.seconds
            ),
            elapsed,
        );
        // Bounded: at most `drain_seconds`.
        let drain_deadline = ended + Duration::from_secs(cli.drain_seconds);
        loop {
            let decided = decisions.lock().map(|d| d.decided.len()).unwrap_or(0);
            if decided >= accepted || Instant::now() >= drain_deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (mut latencies, in_window, last) = {
            let d = decisions
                .lock()
                .map_err(|_| anyhow::anyhow!("decision list poisoned"))?;
            (
                d.decided.iter().map(|(_, us)| *us).collect::<Vec<u64>>(),
                d.decided.iter().filter(|(at, _)| *at <= ended).count(),
                d.decided.iter().map(|(at, _)| *at).max(),
            )
        };
        latencies.sort_unstable();
        let decided = latencies.len();
        println!(
            "   decisions: {decided} of {accepted} accepted orders; {in_window} during the run = {:.0} decided/s; \
             the last {:.2} s after the run ended",
            in_window as f64 / elapsed.as_secs_f64(),
            last.map_or(0.0, |l| l.saturating_duration_since(ended).as_secs_f64())
        );
        println!(
            "   request to decision (read_committed): p50 {}  p90 {}  p99 {}  max {}",
            ms(percentile(&latencies, 50.0)),
            ms(percentile(&latencies, 90.0)),
            ms(percentile(&latencies, 99.0)),
            ms(latencies.last().copied().unwrap_or(0))
        );
        for line in after.summary_since(&before, accepted as u64, "booking") {
            println!("   {line}");
        }
        match local.pid() {
            Some(pid) => println!(
                "   resident: ingest process {} (peak {}); this process (processor, client) {:.0} MiB",
                process_memory(pid, "VmRSS"),
                process_memory(pid, "VmHWM"),
                resident_mib()
            ),
            None => println!(
                "   this process (ingest, processor, client) resident: {:.0} MiB",
                resident_mib()
            ),
        }
        anyhow::ensure!(
            decided == accepted,
            "{} accepted orders got no decision within {} s",
            accepted - decided,
            cli.drain_seconds
        );
        let secs = elapsed.as_secs_f64();
        anyhow::Ok((event, accepted as f64 / secs, in_window as f64 / secs))
    });
    stop_following.store(true, Ordering::Relaxed);
    let _ = follower.join();

    let audit = match &run {
        Ok((event, _, _)) => {
            let pipeline = &local.pipeline;
            Some(processor_rt.block_on(async {
                let store = pipeline.store().await?;
                verify_event(
                    &pipeline.services.kafka(),
                    &pipeline.codec,
                    &store,
                    &pipeline.topics,
                    event,
                )
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))
            }))
        }
        Err(_) => None,
    };
    let stopped = processor_rt.block_on(processor.stop());
    let pipeline = server_rt.block_on(local.stop());

    let (_, accepted_per_second, decided_per_second) = run?;
    let report = audit.context("no audit without a run")??;
    println!(
        "verify-event {}: {} commands, {} sold + {} held of {}, {} availability records; {}",
        report.event_id,
        report.commands,
        report.sold,
        report.held,
        report.capacity,
        report.availability_records,
        if report.ok() { "ok" } else { "VIOLATIONS" }
    );
    anyhow::ensure!(
        report.ok(),
        "verify-event found violations: {:?}",
        report.violations
    );
    stopped?;
    drop(pipeline?);

    if let Some(tools) = pg_tools {
        let baseline = postgres::run_hot_event(tools, cli.baseline_seconds, cli.baseline_clients)?;
        println!(
            "PostgreSQL row-lock baseline ({}; one hot event, conditional UPDATE + INSERT, \
             synchronous_commit=on, {} clients, {} s): {:.0} bookings/s, {:.1} ms mean",
            baseline.version, baseline.clients, baseline.seconds, baseline.tps, baseline.latency_ms
        );
        let tps = baseline.tps.max(1.0);
        println!(
            "ratio: boxoffice {:.0} accepted/s = {:.2}x, {:.0} decided/s = {:.2}x the row-lock baseline",
            accepted_per_second,
            accepted_per_second / tps,
            decided_per_second,
            decided_per_second / tps
        );
    }
    client_rt.shutdown_timeout(Duration::from_secs(5));
    processor_rt.shutdown_timeout(Duration::from_secs(5));
    server_rt.shutdown_timeout(Duration::from_secs(5));
    Ok(())
}
