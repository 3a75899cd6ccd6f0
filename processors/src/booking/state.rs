//! The booking processor's state for one event: its configuration, inventory counters, the
//! availability sequence number, the orders it keeps in memory (every live order, and ended
//! ones not yet saved) and the index of every order it has decided (so a
//! duplicate request or a reused key is recognised without the order's row). Plain data, no I/O.

use std::collections::{HashMap, HashSet};

use boxoffice_avro::records::{CancelReason, RejectReason};

/// Milliseconds since the Unix epoch (UTC); time only ever enters through records.
pub type Millis = i64;

/// The hold time when an event does not set one: 10 minutes.
pub const DEFAULT_HOLD_MS: Millis = 10 * 60 * 1000;

/// What an organiser set for an event (from `EventUpserted`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventConfig {
    pub name: String,
    pub category_id: Option<String>,
    /// Total slots; never below `held + sold`.
    pub capacity: u32,
    /// Price of one slot in minor units; 0 means a free event (confirmed without payment).
    pub price_minor: i64,
    pub currency: String,
    /// On sale from `sale_starts_at` (inclusive) until `sale_ends_at` (exclusive).
    pub sale_starts_at: Millis,
    pub sale_ends_at: Millis,
    pub hold_ms: Millis,
    /// 0 means no limit.
    pub max_per_order: u32,
    /// 0 means no limit. Counts the user's held and sold slots for this event.
    pub max_per_user: u32,
    /// The `EventUpserted` this configuration came from: an older or repeated edit is ignored.
    pub updated_at: Millis,
    pub updated_by_record: String,
}

impl EventConfig {
    pub fn is_free(&self) -> bool {
        self.price_minor == 0
    }

    pub fn on_sale_at(&self, at: Millis) -> bool {
        self.sale_starts_at <= at && at < self.sale_ends_at
    }
}

/// Where an order stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderStatus {
    /// Slots held until `hold_expires_at`, payment started.
    Reserved {
        hold_expires_at: Millis,
    },
    /// Paid (or free); tickets issued. `late` when paid after the hold had expired.
    Confirmed {
        late: bool,
    },
    Rejected(RejectReason),
    Expired,
    Cancelled(CancelReason),
}

impl OrderStatus {
    /// The wire name of the status (the lifecycle in ARCHITECTURE.md).
    pub fn name(&self) -> &'static str {
        match self {
            OrderStatus::Reserved { .. } => "RESERVED",
            OrderStatus::Confirmed { .. } => "CONFIRMED",
            OrderStatus::Rejected(_) => "REJECTED",
            OrderStatus::Expired => "EXPIRED",
            OrderStatus::Cancelled(_) => "CANCELLED",
        }
    }

    /// Slots the order holds (not yet sold).
    pub fn holds(&self) -> bool {
        matches!(self, OrderStatus::Reserved { .. })
    }

    /// Slots the order has bought.
    pub fn owns(&self) -> bool {
        matches!(self, OrderStatus::Confirmed { .. })
    }
}

impl Order {
    /// Holds or owns slots: always kept in memory.
    pub fn is_live(&self) -> bool {
        self.status.holds() || self.status.owns()
    }

    /// The [`key_digest`] this order holds in the index: its key, unless it was rejected for
    /// reusing one (the key belongs to the order it named first).
    pub fn key_digest(&self) -> Option<u128> {
        self.idempotency_key
            .as_deref()
            .filter(|_| self.status != OrderStatus::Rejected(RejectReason::IdempotencyKeyReused))
            .map(|key| key_digest(&self.user_id, key))
    }
}

/// One decided order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub user_id: String,
    pub slots: u32,
    /// Price × slots at the moment of reservation, in minor units.
    pub amount_minor: i64,
    pub currency: String,
    /// The payment asked for (paid events only).
    pub payment_id: Option<String>,
    pub status: OrderStatus,
    /// A refund was asked for (cancel after payment, or a payment that could not be honoured),
    /// so a repeated trigger asks for none again.
    pub refunded: bool,
    /// The request's `Idempotency-Key`, if it had one.
    pub idempotency_key: Option<String>,
}

