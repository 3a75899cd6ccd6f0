//! The booking decision core: `apply(state, command) -> effects`. Pure: no clock (time comes
//! from the command's `occurred_at`), no I/O, no randomness, so the same log folded twice gives
//! the same state and the same effects. The runtime turns effects into records (`render`).
//!
//! Policies chosen where the architecture leaves room (documented in processors/README.md):
//! - a duplicate input changes nothing and emits nothing: a known order id for a booking, and
//!   any payment, expiry or cancel that does not match the order's current status;
//! - capacity is never set below `held + sold`: a lower request is raised to that floor;
//! - a payment after the hold expired re-allocates if slots remain (the order is confirmed,
//!   marked late) and is refunded otherwise; a payment for a cancelled order is refunded;
//! - cancelling a confirmed paid order releases its slots and asks for a refund;
//! - an expiry earlier than the order's deadline is ignored (expiries are facts in the log, but
//!   only the deadline the processor set can release a hold).

use boxoffice_avro::records::{
    BookingCommand, BookingRequested, CancelReason, CancelRequested, EventUpserted, HoldExpired,
    NotificationKind, PaymentFailed, PaymentSucceeded, RefundReason, RejectReason,
};

use super::state::{
    DEFAULT_HOLD_MS, EventConfig, EventState, Millis, Order, OrderStatus, key_digest, order_digest,
};

/// What a decision asks the world to do. Ids of the records to produce are derived from these
/// when rendering, never stored here, so deciding stays cheap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    Reserved {
        order_id: String,
        hold_expires_at: Millis,
    },
    Rejected {
        order_id: String,
        user_id: String,
        slots: u32,
        reason: RejectReason,
    },
    /// Confirmed (paid, free, or re-allocated after a late payment); tickets go with it.
    Confirmed {
        order_id: String,
        late: bool,
    },
    Cancelled {
        order_id: String,
        reason: CancelReason,
        refund: bool,
    },
    Expired {
        order_id: String,
    },
    /// A captured payment that cannot be honoured (the order expired and sold out, or was
    /// cancelled before the payment arrived).
    Refund {
        order_id: String,
        reason: RefundReason,
    },
    /// Inventory changed: a new availability record with this sequence number.
    Availability {
        sequence: i64,
    },
    /// The hold-expiry timer must fire for this order at `at`.
    HoldScheduled {
        order_id: String,
        at: Millis,
    },
    /// The order no longer holds slots: the timer can forget it.
    HoldCleared {
        order_id: String,
    },
    /// The input was not applied, for a reason worth logging (never an error: the log moves on).
    Ignored {
        reason: String,
    },
}

impl Effect {
    /// The notification a user gets for this effect, if any.
    pub fn notification_kind(&self) -> Option<NotificationKind> {
        match self {
            Effect::Reserved { .. } => Some(NotificationKind::OrderReserved),
            Effect::Rejected { .. } => Some(NotificationKind::OrderRejected),
            Effect::Confirmed { late: false, .. } => Some(NotificationKind::OrderConfirmed),
            Effect::Confirmed { late: true, .. } => Some(NotificationKind::LatePaymentReallocated),
            Effect::Cancelled { .. } => Some(NotificationKind::OrderCancelled),
            Effect::Expired { .. } => Some(NotificationKind::OrderExpired),
            _ => None,
        }
    }
}

/// How many slots a request may take from what is free. The real rule is the only one used
/// outside tests; the seam exists so the property tests can prove they catch a broken one.
pub trait Allocator {
    fn can_allocate(&self, available: u32, requested: u32) -> bool;
}

/// Allocates only what is free: the rule that makes overselling impossible.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExactAllocator;

impl Allocator for ExactAllocator {
    fn can_allocate(&self, available: u32, requested: u32) -> bool {
        requested <= available
    }
}

/// The order a command is about (`None` for an event edit).
pub fn order_id_of(command: &BookingCommand) -> Option<&str> {
    match command {
        BookingCommand::BookingRequested(r) => Some(&r.order_id),
        BookingCommand::CancelRequested(r) => Some(&r.order_id),
        BookingCommand::PaymentSucceeded(r) => Some(&r.order_id),
        BookingCommand::PaymentFailed(r) => Some(&r.order_id),
        BookingCommand::HoldExpired(r) => Some(&r.order_id),
        BookingCommand::EventUpserted(_) => None,
    }
}

