//! Lag of one consumer group on one partition, from offsets and a probe of the first record the
//! group has not consumed. Pure: no I/O, time passed in.
//!
//! Two figures on purpose. The *compatible* lag is what kafka-lag-exporter and kafka_exporter
//! report (high watermark minus commit), so their dashboards keep their meaning. The
//! *effective* lag is what a `read_committed` consumer really has left: measured against the
//! last stable offset, 0 when only transaction markers (or aborted records) lie between the
//! commit and it, and counted from the log start when retention deleted what the commit points
//! at. Tools that use the high watermark show a lasting lag of 1 per partition for a caught-up
//! consumer of a transactional topic: the commit marker.

/// Offsets of a partition as the broker lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionOffsets {
    /// First offset still in the log.
    pub log_start: i64,
    /// Next offset to be written (`read_uncommitted` end).
    pub high_watermark: i64,
    /// First offset of the oldest open transaction, or the high watermark (`read_committed` end).
    pub last_stable: i64,
}

impl PartitionOffsets {
    /// Where a reader stops: the last stable offset for `read_committed`, else the high
    /// watermark.
    pub fn end(&self, read_committed: bool) -> i64 {
        if read_committed {
            self.last_stable
        } else {
            self.high_watermark
        }
    }
}

/// What a reader with the group's isolation level finds from the group's position on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstUnconsumed {
    /// The first record a consumer would get.
    Record { offset: i64, timestamp_ms: i64 },
    /// Nothing but markers or aborted records up to the end the reader saw.
    NothingBefore { end: i64 },
    /// Not probed (no lag by offsets) or the probe found no answer in time.
    Unknown,
}

/// One group's lag on one partition.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PartitionLag {
    /// The group's committed offset; `None`: the group never committed here.
    pub committed: Option<i64>,
    /// High watermark minus commit, clamped at 0 (kafka-lag-exporter's and kafka_exporter's
    /// definition).
    pub compatible: Option<i64>,
    /// Records the group still has to consume (see the module text).
    pub effective: Option<i64>,
    /// Records deleted by retention before the group read them (commit below the log start).
    pub behind_log_start: i64,
    /// Age of the first record the group has not consumed; 0 when it has nothing left.
    pub seconds: Option<f64>,
}

/// The lag of a group at `committed` on a partition with `offsets`. `read_committed` says
/// which end the group reads to; `first` is what a probe found from the group's position.
pub fn partition_lag(
    offsets: PartitionOffsets,
    committed: Option<i64>,
    read_committed: bool,
    first: FirstUnconsumed,
    now_ms: i64,
) -> PartitionLag {
    let Some(committed) = committed else {
        return PartitionLag {
            committed: None,
            compatible: None,
            effective: None,
            behind_log_start: 0,
            seconds: None,
        };
    };
    let end = offsets.end(read_committed);
    let position = committed.max(offsets.log_start);
    let effective = match first {
        // Markers only up to the end the probe saw: nothing to consume below it.
        FirstUnconsumed::NothingBefore { end: seen } if seen >= end => 0,
        FirstUnconsumed::Record { offset, .. } if offset >= end => 0,
        // The records between the position and the first one the group would get are markers.
        FirstUnconsumed::Record { offset, .. } => end - offset.max(position),
        _ => end - position,
    }
    .max(0);
    let seconds = match first {
        _ if effective == 0 => Some(0.0),
        FirstUnconsumed::Record { timestamp_ms, .. } => {
            Some((now_ms - timestamp_ms).max(0) as f64 / 1000.0)
        }
        _ => None,
    };
    PartitionLag {
        committed: Some(committed),
        compatible: Some((offsets.high_watermark - committed).max(0)),
        effective: Some(effective),
        behind_log_start: (offsets.log_start - committed).max(0),
        seconds,
    }
}

