//! What the exporter publishes, computed from one collection and the state kept between
//! collections (each partition's status window, what retention skipped). Pure: collections and
//! times in, reports out.

use std::collections::{BTreeMap, HashMap};

use crate::collect::{Collection, Owner};
use crate::lag::{FirstUnconsumed, PartitionLag, PartitionOffsets, partition_lag};
use crate::status::{GroupStatus, PartitionStatus, Sample, Window, catch_up_seconds};

/// One group on one partition.
#[derive(Debug, Clone)]
pub struct PartitionReport {
    pub topic: String,
    pub partition: i32,
    pub lag: PartitionLag,
    pub owner: Option<Owner>,
    pub status: PartitionStatus,
    pub catch_up_seconds: f64,
    /// Records retention deleted before the group read them, since the exporter started.
    pub retention_skipped_total: u64,
}

#[derive(Debug, Clone)]
pub struct GroupReport {
    pub name: String,
    pub members: usize,
    pub read_committed: bool,
    pub status: GroupStatus,
    pub partitions: Vec<PartitionReport>,
}

/// How the collections went.
#[derive(Debug, Clone, Copy, Default)]
pub struct CollectorStats {
    pub last_success_ms: i64,
    pub last_duration_seconds: f64,
    pub successes: u64,
    pub failures: u64,
}

#[derive(Debug, Clone, Default)]
pub struct Report {
    pub offsets: BTreeMap<(String, i32), PartitionOffsets>,
    pub groups: Vec<GroupReport>,
    pub collector: CollectorStats,
}

type Key = (String, String, i32);

/// The state kept between collections.
#[derive(Debug)]
pub struct Reporter {
    window_ms: i64,
    samples_per_window: usize,
    windows: HashMap<Key, Window>,
    /// Per partition: retention-skipped records counted so far and the log start counted up to.
    skipped: HashMap<Key, (u64, i64)>,
}

impl Reporter {
    /// `window_ms`: the span a status judges; `samples_per_window`: collections in it (+1).
    pub fn new(window_ms: i64, samples_per_window: usize) -> Self {
        Self {
            window_ms,
            samples_per_window,
            windows: HashMap::new(),
            skipped: HashMap::new(),
        }
    }

    /// The report of `collection`, taken at `now_ms`.
    pub fn report(&mut self, collection: &Collection, now_ms: i64) -> Report {
        let mut seen = std::collections::HashSet::new();
        let mut groups = Vec::new();
        for g in &collection.groups {
            let mut keys: Vec<&(String, i32)> = g.committed.keys().chain(g.owners.keys()).collect();
            keys.sort();
            keys.dedup();
            let mut partitions = Vec::new();
            for tp in keys {
                let Some(offsets) = collection.offsets.get(tp) else {
                    continue;
                };
                let committed = g.committed.get(tp).copied();
                let first = g.first.get(tp).copied().unwrap_or(FirstUnconsumed::Unknown);
                let lag = partition_lag(*offsets, committed, g.read_committed, first, now_ms);
                let owner = g.owners.get(tp).cloned();
                let key = (g.name.clone(), tp.0.clone(), tp.1);
                let (status, catch_up, skipped) = match (lag.committed, lag.effective) {
                    (Some(committed), Some(effective)) => {
                        let skipped = self.count_skipped(&key, committed, offsets.log_start);
                        let window = self
                            .windows
                            .entry(key.clone())
                            .or_insert_with(|| Window::new(self.samples_per_window));
                        window.push(Sample {
                            at_ms: now_ms,
                            committed,
                            lag: effective,
                            owned: owner.is_some(),
                        });
                        let rate = window.consume_rate(self.window_ms);
                        (
                            window.status(self.window_ms),
                            catch_up_seconds(effective, rate),
                            skipped,
                        )
                    }
                    _ => (PartitionStatus::Ok, 0.0, 0),
                };
                seen.insert(key);
                partitions.push(PartitionReport {
                    topic: tp.0.clone(),
                    partition: tp.1,
                    lag,
                    owner,
                    status,
                    catch_up_seconds: catch_up,
                    retention_skipped_total: skipped,
                });
            }
            groups.push(GroupReport {
                name: g.name.clone(),
                members: g.members,
                read_committed: g.read_committed,
                status: GroupStatus::of(partitions.iter().map(|p| p.status)),
                partitions,
            });
        }
        // Forget partitions and groups that went away (bounded state).
        self.windows.retain(|k, _| seen.contains(k));
        self.skipped.retain(|k, _| seen.contains(k));
        Report {
            offsets: collection.offsets.clone(),
            groups,
            collector: CollectorStats::default(),
        }
    }

