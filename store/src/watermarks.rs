//! Where a consumer whose effects live in the CQL store may resume (table
//! `consumer_watermarks`): the next offset of a partition whose every earlier record's writes
//! are stored. The payment processor and the notifier's in-app channel write it after a
//! batch's writes and before the group's offset commit, so Kafka's committed offset is never
//! ahead of it unless the store lost writes it had acknowledged.
//!
//! # Why it catches lost writes
//!
//! A single node replays its commit log up to the last sync: what survives a crash is a prefix
//! of the writes in the order they were made. The watermark is written after the writes it
//! covers, so a watermark that survived means the writes before it survived; one that went
//! backwards (or vanished) means the store lost writes, and replaying the log from the stored
//! watermark writes them again. The consumers' writes are idempotent (payments fenced by their
//! revision and skipped by offset, in-app rows upserted by notification id), so a replay
//! repeats nothing a reader can see.
//!
//! # Why a failed call reads the partition again
//!
//! The watermark only vouches for the writes before it. Writes made after the last watermark
//! that survived a crash (acknowledged, then lost) leave it unchanged: the next watermark
//! write would find the one it expects and move it past them. So a consumer also notes the
//! process's count of transient store failures (`session::transient_failures`) with each
//! watermark it writes or resumes from ([`Written`]); when the count moved before the next
//! watermark write, the store may have crashed in between, and the partition is read again
//! from the stored watermark ([`Advanced::Faulted`]) instead of moving it. A crash shows as a
//! failed call: both consumers write their watermark within 100 ms (in-app) or one batch
//! (payments) of the writes it covers, and a store node takes seconds to restart, so some
//! call of theirs meets it down. Without this, a chaos run lost 5 of 480 in-app rows.
//!
//! A multi-node cluster with quorum writes loses acknowledged writes only in a whole-cluster
//! failure, where the prefix argument holds per node but not across nodes; the booking
//! processor, whose decisions must never be repeated differently, compares with Kafka instead
//! (`booking.progress`).

use std::sync::Arc;

use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;

use crate::schema::Keyspace;
use crate::session::{execution_is_transient, prepare_is_transient, transient_failures};

/// A watermark read or write failed.
#[derive(Debug, thiserror::Error)]
#[error("consumer watermark {operation}: {source}")]
pub struct WatermarkError {
    operation: &'static str,
    retryable: bool,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl WatermarkError {
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }
}

/// Where to resume a partition, from the store's watermark and the group's committed offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// The committed offset is covered by the store: resume there (`None`: from the start,
    /// nothing was ever committed).
    Committed(Option<i64>),
    /// The store is behind Kafka: it lost writes. Replay from its watermark (`None`: from the
    /// log start, the store lost every watermark of the partition).
    Replay { from: Option<i64>, committed: i64 },
}

impl Resume {
    /// Decides, purely, where to resume.
    pub fn decide(stored: Option<i64>, committed: Option<i64>) -> Resume {
        match (stored, committed) {
            (_, None) => Resume::Committed(stored),
            (Some(w), Some(c)) if w >= c => Resume::Committed(Some(c)),
            (from, Some(c)) => Resume::Replay { from, committed: c },
        }
    }

    /// The offset to seek to (`None`: the log start).
    pub fn offset(&self) -> Option<i64> {
        match self {
            Resume::Committed(at) => *at,
            Resume::Replay { from, .. } => *from,
        }
    }
}

/// The watermark a consumer last wrote for a partition, or found when it took the partition
/// (`None`: the store held none), with the process's transient store failure count then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub offset: Option<i64>,
    failures: u64,
}

impl Written {
    /// `offset`, confirmed now: the writes this consumer makes from here on are checked
    /// against the failures seen from here on.
    pub fn now(offset: Option<i64>) -> Written {
        Written::at(offset, transient_failures())
    }

    /// `offset`, confirmed when the failure count was `failures`.
    pub fn at(offset: Option<i64>, failures: u64) -> Written {
        Written { offset, failures }
    }
}