/// Where a probe for the first unconsumed record must start, when the offsets leave any
/// record to find: the group's position (clamped to the log start) below the end it reads to.
pub fn probe_from(
    offsets: PartitionOffsets,
    committed: Option<i64>,
    read_committed: bool,
) -> Option<i64> {
    let end = offsets.end(read_committed);
    let position = committed?.max(offsets.log_start);
    (position < end).then_some(position)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_000_000;

    fn offsets(log_start: i64, high_watermark: i64, last_stable: i64) -> PartitionOffsets {
        PartitionOffsets {
            log_start,
            high_watermark,
            last_stable,
        }
    }

    #[test]
    fn a_caught_up_transactional_reader_has_no_lag_although_the_marker_counts_one() {
        // Ten records in one committed transaction: the marker is offset 10, HW = LSO = 11; the
        // consumer's position is 10 (it read 0..=9).
        let o = offsets(0, 11, 11);
        let first = FirstUnconsumed::NothingBefore { end: 11 };
        let lag = partition_lag(o, Some(10), true, first, NOW);
        assert_eq!(lag.compatible, Some(1), "what HW-based tools show");
        assert_eq!(lag.effective, Some(0));
        assert_eq!(lag.seconds, Some(0.0));
    }

    #[test]
    fn markers_before_the_first_record_are_not_counted() {
        // Position 10 is a marker; records 11..=14 are data; LSO 15.
        let first = FirstUnconsumed::Record {
            offset: 11,
            timestamp_ms: NOW - 2_500,
        };
        let lag = partition_lag(offsets(0, 15, 15), Some(10), true, first, NOW);
        assert_eq!(lag.effective, Some(4));
        assert_eq!(lag.compatible, Some(5));
        assert_eq!(lag.seconds, Some(2.5));
    }

    #[test]
    fn an_open_transaction_is_not_lag_for_read_committed_but_is_for_read_uncommitted() {
        // Records 5..=9 belong to a transaction still open: LSO 5, HW 10; the group is at 5.
        let o = offsets(0, 10, 5);
        let committed = partition_lag(o, Some(5), true, FirstUnconsumed::Unknown, NOW);
        assert_eq!(committed.effective, Some(0));
        let uncommitted = partition_lag(o, Some(5), false, FirstUnconsumed::Unknown, NOW);
        assert_eq!(uncommitted.effective, Some(5));
        assert_eq!(uncommitted.seconds, None, "no probe, no age");
        assert_eq!(probe_from(o, Some(5), true), None);
        assert_eq!(probe_from(o, Some(5), false), Some(5));
    }

    #[test]
    fn a_commit_below_the_log_start_counts_from_the_log_start() {
        let lag = partition_lag(
            offsets(100, 150, 150),
            Some(40),
            true,
            FirstUnconsumed::Unknown,
            NOW,
        );
        assert_eq!(lag.behind_log_start, 60);
        assert_eq!(lag.effective, Some(50));
        assert_eq!(lag.compatible, Some(110));
        assert_eq!(
            probe_from(offsets(100, 150, 150), Some(40), true),
            Some(100)
        );
    }

    #[test]
    fn a_commit_past_the_end_is_not_negative_lag() {
        let lag = partition_lag(
            offsets(0, 5, 5),
            Some(9),
            true,
            FirstUnconsumed::Unknown,
            NOW,
        );
        assert_eq!((lag.compatible, lag.effective), (Some(0), Some(0)));
    }

    #[test]
    fn no_commit_has_no_lag_figures() {
        let lag = partition_lag(offsets(0, 5, 5), None, true, FirstUnconsumed::Unknown, NOW);
        assert_eq!(lag.committed, None);
        assert_eq!(lag.compatible, None);
        assert_eq!(lag.effective, None);
        assert_eq!(probe_from(offsets(0, 5, 5), None, true), None);
    }

    #[test]
    fn a_record_timestamp_in_the_future_is_age_zero() {
        let first = FirstUnconsumed::Record {
            offset: 0,
            timestamp_ms: NOW + 5_000,
        };
        let lag = partition_lag(offsets(0, 3, 3), Some(0), true, first, NOW);
        assert_eq!(lag.seconds, Some(0.0));
        assert_eq!(lag.effective, Some(3));
    }
}
