//! Status of a group on a partition, in Burrow's vocabulary, from a bounded window of samples.
//! Pure: samples in, status out.
//!
//! Burrow's rules, adapted to what an exporter sees (offsets and membership, not the times of
//! individual commits):
//! - **OK** when the effective lag was 0 at any sample of the window (an idle topic is never a
//!   problem), or the group is consuming and the lag is not growing;
//! - **REWIND** when the committed offset went backwards;
//! - **STALL** when, over the whole window, the commit did not move while there was lag and a
//!   member owns the partition (alive, but stuck);
//! - **STOP** the same with no member owning the partition (nobody is consuming it);
//! - **WARN** when the commit moves but the lag grew from sample to sample across the window
//!   (falling behind).
//!
//! The window counts only once it spans `window` of time; until then the status is OK.

use std::collections::VecDeque;

/// One observation of a group on a partition.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub at_ms: i64,
    pub committed: i64,
    /// The effective lag (see `lag`).
    pub lag: i64,
    /// Whether a member of the group owned the partition.
    pub owned: bool,
}

/// Partition status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PartitionStatus {
    Ok,
    Warn,
    Stall,
    Stop,
    Rewind,
}

impl PartitionStatus {
    pub const ALL: [PartitionStatus; 5] =
        [Self::Ok, Self::Warn, Self::Stall, Self::Stop, Self::Rewind];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "OK",
            Self::Warn => "WARN",
            Self::Stall => "STALL",
            Self::Stop => "STOP",
            Self::Rewind => "REWIND",
        }
    }
}

/// Group status: the worst of its partitions (WARN stays WARN; STALL, STOP, REWIND are ERR).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum GroupStatus {
    Ok,
    Warn,
    Err,
}

impl GroupStatus {
    pub const ALL: [GroupStatus; 3] = [Self::Ok, Self::Warn, Self::Err];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "OK",
            Self::Warn => "WARN",
            Self::Err => "ERR",
        }
    }

    pub fn of(partitions: impl IntoIterator<Item = PartitionStatus>) -> GroupStatus {
        partitions
            .into_iter()
            .map(|p| match p {
                PartitionStatus::Ok => GroupStatus::Ok,
                PartitionStatus::Warn => GroupStatus::Warn,
                _ => GroupStatus::Err,
            })
            .max()
            .unwrap_or(GroupStatus::Ok)
    }
}

/// The last samples of a group on a partition, at most `capacity`.
#[derive(Debug, Clone)]
pub struct Window {
    samples: VecDeque<Sample>,
    capacity: usize,
}

impl Window {
    pub fn new(capacity: usize) -> Self {
        Self {
            samples: VecDeque::with_capacity(capacity.max(2)),
            capacity: capacity.max(2),
        }
    }

    pub fn push(&mut self, sample: Sample) {
        if self.samples.len() == self.capacity {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
    }

    /// The status over the samples that fall within `window_ms` of the newest one.
    pub fn status(&self, window_ms: i64) -> PartitionStatus {
        let Some(newest) = self.samples.back() else {
            return PartitionStatus::Ok;
        };
        let samples: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| newest.at_ms - s.at_ms <= window_ms)
            .collect();
        if samples.windows(2).any(|w| w[1].committed < w[0].committed) {
            return PartitionStatus::Rewind;
        }
        if samples.iter().any(|s| s.lag == 0) {
            return PartitionStatus::Ok;
        }
        // Only a full window judges progress (the oldest sample kept is at least as old as
        // the window; older ones were filtered, so look at the whole deque for coverage).
        let covered = self
            .samples
            .front()
            .is_some_and(|oldest| newest.at_ms - oldest.at_ms >= window_ms);
        if !covered {
            return PartitionStatus::Ok;
        }
        let first = samples[0];
        if first.committed == newest.committed {
            return if newest.owned {
                PartitionStatus::Stall
            } else {
                PartitionStatus::Stop
            };
        }
        let growing = samples.windows(2).all(|w| w[1].lag >= w[0].lag) && newest.lag > first.lag;
        if growing {
            PartitionStatus::Warn
        } else {
            PartitionStatus::Ok
        }
    }

