//! Turns the core's outcomes into the records the payment processor produces. Pure and
//! deterministic in its ids: a payment's outcome is always the record id derived from the
//! payment id (`PaymentSucceeded` or `PaymentFailed`), a refund's notification from the refund
//! id, so a replay after a crash produces the same ids and consumers deduplicate them.

use std::collections::BTreeMap;

use boxoffice_avro::ids;
use boxoffice_avro::records::{
    BookingCommand, NotificationKind, NotificationRequested, PaymentFailed, PaymentSucceeded,
    Record, RecordGroup,
};

use super::core::{Millis, Outcome, PaymentState};

/// A record to produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// To `booking.commands`, keyed by event id.
    Command(BookingCommand),
    /// To `notifications`, keyed by user id.
    Notification(NotificationRequested),
}

impl Output {
    pub fn record_id(&self) -> &str {
        match self {
            Output::Command(r) => r.record_id(),
            Output::Notification(r) => r.record_id(),
        }
    }

    pub fn key(&self) -> &str {
        match self {
            Output::Command(r) => r.key(),
            Output::Notification(r) => r.key(),
        }
    }
}

/// The notification id of a completed refund (distinct from the booking processor's
/// "refund started" notification, which is per order).
pub fn refund_notification_id(refund_id: &str) -> String {
    ids::record_id_for::<NotificationRequested>(&[refund_id, "REFUNDED"])
}

/// The record for `outcome` of `state`, at `now`.
pub fn render(state: &PaymentState, outcome: &Outcome, now: Millis) -> Output {
    let payment_id = state.payment_id.as_str();
    match outcome {
        Outcome::Succeeded { provider_reference } => {
            Output::Command(BookingCommand::PaymentSucceeded(PaymentSucceeded {
                record_id: ids::record_id_for::<PaymentSucceeded>(&[payment_id]),
                payment_id: payment_id.to_owned(),
                order_id: state.order_id.clone(),
                event_id: state.event_id.clone(),
                user_id: state.user_id.clone(),
                amount_minor: state.captured_minor,
                currency: state.currency.clone(),
                provider_reference: provider_reference.clone(),
                occurred_at: now,
            }))
        }
        Outcome::Failed { reason, detail } => {
            Output::Command(BookingCommand::PaymentFailed(PaymentFailed {
                record_id: ids::record_id_for::<PaymentFailed>(&[payment_id]),
                payment_id: payment_id.to_owned(),
                order_id: state.order_id.clone(),
                event_id: state.event_id.clone(),
                user_id: state.user_id.clone(),
                amount_minor: state.amount_minor,
                currency: state.currency.clone(),
                reason: *reason,
                detail: Some(detail.clone()).filter(|d| !d.is_empty()),
                occurred_at: now,
            }))
        }
        Outcome::Refunded {
            refund_id,
            provider_reference,
        } => {
            let mut params = BTreeMap::new();
            let amount = state
                .refund
                .as_ref()
                .map_or(state.refunded_minor, |r| r.amount_minor);
            params.insert("amount_minor".to_owned(), amount.to_string());
            params.insert("currency".to_owned(), state.currency.clone());
            params.insert("refund_id".to_owned(), refund_id.clone());
            params.insert("provider_reference".to_owned(), provider_reference.clone());
            params.insert("refund_status".to_owned(), "REFUNDED".to_owned());
            if let Some(refund) = &state.refund {
                // Why, in the record's own words (`LATE_PAYMENT_SOLD_OUT`): the email says it.
                params.insert("reason".to_owned(), refund.reason.wire_name().to_owned());
            }
            Output::Notification(NotificationRequested {
                record_id: refund_notification_id(refund_id),
                user_id: state.user_id.clone(),
                order_id: Some(state.order_id.clone()),
                event_id: Some(state.event_id.clone()),
                kind: NotificationKind::OrderRefunded,
                params,
                occurred_at: now,
            })
        }
    }
}
