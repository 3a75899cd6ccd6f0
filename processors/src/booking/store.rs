//! Conversions between the core's per-event state and the rows `boxoffice_store::inventory` stores. The
//! CQL lives in sinks; this module only knows the shapes on both sides.

use std::collections::HashMap;

use boxoffice_store::inventory::{
    StoredConfig, StoredEvent, StoredEventUpdate, StoredIndexEntry, StoredOrder, StoredStatus,
};

use super::state::{
    DecisionDigest, EventConfig, EventState, Order, OrderIndex, OrderStatus, order_digest,
};

/// A stored row that cannot be turned back into state: a bug or a hand edit, never skipped.
#[derive(Debug, thiserror::Error)]
#[error("stored state of event {event_id} is unreadable: {reason}")]
pub struct CorruptState {
    pub event_id: String,
    pub reason: String,
}

/// Rebuilds an event's state (and its applied offset) from what was stored.
pub fn restore(stored: StoredEvent) -> Result<(EventState, Option<i64>), CorruptState> {
    let corrupt = |reason: String| CorruptState {
        event_id: stored.event_id.clone(),
        reason,
    };
    let config = match &stored.config {
        Some(c) => Some(EventConfig {
            name: c.name.clone(),
            category_id: c.category_id.clone(),
            capacity: non_negative(c.capacity).map_err(&corrupt)?,
            price_minor: c.price_minor,
            currency: c.currency.clone(),
            sale_starts_at: c.sale_starts_at,
            sale_ends_at: c.sale_ends_at,
            hold_ms: c.hold_ms,
            max_per_order: non_negative(c.max_per_order).map_err(&corrupt)?,
            max_per_user: non_negative(c.max_per_user).map_err(&corrupt)?,
            updated_at: c.updated_at,
            updated_by_record: c.updated_by_record.clone(),
        }),
        None => None,
    };
    let mut orders = HashMap::with_capacity(stored.orders.len());
    for o in &stored.orders {
        orders.insert(o.order_id.clone(), order_from_row(o).map_err(&corrupt)?);
    }
    // An empty digest is a state saved before digests existed (it cannot be checked); any
    // other value must parse.
    let digest = if stored.decision_digest.is_empty() {
        None
    } else {
        Some(
            DecisionDigest::parse(stored.decisions, &stored.decision_digest).ok_or_else(|| {
                corrupt(format!(
                    "decision digest {:?} with {} decisions is not 32 hex digits and a count",
                    stored.decision_digest, stored.decisions
                ))
            })?,
        )
    };
    let entries = stored.index.as_deref().unwrap_or_default();
    let mut index = OrderIndex::with_capacity(
        entries.len().max(stored.orders.len()),
        entries.iter().filter(|e| e.key.is_some()).count(),
    );
    for entry in entries {
        index.insert(entry.order, entry.key);
    }
    // An indexed load brings the live orders only; check they are.
    if stored.index.is_some()
        && let Some((id, order)) = orders.iter().find(|(_, o)| !o.is_live())
    {
        return Err(corrupt(format!(
            "the index names order {id} live but it is {}",
            order.status.name()
        )));
    }
    let state = EventState::restore(
        stored.event_id.clone(),
        config,
        non_negative(stored.held).map_err(&corrupt)?,
        non_negative(stored.sold).map_err(&corrupt)?,
        stored.sequence,
        orders,
        index,
        // An event never saved has no state to load; one saved before the index stays
        // unindexed (its index rows would miss its older orders).
        stored.indexed,
        digest,
    );
    state.check_invariant().map_err(corrupt)?;
    Ok((state, stored.applied_offset))
}

/// The update that persists `state` after a batch: counters, configuration and the orders the
/// batch touched, conditional on the offset stored before.
pub fn update(
    state: &EventState,
    previous_offset: Option<i64>,
    new_offset: i64,
    changed_orders: &[String],
) -> StoredEventUpdate {
    // One lookup per changed order, for its row and its index entry.
    let changed: Vec<(&String, &Order)> = changed_orders
        .iter()
        .filter_map(|id| state.orders.get(id).map(|o| (id, o)))
        .collect();
    StoredEventUpdate {
        event_id: state.event_id.clone(),
        previous_offset,
        new_offset,
        config: state.config.as_ref().map(config_row),
        held: count(state.held),
        sold: count(state.sold),
        sequence: state.sequence,
        // A state saved before digests existed keeps "unknown" (empty): it cannot be checked.
        decisions: state
            .digest
            .map_or(0, |d| i64::try_from(d.decisions).unwrap_or(i64::MAX)),
        decision_digest: state.digest.map(|d| d.hex()).unwrap_or_default(),
        changed_orders: changed.iter().map(|(id, o)| order_row(id, o)).collect(),
        index_entries: state
            .indexed
            .then(|| changed.iter().map(|(id, o)| index_entry(id, o)).collect()),
    }
}

