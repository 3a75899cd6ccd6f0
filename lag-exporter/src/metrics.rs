//! The metric families the exporter publishes, written from one collection into a fresh
//! registry (a group or partition that went away leaves no stale series behind):
//!
//! - kafka-lag-exporter's family (`kafka_consumergroup_group_*`, `kafka_partition_*`; labels
//!   `cluster_name, group, topic, partition`), with its meaning: lag against the high
//!   watermark; `..._lag_seconds` is the age of the first unconsumed record (not interpolated);
//! - optionally kafka_exporter's family (`kafka_consumergroup_lag` with `-1` for no commit,
//!   `kafka_consumergroup_current_offset`, `kafka_topic_partition_current_offset`; labels
//!   `consumergroup, topic, partition`);
//! - boxoffice's own figures under `boxoffice_consumergroup_*`: the effective lag, catch-up
//!   time, status, ownership, commits behind the log start.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use crate::report::{PartitionReport, Report};
use crate::status::{GroupStatus, PartitionStatus};

type Labels = Vec<(&'static str, String)>;
type Values = Family<Labels, Gauge<f64, AtomicU64>>;

/// A gauge family registered in `registry` under `name`.
fn family(registry: &mut Registry, name: &str, help: &str) -> Values {
    let family = Values::default();
    registry.register(name, help, family.clone());
    family
}

fn set(family: &Values, labels: Labels, value: f64) {
    family.get_or_create(&labels).set(value);
}

/// Which families to write.
#[derive(Debug, Clone, Copy)]
pub struct Families {
    pub kafka_exporter: bool,
    pub owner_labels: bool,
}

/// The OpenMetrics text of `report`.
pub fn render(report: &Report, cluster: &str, families: Families) -> String {
    let mut registry = Registry::default();
    write_kafka_lag_exporter(&mut registry, report, cluster, families.owner_labels);
    if families.kafka_exporter {
        write_kafka_exporter(&mut registry, report);
    }
    write_boxoffice(&mut registry, report, cluster);
    boxoffice_runtime::metrics::render(&registry)
}

fn partition_labels(cluster: &str, group: &str, p: &PartitionReport) -> Labels {
    vec![
        ("cluster_name", cluster.to_owned()),
        ("group", group.to_owned()),
        ("topic", p.topic.clone()),
        ("partition", p.partition.to_string()),
    ]
}

fn write_kafka_lag_exporter(
    registry: &mut Registry,
    report: &Report,
    cluster: &str,
    owner_labels: bool,
) {
    let offset = family(
        registry,
        "kafka_consumergroup_group_offset",
        "Last group consumed offset of a partition",
    );
    let lag = family(
        registry,
        "kafka_consumergroup_group_lag",
        "Group offset lag of a partition (high watermark minus commit)",
    );
    let lag_seconds = family(
        registry,
        "kafka_consumergroup_group_lag_seconds",
        "Age of the first record the group has not consumed",
    );
    let max_lag = family(
        registry,
        "kafka_consumergroup_group_max_lag",
        "Max group offset lag",
    );
    let max_lag_seconds = family(
        registry,
        "kafka_consumergroup_group_max_lag_seconds",
        "Max group time lag",
    );
    let sum_lag = family(
        registry,
        "kafka_consumergroup_group_sum_lag",
        "Sum of group offset lag",
    );
    let topic_sum_lag = family(
        registry,
        "kafka_consumergroup_group_topic_sum_lag",
        "Sum of group offset lag across topic partitions",
    );
    let latest = family(
        registry,
        "kafka_partition_latest_offset",
        "Latest offset of a partition",
    );
    let earliest = family(
        registry,
        "kafka_partition_earliest_offset",
        "Earliest offset of a partition",
    );
    for ((topic, partition), o) in &report.offsets {
        let labels = vec![
            ("cluster_name", cluster.to_owned()),
            ("topic", topic.clone()),
            ("partition", partition.to_string()),
        ];
        set(&latest, labels.clone(), o.high_watermark as f64);
        set(&earliest, labels, o.log_start as f64);
    }
    for g in &report.groups {
        let group = vec![
            ("cluster_name", cluster.to_owned()),
            ("group", g.name.clone()),
        ];
        let mut topic_sums: std::collections::BTreeMap<&str, i64> = Default::default();
        let (mut max, mut max_seconds, mut sum) = (0i64, 0f64, 0i64);
        for p in &g.partitions {
            let (Some(committed), Some(compatible)) = (p.lag.committed, p.lag.compatible) else {
                continue;
            };
            let mut labels = partition_labels(cluster, &g.name, p);
            if owner_labels {
                let owner = p.owner.as_ref();
                labels.push((
                    "member_host",
                    owner.map(|o| o.host.clone()).unwrap_or_default(),
                ));
                labels.push((
                    "client_id",
                    owner.map(|o| o.client_id.clone()).unwrap_or_default(),
                ));
            }
            set(&offset, labels.clone(), committed as f64);
            set(&lag, labels.clone(), compatible as f64);
            if let Some(seconds) = p.lag.seconds {
                set(&lag_seconds, labels, seconds);
                max_seconds = max_seconds.max(seconds);
            }
            max = max.max(compatible);
            sum += compatible;
            *topic_sums.entry(p.topic.as_str()).or_default() += compatible;
        }
        set(&max_lag, group.clone(), max as f64);
        set(&max_lag_seconds, group.clone(), max_seconds);
        set(&sum_lag, group.clone(), sum as f64);
        for (topic, total) in topic_sums {
            let mut labels = group.clone();
            labels.push(("topic", topic.to_owned()));
            set(&topic_sum_lag, labels, total as f64);
        }
    }
}

fn write_kafka_exporter(registry: &mut Registry, report: &Report) {
    let current = family(
        registry,
        "kafka_consumergroup_current_offset",
        "Current offset of a consumer group at a partition (-1: no commit)",
    );
    let lag = family(
        registry,
        "kafka_consumergroup_lag",
        "Current approximate lag of a consumer group at a partition (-1: no commit)",
    );
    let lag_sum = family(
        registry,
        "kafka_consumergroup_lag_sum",
        "Current approximate lag of a consumer group at a topic",
    );
    let members = family(
        registry,
        "kafka_consumergroup_members",
        "Amount of members in a consumer group",
    );
    let newest = family(
        registry,
        "kafka_topic_partition_current_offset",
        "Current offset of a partition",
    );
    let oldest = family(
        registry,
        "kafka_topic_partition_oldest_offset",
        "Oldest offset of a partition",
    );
    for ((topic, partition), o) in &report.offsets {
        let labels = vec![
            ("topic", topic.clone()),
            ("partition", partition.to_string()),
        ];
        set(&newest, labels.clone(), o.high_watermark as f64);
        set(&oldest, labels, o.log_start as f64);
    }
    for g in &report.groups {
        set(
            &members,
            vec![("consumergroup", g.name.clone())],
            g.members as f64,
        );
        let mut sums: std::collections::BTreeMap<&str, i64> = Default::default();
        for p in &g.partitions {
            let labels = vec![
                ("consumergroup", g.name.clone()),
                ("topic", p.topic.clone()),
                ("partition", p.partition.to_string()),
            ];
            set(
                &current,
                labels.clone(),
                p.lag.committed.map_or(-1.0, |c| c as f64),
            );
            set(&lag, labels, p.lag.compatible.map_or(-1.0, |l| l as f64));
            *sums.entry(p.topic.as_str()).or_default() += p.lag.compatible.unwrap_or(0);
        }
        for (topic, total) in sums {
            set(
                &lag_sum,
                vec![
                    ("consumergroup", g.name.clone()),
                    ("topic", topic.to_owned()),
                ],
                total as f64,
            );
        }
    }
}

fn write_boxoffice(registry: &mut Registry, report: &Report, cluster: &str) {
    let effective = family(
        registry,
        "boxoffice_consumergroup_lag_effective",
        "Records the group still has to consume: against the last stable offset for read_committed groups, markers and aborted records not counted, from the log start when retention passed the commit",
    );
    let catch_up = family(
        registry,
        "boxoffice_consumergroup_catch_up_seconds",
        "Effective lag divided by the group's consume rate over the status window (+Inf: not consuming)",
    );
    let behind_start = family(
        registry,
        "boxoffice_consumergroup_commit_behind_log_start",
        "Records between the group's commit and the log start (deleted by retention before the group read them)",
    );
    let skipped = Family::<Labels, Counter>::default();
    registry.register(
        "boxoffice_consumergroup_retention_skipped_records",
        "Records retention deleted before the group consumed them, counted once",
        skipped.clone(),
    );
    let status = family(
        registry,
        "boxoffice_consumergroup_partition_status",
        "1 for the partition's status (Burrow's OK, WARN, STALL, STOP, REWIND), 0 for the others",
    );
    let group_status = family(
        registry,
        "boxoffice_consumergroup_status",
        "1 for the group's status (OK, WARN, ERR), 0 for the others",
    );
    let uncommitted = family(
        registry,
        "boxoffice_consumergroup_partition_uncommitted",
        "1: a member owns the partition but the group never committed on it",
    );
    let unowned = family(
        registry,
        "boxoffice_consumergroup_partition_unowned",
        "1: the group committed on the partition but no member owns it",
    );
    let owner = family(
        registry,
        "boxoffice_consumergroup_partition_owner_info",
        "The member owning the partition",
    );
    let read_committed = family(
        registry,
        "boxoffice_consumergroup_read_committed",
        "1: the exporter treats the group as a read_committed reader (configuration)",
    );
    let stable = family(
        registry,
        "boxoffice_partition_last_stable_offset",
        "Last stable offset of a partition (first open transaction, else the high watermark)",
    );
    for ((topic, partition), o) in &report.offsets {
        let labels = vec![
            ("cluster_name", cluster.to_owned()),
            ("topic", topic.clone()),
            ("partition", partition.to_string()),
        ];
        set(&stable, labels, o.last_stable as f64);
    }
    for g in &report.groups {
        let group = vec![
            ("cluster_name", cluster.to_owned()),
            ("group", g.name.clone()),
        ];
        set(
            &read_committed,
            group.clone(),
            if g.read_committed { 1.0 } else { 0.0 },
        );
        for s in GroupStatus::ALL {
            let mut labels = group.clone();
            labels.push(("status", s.as_str().to_owned()));
            set(&group_status, labels, if s == g.status { 1.0 } else { 0.0 });
        }
        for p in &g.partitions {
            let labels = partition_labels(cluster, &g.name, p);
            match p.owner.as_ref() {
                Some(o) => {
                    let mut info = labels.clone();
                    info.push(("client_id", o.client_id.clone()));
                    info.push(("host", o.host.clone()));
                    set(&owner, info, 1.0);
                }
                None if p.lag.committed.is_some() => set(&unowned, labels.clone(), 1.0),
                None => {}
            }
            let Some(lag) = p.lag.effective else {
                set(&uncommitted, labels, 1.0);
                continue;
            };
            set(&effective, labels.clone(), lag as f64);
            set(&catch_up, labels.clone(), p.catch_up_seconds);
            set(&behind_start, labels.clone(), p.lag.behind_log_start as f64);
            skipped
                .get_or_create(&labels)
                .inc_by(p.retention_skipped_total);
            for s in PartitionStatus::ALL {
                let mut one = labels.clone();
                one.push(("status", s.as_str().to_owned()));
                set(&status, one, if s == p.status { 1.0 } else { 0.0 });
            }
        }
    }
    let c = &report.collector;
    let last = Gauge::<f64, AtomicU64>::default();
    let help = "When the last collection succeeded (Unix seconds)";
    registry.register(
        "boxoffice_lag_exporter_last_success_timestamp_seconds",
        help,
        last.clone(),
    );
    last.set(c.last_success_ms as f64 / 1000.0);
    let duration = Gauge::<f64, AtomicU64>::default();
    let help = "How long the last collection took";
    registry.register(
        "boxoffice_lag_exporter_collection_duration_seconds",
        help,
        duration.clone(),
    );
    duration.set(c.last_duration_seconds);
    let runs = Family::<Labels, Counter>::default();
    registry.register(
        "boxoffice_lag_exporter_collections",
        "Collections, by result",
        runs.clone(),
    );
    runs.get_or_create(&vec![("result", "ok".to_owned())])
        .inc_by(c.successes);
    runs.get_or_create(&vec![("result", "error".to_owned())])
        .inc_by(c.failures);
}