/// Why a well-formed command is refused before any decision (the processor dead-letters it,
/// the audit skips it): an order id the store cannot keep, because index rows live under a
/// leading NUL and a save's size is bounded per order. `None`: it is decided.
pub fn refusal(command: &BookingCommand) -> Option<String> {
    let order_id = order_id_of(command)?;
    (order_id.is_empty()
        || order_id.starts_with('\0')
        || order_id.len() > boxoffice_store::inventory::MAX_ORDER_ID_BYTES)
        .then(|| {
            format!(
                "order id of {} bytes is empty, longer than {} or starts with NUL",
                order_id.len(),
                boxoffice_store::inventory::MAX_ORDER_ID_BYTES
            )
        })
}

/// Applies one command to its event's state with the real allocator.
pub fn apply(state: &mut EventState, command: &BookingCommand, effects: &mut Vec<Effect>) {
    apply_with(&ExactAllocator, state, command, effects);
}

/// Applies one command; effects are appended to `effects` (a buffer the caller reuses).
pub fn apply_with(
    allocator: &impl Allocator,
    state: &mut EventState,
    command: &BookingCommand,
    effects: &mut Vec<Effect>,
) {
    match command {
        BookingCommand::EventUpserted(e) => upsert_event(state, e, effects),
        BookingCommand::BookingRequested(r) => request_booking(allocator, state, r, effects),
        BookingCommand::PaymentSucceeded(p) => payment_succeeded(state, p, effects),
        BookingCommand::PaymentFailed(p) => payment_failed(state, p, effects),
        BookingCommand::HoldExpired(h) => hold_expired(state, h, effects),
        BookingCommand::CancelRequested(c) => cancel(state, c, effects),
    }
}

fn ignored(effects: &mut Vec<Effect>, reason: impl Into<String>) {
    effects.push(Effect::Ignored {
        reason: reason.into(),
    });
}

fn availability_changed(state: &mut EventState, effects: &mut Vec<Effect>) {
    state.sequence += 1;
    effects.push(Effect::Availability {
        sequence: state.sequence,
    });
}

fn add_user_slots(state: &mut EventState, user_id: &str, slots: u32) {
    *state.user_slots.entry(user_id.to_owned()).or_default() += slots;
}

fn remove_user_slots(state: &mut EventState, user_id: &str, slots: u32) {
    if let Some(count) = state.user_slots.get_mut(user_id) {
        *count = count.saturating_sub(slots);
        if *count == 0 {
            state.user_slots.remove(user_id);
        }
    }
}

fn upsert_event(state: &mut EventState, e: &EventUpserted, effects: &mut Vec<Effect>) {
    if let Some(current) = &state.config
        && (current.updated_by_record == e.record_id || e.occurred_at < current.updated_at)
    {
        return ignored(
            effects,
            "event edit older than (or the same as) the one applied",
        );
    }
    let (Ok(capacity), Ok(max_per_order), Ok(max_per_user)) = (
        u32::try_from(e.capacity),
        u32::try_from(e.max_per_order),
        u32::try_from(e.max_per_user),
    ) else {
        return ignored(
            effects,
            "event edit refused: capacity and limits must be non-negative",
        );
    };
    if e.price_minor < 0 {
        return ignored(effects, "event edit refused: negative price");
    }
    if e.sale_ends_at <= e.sale_starts_at {
        return ignored(
            effects,
            "event edit refused: the sale must end after it starts",
        );
    }
    let floor = state.held + state.sold;
    if capacity < floor {
        ignored(
            effects,
            format!("capacity {capacity} is below held + sold; raised to {floor}"),
        );
    }
    let hold_ms = if e.hold_seconds > 0 {
        i64::from(e.hold_seconds) * 1000
    } else {
        DEFAULT_HOLD_MS
    };
    let previous_capacity = state.config.as_ref().map(|c| c.capacity);
    state.config = Some(EventConfig {
        name: e.name.clone(),
        category_id: e.category_id.clone(),
        capacity: capacity.max(floor),
        price_minor: e.price_minor,
        currency: e.currency.clone(),
        sale_starts_at: e.sale_starts_at,
        sale_ends_at: e.sale_ends_at,
        hold_ms,
        max_per_order,
        max_per_user,
        updated_at: e.occurred_at,
        updated_by_record: e.record_id.clone(),
    });
    if previous_capacity != Some(state.capacity()) {
        availability_changed(state, effects);
    }
}

