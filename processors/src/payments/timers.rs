//! The payment processor's in-memory timers ([`TimerWheel`]) and per-payment locks
//! ([`PaymentLocks`]). Plain data structures, no I/O: the runtime keeps the wheel in step with
//! the `payment_timers` table (the table is the truth across restarts, the wheel is the copy
//! of the owned partitions' rows the timer loop sleeps on) and takes a payment's lock for every
//! step that loads, decides and writes it, so a record and a timer never work on the same
//! payment at once while the other payments of the partition go on.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use super::core::Millis;

/// Timers of the partitions this processor owns: payment id → (due time, partition).
#[derive(Debug, Default)]
pub struct TimerWheel {
    owned: HashSet<i32>,
    due: BTreeSet<(Millis, String)>,
    entries: HashMap<String, (Millis, i32)>,
    /// Payments whose wake is running: not handed out again until it finishes.
    running: HashSet<String>,
}

impl TimerWheel {
    /// The partition is ours: its timers are kept from now on.
    pub fn assign(&mut self, partition: i32) {
        self.owned.insert(partition);
    }

    /// The partition is no longer ours: its timers are dropped (the new owner loads them).
    /// Returns how many were dropped.
    pub fn revoke(&mut self, partition: i32) -> usize {
        self.owned.remove(&partition);
        let gone: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, (_, p))| *p == partition)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &gone {
            self.cancel(id);
        }
        gone.len()
    }

    pub fn owns(&self, partition: i32) -> bool {
        self.owned.contains(&partition)
    }

    pub fn owned(&self) -> Vec<i32> {
        let mut owned: Vec<i32> = self.owned.iter().copied().collect();
        owned.sort_unstable();
        owned
    }

    /// Sets (or moves) a payment's timer. Ignored for a partition that is not ours.
    pub fn set(&mut self, partition: i32, payment_id: &str, at: Millis) {
        if !self.owns(partition) {
            return;
        }
        if let Some((previous, _)) = self.entries.insert(payment_id.to_owned(), (at, partition)) {
            self.due.remove(&(previous, payment_id.to_owned()));
        }
        self.due.insert((at, payment_id.to_owned()));
    }

    /// A timer read from the table: kept unless the wheel already knows the payment (its own
    /// entry is at least as recent: the table is written before the wheel) or it is running.
    pub fn merge(&mut self, partition: i32, payment_id: &str, at: Millis) {
        if self.entries.contains_key(payment_id) || self.running.contains(payment_id) {
            return;
        }
        self.set(partition, payment_id, at);
    }

    pub fn cancel(&mut self, payment_id: &str) {
        if let Some((at, _)) = self.entries.remove(payment_id) {
            self.due.remove(&(at, payment_id.to_owned()));
        }
    }

    /// Takes up to `limit` timers due at `now` (soonest first), skipping payments whose wake is
    /// still running, and marks them running.
    pub fn take_due(&mut self, now: Millis, limit: usize) -> Vec<(i32, String)> {
        let mut taken = Vec::new();
        let mut due = Vec::new();
        for (at, id) in &self.due {
            if due.len() >= limit || *at > now {
                break;
            }
            if self.running.contains(id) {
                continue;
            }
            due.push((*at, id.clone()));
        }
        for (at, id) in due {
            self.due.remove(&(at, id.clone()));
            if let Some((_, partition)) = self.entries.remove(&id) {
                self.running.insert(id.clone());
                taken.push((partition, id));
            }
        }
        taken
    }

    /// The wake of `payment_id` is over (whatever it scheduled is already in the wheel).
    pub fn finish(&mut self, payment_id: &str) {
        self.running.remove(payment_id);
    }

    /// The soonest timer not running.
    pub fn next_due(&self) -> Option<Millis> {
        self.due
            .iter()
            .find(|(_, id)| !self.running.contains(id))
            .map(|(at, _)| *at)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn due_at(&self, payment_id: &str) -> Option<Millis> {
        self.entries.get(payment_id).map(|(at, _)| *at)
    }
}

type Slot = Arc<tokio::sync::Mutex<()>>;

/// One async lock per payment, created on demand and dropped when nobody holds or awaits it.
#[derive(Debug, Default)]
pub struct PaymentLocks {
    slots: Mutex<HashMap<String, Slot>>,
}

/// Holds a payment's lock until dropped.
#[derive(Debug)]
pub struct PaymentGuard<'a> {
    locks: &'a PaymentLocks,
    payment_id: String,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl PaymentLocks {
    pub async fn lock(&self, payment_id: &str) -> PaymentGuard<'_> {
        let slot = {
            let mut slots = self.slots();
            Arc::clone(slots.entry(payment_id.to_owned()).or_default())
        };
        let guard = slot.lock_owned().await;
        PaymentGuard {
            locks: self,
            payment_id: payment_id.to_owned(),
            guard: Some(guard),
        }
    }

    /// Payments with a lock held or awaited.
    pub fn len(&self) -> usize {
        self.slots().len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots().is_empty()
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        // A panic while holding this map leaves it whole (every change is one insert/remove).
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for PaymentGuard<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut slots = self.locks.slots();
        // Only the map's own reference left: nobody holds or awaits this payment's lock (a
        // waiter clones the slot under the map's lock, so this cannot race one).
        if slots
            .get(&self.payment_id)
            .is_some_and(|slot| Arc::strong_count(slot) == 1)
        {
            slots.remove(&self.payment_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_come_due_in_order_once_and_only_for_owned_partitions() {
        let mut wheel = TimerWheel::default();
        wheel.assign(0);
        wheel.set(0, "b", 20);
        wheel.set(0, "a", 10);
        wheel.set(1, "c", 5);
        assert_eq!(wheel.len(), 2, "partition 1 is not ours");
        assert_eq!(wheel.next_due(), Some(10));
        assert!(wheel.take_due(9, 10).is_empty());
        assert_eq!(wheel.take_due(20, 1), [(0, "a".to_owned())]);
        // Running: a new timer for it waits until the wake is over.
        wheel.set(0, "a", 15);
        assert_eq!(wheel.take_due(20, 10), [(0, "b".to_owned())]);
        assert_eq!(wheel.next_due(), None);
        wheel.finish("a");
        assert_eq!(wheel.take_due(20, 10), [(0, "a".to_owned())]);
        assert!(wheel.is_empty());
    }

    #[test]
    fn moving_cancelling_merging_and_revoking() {
        let mut wheel = TimerWheel::default();
        wheel.assign(0);
        wheel.assign(1);
        wheel.set(0, "a", 100);
        wheel.set(0, "a", 50);
        assert_eq!(wheel.due_at("a"), Some(50));
        wheel.merge(0, "a", 10);
        assert_eq!(wheel.due_at("a"), Some(50), "the wheel's own entry wins");
        wheel.merge(1, "b", 10);
        assert_eq!(wheel.due_at("b"), Some(10));
        wheel.cancel("a");
        assert_eq!(wheel.due_at("a"), None);
        assert_eq!(wheel.revoke(1), 1);
        assert!(wheel.is_empty());
        assert!(!wheel.owns(1));
        assert_eq!(wheel.owned(), [0]);
    }

    #[tokio::test]
    async fn a_payment_lock_excludes_the_same_payment_only_and_is_cleaned_up() {
        let locks = PaymentLocks::default();
        let a = locks.lock("a").await;
        let _b = locks.lock("b").await;
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(50), locks.lock("a"));
        assert!(waiting.await.is_err(), "the same payment waits");
        drop(a);
        let again = locks.lock("a").await;
        drop(again);
        assert_eq!(locks.len(), 1, "only b is still held");
    }
}
