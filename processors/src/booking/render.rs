//! Turns the core's effects into the records the booking processor produces. Pure, and
//! deterministic: every record id is derived from what the record is about (the order, the
//! event and its sequence number, the refund), so a replayed input renders byte-identical
//! records and consumers deduplicate them by id.

use std::collections::BTreeMap;

use boxoffice_avro::ids;
use boxoffice_avro::records::{
    AvailabilityChanged, BookingCommand, NotificationKind, NotificationRequested, OrderCancelled,
    OrderConfirmed, OrderEvent, OrderExpired, OrderRejected, OrderReserved, PaymentRequest,
    PaymentRequested, Record, RecordGroup, RefundReason, RefundRequested, TicketsIssued,
};

use super::core::Effect;
use super::state::{EventState, Millis, Order};

/// A record to produce, by topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Order(OrderEvent),
    Payment(PaymentRequest),
    Availability(AvailabilityChanged),
    Notification(NotificationRequested),
}

impl Output {
    pub fn record_id(&self) -> &str {
        match self {
            Output::Order(r) => r.record_id(),
            Output::Payment(r) => r.record_id(),
            Output::Availability(r) => r.record_id(),
            Output::Notification(r) => r.record_id(),
        }
    }

    pub fn topic(&self) -> &'static str {
        match self {
            Output::Order(_) => OrderEvent::TOPIC,
            Output::Payment(_) => PaymentRequest::TOPIC,
            Output::Availability(_) => AvailabilityChanged::TOPIC,
            Output::Notification(_) => NotificationRequested::TOPIC,
        }
    }
}

/// Renders `effect`, decided for `command` on `state` (the state right after the decision, so
/// availability counters are those the sequence number names), appending to `out`.
pub fn render(
    state: &EventState,
    command: &BookingCommand,
    effect: &Effect,
    out: &mut Vec<Output>,
) {
    let at = command_time(command);
    let event_id = state.event_id.as_str();
    match effect {
        Effect::Reserved {
            order_id,
            hold_expires_at,
        } => {
            let Some(order) = state.orders.get(order_id) else {
                return;
            };
            let payment_id = order
                .payment_id
                .clone()
                .unwrap_or_else(|| ids::payment_id(order_id));
            out.push(Output::Order(OrderEvent::OrderReserved(OrderReserved {
                record_id: ids::record_id_for::<OrderReserved>(&[order_id]),
                order_id: order_id.clone(),
                event_id: event_id.to_owned(),
                user_id: order.user_id.clone(),
                number_slot: slots_i32(order.slots),
                amount_minor: order.amount_minor,
                currency: order.currency.clone(),
                hold_expires_at: *hold_expires_at,
                payment_id: Some(payment_id.clone()),
                occurred_at: at,
            })));
            out.push(Output::Payment(PaymentRequest::PaymentRequested(
                PaymentRequested {
                    record_id: ids::record_id_for::<PaymentRequested>(&[order_id]),
                    payment_id,
                    order_id: order_id.clone(),
                    event_id: event_id.to_owned(),
                    user_id: order.user_id.clone(),
                    amount_minor: order.amount_minor,
                    currency: order.currency.clone(),
                    hold_expires_at: *hold_expires_at,
                    occurred_at: at,
                },
            )));
            let mut params = order_params(state, order);
            params.insert("hold_expires_at".into(), hold_expires_at.to_string());
            out.push(notification(
                effect,
                event_id,
                order_id,
                &order.user_id,
                params,
                at,
            ));
        }
        Effect::Rejected {
            order_id,
            user_id,
            slots,
            reason,
        } => {
            out.push(Output::Order(OrderEvent::OrderRejected(OrderRejected {
                record_id: ids::record_id_for::<OrderRejected>(&[order_id]),
                order_id: order_id.clone(),
                event_id: event_id.to_owned(),
                user_id: user_id.clone(),
                number_slot: slots_i32(*slots),
                reason: *reason,
                detail: None,
                occurred_at: at,
            })));
            let mut params = BTreeMap::new();
            params.insert("reason".into(), reason.wire_name().to_owned());
            params.insert("number_slot".into(), slots.to_string());
            if let Some(config) = &state.config {
                params.insert("event_name".into(), config.name.clone());
            }
            out.push(notification(
                effect, event_id, order_id, user_id, params, at,
            ));
        }
        Effect::Confirmed { order_id, late } => {
            let Some(order) = state.orders.get(order_id) else {
                return;
            };
            let ticket_ids = ids::ticket_ids(order_id, order.slots);
            out.push(Output::Order(OrderEvent::OrderConfirmed(OrderConfirmed {
                record_id: ids::record_id_for::<OrderConfirmed>(&[order_id]),
                order_id: order_id.clone(),
                event_id: event_id.to_owned(),
                user_id: order.user_id.clone(),
                payment_id: order.payment_id.clone(),
                number_slot: slots_i32(order.slots),
                amount_minor: order.amount_minor,
                currency: order.currency.clone(),
                late_payment: *late,
                occurred_at: at,
            })));
            out.push(Output::Order(OrderEvent::TicketsIssued(TicketsIssued {
                record_id: ids::record_id_for::<TicketsIssued>(&[order_id]),
                order_id: order_id.clone(),
                event_id: event_id.to_owned(),
                user_id: order.user_id.clone(),
                ticket_ids: ticket_ids.clone(),
                occurred_at: at,
            })));
            let mut params = order_params(state, order);
            params.insert("ticket_ids".into(), ticket_ids.join(","));
            out.push(notification(
                effect,
                event_id,
                order_id,
                &order.user_id,
                params,
                at,
            ));
        }
        Effect::Cancelled {
            order_id,
            reason,
            refund,
        } => {
            let Some(order) = state.orders.get(order_id) else {
                return;
            };
            let refund_id = refund
                .then(|| order.payment_id.as_deref().map(ids::refund_id))
                .flatten();
            out.push(Output::Order(OrderEvent::OrderCancelled(OrderCancelled {
                record_id: ids::record_id_for::<OrderCancelled>(&[order_id]),
                order_id: order_id.clone(),
                event_id: event_id.to_owned(),
                user_id: order.user_id.clone(),
                number_slot: slots_i32(order.slots),
                reason: *reason,
                refund_id: refund_id.clone(),
                occurred_at: at,
            })));
            if *refund {
                out.extend(refund_request(
                    event_id,
                    order_id,
                    order,
                    RefundReason::OrderCancelled,
                    at,
                ));
            }
            let mut params = order_params(state, order);
            params.insert("reason".into(), reason.wire_name().to_owned());
            params.insert("refund".into(), refund.to_string());
            out.push(notification(
                effect,
                event_id,
                order_id,
                &order.user_id,
                params,
                at,
            ));
        }
        Effect::Expired { order_id } => {
            let Some(order) = state.orders.get(order_id) else {
                return;
            };
            out.push(Output::Order(OrderEvent::OrderExpired(OrderExpired {
                record_id: ids::record_id_for::<OrderExpired>(&[order_id]),
                order_id: order_id.clone(),
                event_id: event_id.to_owned(),
                user_id: order.user_id.clone(),
                number_slot: slots_i32(order.slots),
                occurred_at: at,
            })));
            let params = order_params(state, order);
            out.push(notification(
                effect,
                event_id,
                order_id,
                &order.user_id,
                params,
                at,
            ));
        }
        Effect::Refund { order_id, reason } => {
            let Some(order) = state.orders.get(order_id) else {
                return;
            };
            // The fan hears about the refund from the payment processor once the money went
            // back (one notification, with the reason); a second one here would show twice.
            out.extend(refund_request(event_id, order_id, order, *reason, at));
        }
        Effect::Availability { sequence } => {
            out.push(Output::Availability(AvailabilityChanged {
                record_id: ids::record_id_for::<AvailabilityChanged>(&[
                    event_id,
                    &sequence.to_string(),
                ]),
                event_id: event_id.to_owned(),
                sequence: *sequence,
                total: slots_i32(state.capacity()),
                available: slots_i32(state.available()),
                held: slots_i32(state.held),
                sold: slots_i32(state.sold),
                occurred_at: at,
            }));
        }
        Effect::HoldScheduled { .. } | Effect::HoldCleared { .. } | Effect::Ignored { .. } => {}
    }
}