fn request_booking(
    allocator: &impl Allocator,
    state: &mut EventState,
    r: &BookingRequested,
    effects: &mut Vec<Effect>,
) {
    let digest = order_digest(&r.order_id);
    // Noted at once: every request is decided (reserved or rejected) below.
    if !state.index.insert_order(digest) {
        return ignored(effects, "duplicate booking request");
    }
    let slots = u32::try_from(r.number_slot).unwrap_or(0);
    // The order id names the request (user, key, event, slots): the same key naming another
    // order of this event is a key reused with another body.
    let key = r
        .idempotency_key
        .as_deref()
        .map(|key| key_digest(&r.user_id, key));
    let reused = key
        .and_then(|key| state.index.order_for_key(key))
        .is_some_and(|first| first != digest);
    let decision = if reused {
        Err(RejectReason::IdempotencyKeyReused)
    } else {
        decide_booking(allocator, state, &r.user_id, slots, r.occurred_at)
    };
    if let Some(key) = key.filter(|_| !reused) {
        state.index.insert_key(key, digest);
    }
    let (currency, price) = state
        .config
        .as_ref()
        .map_or((String::new(), 0), |c| (c.currency.clone(), c.price_minor));
    let mut order = Order {
        user_id: r.user_id.clone(),
        slots,
        amount_minor: price.saturating_mul(i64::from(slots)),
        currency,
        payment_id: None,
        status: OrderStatus::Rejected(RejectReason::InvalidRequest),
        refunded: false,
        idempotency_key: r.idempotency_key.clone(),
    };
    match decision {
        Err(reason) => {
            order.amount_minor = 0;
            order.status = OrderStatus::Rejected(reason);
            effects.push(Effect::Rejected {
                order_id: r.order_id.clone(),
                user_id: r.user_id.clone(),
                slots,
                reason,
            });
        }
        Ok(config_free_and_hold) => {
            let (free, hold_ms) = config_free_and_hold;
            add_user_slots(state, &r.user_id, slots);
            if free {
                state.sold += slots;
                order.status = OrderStatus::Confirmed { late: false };
                effects.push(Effect::Confirmed {
                    order_id: r.order_id.clone(),
                    late: false,
                });
            } else {
                let hold_expires_at = r.occurred_at.saturating_add(hold_ms);
                state.held += slots;
                order.payment_id = Some(boxoffice_avro::ids::payment_id(&r.order_id));
                order.status = OrderStatus::Reserved { hold_expires_at };
                effects.push(Effect::Reserved {
                    order_id: r.order_id.clone(),
                    hold_expires_at,
                });
                effects.push(Effect::HoldScheduled {
                    order_id: r.order_id.clone(),
                    at: hold_expires_at,
                });
            }
            availability_changed(state, effects);
        }
    }
    state.orders.insert(r.order_id.clone(), order);
}

/// Reserve or reject. On success: whether the event is free, and its hold time.
fn decide_booking(
    allocator: &impl Allocator,
    state: &EventState,
    user_id: &str,
    slots: u32,
    at: Millis,
) -> Result<(bool, Millis), RejectReason> {
    if slots == 0 {
        return Err(RejectReason::InvalidRequest);
    }
    let config = state.config.as_ref().ok_or(RejectReason::UnknownEvent)?;
    if !config.on_sale_at(at) {
        return Err(RejectReason::NotOnSale);
    }
    if config.max_per_order > 0 && slots > config.max_per_order {
        return Err(RejectReason::LimitExceeded);
    }
    let user_has = state.user_slots.get(user_id).copied().unwrap_or(0);
    if config.max_per_user > 0 && user_has.saturating_add(slots) > config.max_per_user {
        return Err(RejectReason::LimitExceeded);
    }
    if !allocator.can_allocate(state.available(), slots) {
        return Err(RejectReason::SoldOut);
    }
    Ok((config.is_free(), config.hold_ms))
}

