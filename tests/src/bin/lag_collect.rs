//! What one lag collection costs at scale: creates a topic of `--partitions` partitions with
//! `--records` committed (transactional) records each, then `--groups` consumer groups that
//! each commit a different position on every partition (so every group lags everywhere and is
//! probed), then times the lag exporter's collections: the first (every probe reads a record),
//! then `--rounds` more while the groups advance (new positions: probes again) and while they
//! stand still (cached). Run with the stack's environment:
//! `cargo run --release -p boxoffice-tests --bin lag-collect` (after `eval "$(scripts/stack env)"`).

use std::time::{Duration, Instant};

use boxoffice_lag_exporter::collect::{Collector, Isolation};
use boxoffice_lag_exporter::report::Reporter;
use boxoffice_tests::{names, services};
use clap::Parser;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};

#[derive(Debug, Parser)]
#[command(
    name = "lag-collect",
    about = "Times lag collections over many groups and partitions"
)]
struct Cli {
    #[arg(long, default_value_t = 100)]
    groups: usize,
    #[arg(long, default_value_t = 24)]
    partitions: i32,
    /// Records per partition.
    #[arg(long, default_value_t = 1_000)]
    records: i64,
    /// Collections timed after the first, half with the groups moving, half standing still.
    #[arg(long, default_value_t = 6)]
    rounds: usize,
}

fn commit(
    consumer: &BaseConsumer,
    topic: &str,
    partitions: i32,
    position: impl Fn(i32) -> i64,
) -> anyhow::Result<()> {
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition_offset(topic, p, Offset::Offset(position(p)))?;
    }
    consumer.commit(&list, CommitMode::Sync)?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // `RUST_LOG=boxoffice_lag_exporter=debug` shows where a collection spends its time.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let kafka = services().await.kafka();
    let topic = names::unique("lag_collect");
    let admin: AdminClient<DefaultClientContext> = kafka.client_config().create()?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let new_topic = NewTopic::new(&topic, cli.partitions, TopicReplication::Fixed(1));
    for created in admin.create_topics(&[new_topic], &options).await? {
        created.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e}"))?;
    }
    let producer: ThreadedProducer<_> = kafka
        .durable_producer_config()
        .set("transactional.id", names::unique("lag_collect_tx"))
        .create()?;
    producer.init_transactions(Timeout::After(Duration::from_secs(30)))?;
    producer.begin_transaction()?;
    for p in 0..cli.partitions {
        for i in 0..cli.records {
            let payload = format!("record-{i}");
            producer
                .send(
                    BaseRecord::<(), _>::to(&topic)
                        .partition(p)
                        .payload(&payload),
                )
                .map_err(|(e, _)| e)?;
        }
    }
    producer.commit_transaction(Timeout::After(Duration::from_secs(60)))?;
    eprintln!(
        "{} partitions x {} records written; committing {} groups",
        cli.partitions, cli.records, cli.groups
    );
    let prefix = names::unique("lagbench");
    let group_clients: Vec<(String, BaseConsumer)> = (0..cli.groups)
        .map(|g| {
            let name = format!("{prefix}-{g}");
            let consumer: BaseConsumer = kafka
                .client_config()
                .set("group.id", &name)
                .set("enable.auto.commit", "false")
                .create()?;
            Ok((name, consumer))
        })
        .collect::<anyhow::Result<_>>()?;
    // Group g sits g records into every partition, and moves by the number of groups each
    // step: every step asks for positions no earlier collection probed.
    let groups = cli.groups as i64;
    let place = |g: usize, step: i64| (g as i64 + step * groups) % (cli.records - 1);
    for (g, (_, consumer)) in group_clients.iter().enumerate() {
        commit(consumer, &topic, cli.partitions, |_| place(g, 0))?;
    }
    let isolation = Isolation {
        read_committed_prefixes: vec![prefix.clone()],
    };
    let mut collector = Collector::new(
        kafka.clone(),
        topic.clone(),
        isolation,
        Duration::from_secs(2),
    )?;
    let mut reporter = Reporter::new(60_000, 8);
    let mut timings = Vec::new();
    for round in 0..=cli.rounds {
        let moving = round > 0 && round <= cli.rounds / 2;
        if moving {
            for (g, (_, consumer)) in group_clients.iter().enumerate() {
                commit(consumer, &topic, cli.partitions, |_| place(g, round as i64))?;
            }
        }
        let started = Instant::now();
        let collection = tokio::task::block_in_place(|| collector.collect())?;
        let took = started.elapsed();
        let report = reporter.report(&collection, boxoffice_tests::load::now_ms());
        let rows: usize = report.groups.iter().map(|g| g.partitions.len()).sum();
        let timed: usize = report
            .groups
            .iter()
            .flat_map(|g| &g.partitions)
            .filter(|p| p.lag.seconds.is_some())
            .count();
        let kind = match round {
            0 => "first",
            _ if moving => "groups moved",
            _ => "standing still",
        };
        println!(
            "collection {round} ({kind}): {:.3} s, {} groups, {rows} group-partitions, {timed} with a time lag",
            took.as_secs_f64(),
            report.groups.len()
        );
        timings.push(took);
    }
    let worst = timings.iter().max().copied().unwrap_or_default();
    println!(
        "{} groups x {} partitions: worst collection {:.3} s",
        cli.groups,
        cli.partitions,
        worst.as_secs_f64()
    );
    admin
        .delete_topics(&[topic.as_str()], &options)
        .await?
        .into_iter()
        .for_each(drop);
    let groups: Vec<&str> = group_clients.iter().map(|(n, _)| n.as_str()).collect();
    let _ = admin.delete_groups(&groups, &options).await;
    Ok(())
}
