//! The raw-Kafka anchor: the stock producer benchmark (`org.apache.kafka.tools.ProducerPerformance`,
//! what `kafka-producer-perf-test.sh` runs) from the Kafka distribution the local stack runs,
//! into a one-partition topic of its own (created here, deleted afterwards), with the settings
//! of the figure the project quotes: 200-byte records, acks=all, idempotent, lz4, linger 5 ms,
//! 256 KiB batches. A benchmark prints its own rate next to this one as a ratio.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;

use crate::services::Services;

/// Kafka's `lib` directory: `$BOXOFFICE_KAFKA_LIB`, else the newest `kafka-*/lib` in the
/// stack's cache directory (`$BOXOFFICE_CACHE_DIR`, default `~/.cache/boxoffice`), where
/// `scripts/stack` unpacks it.
pub fn kafka_lib() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("BOXOFFICE_KAFKA_LIB") {
        return Ok(PathBuf::from(dir));
    }
    let cache = std::env::var_os("BOXOFFICE_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/boxoffice")))
        .context("neither BOXOFFICE_CACHE_DIR nor HOME is set")?;
    let mut dists: Vec<PathBuf> = std::fs::read_dir(&cache)
        .with_context(|| format!("reading {}", cache.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("kafka-"))
                && p.join("lib").is_dir()
        })
        .collect();
    dists.sort();
    dists.pop().map(|d| d.join("lib")).with_context(|| {
        format!(
            "no kafka-*/lib under {} (scripts/stack up unpacks it; or set BOXOFFICE_KAFKA_LIB)",
            cache.display()
        )
    })
}

/// Reads `... records sent, 485000.1 records/sec (...)` from the tool's summary line.
pub fn parse_records_per_second(output: &str) -> Option<f64> {
    output
        .lines()
        .rev()
        .find(|l| l.contains("records sent"))
        .and_then(|line| {
            let (before, _) = line.split_once(" records/sec")?;
            before.rsplit(", ").next()?.trim().parse().ok()
        })
}

/// Runs the producer benchmark: `records` records of 200 bytes into a new one-partition topic;
/// records per second.
pub async fn producer_records_per_second(
    services: &Services,
    prefix: &str,
    records: u64,
) -> anyhow::Result<f64> {
    let lib = kafka_lib()?;
    let topic = format!("{prefix}kafka-anchor");
    let admin: AdminClient<DefaultClientContext> = services.kafka().client_config().create()?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    admin
        .create_topics(
            &[NewTopic::new(&topic, 1, TopicReplication::Fixed(1))],
            &options,
        )
        .await?
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e}"))?;
    let bootstrap = services.kafka_bootstrap.clone();
    let classpath = format!("{}/*", lib.display());
    let topic_arg = topic.clone();
    // Bounded: the tool stops after `records`.
    let output = tokio::task::spawn_blocking(move || {
        Command::new("java")
            .args(["-Xmx512m", "-cp", &classpath])
            .arg("org.apache.kafka.tools.ProducerPerformance")
            .args(["--topic", &topic_arg, "--num-records", &records.to_string()])
            .args([
                "--record-size",
                "200",
                "--throughput",
                "-1",
                "--producer-props",
            ])
            .arg(format!("bootstrap.servers={bootstrap}"))
            .args([
                "acks=all",
                "enable.idempotence=true",
                "compression.type=lz4",
                "linger.ms=5",
                "batch.size=262144",
            ])
            .output()
    })
    .await?
    .context("running java (the Kafka tools need a JRE on the PATH)")?;
    let _ = admin.delete_topics(&[&topic], &options).await;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    anyhow::ensure!(
        output.status.success(),
        "ProducerPerformance failed ({}): {text}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    parse_records_per_second(&text).with_context(|| format!("no records/sec in: {text}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_line_is_read() {
        let output = "1461297 records sent, 292259.4 records/sec (55.74 MB/sec), 95.3 ms avg latency.\n\
            2000000 records sent, 485436.9 records/sec (92.59 MB/sec), 60.12 ms avg latency, \
            512.00 ms max latency, 40 ms 50th, 300 ms 95th, 400 ms 99th, 500 ms 99.9th.\n";
        assert_eq!(parse_records_per_second(output), Some(485436.9));
        assert_eq!(parse_records_per_second("nothing"), None);
    }
}
