//! The text of every notification: a subject and a plain-text body per kind, from the record's
//! `params` (strings written by the booking processor, see `processors/src/booking/render.rs`).
//! Pure: no I/O, no clock; a missing parameter renders as a neutral phrase, never a panic.

use boxoffice_avro::records::{
    CancelReason, NotificationKind, NotificationRequested, RefundReason, RejectReason,
};

/// An email's subject and text body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailText {
    pub subject: String,
    pub body: String,
}

/// Milliseconds since the epoch as RFC 3339 UTC (`2026-11-26T09:00:00Z`).
pub fn format_millis(text: &str) -> Option<String> {
    let millis: i64 = text.trim().parse().ok()?;
    let at = chrono::DateTime::from_timestamp_millis(millis)?;
    Some(at.format("%Y-%m-%d %H:%M UTC").to_string())
}

/// Minor units as a decimal amount with the currency (`1250`, `EUR` → `12.50 EUR`).
pub fn format_amount(minor: &str, currency: &str) -> Option<String> {
    let minor: i64 = minor.trim().parse().ok()?;
    let sign = if minor < 0 { "-" } else { "" };
    let minor = minor.unsigned_abs();
    Some(
        format!("{sign}{}.{:02} {currency}", minor / 100, minor % 100)
            .trim()
            .to_owned(),
    )
}

/// The words for a reason's wire name (`SOLD_OUT`): every reason a notification carries is a
/// `RejectReason`, `CancelReason` or `RefundReason`.
fn reason_text(reason: &str) -> String {
    let known = if let Ok(r) = reason.parse::<RejectReason>() {
        match r {
            RejectReason::SoldOut => "the event is sold out",
            RejectReason::NotOnSale => "the event is not on sale",
            RejectReason::LimitExceeded => "the order is over the ticket limit",
            RejectReason::UnknownEvent => "the event does not exist",
            RejectReason::InvalidRequest => "the request was not valid",
            RejectReason::IdempotencyKeyReused => {
                "its Idempotency-Key was already used for another order of this event"
            }
        }
    } else if let Ok(r) = reason.parse::<CancelReason>() {
        match r {
            CancelReason::UserRequested => "you cancelled it",
            CancelReason::PaymentFailed => "the payment failed",
        }
    } else if let Ok(r) = reason.parse::<RefundReason>() {
        match r {
            RefundReason::OrderCancelled => "the order was cancelled",
            RefundReason::LatePaymentSoldOut => {
                "the payment arrived after the hold expired and the event sold out"
            }
        }
    } else if reason.is_empty() {
        "no reason was given"
    } else {
        return reason.to_lowercase().replace('_', " ");
    };
    known.to_owned()
}

/// The email for `n`.
pub fn email(n: &NotificationRequested) -> EmailText {
    let p = |key: &str| n.params.get(key).map(String::as_str).unwrap_or_default();
    let event = match p("event_name") {
        "" => "your event".to_owned(),
        name => format!("\"{name}\""),
    };
    let slots = match p("number_slot") {
        "" => "your slots".to_owned(),
        "1" => "1 slot".to_owned(),
        n => format!("{n} slots"),
    };
    let amount = format_amount(p("amount_minor"), p("currency"));
    let order = n.order_id.as_deref().unwrap_or("-");
    let (subject, lines): (String, Vec<String>) = match n.kind {
        NotificationKind::OrderReserved => {
            let deadline =
                format_millis(p("hold_expires_at")).unwrap_or_else(|| "the hold deadline".into());
            let mut lines = vec![format!(
                "{slots} for {event} are held for you until {deadline}."
            )];
            if let Some(amount) = &amount {
                lines.push(format!(
                    "Pay {amount} before then to confirm the order; unpaid, the hold is released."
                ));
            }
            (format!("Reserved: {event} (pay by {deadline})"), lines)
        }
        NotificationKind::OrderConfirmed | NotificationKind::LatePaymentReallocated => {
            let tickets: Vec<&str> = p("ticket_ids")
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .collect();
            let mut lines = Vec::new();
            if n.kind == NotificationKind::LatePaymentReallocated {
                lines.push(
                    "Your payment arrived after the hold expired; slots were still free, so \
                     they are yours."
                        .to_owned(),
                );
            }
            lines.push(format!("Your order for {event} is confirmed ({slots})."));
            if tickets.is_empty() {
                lines.push("Your tickets are in your account.".to_owned());
            } else {
                lines.push("Tickets:".to_owned());
                lines.extend(tickets.iter().map(|t| format!("  - {t}")));
            }
            (format!("Confirmed: {event}"), lines)
        }
        NotificationKind::OrderRejected => (
            format!("Not booked: {event}"),
            vec![format!(
                "Your order for {event} was not accepted: {}.",
                reason_text(p("reason"))
            )],
        ),
        NotificationKind::OrderExpired => (
            format!("Hold expired: {event}"),
            vec![format!(
                "The hold on {slots} for {event} expired before payment; the slots were released."
            )],
        ),
        NotificationKind::OrderCancelled => {
            let mut lines = vec![format!(
                "Your order for {event} was cancelled: {}.",
                reason_text(p("reason"))
            )];
            if p("refund") == "true" {
                lines.push("The payment will be refunded.".to_owned());
            }
            (format!("Cancelled: {event}"), lines)
        }
        NotificationKind::OrderRefunded => {
            let what = amount.clone().unwrap_or_else(|| "your payment".to_owned());
            (
                format!("Refunded: {event}"),
                vec![format!(
                    "We are refunding {what} for {event}: {}.",
                    reason_text(p("reason"))
                )],
            )
        }
        NotificationKind::EmailVerification
        | NotificationKind::PasswordReset
        | NotificationKind::AccountExists
        | NotificationKind::UserNameTaken => return account_email(n),
    };
    let mut body = lines.join("\n");
    body.push_str(&format!(
        "\n\nOrder: {order}\nNotification: {}\n",
        n.notification_id()
    ));
    EmailText { subject, body }
}

