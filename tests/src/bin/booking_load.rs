//! Load generator for the booking pipeline: one hot event on one partition of
//! `booking.commands`, the real booking processor (in this process), real Kafka, CQL store and
//! registry. Two modes:
//!
//! - `drain`: pre-fills the partition with N booking requests, then starts the processor and
//!   measures how fast it drains them (decisions per second, batch sizes);
//! - `live`: starts the processor, then produces at a fixed rate for a while and measures,
//!   per request, the time from producing it to its decision being readable (committed) on
//!   `orders.events`: p50, p99, max;
//! - `assign`: stores one event with N decided orders (built by the real decision core, saved
//!   by the processor's own save path), then measures what assigning its partition costs for
//!   that event: loading the state as an assignment does and rebuilding it (time, and resident
//!   memory before and after), beside loading every order (what audits do).
//!
//! `cargo run --release -p boxoffice-tests --bin booking-load -- drain --requests 200000`
//! (with the stack's environment: `eval "$(scripts/stack env)"`). Runs are bounded in count and
//! time and talk to loopback services only.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use boxoffice_avro::ids;
use boxoffice_avro::records::{BookingCommand, BookingRequested};
use boxoffice_tests::load::{event_on_sale, now_ms, percentile};
use boxoffice_tests::pipeline::Pipeline;
use clap::{Parser, Subcommand};
use futures::StreamExt;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};

#[derive(Debug, Parser)]
#[command(
    name = "booking-load",
    about = "Load generator for the booking pipeline"
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
    /// Most records per processor batch.
    #[arg(long, default_value_t = 5000, global = true)]
    max_batch_records: u32,
    /// Longest a batch waits to fill (ms).
    #[arg(long, default_value_t = 20, global = true)]
    max_batch_wait_ms: u64,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Pre-fill the partition, then measure the drain; then the raw-Kafka anchor (the stock
    /// producer benchmark into one partition) and the ratio.
    Drain {
        #[arg(long, default_value_t = 100_000)]
        requests: usize,
        /// Records the Kafka anchor produces (0: no anchor).
        #[arg(long, default_value_t = 2_000_000)]
        kafka_anchor_records: u64,
    },
    /// Produce at a fixed rate and measure produce-to-decision latency.
    Live {
        /// Requests per second.
        #[arg(long, default_value_t = 5_000)]
        rate: usize,
        /// How long to produce, in seconds.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
    },
    /// Store one event with N decided orders, then measure loading and rebuilding its state.
    Assign {
        #[arg(long, default_value_t = 1_000_000)]
        orders: usize,
        /// Slots on sale: the first requests reserve, the rest are rejected (sold out).
        #[arg(long, default_value_t = 50_000)]
        capacity: i32,
    },
    /// (Run by `assign` in a fresh process, so its memory counts only the load.)
    #[command(hide = true)]
    AssignLoad {
        #[arg(long)]
        keyspace: String,
        #[arg(long)]
        orders: usize,
        /// Load every order (as an audit does) instead of what an assignment loads.
        #[arg(long)]
        full: bool,
    },
}

const EVENT: &str = "hot-event";

fn request(i: usize) -> BookingCommand {
    let order_id = format!("order-{i:09}");
    BookingCommand::BookingRequested(BookingRequested {
        record_id: ids::record_id("load-booking", &[&order_id]),
        order_id,
        event_id: EVENT.into(),
        user_id: format!("user-{}", i % 10_000),
        number_slot: 1,
        idempotency_key: None,
        occurred_at: now_ms(),
    })
}

/// Encodes commands to Confluent frames (outside any measurement).
async fn encode(pipeline: &Pipeline, commands: &[BookingCommand]) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut frames = Vec::with_capacity(commands.len());
    for command in commands {
        frames.push(
            pipeline
                .codec
                .encode_group(&pipeline.topics.commands, command)
                .await?,
        );
    }
    Ok(frames)
}

