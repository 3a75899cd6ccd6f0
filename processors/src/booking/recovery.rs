//! Where a partition resumes after an assignment, and which of its events must be rebuilt from
//! the log first. Pure: the runtime gathers the inputs (what Kafka says was published, what the
//! CQL store holds, where the partition's log starts, the group's committed offset) and carries
//! out the plan.
//!
//! # The log is the truth
//!
//! Every batch publishes, in its Kafka transaction, an `EventProgress` for each event it touched
//! (the offset the event's state reflects and a digest of the decisions published so far) and
//! the consumer offset (`send_offsets_to_transaction`). So Kafka knows exactly what fans were
//! told; the store only *may* know it: a store that lost acknowledged writes holds an older
//! state, or none. A store behind Kafka is never a newer owner and never a base for new
//! decisions. The plan, per event:
//!
//! | Kafka (progress) | store | plan |
//! |---|---|---|
//! | `P` | `P` (same digest) | current: continue after `P` |
//! | `P` | `S < P`, or nothing | re-fold `S+1..=P` (or from the event's first command) without publishing, then check the digest against `P`'s |
//! | `P` | `S > P` | stop: Kafka lost a committed transaction (it must not happen) |
//! | `P` | `P`, another digest | stop: the store disagrees with what fans were told |
//! | nothing | `S` | current at `S` (a state saved before progress existed) |
//! | re-fold start below the log start | | the event is lost: its commands go to dead letters, named |
//!
//! # The read position
//!
//! The partition is read from the smallest of the group's committed offset (exact: it moves only
//! with the transactions) and the first offset every re-folded event needs. Events are at
//! different offsets (a quiet event's last command may be far behind a busy one's), so reading
//! from the smallest means commands of events already ahead are read again; each event skips
//! every command at or below its own applied offset, and records below the committed offset
//! that belong to no re-folded event (dead letters already written, commands of current events)
//! are skipped too.

use std::collections::{BTreeMap, HashMap};

use super::state::DecisionDigest;

/// What Kafka's `booking.progress` says was published for one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub applied_offset: i64,
    pub first_offset: i64,
    /// `None`: published without a digest (cannot be checked).
    pub digest: Option<DecisionDigest>,
}

/// What the CQL store holds for one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub applied_offset: Option<i64>,
    pub digest: Option<DecisionDigest>,
}

/// How recovery treats one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventPlan {
    /// The stored state is what was published (or all there is): continue after `applied`.
    Current { applied: Option<i64> },
    /// The store is behind what was published: fold `from..=target.applied_offset` from the
    /// log without publishing, starting from the stored state (or an empty one when `stored`
    /// is `None`), then compare the digest with `target`'s.
    Refold {
        from: i64,
        stored: Option<i64>,
        target: Published,
    },
    /// The commands a re-fold needs are below the log start (retention): never guess.
    Lost { needed_from: i64, log_start: i64 },
    /// The store and Kafka disagree in a way no fault of the store explains.
    Inconsistent { reason: String },
}

/// Where to read from, and how to treat each event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub read_from: i64,
    /// Records below this offset were processed and published by an earlier owner; they are
    /// read again only to re-fold events that need them.
    pub published_until: i64,
    pub events: BTreeMap<String, EventPlan>,
}

impl Plan {
    /// The first event whose state cannot be trusted or rebuilt, with the reason.
    pub fn inconsistency(&self) -> Option<(&str, &str)> {
        self.events.iter().find_map(|(id, plan)| match plan {
            EventPlan::Inconsistent { reason } => Some((id.as_str(), reason.as_str())),
            _ => None,
        })
    }

    pub fn refolds(&self) -> usize {
        self.events
            .values()
            .filter(|p| matches!(p, EventPlan::Refold { .. }))
            .count()
    }
}

/// Whether recovery compares the store with Kafka. `TrustStore` is the behaviour before
/// `booking.progress` existed, kept only as the chaos suite's negative control: it resumes at
/// the group's committed offset and takes the store's word for every event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum RecoverySource {
    #[default]
    Log,
    TrustStore,
}