/// An account notice: the link (and the bare token, for API clients) to verify an address or
/// reset a password, or the news that a registration with this address did not go through.
fn account_email(n: &NotificationRequested) -> EmailText {
    let p = |key: &str| n.params.get(key).map(String::as_str).unwrap_or_default();
    let until = format_millis(p("valid_until")).unwrap_or_else(|| "soon".to_owned());
    let action = |what: &str| {
        vec![
            format!("Open this link {what} (valid until {until}):"),
            format!("  {}", p("link")),
            String::new(),
            format!("Or send this token to the API: {}", p("token")),
        ]
    };
    let (subject, mut lines) = match n.kind {
        NotificationKind::EmailVerification => (
            "Confirm your email address",
            action("to confirm your email address and start booking"),
        ),
        NotificationKind::PasswordReset => (
            "Reset your password",
            action("to choose a new password; it works once"),
        ),
        NotificationKind::AccountExists => (
            "Someone tried to register with your email address",
            vec![
                "Someone tried to create an account with this email address, which already has \
                 one. Nothing was changed."
                    .to_owned(),
                "If it was you, sign in instead, or ask for a password reset.".to_owned(),
            ],
        ),
        _ => (
            "Your registration did not go through",
            vec![format!(
                "The user name \"{}\" is taken; no account was created. Register again with \
                 another user name.",
                p("user_name")
            )],
        ),
    };
    lines.push(String::new());
    lines.push("If you did not ask for this, ignore this email.".to_owned());
    lines.push(format!("Notification: {}", n.notification_id()));
    EmailText {
        subject: subject.to_owned(),
        body: lines.join("\n") + "\n",
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn notification(kind: NotificationKind, params: &[(&str, &str)]) -> NotificationRequested {
        NotificationRequested {
            record_id: "n-1".into(),
            user_id: "u-1".into(),
            order_id: Some("o-1".into()),
            event_id: Some("e-1".into()),
            kind,
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            occurred_at: 0,
        }
    }

    #[test]
    fn reserved_names_the_hold_deadline_and_amount() {
        let text = email(&notification(
            NotificationKind::OrderReserved,
            &[
                ("event_name", "Gig"),
                ("number_slot", "2"),
                ("hold_expires_at", "1764147600000"),
                ("amount_minor", "1250"),
                ("currency", "EUR"),
            ],
        ));
        assert!(text.subject.contains("Reserved"), "{text:?}");
        assert!(text.body.contains("2025-11-26 09:00 UTC"), "{text:?}");
        assert!(text.body.contains("12.50 EUR"), "{text:?}");
        assert!(text.body.contains("2 slots"), "{text:?}");
    }

    #[test]
    fn confirmed_lists_the_tickets_and_rejected_the_reason() {
        let text = email(&notification(
            NotificationKind::OrderConfirmed,
            &[("ticket_ids", "t-1,t-2")],
        ));
        assert!(text.body.contains("  - t-1\n  - t-2"), "{text:?}");
        let text = email(&notification(
            NotificationKind::OrderRejected,
            &[("reason", "SOLD_OUT")],
        ));
        assert!(text.body.contains("sold out"), "{text:?}");
    }

    #[test]
    fn account_notices_carry_the_link_and_the_token() {
        let text = email(&notification(
            NotificationKind::EmailVerification,
            &[
                ("link", "https://tickets.example/verify-email#token=abc"),
                ("token", "abc"),
                ("valid_until", "1764147600000"),
            ],
        ));
        assert!(
            text.body
                .contains("  https://tickets.example/verify-email#token=abc"),
            "{text:?}"
        );
        assert!(text.body.contains("to the API: abc"), "{text:?}");
        assert!(text.body.contains("2025-11-26 09:00 UTC"), "{text:?}");
        let text = email(&notification(
            NotificationKind::UserNameTaken,
            &[("user_name", "ann_1")],
        ));
        assert!(text.body.contains("\"ann_1\" is taken"), "{text:?}");
    }

    #[test]
    fn every_kind_renders_without_params() {
        for kind in [
            NotificationKind::OrderReserved,
            NotificationKind::OrderConfirmed,
            NotificationKind::OrderRejected,
            NotificationKind::OrderExpired,
            NotificationKind::OrderCancelled,
            NotificationKind::OrderRefunded,
            NotificationKind::LatePaymentReallocated,
            NotificationKind::EmailVerification,
            NotificationKind::PasswordReset,
            NotificationKind::AccountExists,
            NotificationKind::UserNameTaken,
        ] {
            let text = email(&notification(kind, &[]));
            assert!(!text.subject.is_empty());
            assert!(text.body.contains("Notification: n-1"));
        }
        assert_eq!(format_amount("-5", "EUR").as_deref(), Some("-0.05 EUR"));
        assert_eq!(format_millis("x"), None);
    }
}
