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

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use boxoffice_tests::load::client::{Target, closed_loop, open_loop};
use boxoffice_tests::load::cpu::{CpuSnapshot, load_average, stack_pids};
use boxoffice_tests::load::ingest::{
    ADMIN_LOGIN, PASSWORD, commands_in_topic, create_event, login, start_local, users,
};
use clap::Parser;

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
    boxoffice_tests::load::init_tracing();

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
        None => Some(server_rt.block_on(start_local("ingestload", cli.partitions, cli.users))?),
    };
    // On ingest's runtime, as before the load modules were shared (figures comparable).
    let processor = match (&local, cli.processor) {
        (Some(local), true) => Some(server_rt.block_on(local.pipeline.start_processor())?),
        _ => None,
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
        let event = create_event(&http, &base, &admin, 1_000_000).await?;
        let accounts = users(&http, &base, &admin, cli.users).await?;
        println!(
            "setup: event {event}, {} users registered and logged in, {:.1} s",
            accounts.len(),
            setup.elapsed().as_secs_f64()
        );
        let target = Arc::new(Target::new(http, &base, &event, &accounts, None)?);
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
            let before = CpuSnapshot::take(&stack);
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
            let after = CpuSnapshot::take(&stack);
            accepted += stats.accepted_us.len();
            stats.print(&label, elapsed);
            for line in after.summary_since(&before, stats.accepted_us.len() as u64, "202") {
                println!("   {line}");
            }
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
            let pipeline = local.stop().await?;
            if let Some(processor) = processor {
                processor.stop().await?;
            }
            // Dropping the pipeline removes its keyspace and topics.
            drop(pipeline);
            anyhow::Ok(())
        });
        if result.is_ok() {
            result = stopped;
        }
    }
    client_rt.shutdown_timeout(Duration::from_secs(5));
    server_rt.shutdown_timeout(Duration::from_secs(5));
    result
}