/// Plans the recovery of one partition.
///
/// - `published`: the partition's `booking.progress`, latest per event;
/// - `stored`: what the store holds for every event it knows on this partition;
/// - `committed`: the group's committed offset for the partition (`None`: never committed);
/// - `log_start`: the partition's first offset still in the log.
pub fn plan(
    published: &HashMap<String, Published>,
    stored: &HashMap<String, Stored>,
    committed: Option<i64>,
    log_start: i64,
    source: RecoverySource,
) -> Plan {
    let published_until = committed.unwrap_or(log_start).max(log_start);
    let mut events = BTreeMap::new();
    let mut read_from = published_until;
    if source == RecoverySource::TrustStore {
        for (id, s) in stored {
            events.insert(
                id.clone(),
                EventPlan::Current {
                    applied: s.applied_offset,
                },
            );
        }
        return Plan {
            read_from,
            published_until,
            events,
        };
    }
    for (id, s) in stored {
        if !published.contains_key(id) {
            events.insert(
                id.clone(),
                EventPlan::Current {
                    applied: s.applied_offset,
                },
            );
        }
    }
    for (id, p) in published {
        let s = stored.get(id).copied().unwrap_or(Stored {
            applied_offset: None,
            digest: None,
        });
        let event_plan = match s.applied_offset {
            Some(at) if at > p.applied_offset => EventPlan::Inconsistent {
                reason: format!(
                    "the store holds offset {at}, ahead of the {} Kafka says was published \
                     (Kafka lost a committed transaction?)",
                    p.applied_offset
                ),
            },
            Some(at) if at == p.applied_offset => match (s.digest, p.digest) {
                (Some(mine), Some(theirs)) if mine != theirs => EventPlan::Inconsistent {
                    reason: format!(
                        "at offset {at} the store's decisions ({} facts, digest {}) differ from \
                         the published ones ({} facts, digest {})",
                        mine.decisions,
                        mine.hex(),
                        theirs.decisions,
                        theirs.hex()
                    ),
                },
                _ => EventPlan::Current { applied: Some(at) },
            },
            behind => {
                let from = behind.map_or(p.first_offset, |at| at + 1);
                if from < log_start {
                    EventPlan::Lost {
                        needed_from: from,
                        log_start,
                    }
                } else {
                    read_from = read_from.min(from);
                    EventPlan::Refold {
                        from,
                        stored: behind,
                        target: *p,
                    }
                }
            }
        };
        events.insert(id.clone(), event_plan);
    }
    Plan {
        read_from,
        published_until,
        events,
    }
}

/// Where a re-folded event stands against its target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefoldCheck {
    /// Re-folded through the target and the decisions match: the event is current again.
    Matches,
    /// Re-folded through the target and the decisions differ: fans were told something the
    /// log does not give. The partition must stop.
    Differs { reason: String },
}