/// The index entry of an order as this save leaves it.
pub fn index_entry(order_id: &str, order: &Order) -> StoredIndexEntry {
    StoredIndexEntry {
        order: order_digest(order_id),
        key: order.key_digest(),
        live_order_id: order.is_live().then(|| order_id.to_owned()),
    }
}

/// The stored order as the core's order (for orders read on demand).
pub fn order_from_row(row: &StoredOrder) -> Result<Order, String> {
    Ok(Order {
        user_id: row.user_id.clone(),
        slots: non_negative(row.slots)?,
        amount_minor: row.amount_minor,
        currency: row.currency.clone(),
        payment_id: row.payment_id.clone(),
        status: status_from_row(row)?,
        refunded: row.refunded,
        idempotency_key: row.idempotency_key.clone(),
    })
}

fn config_row(c: &EventConfig) -> StoredConfig {
    StoredConfig {
        name: c.name.clone(),
        category_id: c.category_id.clone(),
        capacity: count(c.capacity),
        price_minor: c.price_minor,
        currency: c.currency.clone(),
        sale_starts_at: c.sale_starts_at,
        sale_ends_at: c.sale_ends_at,
        hold_ms: c.hold_ms,
        max_per_order: count(c.max_per_order),
        max_per_user: count(c.max_per_user),
        updated_at: c.updated_at,
        updated_by_record: c.updated_by_record.clone(),
    }
}

pub fn order_row(order_id: &str, o: &Order) -> StoredOrder {
    let (hold_expires_at, reject_reason, cancel_reason, late) = match o.status {
        OrderStatus::Reserved { hold_expires_at } => (Some(hold_expires_at), None, None, false),
        OrderStatus::Confirmed { late } => (None, None, None, late),
        OrderStatus::Rejected(r) => (None, Some(r.wire_name().to_owned()), None, false),
        OrderStatus::Expired => (None, None, None, false),
        OrderStatus::Cancelled(r) => (None, None, Some(r.wire_name().to_owned()), false),
    };
    StoredOrder {
        order_id: order_id.to_owned(),
        user_id: o.user_id.clone(),
        slots: count(o.slots),
        amount_minor: o.amount_minor,
        currency: o.currency.clone(),
        payment_id: o.payment_id.clone(),
        status: stored_status(&o.status),
        hold_expires_at,
        reject_reason,
        cancel_reason,
        late,
        refunded: o.refunded,
        idempotency_key: o.idempotency_key.clone(),
    }
}

fn status_from_row(o: &StoredOrder) -> Result<OrderStatus, String> {
    Ok(match o.status {
        StoredStatus::Reserved => OrderStatus::Reserved {
            hold_expires_at: o
                .hold_expires_at
                .ok_or_else(|| format!("order {} is RESERVED without a deadline", o.order_id))?,
        },
        StoredStatus::Confirmed => OrderStatus::Confirmed { late: o.late },
        StoredStatus::Rejected => OrderStatus::Rejected(reason_from(o.reject_reason.as_deref())?),
        StoredStatus::Expired => OrderStatus::Expired,
        StoredStatus::Cancelled => OrderStatus::Cancelled(reason_from(o.cancel_reason.as_deref())?),
    })
}

fn stored_status(status: &OrderStatus) -> StoredStatus {
    match status {
        OrderStatus::Reserved { .. } => StoredStatus::Reserved,
        OrderStatus::Confirmed { .. } => StoredStatus::Confirmed,
        OrderStatus::Rejected(_) => StoredStatus::Rejected,
        OrderStatus::Expired => StoredStatus::Expired,
        OrderStatus::Cancelled(_) => StoredStatus::Cancelled,
    }
}

/// A reason from its wire name (`SOLD_OUT`).
fn reason_from<R: std::str::FromStr>(name: Option<&str>) -> Result<R, String> {
    name.and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("unknown reason {name:?}"))
}

fn non_negative(value: i32) -> Result<u32, String> {
    u32::try_from(value).map_err(|_| format!("negative count {value}"))
}