/// What fans were told about one event so far: how many order facts (`orders.events` records)
/// its commands produced, and the sum of their record ids (UUIDs read as 128-bit integers,
/// modulo 2^128). A sum does not depend on where batches start and end, so a re-fold of the same
/// commands gives the same digest, and a different decision for any order (another record id)
/// gives another one. Published with every batch (`EventProgress`) and stored with the state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct DecisionDigest {
    pub decisions: u64,
    pub sum: u128,
}

impl DecisionDigest {
    /// Counts one published order fact. Record ids are UUIDs (`boxoffice_avro::ids`); anything
    /// else would be a bug in rendering, and still counts (by its bytes) rather than vanish.
    pub fn add(&mut self, record_id: &str) {
        let value = match uuid::Uuid::parse_str(record_id) {
            Ok(id) => id.as_u128(),
            Err(_) => record_id.bytes().fold(0u128, |acc, b| {
                acc.wrapping_mul(257).wrapping_add(u128::from(b))
            }),
        };
        self.decisions += 1;
        self.sum = self.sum.wrapping_add(value);
    }

    /// The sum as 32 lowercase hex digits (the wire and stored form).
    pub fn hex(&self) -> String {
        format!("{:032x}", self.sum)
    }

    /// Reads the wire form back; `None` for anything that is not 32 hex digits.
    pub fn parse(decisions: i64, hex: &str) -> Option<DecisionDigest> {
        if hex.len() != 32 {
            return None;
        }
        let sum = u128::from_str_radix(hex, 16).ok()?;
        Some(DecisionDigest {
            decisions: u64::try_from(decisions).ok()?,
            sum,
        })
    }
}

/// The version nibble of a UUID read as a `u128` (big-endian: the high half of byte 6).
const UUID_VERSION_BITS: u128 = 0xF << 76;

/// Digest of an order id in the [`OrderIndex`]. An id in the canonical UUID form (lower-case
/// hex, hyphenated; every id the pipeline makes) is its own 128 bits, which costs a parse; any
/// other id is a name-based UUID of it (SHA-1) with the version nibble cleared, so the two
/// kinds never meet (no UUID the pipeline makes has version 0, and such ids take the digest
/// path too). Stored in index rows: a change is a new index format.
pub fn order_digest(order_id: &str) -> u128 {
    if let Some(value) = canonical_uuid(order_id)
        && value & UUID_VERSION_BITS != 0
    {
        return value;
    }
    boxoffice_avro::ids::derive("order-index", &[order_id]).as_u128() & !UUID_VERSION_BITS
}

/// The value of `text` when it is a UUID in canonical form (36 characters, lower-case hex,
/// hyphens at 8, 13, 18 and 23): the one text of that value, so distinct ids stay distinct.
fn canonical_uuid(text: &str) -> Option<u128> {
    let bytes = text.as_bytes();
    if bytes.len() != 36 {
        return None;
    }
    // One pass: hyphens where they belong, 32 lower-case hex digits elsewhere.
    let mut value: u128 = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let digit = match (i, b) {
            (8 | 13 | 18 | 23, b'-') => continue,
            (8 | 13 | 18 | 23, _) => return None,
            (_, b'0'..=b'9') => b - b'0',
            (_, b'a'..=b'f') => b - b'a' + 10,
            _ => return None,
        };
        value = (value << 4) | u128::from(digit);
    }
    Some(value)
}

/// Digest of a (user, `Idempotency-Key`) pair in the [`OrderIndex`]. Stored in index rows.
pub fn key_digest(user_id: &str, key: &str) -> u128 {
    boxoffice_avro::ids::derive("key-index", &[user_id, key]).as_u128()
}

