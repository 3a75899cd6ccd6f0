//! boxoffice's consumer-lag exporter. In the background, every `--interval`, it reads the
//! cluster (`collect`), turns the reading into lag figures and statuses (`lag`, `status`,
//! `report`, pure) and renders them as metric families (`metrics`); `/metrics` serves the
//! latest rendering, so a scrape never waits on Kafka. `/readyz` is ready while collections
//! succeed.

pub mod assignment;
pub mod collect;
pub mod lag;
pub mod metrics;
pub mod page;
pub mod report;
pub mod status;

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use boxoffice_topics::kafka::KafkaArgs;
use boxoffice_topics::names::TopicPrefix;

use crate::collect::{Collector, Isolation};
use crate::metrics::Families;
use crate::report::{CollectorStats, Reporter};

/// The exporter's settings (flags and environment variables).
#[derive(Debug, Clone, clap::Args)]
pub struct ExporterSettings {
    /// `cluster_name` label of every kafka-lag-exporter series.
    #[arg(
        long = "cluster-name",
        env = "LAG_EXPORTER_CLUSTER_NAME",
        default_value = "boxoffice"
    )]
    pub cluster_name: String,
    /// Time between collections.
    #[arg(long = "interval", env = "LAG_EXPORTER_INTERVAL", default_value = "10s",
          value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Span a status (OK, WARN, STALL, STOP, REWIND) judges: a consumer must stand still this
    /// long under lag to be STALL or STOP.
    #[arg(long = "status-window", env = "LAG_EXPORTER_STATUS_WINDOW", default_value = "2m",
          value_parser = humantime::parse_duration)]
    pub status_window: Duration,
    /// Longest wait for the first unconsumed records of one group's topic (time lag).
    #[arg(long = "probe-timeout", env = "LAG_EXPORTER_PROBE_TIMEOUT", default_value = "2s",
          value_parser = humantime::parse_duration)]
    pub probe_timeout: Duration,
    /// Groups that read `read_committed`, by name prefix (comma-separated; `*`: every group).
    /// The exporter cannot see a group's isolation level. Default: boxoffice's consumers, which
    /// all read committed.
    #[arg(
        long = "read-committed-groups",
        env = "LAG_EXPORTER_READ_COMMITTED_GROUPS",
        value_delimiter = ',',
        default_value = "booking-processor,payment-processor,notifier-",
        value_parser = parse_group_prefix
    )]
    pub read_committed_groups: Vec<String>,
    /// Also write kafka_exporter's family (`kafka_consumergroup_lag`, ...).
    #[arg(
        long = "kafka-exporter-metrics",
        env = "LAG_EXPORTER_KAFKA_EXPORTER_METRICS"
    )]
    pub kafka_exporter_metrics: bool,
    /// Add `member_host` and `client_id` to the kafka-lag-exporter series (off: ownership is
    /// `boxoffice_consumergroup_partition_owner_info`).
    #[arg(long = "owner-labels", env = "LAG_EXPORTER_OWNER_LABELS")]
    pub owner_labels: bool,
    #[command(flatten)]
    pub topic_prefix: TopicPrefix,
}

/// A group name prefix: not empty (`*` is the way to say "every group").
fn parse_group_prefix(raw: &str) -> Result<String, String> {
    let prefix = raw.trim();
    if prefix.is_empty() {
        return Err("an empty prefix would match every group; write * for that".to_owned());
    }
    Ok(prefix.to_owned())
}

/// The latest rendering, the page's view, and whether collections are succeeding.
#[derive(Debug)]
pub struct Published {
    text: RwLock<String>,
    ready: RwLock<Result<(), String>>,
    view: tokio::sync::watch::Sender<Arc<page::View>>,
}

impl Default for Published {
    fn default() -> Self {
        Self {
            text: RwLock::default(),
            ready: RwLock::new(Err("no collection yet".to_owned())),
            view: tokio::sync::watch::Sender::new(Arc::new(page::View::default())),
        }
    }
}