/// The watermark check before a write, purely, from the stored watermark, the one written
/// last and the failure count now: `None` to go ahead and write, or why the partition must be
/// read again instead.
pub fn check(stored: Option<i64>, written: Written, failures_now: u64) -> Option<Advanced> {
    if went_backwards(stored, written.offset) {
        Some(Advanced::Behind { stored })
    } else if failures_now != written.failures {
        Some(Advanced::Faulted { stored })
    } else {
        None
    }
}

/// Whether the store lost writes since this consumer last wrote the partition's watermark
/// (`written`): the stored one is older or gone. `written: None` (nothing written since the
/// partition was taken, or the store held none then) has nothing to compare with.
fn went_backwards(stored: Option<i64>, written: Option<i64>) -> bool {
    written.is_some_and(|w| stored.is_none_or(|s| s < w))
}

/// What [`WatermarkStore::advance`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Advanced {
    /// The new watermark is stored; keep this as the partition's [`Written`].
    Saved(Written),
    /// Nothing was written: the stored watermark went backwards (see [`went_backwards`]), the
    /// store lost writes, and the partition must be read again from `stored`.
    Behind { stored: Option<i64> },
    /// Nothing was written: a store call failed since the last watermark, so the store may
    /// have lost writes made after it without moving it; the partition must be read again
    /// from `stored`.
    Faulted { stored: Option<i64> },
}

impl Advanced {
    /// Where the partition must be read again from, unless the watermark was saved.
    pub fn read_again_from(&self) -> Option<Option<i64>> {
        match self {
            Advanced::Saved(_) => None,
            Advanced::Behind { stored } | Advanced::Faulted { stored } => Some(*stored),
        }
    }

    /// Logs why `partition` is read again (a loss seen is a warning, a failure since the last
    /// watermark is not); true for [`Advanced::Faulted`], whose replays consumers count apart.
    pub fn log_read_again(&self, partition: i32, written: Written) -> bool {
        match self {
            Advanced::Saved(_) => false,
            Advanced::Behind { stored } => {
                tracing::warn!(
                    partition,
                    ?stored,
                    ?written,
                    "the store's watermark went backwards (it lost writes it had acknowledged): reading the partition again from it"
                );
                false
            }
            Advanced::Faulted { stored } => {
                tracing::info!(
                    partition,
                    ?stored,
                    ?written,
                    "a store call failed since the last watermark (writes after it may be lost): reading the partition again from it"
                );
                true
            }
        }
    }
}

/// Reads and writes `consumer_watermarks`.
#[derive(Debug, Clone)]
pub struct WatermarkStore {
    session: Arc<Session>,
    save: Arc<PreparedStatement>,
    load: Arc<PreparedStatement>,
}

fn error(
    operation: &'static str,
    retryable: bool,
    source: impl std::error::Error + Send + Sync + 'static,
) -> WatermarkError {
    WatermarkError {
        operation,
        retryable,
        source: Box::new(source),
    }
}

impl WatermarkStore {
    /// Prepares the statements. The schema must exist (`schema::ensure_schema`).
    pub async fn new(session: Arc<Session>, keyspace: &Keyspace) -> Result<Self, WatermarkError> {
        let table = keyspace.table("consumer_watermarks");
        let prepare = |cql: String| {
            let session = Arc::clone(&session);
            async move {
                session
                    .prepare(cql)
                    .await
                    .map_err(|e| error("prepare", prepare_is_transient(&e), e))
            }
        };
        let mut save = prepare(format!(
            "INSERT INTO {table} (consumer, topic, kafka_partition, next_offset, updated_at) \
             VALUES (?, ?, ?, ?, toTimestamp(now()))"
        ))
        .await?;
        save.set_is_idempotent(true);
        let load = prepare(format!(
            "SELECT next_offset FROM {table} WHERE consumer = ? AND topic = ? AND kafka_partition = ?"
        ))
        .await?;
        Ok(WatermarkStore {
            session,
            save: Arc::new(save),
            load: Arc::new(load),
        })
    }

    /// Records that every record of the partition below `next_offset` has its writes stored.
    pub async fn save(
        &self,
        consumer: &str,
        topic: &str,
        partition: i32,
        next_offset: i64,
    ) -> Result<(), WatermarkError> {
        self.session
            .execute_unpaged(&self.save, (consumer, topic, partition, next_offset))
            .await
            .map_err(|e| error("save", execution_is_transient(&e), e))?;
        Ok(())
    }

