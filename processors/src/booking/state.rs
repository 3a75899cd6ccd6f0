//! The booking processor's state for one event: its configuration, inventory counters, the
//! availability sequence number, and every order it has decided (so a duplicate request is
//! recognised, and payments and expiries find their order). Plain data, no I/O.

use std::collections::HashMap;

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
    pub orders: HashMap<String, Order>,
    /// Held plus sold slots per user, for the per-user limit (derived from `orders`).
    pub user_slots: HashMap<String, u32>,
    /// (User, `Idempotency-Key`) → the order it named, for every keyed order (derived from
    /// `orders`): the same key with another body names another order, which is rejected.
    pub keys: HashMap<(String, String), String>,
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
            keys: HashMap::new(),
            digest: Some(DecisionDigest::default()),
        }
    }

    /// Rebuilds the state from stored parts (recovery); `user_slots` and `keys` are derived.
    pub fn restore(
        event_id: impl Into<String>,
        config: Option<EventConfig>,
        held: u32,
        sold: u32,
        sequence: i64,
        orders: HashMap<String, Order>,
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
            keys: HashMap::new(),
            digest,
        };
        for (order_id, order) in &state.orders {
            if order.status.holds() || order.status.owns() {
                *state.user_slots.entry(order.user_id.clone()).or_default() += order.slots;
            }
            // The order a key named first is the one not rejected for reusing it (every later
            // one is): the same entry the live decisions made.
            if let Some(key) = &order.idempotency_key
                && order.status != OrderStatus::Rejected(RejectReason::IdempotencyKeyReused)
            {
                state
                    .keys
                    .insert((order.user_id.clone(), key.clone()), order_id.clone());
            }
        }
        state
    }

    /// Notes that `user_id`'s `key` named `order_id`; the first order a key named keeps it.
    pub fn remember_key(&mut self, user_id: &str, key: &str, order_id: &str) {
        self.keys
            .entry((user_id.to_owned(), key.to_owned()))
            .or_insert_with(|| order_id.to_owned());
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