fn payment_succeeded(state: &mut EventState, p: &PaymentSucceeded, effects: &mut Vec<Effect>) {
    let available = state.available();
    let Some(order) = state.orders.get_mut(&p.order_id) else {
        return ignored(effects, "payment for an unknown order");
    };
    if order.payment_id.as_deref() != Some(p.payment_id.as_str()) {
        return ignored(effects, "payment id does not match the order's payment");
    }
    let slots = order.slots;
    match order.status {
        OrderStatus::Reserved { .. } => {
            order.status = OrderStatus::Confirmed { late: false };
            state.held -= slots;
            state.sold += slots;
            let order_id = p.order_id.clone();
            effects.push(Effect::Confirmed {
                order_id: order_id.clone(),
                late: false,
            });
            effects.push(Effect::HoldCleared { order_id });
            availability_changed(state, effects);
        }
        OrderStatus::Expired if !order.refunded => {
            if slots <= available {
                order.status = OrderStatus::Confirmed { late: true };
                let user_id = order.user_id.clone();
                state.sold += slots;
                add_user_slots(state, &user_id, slots);
                effects.push(Effect::Confirmed {
                    order_id: p.order_id.clone(),
                    late: true,
                });
                availability_changed(state, effects);
            } else {
                order.refunded = true;
                effects.push(Effect::Refund {
                    order_id: p.order_id.clone(),
                    reason: RefundReason::LatePaymentSoldOut,
                });
            }
        }
        OrderStatus::Cancelled(_) if !order.refunded => {
            order.refunded = true;
            effects.push(Effect::Refund {
                order_id: p.order_id.clone(),
                reason: RefundReason::OrderCancelled,
            });
        }
        _ => ignored(effects, "duplicate payment"),
    }
}

fn payment_failed(state: &mut EventState, p: &PaymentFailed, effects: &mut Vec<Effect>) {
    let Some(order) = state.orders.get(&p.order_id) else {
        return ignored(effects, "payment failure for an unknown order");
    };
    if order.payment_id.as_deref() != Some(p.payment_id.as_str()) {
        return ignored(effects, "payment id does not match the order's payment");
    }
    if !order.status.holds() {
        return ignored(effects, "payment failure for an order that holds nothing");
    }
    release_hold(
        state,
        &p.order_id,
        OrderStatus::Cancelled(CancelReason::PaymentFailed),
    );
    effects.push(Effect::Cancelled {
        order_id: p.order_id.clone(),
        reason: CancelReason::PaymentFailed,
        refund: false,
    });
    effects.push(Effect::HoldCleared {
        order_id: p.order_id.clone(),
    });
    availability_changed(state, effects);
}

fn hold_expired(state: &mut EventState, h: &HoldExpired, effects: &mut Vec<Effect>) {
    let Some(order) = state.orders.get(&h.order_id) else {
        return ignored(effects, "expiry for an unknown order");
    };
    let OrderStatus::Reserved { hold_expires_at } = order.status else {
        return ignored(effects, "expiry for an order that no longer holds slots");
    };
    if h.occurred_at < hold_expires_at {
        return ignored(effects, "expiry before the hold's deadline");
    }
    release_hold(state, &h.order_id, OrderStatus::Expired);
    effects.push(Effect::Expired {
        order_id: h.order_id.clone(),
    });
    availability_changed(state, effects);
}

fn cancel(state: &mut EventState, c: &CancelRequested, effects: &mut Vec<Effect>) {
    let Some(order) = state.orders.get_mut(&c.order_id) else {
        return ignored(effects, "cancel for an unknown order");
    };
    if order.user_id != c.user_id {
        return ignored(effects, "cancel by someone who does not own the order");
    }
    match order.status {
        OrderStatus::Reserved { .. } => {
            release_hold(
                state,
                &c.order_id,
                OrderStatus::Cancelled(CancelReason::UserRequested),
            );
            effects.push(Effect::Cancelled {
                order_id: c.order_id.clone(),
                reason: CancelReason::UserRequested,
                refund: false,
            });
            effects.push(Effect::HoldCleared {
                order_id: c.order_id.clone(),
            });
            availability_changed(state, effects);
        }
        OrderStatus::Confirmed { .. } => {
            let (slots, user_id) = (order.slots, order.user_id.clone());
            let refund = order.payment_id.is_some();
            order.status = OrderStatus::Cancelled(CancelReason::UserRequested);
            order.refunded = refund;
            state.sold -= slots;
            remove_user_slots(state, &user_id, slots);
            effects.push(Effect::Cancelled {
                order_id: c.order_id.clone(),
                reason: CancelReason::UserRequested,
                refund,
            });
            availability_changed(state, effects);
        }
        _ => ignored(effects, "cancel for an order that already ended"),
    }
}

/// Moves a reserved order to `status`, giving its held slots back.
fn release_hold(state: &mut EventState, order_id: &str, status: OrderStatus) {
    let Some(order) = state.orders.get_mut(order_id) else {
        return;
    };
    debug_assert!(
        order.status.holds(),
        "release_hold on an order that holds nothing"
    );
    let (slots, user_id) = (order.slots, order.user_id.clone());
    order.status = status;
    state.held -= slots;
    remove_user_slots(state, &user_id, slots);
}
