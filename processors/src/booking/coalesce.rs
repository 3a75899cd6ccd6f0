//! Availability published once per event per batch. `availability` is compacted and every
//! `AvailabilityChanged` carries the event's full counters, so readers only ever want the latest
//! one: within a batch, each event's last change replaces the ones before it. Pure.
//!
//! The core still counts every change (`sequence` grows by one per change) and a record's id is
//! a function of (event, sequence), so the published sequences have gaps, and a replay that
//! cuts the log into other batches publishes a subset of the same records, always ending each
//! batch with the same latest state. Readers resume by sequence and accept gaps (ingest's
//! `live` module; `verify-event` checks each record it finds against the capacity).

use std::collections::BTreeMap;

use boxoffice_avro::records::AvailabilityChanged;

use super::render::Output;

/// The latest availability change of each event seen in one batch.
#[derive(Debug, Default)]
pub struct LatestAvailability {
    latest: BTreeMap<String, AvailabilityChanged>,
    superseded: u64,
}

impl LatestAvailability {
    /// Keeps `output` when it is an availability change (replacing an older one of the same
    /// event) and gives it back otherwise, for the caller to publish in order.
    pub fn absorb(&mut self, output: Output) -> Option<Output> {
        let Output::Availability(change) = output else {
            return Some(output);
        };
        match self.latest.get_mut(&change.event_id) {
            // The core's sequence only grows within a partition; an older change (which it
            // never emits) would not replace a newer one.
            Some(kept) if kept.sequence >= change.sequence => self.superseded += 1,
            Some(kept) => {
                *kept = change;
                self.superseded += 1;
            }
            None => {
                self.latest.insert(change.event_id.clone(), change);
            }
        }
        None
    }

    /// How many changes were replaced by a later one of the same event (not published).
    pub fn superseded(&self) -> u64 {
        self.superseded
    }

    /// The kept changes, one per event, to publish at the end of the batch.
    pub fn into_outputs(self) -> impl Iterator<Item = Output> {
        self.latest.into_values().map(Output::Availability)
    }
}

/// `outputs` with each event's availability coalesced to its latest change, which comes after
/// everything else (the order of other records is kept).
pub fn coalesce(outputs: impl IntoIterator<Item = Output>) -> Vec<Output> {
    let mut latest = LatestAvailability::default();
    let mut kept: Vec<Output> = outputs
        .into_iter()
        .filter_map(|o| latest.absorb(o))
        .collect();
    kept.extend(latest.into_outputs());
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use boxoffice_avro::records::{NotificationKind, NotificationRequested};

    fn change(event: &str, sequence: i64) -> Output {
        Output::Availability(AvailabilityChanged {
            record_id: format!("{event}-{sequence}"),
            event_id: event.into(),
            sequence,
            total: 10,
            available: 10 - sequence as i32,
            held: sequence as i32,
            sold: 0,
            occurred_at: sequence,
        })
    }

    fn note(id: &str) -> Output {
        Output::Notification(NotificationRequested {
            record_id: id.into(),
            kind: NotificationKind::OrderReserved,
            user_id: "u".into(),
            order_id: None,
            event_id: None,
            params: Default::default(),
            occurred_at: 0,
        })
    }

    #[test]
    fn keeps_the_last_change_per_event_after_the_other_records() {
        let outputs = vec![
            change("a", 1),
            note("n1"),
            change("b", 7),
            change("a", 2),
            note("n2"),
            change("a", 3),
        ];
        let mut latest = LatestAvailability::default();
        let mut kept: Vec<Output> = outputs
            .clone()
            .into_iter()
            .filter_map(|o| latest.absorb(o))
            .collect();
        assert_eq!(latest.superseded(), 2);
        kept.extend(latest.into_outputs());
        assert_eq!(
            kept,
            vec![note("n1"), note("n2"), change("a", 3), change("b", 7)]
        );
        assert_eq!(coalesce(outputs), kept);
    }

    #[test]
    fn an_older_change_never_replaces_a_newer_one() {
        assert_eq!(
            coalesce([change("a", 5), change("a", 4)]),
            vec![change("a", 5)]
        );
    }

    #[test]
    fn nothing_to_coalesce_is_left_alone() {
        assert_eq!(
            coalesce([note("n1"), note("n2")]),
            vec![note("n1"), note("n2")]
        );
        assert!(coalesce(Vec::new()).is_empty());
    }
}