    /// Records consumed per second over the samples within `window_ms` (0 when unknown).
    pub fn consume_rate(&self, window_ms: i64) -> f64 {
        let Some(newest) = self.samples.back() else {
            return 0.0;
        };
        let Some(oldest) = self
            .samples
            .iter()
            .find(|s| newest.at_ms - s.at_ms <= window_ms)
        else {
            return 0.0;
        };
        let elapsed = newest.at_ms - oldest.at_ms;
        if elapsed <= 0 || newest.committed <= oldest.committed {
            return 0.0;
        }
        (newest.committed - oldest.committed) as f64 * 1000.0 / elapsed as f64
    }
}

/// Seconds until the group catches up at its current rate: 0 with no lag, infinite when it
/// does not consume.
pub fn catch_up_seconds(lag: i64, rate_per_second: f64) -> f64 {
    if lag <= 0 {
        0.0
    } else if rate_per_second > 0.0 {
        lag as f64 / rate_per_second
    } else {
        f64::INFINITY
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: i64 = 60_000;

    fn window(samples: &[(i64, i64, i64, bool)]) -> Window {
        let mut w = Window::new(16);
        for &(at_ms, committed, lag, owned) in samples {
            w.push(Sample {
                at_ms,
                committed,
                lag,
                owned,
            });
        }
        w
    }

    #[test]
    fn an_idle_topic_is_ok_however_long_nothing_moves() {
        let w = window(&[
            (0, 10, 0, false),
            (30_000, 10, 0, false),
            (90_000, 10, 0, false),
        ]);
        assert_eq!(w.status(WINDOW), PartitionStatus::Ok);
    }

    #[test]
    fn a_commit_that_does_not_move_under_lag_is_stall_when_owned_and_stop_when_not() {
        let owned = window(&[
            (0, 10, 5, true),
            (30_000, 10, 7, true),
            (60_000, 10, 9, true),
        ]);
        assert_eq!(owned.status(WINDOW), PartitionStatus::Stall);
        let unowned = window(&[
            (0, 10, 5, false),
            (30_000, 10, 5, false),
            (60_000, 10, 5, false),
        ]);
        assert_eq!(unowned.status(WINDOW), PartitionStatus::Stop);
    }

    #[test]
    fn a_short_window_judges_nothing() {
        let w = window(&[(0, 10, 5, false), (30_000, 10, 5, false)]);
        assert_eq!(w.status(WINDOW), PartitionStatus::Ok);
    }

    #[test]
    fn a_consumer_that_moves_but_falls_behind_is_warn_and_one_that_keeps_up_is_ok() {
        let behind = window(&[
            (0, 10, 5, true),
            (30_000, 20, 8, true),
            (60_000, 30, 12, true),
        ]);
        assert_eq!(behind.status(WINDOW), PartitionStatus::Warn);
        let keeping_up = window(&[
            (0, 10, 5, true),
            (30_000, 20, 9, true),
            (60_000, 30, 4, true),
        ]);
        assert_eq!(keeping_up.status(WINDOW), PartitionStatus::Ok);
    }

    #[test]
    fn a_commit_going_backwards_is_rewind() {
        let w = window(&[(0, 10, 5, true), (30_000, 4, 11, true)]);
        assert_eq!(w.status(WINDOW), PartitionStatus::Rewind);
    }

    #[test]
    fn the_group_takes_its_worst_partition() {
        use PartitionStatus as P;
        assert_eq!(GroupStatus::of([P::Ok, P::Warn]), GroupStatus::Warn);
        assert_eq!(GroupStatus::of([P::Ok, P::Stop, P::Warn]), GroupStatus::Err);
        assert_eq!(GroupStatus::of([]), GroupStatus::Ok);
    }

    #[test]
    fn the_rate_and_eta_come_from_commit_progress() {
        let w = window(&[(0, 100, 50, true), (10_000, 300, 40, true)]);
        assert_eq!(w.consume_rate(WINDOW), 20.0);
        assert_eq!(catch_up_seconds(40, 20.0), 2.0);
        assert_eq!(catch_up_seconds(0, 0.0), 0.0);
        assert!(catch_up_seconds(5, 0.0).is_infinite());
    }

    #[test]
    fn the_window_is_bounded() {
        let mut w = Window::new(3);
        for i in 0..10 {
            w.push(Sample {
                at_ms: i,
                committed: i,
                lag: 1,
                owned: true,
            });
        }
        assert_eq!(w.samples.len(), 3);
    }
}
