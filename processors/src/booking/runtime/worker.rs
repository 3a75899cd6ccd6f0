//! One owned partition of the booking processor: its events' state and what the runtime knows
//! of each beyond it ([`Tracked`]), its transactional producer, and its hold-expiry timers.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};

use rdkafka::producer::FutureProducer;

use crate::booking::partition::{Partition, TimerChange};
use crate::booking::recovery::Published;
use crate::booking::state::Millis;

static NEXT_EPOCH: AtomicU64 = AtomicU64::new(1);

/// What the worker knows of one event besides its state (which lives in `Partition`).
#[derive(Debug, Clone, Default)]
pub struct Tracked {
    /// Offset the event's state reflects, as stored (`None`: never stored). Commands at or
    /// below it are already applied.
    pub offset: Option<i64>,
    /// Offset of the event's first command (published with its progress).
    pub first_offset: Option<i64>,
    /// Re-folding from the log up to what was published, without publishing again.
    pub refold: Option<Published>,
    /// The event cannot be rebuilt (its commands are below the log start): why.
    pub lost: Option<String>,
    /// In `partition_events`.
    pub registered: bool,
    /// Orders of the event that ended (neither hold nor own slots) → the last offset of the
    /// batch that last changed them. Once that batch is committed their row is final and they
    /// leave memory (read back on demand: `EventState::must_load`).
    pub ended: HashMap<String, i64>,
}

/// One owned partition: its events' state, its transactional producer and its hold timers.
pub struct Worker {
    pub(super) partition: i32,
    /// Unique per worker in this process: a commit result carries it, so one decided by a
    /// worker since replaced (restored, revoked) is recognised as stale.
    pub(super) epoch: u64,
    pub(super) core: Partition,
    pub(super) events: HashMap<String, Tracked>,
    pub(super) producer: FutureProducer,
    /// (Deadline, order id) → (event id, user id), soonest first.
    pub(super) timers: BTreeMap<(Millis, String), (String, String)>,
    /// Order id → its deadline in `timers`.
    pub(super) hold_index: HashMap<String, Millis>,
    /// The next offset expected from the consumer; anything below was fetched before the last
    /// seek and is dropped.
    pub(super) next_offset: i64,
    /// Records below this offset were processed and published by an earlier owner: read again
    /// only to re-fold events, never decided or dead-lettered twice.
    pub(super) published_until: i64,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("partition", &self.partition)
            .field("events", &self.events.len())
            .field("holds", &self.timers.len())
            .field("next_offset", &self.next_offset)
            .field("published_until", &self.published_until)
            .finish_non_exhaustive()
    }
}

impl Worker {
    pub fn new(
        partition: i32,
        core: Partition,
        events: HashMap<String, Tracked>,
        producer: FutureProducer,
        next_offset: i64,
        published_until: i64,
    ) -> Self {
        Worker {
            partition,
            epoch: NEXT_EPOCH.fetch_add(1, Ordering::Relaxed),
            core,
            events,
            producer,
            timers: BTreeMap::new(),
            hold_index: HashMap::new(),
            next_offset,
            published_until,
        }
    }

    /// Schedules the hold-expiry timer of every order the loaded states hold.
    pub fn schedule_active_holds(&mut self) {
        let mut holds = Vec::new();
        for state in self.core.events.values() {
            for (order_id, at) in state.active_holds() {
                let user = state
                    .orders
                    .get(order_id)
                    .map(|o| o.user_id.clone())
                    .unwrap_or_default();
                holds.push((at, order_id.to_owned(), state.event_id.clone(), user));
            }
        }
        for (at, order_id, event_id, user_id) in holds {
            self.schedule(at, order_id, event_id, user_id);
        }
    }

    /// The batch ending at `committed` is saved: ended orders whose last change it (or an
    /// earlier batch) saved leave memory. Returns how many left.
    pub(super) fn evict_ended(&mut self, committed: i64) -> usize {
        let mut evicted = 0;
        for (event_id, tracked) in &mut self.events {
            let state = self.core.events.get_mut(event_id);
            let Some(state) = state else {
                tracked.ended.clear();
                continue;
            };
            tracked.ended.retain(|order_id, changed_at| {
                if *changed_at > committed {
                    return true;
                }
                if state.orders.get(order_id).is_some_and(|o| !o.is_live()) {
                    state.orders.remove(order_id);
                    evicted += 1;
                }
                false
            });
        }
        evicted
    }

    /// Orders kept in memory across the partition's events.
    pub fn orders_in_memory(&self) -> usize {
        self.core.events.values().map(|s| s.orders.len()).sum()
    }

    pub fn hold_count(&self) -> usize {
        self.timers.len()
    }

    pub(super) fn schedule(
        &mut self,
        at: Millis,
        order_id: String,
        event_id: String,
        user_id: String,
    ) {
        if let Some(previous) = self.hold_index.insert(order_id.clone(), at) {
            self.timers.remove(&(previous, order_id.clone()));
        }
        self.timers.insert((at, order_id), (event_id, user_id));
    }

    pub(super) fn clear(&mut self, order_id: &str) {
        if let Some(at) = self.hold_index.remove(order_id) {
            self.timers.remove(&(at, order_id.to_owned()));
        }
    }

    pub(super) fn apply_timers(&mut self, changes: Vec<TimerChange>) {
        for change in changes {
            match change {
                TimerChange::Schedule {
                    event_id,
                    order_id,
                    user_id,
                    at,
                } => self.schedule(at, order_id, event_id, user_id),
                TimerChange::Clear { order_id, .. } => self.clear(&order_id),
            }
        }
    }
}