    /// Adds what retention deleted below `log_start` and above both the commit and what was
    /// counted before; returns the total.
    fn count_skipped(&mut self, key: &Key, committed: i64, log_start: i64) -> u64 {
        let (total, counted_to) = self.skipped.entry(key.clone()).or_insert((0, i64::MIN));
        let from = committed.max(*counted_to);
        if log_start > from {
            *total += u64::try_from(log_start - from).unwrap_or(0);
        }
        *counted_to = (*counted_to).max(log_start);
        *total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::GroupView;

    fn collection(log_start: i64, end: i64, committed: i64, owned: bool) -> Collection {
        let tp = ("orders".to_owned(), 0);
        let offsets = PartitionOffsets {
            log_start,
            high_watermark: end,
            last_stable: end,
        };
        let owner = Owner {
            client_id: "c".into(),
            host: "/127.0.0.1".into(),
        };
        Collection {
            offsets: BTreeMap::from([(tp.clone(), offsets)]),
            groups: vec![GroupView {
                name: "g".into(),
                state: "Stable".into(),
                members: usize::from(owned),
                read_committed: true,
                committed: BTreeMap::from([(tp.clone(), committed)]),
                owners: if owned {
                    BTreeMap::from([(tp, owner)])
                } else {
                    BTreeMap::new()
                },
                first: BTreeMap::new(),
            }],
        }
    }

    #[test]
    fn retention_skips_are_counted_once_each() {
        let mut r = Reporter::new(60_000, 4);
        let report = r.report(&collection(100, 150, 40, true), 0);
        assert_eq!(report.groups[0].partitions[0].retention_skipped_total, 60);
        // Same commit, same log start: nothing new.
        let report = r.report(&collection(100, 150, 40, true), 10_000);
        assert_eq!(report.groups[0].partitions[0].retention_skipped_total, 60);
        // Retention moves on by 20 more while the group stands still.
        let report = r.report(&collection(120, 150, 40, true), 20_000);
        assert_eq!(report.groups[0].partitions[0].retention_skipped_total, 80);
    }

    #[test]
    fn a_stopped_group_turns_err_once_the_window_is_full() {
        let mut r = Reporter::new(20_000, 4);
        for at in [0, 10_000] {
            let report = r.report(&collection(0, 50, 10, false), at);
            assert_eq!(
                report.groups[0].status,
                GroupStatus::Ok,
                "window not full at {at}"
            );
        }
        let report = r.report(&collection(0, 50, 10, false), 20_000);
        assert_eq!(report.groups[0].partitions[0].status, PartitionStatus::Stop);
        assert_eq!(report.groups[0].status, GroupStatus::Err);
        assert!(
            report.groups[0].partitions[0]
                .catch_up_seconds
                .is_infinite()
        );
    }

    #[test]
    fn partitions_that_went_away_are_forgotten() {
        let mut r = Reporter::new(20_000, 4);
        r.report(&collection(0, 50, 10, true), 0);
        assert_eq!(r.windows.len(), 1);
        r.report(&Collection::default(), 10_000);
        assert!(r.windows.is_empty() && r.skipped.is_empty());
    }
}