fn refund_request(
    event_id: &str,
    order_id: &str,
    order: &Order,
    reason: RefundReason,
    at: Millis,
) -> Option<Output> {
    let payment_id = order.payment_id.clone()?;
    let refund_id = ids::refund_id(&payment_id);
    Some(Output::Payment(PaymentRequest::RefundRequested(
        RefundRequested {
            record_id: ids::record_id_for::<RefundRequested>(&[&refund_id]),
            refund_id,
            payment_id,
            order_id: order_id.to_owned(),
            event_id: event_id.to_owned(),
            user_id: order.user_id.clone(),
            amount_minor: order.amount_minor,
            currency: order.currency.clone(),
            reason,
            occurred_at: at,
        },
    )))
}

fn notification(
    effect: &Effect,
    event_id: &str,
    order_id: &str,
    user_id: &str,
    params: BTreeMap<String, String>,
    at: Millis,
) -> Output {
    // Every caller passes an effect that has a notification kind.
    let kind = effect
        .notification_kind()
        .unwrap_or(NotificationKind::OrderRejected);
    Output::Notification(NotificationRequested {
        // One notification per order and kind: a replay names the same one.
        record_id: ids::record_id("notification", &[order_id, kind.wire_name()]),
        user_id: user_id.to_owned(),
        order_id: Some(order_id.to_owned()),
        event_id: Some(event_id.to_owned()),
        kind,
        params,
        occurred_at: at,
    })
}

fn order_params(state: &EventState, order: &Order) -> BTreeMap<String, String> {
    let mut params = BTreeMap::new();
    params.insert("number_slot".into(), order.slots.to_string());
    params.insert("amount_minor".into(), order.amount_minor.to_string());
    params.insert("currency".into(), order.currency.clone());
    if let Some(config) = &state.config {
        params.insert("event_name".into(), config.name.clone());
    }
    params
}

/// Counters are bounded by capacity, which came from an `int` field: they always fit.
fn slots_i32(slots: u32) -> i32 {
    i32::try_from(slots).unwrap_or(i32::MAX)
}

pub fn command_time(command: &BookingCommand) -> Millis {
    command.occurred_at()
}