async fn produce_all(
    producer: &FutureProducer,
    topic: &str,
    frames: &[Vec<u8>],
) -> anyhow::Result<()> {
    for chunk in frames.chunks(20_000) {
        let sends = chunk.iter().map(|frame| {
            producer.send(
                FutureRecord::to(topic).key(EVENT).payload(frame),
                Duration::from_secs(60),
            )
        });
        for result in futures::future::join_all(sends).await {
            result.map_err(|(e, _)| anyhow::anyhow!("produce: {e}"))?;
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    boxoffice_tests::load::init_tracing();
    let services = boxoffice_tests::services().await;
    if let Mode::AssignLoad {
        keyspace,
        orders,
        full,
    } = &cli.mode
    {
        return assign_load(services, keyspace, *orders, *full).await;
    }
    let pipeline = Pipeline::create_with(services, "load", 1).await?;
    let mut settings = pipeline.settings();
    settings.max_batch_records = cli.max_batch_records;
    settings.max_batch_wait = Duration::from_millis(cli.max_batch_wait_ms);
    let producer: FutureProducer = services
        .kafka()
        .durable_producer_config()
        .set("linger.ms", "5")
        .set("batch.size", "131072")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    println!(
        "machine: {} cores; topics {}*; keyspace {}",
        std::thread::available_parallelism()?.get(),
        pipeline.prefix,
        pipeline.keyspace
    );

    match cli.mode {
        Mode::Assign { orders, capacity } => assign(&pipeline, orders, capacity).await?,
        Mode::AssignLoad { .. } => unreachable!("handled before the pipeline is created"),
        Mode::Drain {
            requests,
            kafka_anchor_records,
        } => {
            let mut commands = vec![event_on_sale(EVENT, (requests / 2) as i32)];
            commands.extend((0..requests).map(request));
            let frames = encode(&pipeline, &commands).await?;
            let started = Instant::now();
            produce_all(&producer, &pipeline.topics.commands, &frames).await?;
            println!(
                "pre-filled {} records in {:.2?}",
                frames.len(),
                started.elapsed()
            );

            let processor = pipeline.start_processor_with(settings).await?;
            let metrics = processor.metrics.clone();
            // Wait for the partition to be assigned and the first record decided.
            let deadline = Instant::now() + Duration::from_secs(60);
            while metrics.records_processed.get() == 0 {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "processor did not start within 60 s"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let first_seen = Instant::now();
            let first_count = metrics.records_processed.get();
            let total = (requests + 1) as u64;
            let deadline = Instant::now() + Duration::from_secs(600);
            while metrics.records_processed.get() < total {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "drain did not finish within 600 s"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let elapsed = first_seen.elapsed();
            let decided = total - first_count;
            let batches = metrics.batches.get();
            let per_second = decided as f64 / elapsed.as_secs_f64();
            println!(
                "drained {decided} decisions in {elapsed:.2?}: {per_second:.0} decisions/s; {batches} batches, mean {:.0} records/batch; outputs produced {}",
                total as f64 / batches.max(1) as f64,
                metrics.outputs_produced.get()
            );
            processor.stop().await?;
            if kafka_anchor_records > 0 {
                let raw = boxoffice_tests::load::kafka_perf::producer_records_per_second(
                    services,
                    &pipeline.prefix,
                    kafka_anchor_records,
                )
                .await?;
                println!(
                    "raw Kafka (ProducerPerformance, 1 partition, 200-byte records, acks=all, idempotent, lz4, 256 KiB batches): {raw:.0} records/s; drained decisions = {:.1}% of it",
                    100.0 * per_second / raw.max(1.0)
                );
            }
        }
        Mode::Live { rate, seconds } => {
            let total = rate * seconds as usize;
            let mut commands = vec![event_on_sale(EVENT, (total / 2) as i32)];
            commands.extend((0..total).map(request));
            let frames = encode(&pipeline, &commands).await?;
            let processor = pipeline.start_processor_with(settings).await?;
            produce_all(&producer, &pipeline.topics.commands, &frames[..1]).await?;
            let deadline = Instant::now() + Duration::from_secs(60);
            while processor.metrics.records_processed.get() == 0 {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "processor did not start within 60 s"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }

            // The reader: decisions as they become readable, keyed by order id.
            let reader: StreamConsumer = services
                .kafka()
                .client_config()
                .set("group.id", format!("{}latency", pipeline.prefix))
                .set("auto.offset.reset", "earliest")
                .set("isolation.level", "read_committed")
                .set("fetch.wait.max.ms", "5")
                .create()?;
            reader.subscribe(&[&pipeline.topics.orders])?;
            let collect = tokio::spawn(async move {
                let mut seen: HashMap<Vec<u8>, Instant> = HashMap::with_capacity(total);
                let mut stream = reader.stream();
                let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds + 120);
                while seen.len() < total {
                    match tokio::time::timeout_at(deadline, stream.next()).await {
                        Ok(Some(Ok(message))) => {
                            if let Some(key) = message.key() {
                                seen.entry(key.to_vec()).or_insert_with(Instant::now);
                            }
                        }
                        Ok(Some(Err(e))) => return Err(anyhow::anyhow!("reader: {e}")),
                        Ok(None) | Err(_) => break,
                    }
                }
                Ok(seen)
            });

            // Pace: one slice every 10 ms.
            let per_tick = (rate / 100).max(1);
            let mut sent_at: HashMap<Vec<u8>, Instant> = HashMap::with_capacity(total);
            let mut ticker = tokio::time::interval(Duration::from_millis(10));
            let started = Instant::now();
            let mut pending = Vec::new();
            for (chunk, slice) in frames[1..]
                .chunks(per_tick)
                .zip(commands[1..].chunks(per_tick))
            {
                ticker.tick().await;
                let now = Instant::now();
                for (frame, command) in chunk.iter().zip(slice) {
                    let BookingCommand::BookingRequested(r) = command else {
                        continue;
                    };
                    sent_at.insert(r.order_id.as_bytes().to_vec(), now);
                    // Enqueued now (send_result), not when the future is first polled.
                    let delivery = producer
                        .send_result(
                            FutureRecord::to(&pipeline.topics.commands)
                                .key(EVENT)
                                .payload(frame),
                        )
                        .map_err(|(e, _)| anyhow::anyhow!("enqueue: {e}"))?;
                    pending.push(delivery);
                }
            }
            for delivery in futures::future::join_all(pending).await {
                delivery
                    .map_err(|_| anyhow::anyhow!("delivery cancelled"))?
                    .map_err(|(e, _)| anyhow::anyhow!("produce: {e}"))?;
            }
            let produced_in = started.elapsed();
            let seen = collect.await.context("reader task")??;
            let mut latencies: Vec<u64> = seen
                .iter()
                .filter_map(|(key, at)| {
                    sent_at
                        .get(key)
                        .map(|sent| at.duration_since(*sent).as_millis() as u64)
                })
                .collect();
            latencies.sort_unstable();
            let batches = processor.metrics.batches.get();
            println!(
                "live: {total} requests at {rate}/s (produced in {produced_in:.2?}); {} decisions read; latency produce→decision readable: p50 {} ms, p99 {} ms, max {} ms; {batches} batches, mean {:.0} records/batch",
                latencies.len(),
                percentile(&latencies, 50.0),
                percentile(&latencies, 99.0),
                latencies.last().copied().unwrap_or(0),
                (total + 1) as f64 / batches.max(1) as f64,
            );
            processor.stop().await?;
        }
    }
    Ok(())
}

/// Builds the event's state with the real core (keyed requests from 200,000 fans), stores it
/// with the processor's save (10,000 orders per save), then loads and rebuilds it as an
/// assignment does; then loads every order, as an audit does, for comparison.
async fn assign(pipeline: &Pipeline, orders: usize, capacity: i32) -> anyhow::Result<()> {
    use boxoffice_processors::booking::{core, state::EventState, store};
    let store_handle = pipeline.store().await?;
    let started = Instant::now();
    let mut state = EventState::new(EVENT);
    let mut effects = Vec::new();
    core::apply(&mut state, &event_on_sale(EVENT, capacity), &mut effects);
    let at = now_ms();
    for i in 0..orders {
        let user_id = format!("user-{:08}", i % 200_000);
        let key = format!("key-{i:012}");
        let order_id = ids::order_id_for_request(&user_id, &key, EVENT, 1);
        let command = BookingCommand::BookingRequested(BookingRequested {
            record_id: ids::record_id("load-booking", &[&order_id]),
            order_id,
            event_id: EVENT.into(),
            user_id,
            number_slot: 1,
            idempotency_key: Some(key),
            occurred_at: at,
        });
        effects.clear();
        core::apply(&mut state, &command, &mut effects);
    }
    state.check_invariant().map_err(anyhow::Error::msg)?;
    println!(
        "decided {} orders ({} slots held, the rest rejected: sold out) in {:.2?}",
        state.orders.len(),
        state.held,
        started.elapsed()
    );
    let started = Instant::now();
    let ids: Vec<String> = state.orders.keys().cloned().collect();
    let mut previous = None;
    for (n, chunk) in ids.chunks(10_000).enumerate() {
        let offset = n as i64;
        let update = store::update(&state, previous, offset, chunk);
        let outcome = store_handle.save(&update).await?;
        anyhow::ensure!(
            outcome == boxoffice_store::inventory::SaveOutcome::Applied,
            "seed save {n}: {outcome:?}"
        );
        previous = Some(offset);
    }
    println!("stored them in {:.2?}", started.elapsed());
    drop(ids);
    drop(state);
    // Each load in a fresh process: its resident memory is the load's alone.
    for full in [false, true] {
        let mut child = std::process::Command::new(std::env::current_exe()?);
        child.args([
            "assign-load",
            "--keyspace",
            &pipeline.keyspace,
            "--orders",
            &orders.to_string(),
        ]);
        if full {
            child.arg("--full");
        }
        let status = child.status()?;
        anyhow::ensure!(
            status.success(),
            "assign-load (full: {full}) failed: {status}"
        );
    }
    Ok(())
}

/// Loads the event `assign` stored, as an assignment does (or every order with `full`), and
/// prints the time and this process's resident memory before and after.
async fn assign_load(
    services: &boxoffice_tests::Services,
    keyspace: &str,
    orders: usize,
    full: bool,
) -> anyhow::Result<()> {
    use boxoffice_processors::booking::store;
    use boxoffice_tests::load::cpu::resident_mib;
    let session = std::sync::Arc::new(services.scylla().connect().await?);
    let keyspace =
        boxoffice_store::schema::Keyspace::new(keyspace).map_err(|e| anyhow::anyhow!("{e}"))?;
    let store_handle = boxoffice_store::inventory::InventoryStore::new(session, &keyspace).await?;
    let resident_before = resident_mib();
    let started = Instant::now();
    let stored = if full {
        store_handle.load(EVENT).await?
    } else {
        store_handle.load_for_assignment(EVENT).await?
    }
    .context("the seeded event is not stored")?;
    let loaded_in = started.elapsed();
    let (restored, _) = store::restore(stored)?;
    let ready_in = started.elapsed();
    let resident_after = resident_mib();
    anyhow::ensure!(
        restored.index.len() == orders,
        "the index names {} orders, {orders} were stored",
        restored.index.len()
    );
    restored.check_invariant().map_err(anyhow::Error::msg)?;
    let what = if full {
        "every order loaded (as an audit does)"
    } else {
        "assignment"
    };
    println!(
        "{what}, event with {orders} decided orders: loaded in {loaded_in:.2?}, ready to decide in {ready_in:.2?}; {} orders in memory; resident {resident_before:.0} MiB before, {resident_after:.0} MiB after (+{:.0} MiB)",
        restored.orders.len(),
        resident_after - resident_before
    );
    Ok(())
}
