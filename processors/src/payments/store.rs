//! A payment's state to and from the row of `boxoffice_store::payments` (plain data both ways).

use boxoffice_avro::records::{PaymentFailureReason, RefundReason};
use boxoffice_store::payments::StoredPayment;

use super::core::{PaymentState, Refund, Submission};
use super::gateway::Token;

/// Where a loaded payment stands beside its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// Offset of the last `payments.requests` record fully applied (`None`: none).
    pub applied_offset: Option<i64>,
    /// The row's write count (0: never written by the processor).
    pub revision: i64,
}

/// The row for `state`, written as revision `revision` with `applied_offset`.
pub fn to_stored(
    state: &PaymentState,
    applied_offset: Option<i64>,
    revision: i64,
) -> StoredPayment {
    let submission = state.submission.as_ref();
    let refund = state.refund.as_ref();
    StoredPayment {
        id: state.payment_id.clone(),
        order_id: state.order_id.clone(),
        event_id: state.event_id.clone(),
        user_id: state.user_id.clone(),
        amount_minor: state.amount_minor,
        currency: state.currency.clone(),
        status: state.status,
        provider_reference: state.provider_reference.clone().unwrap_or_default(),
        hold_expires_at: state.hold_expires_at,
        requested: state.requested,
        payment_method_token: submission
            .map(|s| s.token.expose().to_owned())
            .unwrap_or_default(),
        submitted_user_id: submission.map(|s| s.user_id.clone()).unwrap_or_default(),
        submitted_amount_minor: submission.map_or(0, |s| s.amount_minor),
        submitted_currency: submission.map(|s| s.currency.clone()).unwrap_or_default(),
        submitted_at: submission.map_or(0, |s| s.submitted_at),
        charge_attempts: i32::try_from(state.charge_attempts).unwrap_or(i32::MAX),
        captured_minor: state.captured_minor,
        failure_reason: state
            .failure
            .as_ref()
            .map(|(r, _)| enum_name(r))
            .unwrap_or_default(),
        failure_detail: state
            .failure
            .as_ref()
            .map(|(_, d)| d.clone())
            .unwrap_or_default(),
        refund_id: refund.map(|r| r.refund_id.clone()).unwrap_or_default(),
        refund_amount_minor: refund.map_or(0, |r| r.amount_minor),
        refund_reason: refund.map(|r| enum_name(&r.reason)).unwrap_or_default(),
        refund_reference: refund
            .and_then(|r| r.provider_reference.clone())
            .unwrap_or_default(),
        refunded_minor: state.refunded_minor,
        history_seq: state.history_seq,
        applied_offset: applied_offset.unwrap_or(-1),
        revision,
        created_at: state.created_at,
        updated_at: state.updated_at,
    }
}

/// The state a stored row describes. `Err` names what is wrong with the row.
pub fn restore(row: StoredPayment) -> Result<(PaymentState, Stored), String> {
    let status = row.status;
    let submission = (!row.payment_method_token.is_empty()).then(|| Submission {
        user_id: row.submitted_user_id.clone(),
        amount_minor: row.submitted_amount_minor,
        currency: row.submitted_currency.clone(),
        token: Token::new(row.payment_method_token.clone()),
        submitted_at: row.submitted_at,
    });
    let failure = if row.failure_reason.is_empty() {
        None
    } else {
        Some((
            parse_enum::<PaymentFailureReason>(&row.failure_reason)?,
            row.failure_detail.clone(),
        ))
    };
    let refund = if row.refund_id.is_empty() {
        None
    } else {
        Some(Refund {
            refund_id: row.refund_id.clone(),
            amount_minor: row.refund_amount_minor,
            reason: parse_enum::<RefundReason>(&row.refund_reason)?,
            provider_reference: Some(row.refund_reference.clone()).filter(|r| !r.is_empty()),
        })
    };
    let state = PaymentState {
        payment_id: row.id,
        status,
        order_id: row.order_id,
        event_id: row.event_id,
        user_id: row.user_id,
        amount_minor: row.amount_minor,
        currency: row.currency,
        hold_expires_at: row.hold_expires_at,
        requested: row.requested,
        submission,
        charge_attempts: u32::try_from(row.charge_attempts).unwrap_or(0),
        provider_reference: Some(row.provider_reference).filter(|r| !r.is_empty()),
        captured_minor: row.captured_minor,
        failure,
        refund,
        refunded_minor: row.refunded_minor,
        history_seq: row.history_seq,
        created_at: row.created_at,
        updated_at: row.updated_at,
    };
    let stored = Stored {
        applied_offset: Some(row.applied_offset).filter(|o| *o >= 0),
        revision: row.revision,
    };
    Ok((state, stored))
}

/// The Avro symbol of an enum (`DECLINED`, `ORDER_CANCELLED`, ...).
fn enum_name<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        _ => String::new(),
    }
}

fn parse_enum<T: serde::de::DeserializeOwned>(name: &str) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(name.to_owned()))
        .map_err(|e| format!("unknown symbol {name:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payments::core::{Input, apply};
    use boxoffice_avro::records::{PaymentRequested, PaymentSubmitted};

    #[test]
    fn state_round_trips_through_the_row() {
        let mut state = PaymentState::new("p-1");
        apply(
            &mut state,
            Input::Requested(PaymentRequested {
                record_id: "r".into(),
                payment_id: "p-1".into(),
                order_id: "o-1".into(),
                event_id: "e-1".into(),
                user_id: "u-1".into(),
                amount_minor: 1200,
                currency: "EUR".into(),
                hold_expires_at: 5,
                occurred_at: 1,
            }),
            10,
        );
        apply(
            &mut state,
            Input::Submitted(PaymentSubmitted {
                record_id: "s".into(),
                payment_id: "p-1".into(),
                order_id: "o-1".into(),
                event_id: "e-1".into(),
                user_id: "u-1".into(),
                amount_minor: 1200,
                currency: "EUR".into(),
                payment_method_token: "tok_success".into(),
                occurred_at: 2,
            }),
            11,
        );
        state.failure = Some((PaymentFailureReason::InsufficientFunds, "nsf".into()));
        state.refund = Some(Refund {
            refund_id: "rf".into(),
            amount_minor: 1200,
            reason: RefundReason::LatePaymentSoldOut,
            provider_reference: None,
        });
        let row = to_stored(&state, Some(7), 3);
        assert_eq!(row.failure_reason, "INSUFFICIENT_FUNDS");
        assert_eq!(row.refund_reason, "LATE_PAYMENT_SOLD_OUT");
        let (back, stored) = restore(row).unwrap();
        assert_eq!(back, state);
        assert_eq!(
            stored,
            Stored {
                applied_offset: Some(7),
                revision: 3
            }
        );
        assert!(!format!("{:?}", to_stored(&state, None, 1)).contains("tok_success"));
    }
}