/// Every order an event has decided, by digest, and the order each (user, key) named first:
/// what duplicate and key-reuse detection need, without the orders. 50 bytes per keyed order
/// in memory when the two hash tables are full, up to twice that after they grow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrderIndex {
    orders: HashSet<u128>,
    keys: HashMap<u128, u128>,
}

impl OrderIndex {
    /// An empty index with room for `orders` orders and as many keys, so building it from
    /// stored entries never grows (and never holds two tables at once).
    pub fn with_capacity(orders: usize, keys: usize) -> Self {
        OrderIndex {
            orders: HashSet::with_capacity(orders),
            keys: HashMap::with_capacity(keys),
        }
    }

    pub fn contains(&self, order: u128) -> bool {
        self.orders.contains(&order)
    }

    /// The order `key` (a [`key_digest`]) named first.
    pub fn order_for_key(&self, key: u128) -> Option<u128> {
        self.keys.get(&key).copied()
    }

    /// Notes an order, and the key it holds (the first order a key named keeps it).
    pub fn insert(&mut self, order: u128, key: Option<u128>) {
        self.orders.insert(order);
        if let Some(key) = key {
            self.insert_key(key, order);
        }
    }

    /// Notes a new order without its key yet; false when it was known (a duplicate).
    pub fn insert_order(&mut self, order: u128) -> bool {
        self.orders.insert(order)
    }

    /// Notes that `key` named `order`, unless it named another first.
    pub fn insert_key(&mut self, key: u128, order: u128) {
        self.keys.entry(key).or_insert(order);
    }

    pub fn len(&self) -> usize {
        self.orders.len()
    }

    pub fn is_empty(&self) -> bool {
        self.orders.is_empty()
    }
}

/// Everything the processor knows about one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventState {
    pub event_id: String,
    /// `None` until the event's first `EventUpserted`: bookings are then rejected as unknown.
    pub config: Option<EventConfig>,
    pub held: u32,
    pub sold: u32,
    /// Sequence number of the last `AvailabilityChanged`; consumers resume from it.
    pub sequence: i64,
    /// The orders kept in memory: every live one (holding or owning slots), and ended ones
    /// until the batch that last changed them is saved (the runtime then drops them). Others
    /// are read from the store when a command needs them ([`Self::must_load`]).
    pub orders: HashMap<String, Order>,
    /// Held plus sold slots per user, for the per-user limit (derived from the live orders).
    pub user_slots: HashMap<String, u32>,
    /// Every decided order and every key's first order: the same key with another body names
    /// another order, which is rejected.
    pub index: OrderIndex,
    /// Whether the stored state has an index row for every save (see `boxoffice_store::inventory`):
    /// true for events first saved with the index, false for older ones (loaded in full).
    pub indexed: bool,
    /// What fans were told about this event (maintained by `Partition::decide`). `None` for a
    /// state stored before digests existed: it cannot be checked against the log.
    pub digest: Option<DecisionDigest>,
}

impl EventState {
    pub fn new(event_id: impl Into<String>) -> Self {
        EventState {
            event_id: event_id.into(),
            config: None,
            held: 0,
            sold: 0,
            sequence: 0,
            orders: HashMap::new(),
            user_slots: HashMap::new(),
            index: OrderIndex::default(),
            indexed: true,
            digest: Some(DecisionDigest::default()),
        }
    }

    /// Rebuilds the state from stored parts (recovery): `index` as stored (plus every order
    /// given), `user_slots` derived from the orders. `orders` must hold every live order.
    #[allow(clippy::too_many_arguments)]
    pub fn restore(
        event_id: impl Into<String>,
        config: Option<EventConfig>,
        held: u32,
        sold: u32,
        sequence: i64,
        orders: HashMap<String, Order>,
        index: OrderIndex,
        indexed: bool,
        digest: Option<DecisionDigest>,
    ) -> Self {
        let mut state = EventState {
            event_id: event_id.into(),
            config,
            held,
            sold,
            sequence,
            orders,
            user_slots: HashMap::new(),
            index,
            indexed,
            digest,
        };
        for (order_id, order) in &state.orders {
            if order.is_live() {
                *state.user_slots.entry(order.user_id.clone()).or_default() += order.slots;
            }
            state
                .index
                .insert(order_digest(order_id), order.key_digest());
        }
        state
    }