    /// Moves the partition's watermark to `next_offset`, unless the store lost the one this
    /// consumer wrote last (`written`) or a store call failed since (see [`check`]). Checking
    /// before every write is what keeps the evidence of a loss: a periodic check alone comes
    /// too late when a write after the store's restart has already moved the watermark past
    /// what was lost. One read more per write; callers write once per batch.
    pub async fn advance(
        &self,
        consumer: &str,
        topic: &str,
        partition: i32,
        written: Written,
        next_offset: i64,
    ) -> Result<Advanced, WatermarkError> {
        // Read first: a failure from here on is after the new watermark's count.
        let failures = transient_failures();
        if written.offset.is_some() || failures != written.failures {
            let stored = self.load(consumer, topic, partition).await?;
            if let Some(read_again) = check(stored, written, failures) {
                return Ok(read_again);
            }
        }
        self.save(consumer, topic, partition, next_offset).await?;
        Ok(Advanced::Saved(Written::at(Some(next_offset), failures)))
    }

    /// The stored watermark of the partition, if any.
    pub async fn load(
        &self,
        consumer: &str,
        topic: &str,
        partition: i32,
    ) -> Result<Option<i64>, WatermarkError> {
        let row = self
            .session
            .execute_unpaged(&self.load, (consumer, topic, partition))
            .await
            .map_err(|e| error("load", execution_is_transient(&e), e))?
            .into_rows_result()
            .map_err(|e| error("load", false, e))?
            .maybe_first_row::<(Option<i64>,)>()
            .map_err(|e| error("load", false, e))?;
        Ok(row.and_then(|(offset,)| offset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watermark_older_than_the_one_written_or_gone_went_backwards() {
        assert!(went_backwards(Some(30), Some(40)));
        assert!(went_backwards(None, Some(40)), "the row itself was lost");
        assert!(!went_backwards(Some(40), Some(40)));
        assert!(
            !went_backwards(Some(50), Some(40)),
            "a newer owner moved it on"
        );
        assert!(
            !went_backwards(None, None),
            "nothing written here: nothing to compare with"
        );
        assert!(!went_backwards(Some(3), None));
    }

    #[test]
    fn a_failure_since_the_last_watermark_reads_again_from_the_stored_one() {
        let written = Written::at(Some(40), 7);
        assert_eq!(
            check(Some(40), written, 7),
            None,
            "no failure, nothing lost"
        );
        assert_eq!(
            check(Some(40), written, 8),
            Some(Advanced::Faulted { stored: Some(40) }),
            "the watermark survived, but writes after it may not have"
        );
        assert_eq!(
            check(Some(30), written, 8),
            Some(Advanced::Behind { stored: Some(30) }),
            "a watermark that went backwards is the loss itself"
        );
        assert_eq!(
            check(None, Written::at(None, 7), 9),
            Some(Advanced::Faulted { stored: None }),
            "nothing stored yet: read again from the log start"
        );
        assert_eq!(check(None, Written::at(None, 7), 7), None);
        assert_eq!(
            Advanced::Faulted { stored: None }.read_again_from(),
            Some(None)
        );
        assert_eq!(Advanced::Saved(written).read_again_from(), None);
    }

    #[test]
    fn a_store_that_covers_the_commit_resumes_at_the_commit() {
        assert_eq!(
            Resume::decide(Some(40), Some(40)),
            Resume::Committed(Some(40))
        );
        assert_eq!(
            Resume::decide(Some(45), Some(40)),
            Resume::Committed(Some(40))
        );
        assert_eq!(Resume::decide(None, None), Resume::Committed(None));
        assert_eq!(Resume::decide(Some(7), None), Resume::Committed(Some(7)));
    }

    #[test]
    fn a_store_behind_the_commit_replays_from_its_watermark_or_the_start() {
        let behind = Resume::decide(Some(30), Some(40));
        assert_eq!(
            behind,
            Resume::Replay {
                from: Some(30),
                committed: 40
            }
        );
        assert_eq!(behind.offset(), Some(30));
        let lost = Resume::decide(None, Some(40));
        assert_eq!(
            lost.offset(),
            None,
            "a lost watermark replays from the log start"
        );
    }
}