impl Published {
    pub fn text(&self) -> String {
        self.text.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn ready(&self) -> Result<(), String> {
        self.ready.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The page's routes (`/`, `/api/lag`, `/events`), on the views published here.
    pub fn page_router(&self) -> axum::Router {
        page::router(self.view.subscribe())
    }

    fn set(&self, text: String, ready: Result<(), String>) {
        *self.text.write().unwrap_or_else(|p| p.into_inner()) = text;
        *self.ready.write().unwrap_or_else(|p| p.into_inner()) = ready;
    }
}

fn now_ms() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

/// Collects every `interval` until `shutdown` completes, publishing into `published`.
pub async fn run(
    kafka: KafkaArgs,
    settings: ExporterSettings,
    published: Arc<Published>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), collect::CollectError> {
    let isolation = Isolation {
        read_committed_prefixes: settings.read_committed_groups.clone(),
    };
    let mut collector = Some(Collector::new(
        kafka,
        settings.topic_prefix.as_str().to_owned(),
        isolation,
        settings.probe_timeout,
    )?);
    let window_ms = i64::try_from(settings.status_window.as_millis()).unwrap_or(i64::MAX);
    let interval = settings.interval.max(Duration::from_millis(100));
    // Samples a window holds: its span in collections, and two more for the edges.
    let per_window = usize::try_from(settings.status_window.as_millis() / interval.as_millis())
        .unwrap_or(usize::MAX)
        .saturating_add(2)
        .min(10_000);
    let mut reporter = Reporter::new(window_ms, per_window);
    let mut stats = CollectorStats::default();
    let families = Families {
        kafka_exporter: settings.kafka_exporter_metrics,
        owner_labels: settings.owner_labels,
    };
    let mut last_report = report::Report::default();
    let mut history = page::History::default();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            _ = ticker.tick() => {}
        }
        let Some(mut owned) = collector.take() else {
            return Ok(());
        };
        let started = Instant::now();
        let (returned, result) = tokio::task::spawn_blocking(move || {
            let result = owned.collect();
            (owned, result)
        })
        .await
        .map_err(|e| collect::CollectError::Panicked(e.to_string()))?;
        collector = Some(returned);
        stats.last_duration_seconds = started.elapsed().as_secs_f64();
        let ready = match result {
            Ok(collection) => {
                let at = now_ms();
                last_report = reporter.report(&collection, at);
                stats.successes += 1;
                stats.last_success_ms = at;
                let view = history.view(&last_report, &settings.cluster_name, at);
                published.view.send_replace(Arc::new(view));
                Ok(())
            }
            Err(e) => {
                stats.failures += 1;
                tracing::warn!(error = %e, "collection failed; the last figures stay published");
                let mut view = published.view.borrow().as_ref().clone();
                view.error = Some(format!("the last collection failed: {e}"));
                published.view.send_replace(Arc::new(view));
                Err(format!("the last collection failed: {e}"))
            }
        };
        last_report.collector = stats;
        published.set(
            metrics::render(&last_report, &settings.cluster_name, families),
            ready,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        settings: ExporterSettings,
    }

    #[test]
    fn an_empty_group_prefix_is_refused_naming_the_setting() {
        let err = Cli::try_parse_from(["x", "--read-committed-groups", "booking-,"])
            .expect_err("an empty entry");
        assert!(err.to_string().contains("--read-committed-groups"), "{err}");
        let ok = Cli::try_parse_from(["x", "--read-committed-groups", "*"]).expect("every group");
        assert_eq!(ok.settings.read_committed_groups, ["*"]);
        let default = Cli::try_parse_from(["x"]).expect("defaults");
        assert_eq!(
            default.settings.read_committed_groups,
            ["booking-processor", "payment-processor", "notifier-"]
        );
    }
}