/// Counters are bounded by a capacity that came from an `int`: they always fit.
fn count(value: u32) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::booking::core::apply;
    use boxoffice_avro::records::{BookingCommand, BookingRequested, EventUpserted};

    /// Event `e1` on sale forever at 10.00 EUR, no limits.
    fn gig(capacity: i32, category_id: Option<&str>) -> BookingCommand {
        BookingCommand::EventUpserted(EventUpserted {
            record_id: "u1".into(),
            event_id: "e1".into(),
            name: "Gig".into(),
            category_id: category_id.map(Into::into),
            capacity,
            price_minor: 1000,
            currency: "EUR".into(),
            sale_starts_at: 0,
            sale_ends_at: i64::MAX,
            hold_seconds: 60,
            max_per_order: 0,
            max_per_user: 0,
            occurred_at: 1,
        })
    }

    #[test]
    fn state_survives_a_store_round_trip() {
        let mut state = EventState::new("e1");
        let mut effects = Vec::new();
        apply(&mut state, &gig(5, Some("c1")), &mut effects);
        for (order, slots, key) in [("o1", 2, Some("k1")), ("o2", 9, None), ("o3", 0, None)] {
            apply(
                &mut state,
                &BookingCommand::BookingRequested(BookingRequested {
                    record_id: order.into(),
                    order_id: order.into(),
                    event_id: "e1".into(),
                    user_id: "u".into(),
                    number_slot: slots,
                    idempotency_key: key.map(Into::into),
                    occurred_at: 10,
                }),
                &mut effects,
            );
        }
        assert_eq!(state.index.len(), 3);
        let ids: Vec<String> = state.orders.keys().cloned().collect();
        let row = update(&state, None, 41, &ids);
        let stored = |index, orders| StoredEvent {
            event_id: row.event_id.clone(),
            applied_offset: Some(row.new_offset),
            config: row.config.clone(),
            held: row.held,
            sold: row.sold,
            sequence: row.sequence,
            decisions: row.decisions,
            decision_digest: row.decision_digest.clone(),
            indexed: true,
            index,
            orders,
        };
        // Loaded in full (an audit).
        let (restored, offset) = restore(stored(None, row.changed_orders.clone())).unwrap();
        assert_eq!(offset, Some(41));
        assert_eq!(restored, state);

        // Loaded for an assignment: the index and the live orders only.
        let live: Vec<StoredOrder> = row
            .changed_orders
            .iter()
            .filter(|o| o.status == StoredStatus::Reserved)
            .cloned()
            .collect();
        assert_eq!(live.len(), 1, "o1 holds; o2 and o3 were rejected");
        let (lean, _) = restore(stored(row.index_entries.clone(), live)).unwrap();
        assert_eq!(lean.index, state.index);
        assert_eq!(lean.user_slots, state.user_slots);
        assert_eq!((lean.held, lean.sold), (state.held, state.sold));
        assert_eq!(lean.orders.len(), 1);
        assert!(lean.must_load("o2") && lean.must_load("o3"));
        assert!(!lean.must_load("o1") && !lean.must_load("o4"));

        // A row the index calls live must be live.
        let mut wrong = row.changed_orders.clone();
        wrong.retain(|o| o.order_id == "o2");
        let err = restore(stored(row.index_entries.clone(), wrong)).unwrap_err();
        assert!(err.reason.contains("o2"), "{err}");
    }

    #[test]
    fn the_largest_batch_of_orders_with_the_longest_keys_fits_one_save() {
        let mut state = EventState::new("e1");
        let mut effects = Vec::new();
        let capacity = crate::booking::runtime::MAX_BATCH_RECORDS;
        apply(&mut state, &gig(capacity as i32, None), &mut effects);
        let key = "k".repeat(128);
        for i in 0..capacity {
            let order_id = format!(
                "{:0>width$}",
                i,
                width = boxoffice_store::inventory::MAX_ORDER_ID_BYTES
            );
            apply(
                &mut state,
                &BookingCommand::BookingRequested(BookingRequested {
                    record_id: order_id.clone(),
                    order_id,
                    event_id: "e1".into(),
                    user_id: uuid::Uuid::from_u128(u128::from(i) << 64).to_string(),
                    number_slot: 1,
                    idempotency_key: Some(key.clone()),
                    occurred_at: 10,
                }),
                &mut effects,
            );
        }
        let ids: Vec<String> = state.orders.keys().cloned().collect();
        assert_eq!(ids.len(), capacity as usize);
        let row = update(&state, None, 41, &ids);
        assert!(
            row.index_entries
                .as_ref()
                .is_some_and(|e| e.len() == ids.len())
        );
        row.validate().unwrap();
    }
}