    /// Whether the event decided `order_id` but does not keep it in memory: the runtime reads
    /// it from the store (and [`Self::insert_loaded`]s it) before a command about it is decided.
    pub fn must_load(&self, order_id: &str) -> bool {
        !self.orders.contains_key(order_id) && self.index.contains(order_digest(order_id))
    }

    /// Keeps an order read from the store. Only orders that neither hold nor own slots are
    /// ever read (live ones are always in memory), so no counter changes.
    pub fn insert_loaded(&mut self, order_id: String, order: Order) -> Result<(), String> {
        if order.is_live() {
            return Err(format!(
                "event {}: order {order_id} read from the store is {} but was not in memory",
                self.event_id,
                order.status.name()
            ));
        }
        self.orders.insert(order_id, order);
        Ok(())
    }

    pub fn capacity(&self) -> u32 {
        self.config.as_ref().map_or(0, |c| c.capacity)
    }

    /// Free slots. The invariant `held + sold <= capacity` makes this exact.
    pub fn available(&self) -> u32 {
        self.capacity().saturating_sub(self.held + self.sold)
    }

    /// The invariant of ARCHITECTURE.md, checked against the orders themselves:
    /// `available + held + sold == total`, all non-negative (counters are unsigned), `held` and
    /// `sold` equal to what the orders hold and own.
    pub fn check_invariant(&self) -> Result<(), String> {
        self.check_capacity()?;
        let held: u32 = self
            .orders
            .values()
            .filter(|o| o.status.holds())
            .map(|o| o.slots)
            .sum();
        let sold: u32 = self
            .orders
            .values()
            .filter(|o| o.status.owns())
            .map(|o| o.slots)
            .sum();
        if held != self.held || sold != self.sold {
            return Err(format!(
                "event {}: counters held {} sold {} but orders hold {held} and own {sold}",
                self.event_id, self.held, self.sold
            ));
        }
        Ok(())
    }

    /// The cheap half of [`Self::check_invariant`]: `held + sold <= capacity`.
    pub fn check_capacity(&self) -> Result<(), String> {
        let capacity = self.capacity();
        if self.held + self.sold > capacity {
            return Err(format!(
                "event {}: held {} + sold {} exceed capacity {capacity}",
                self.event_id, self.held, self.sold
            ));
        }
        Ok(())
    }

    /// Orders still holding slots, with their deadline (the hold-expiry timer's work list).
    pub fn active_holds(&self) -> impl Iterator<Item = (&str, Millis)> {
        self.orders.iter().filter_map(|(id, o)| match o.status {
            OrderStatus::Reserved { hold_expires_at } => Some((id.as_str(), hold_expires_at)),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_digests_keep_distinct_ids_distinct() {
        let id = boxoffice_avro::ids::new_order_id("user-1");
        let value = uuid::Uuid::parse_str(&id).unwrap().as_u128();
        assert_eq!(order_digest(&id), value, "a canonical id is its own value");
        // Another text of the same UUID is another id: it takes the digest path.
        let upper = id.to_uppercase();
        assert_ne!(order_digest(&upper), value);
        assert_eq!(order_digest(&upper) & UUID_VERSION_BITS, 0);
        // Any other id has version 0, and so cannot meet a canonical id's value, even the
        // canonical text of its own digest.
        let other = order_digest("order-1");
        assert_eq!(other & UUID_VERSION_BITS, 0);
        let text = uuid::Uuid::from_u128(other).hyphenated().to_string();
        assert_ne!(order_digest(&text), other);
        assert_ne!(order_digest("order-1"), order_digest("order-2"));
        // A canonical id of version 0 also takes the digest path.
        let nil = "00000000-0000-0000-0000-000000000001";
        assert_ne!(order_digest(nil), 1);
    }
}
