//! How many server-sent event streams may be open at once: per key (an account, or a client
//! address for the public availability stream) and in total, per replica. A stream's feeding
//! task holds its [`StreamSlot`]; the slot is freed when the task ends (client gone, session
//! over, server stopping).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// Why no slot was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SlotRefused {
    #[error("too many open streams for this {0}; close one first")]
    PerKey(&'static str),
    #[error("too many open streams on this server; retry shortly")]
    Total,
}

/// Who holds a stream, for its per-key bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamOwner<'a> {
    /// A signed-in account (order and notification streams).
    Account(&'a str),
    /// A client address (the public availability stream).
    Address(&'a str),
}

/// The open streams, counted per key and in total.
#[derive(Debug)]
pub struct StreamSlots {
    per_account: usize,
    per_address: usize,
    total: usize,
    open: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    /// Keys with at least one open stream (so at most `total` entries).
    by_key: HashMap<String, usize>,
}

impl StreamSlots {
    /// At most `per_account` streams per account, `per_address` per client address and
    /// `total` in all (each at least 1).
    pub fn new(per_account: usize, per_address: usize, total: usize) -> Arc<Self> {
        Arc::new(StreamSlots {
            per_account: per_account.max(1),
            per_address: per_address.max(1),
            total: total.max(1),
            open: Mutex::new(Open::default()),
        })
    }

    /// A slot for `owner`.
    pub fn take(self: &Arc<Self>, owner: StreamOwner<'_>) -> Result<StreamSlot, SlotRefused> {
        let (key, limit, what) = match owner {
            StreamOwner::Account(id) => (format!("user:{id}"), self.per_account, "account"),
            StreamOwner::Address(addr) => (format!("address:{addr}"), self.per_address, "address"),
        };
        // The counts stay consistent whatever panicked while holding the lock: every update is
        // a single insert or decrement.
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if open.total >= self.total {
            return Err(SlotRefused::Total);
        }
        let count = open.by_key.get(&key).copied().unwrap_or(0);
        if count >= limit {
            return Err(SlotRefused::PerKey(what));
        }
        open.by_key.insert(key.clone(), count + 1);
        open.total += 1;
        Ok(StreamSlot {
            slots: Arc::clone(self),
            key,
        })
    }

    /// Streams open now (for tests and metrics).
    pub fn open(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .total
    }
}

/// One open stream's place; freed on drop.
#[derive(Debug)]
pub struct StreamSlot {
    slots: Arc<StreamSlots>,
    key: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self
            .slots
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        open.total = open.total.saturating_sub(1);
        if let Some(count) = open.by_key.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.by_key.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_key_and_total_bounds_hold_and_slots_come_back() {
        use StreamOwner::{Account, Address};
        let slots = StreamSlots::new(2, 1, 4);
        let a1 = slots.take(Account("a")).unwrap();
        let _a2 = slots.take(Account("a")).unwrap();
        assert_eq!(
            slots.take(Account("a")).unwrap_err(),
            SlotRefused::PerKey("account")
        );
        let _x1 = slots.take(Address("a")).unwrap();
        assert_eq!(
            slots.take(Address("a")).unwrap_err(),
            SlotRefused::PerKey("address")
        );
        let _b1 = slots.take(Account("b")).unwrap();
        assert_eq!(slots.take(Account("c")).unwrap_err(), SlotRefused::Total);
        drop(a1);
        assert_eq!(slots.open(), 3);
        let _c1 = slots.take(Account("c")).unwrap();
        assert_eq!(slots.take(Account("a")).unwrap_err(), SlotRefused::Total);
    }

    #[test]
    fn keys_without_streams_are_forgotten() {
        let slots = StreamSlots::new(1, 1, 10);
        for n in 0..100 {
            drop(
                slots
                    .take(StreamOwner::Address(&format!("10.0.0.{n}")))
                    .unwrap(),
            );
        }
        assert_eq!(slots.open(), 0);
        assert!(slots.open.lock().unwrap().by_key.is_empty());
    }
}