/// Compares a re-folded event's digest with the published one.
pub fn check_refold(
    event_id: &str,
    refolded: Option<DecisionDigest>,
    target: &Published,
) -> RefoldCheck {
    match (refolded, target.digest) {
        (Some(mine), Some(theirs)) if mine != theirs => RefoldCheck::Differs {
            reason: format!(
                "event {event_id}: re-folding the log through offset {} gives {} order facts \
                 (digest {}), but {} (digest {}) were published: a fan was told something the \
                 log does not give",
                target.applied_offset,
                mine.decisions,
                mine.hex(),
                theirs.decisions,
                theirs.hex()
            ),
        },
        _ => RefoldCheck::Matches,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(decisions: u64, sum: u128) -> Option<DecisionDigest> {
        Some(DecisionDigest { decisions, sum })
    }

    fn published(applied: i64, first: i64, d: u64) -> Published {
        Published {
            applied_offset: applied,
            first_offset: first,
            digest: digest(d, u128::from(d) * 7),
        }
    }

    fn stored(applied: Option<i64>, d: u64) -> Stored {
        Stored {
            applied_offset: applied,
            digest: digest(d, u128::from(d) * 7),
        }
    }

    fn map<T: Clone>(pairs: &[(&str, T)]) -> HashMap<String, T> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn a_store_that_holds_what_was_published_resumes_at_the_committed_offset() {
        let plan = plan(
            &map(&[("a", published(90, 3, 10)), ("b", published(120, 5, 4))]),
            &map(&[("a", stored(Some(90), 10)), ("b", stored(Some(120), 4))]),
            Some(121),
            0,
            RecoverySource::Log,
        );
        assert_eq!(plan.read_from, 121);
        assert_eq!(plan.published_until, 121);
        assert_eq!(plan.refolds(), 0);
        assert_eq!(plan.events["a"], EventPlan::Current { applied: Some(90) });
    }

    #[test]
    fn a_store_behind_kafka_is_refolded_from_its_own_offset_never_from_the_committed_one() {
        // The store lost writes: it says 1180, Kafka published 1181 and committed 1182.
        let plan = plan(
            &map(&[
                ("hot", published(1181, 0, 30)),
                ("quiet", published(40, 2, 2)),
            ]),
            &map(&[
                ("hot", stored(Some(1180), 29)),
                ("quiet", stored(Some(40), 2)),
            ]),
            Some(1182),
            0,
            RecoverySource::Log,
        );
        assert_eq!(plan.read_from, 1181, "never past what the store holds");
        assert_eq!(
            plan.events["hot"],
            EventPlan::Refold {
                from: 1181,
                stored: Some(1180),
                target: published(1181, 0, 30)
            }
        );
        assert_eq!(
            plan.events["quiet"],
            EventPlan::Current { applied: Some(40) }
        );
    }

    #[test]
    fn an_event_the_store_lost_entirely_is_refolded_from_its_first_command() {
        let plan = plan(
            &map(&[("gone", published(500, 17, 8))]),
            &HashMap::new(),
            Some(501),
            0,
            RecoverySource::Log,
        );
        assert_eq!(plan.read_from, 17);
        assert!(matches!(
            plan.events["gone"],
            EventPlan::Refold {
                from: 17,
                stored: None,
                ..
            }
        ));
    }

    #[test]
    fn commands_below_the_log_start_make_the_event_lost_not_guessed() {
        let plan = plan(
            &map(&[
                ("old", published(500, 17, 8)),
                ("fine", published(900, 600, 2)),
            ]),
            &map(&[("fine", stored(Some(800), 1))]),
            Some(901),
            300,
            RecoverySource::Log,
        );
        assert_eq!(
            plan.events["old"],
            EventPlan::Lost {
                needed_from: 17,
                log_start: 300
            }
        );
        assert_eq!(plan.read_from, 801);
    }

    #[test]
    fn a_store_ahead_of_kafka_or_with_other_decisions_is_inconsistent() {
        let ahead = plan(
            &map(&[("e", published(10, 0, 3))]),
            &map(&[("e", stored(Some(11), 3))]),
            Some(12),
            0,
            RecoverySource::Log,
        );
        assert!(ahead.inconsistency().is_some_and(|(id, _)| id == "e"));
        let differs = plan(
            &map(&[("e", published(10, 0, 3))]),
            &map(&[("e", stored(Some(10), 4))]),
            Some(11),
            0,
            RecoverySource::Log,
        );
        let (_, reason) = differs.inconsistency().unwrap();
        assert!(reason.contains("differ from the published"), "{reason}");
    }

    #[test]
    fn legacy_state_without_progress_and_no_commit_at_all_are_taken_as_they_are() {
        let plan = plan(
            &HashMap::new(),
            &map(&[("legacy", stored(Some(5), 0))]),
            None,
            2,
            RecoverySource::Log,
        );
        assert_eq!(plan.read_from, 2, "no commit: from the log start");
        assert_eq!(
            plan.events["legacy"],
            EventPlan::Current { applied: Some(5) }
        );
    }

    #[test]
    fn trusting_the_store_ignores_kafka_the_negative_control() {
        let plan = plan(
            &map(&[("hot", published(1181, 0, 30))]),
            &map(&[("hot", stored(Some(1180), 29))]),
            Some(1182),
            0,
            RecoverySource::TrustStore,
        );
        assert_eq!(plan.read_from, 1182, "the old behaviour skips offset 1181");
        assert_eq!(
            plan.events["hot"],
            EventPlan::Current {
                applied: Some(1180)
            }
        );
    }

    #[test]
    fn a_refold_must_end_with_the_published_digest() {
        let target = published(40, 0, 5);
        assert_eq!(
            check_refold("e", target.digest, &target),
            RefoldCheck::Matches
        );
        let RefoldCheck::Differs { reason } = check_refold("e", digest(5, 1), &target) else {
            panic!("a different digest must not match");
        };
        assert!(reason.contains("event e"), "{reason}");
        // Unknown on either side cannot be checked.
        assert_eq!(check_refold("e", None, &target), RefoldCheck::Matches);
    }

    #[test]
    fn the_digest_does_not_depend_on_batch_boundaries_or_order() {
        let ids = [
            "6f1c2f4e-1f0a-5c3b-9d1e-0a1b2c3d4e5f",
            "0d9b8a7c-6e5f-5a4b-8c3d-2e1f0a9b8c7d",
            "ffffffff-ffff-5fff-bfff-ffffffffffff",
        ];
        let mut one = DecisionDigest::default();
        for id in ids {
            one.add(id);
        }
        let mut other = DecisionDigest::default();
        for id in ids.iter().rev() {
            other.add(id);
        }
        assert_eq!(one, other);
        assert_eq!(one.decisions, 3);
        assert_eq!(DecisionDigest::parse(3, &one.hex()), Some(one));
        assert_eq!(DecisionDigest::parse(3, "xyz"), None);
        let mut rejected_instead = DecisionDigest::default();
        rejected_instead.add(ids[0]);
        rejected_instead.add(ids[1]);
        rejected_instead.add("5b1d3a2c-0000-5000-8000-000000000001");
        assert_ne!(one, rejected_instead);
    }
}
