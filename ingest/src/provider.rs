//! The payment provider's webhook, as pure functions (the handler is
//! `routes::provider_webhook`):
//!
//! - [`verify`] checks `Boxoffice-Provider-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>...]`,
//!   where each `v1` is a lower-case hex HMAC-SHA256 over `"<t>.<raw body>"` keyed with the
//!   shared secret; any `v1` that matches passes (the provider sends one per secret while it
//!   rotates them). Comparisons are constant-time (`Mac::verify_slice`), and `t` must lie
//!   within the tolerance of now, either way (replays and pre-signed deliveries).
//! - [`interpret`] parses the verified body: `charge.succeeded` and `charge.failed` become a
//!   [`ChargeEvent`], every other type is [`Delivery::Ignored`].
//! - [`ChargeEvent::record`] is the `PaymentProviderEvent` produced for it.

use std::time::Duration;

use boxoffice_avro::ids;
use boxoffice_avro::records::{PaymentFailureReason, PaymentProviderEvent, ProviderChargeOutcome};
use boxoffice_runtime::signature::{self, TAG_LEN};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::FieldError;
use crate::stores::Millis;
use crate::validate;

/// The header that carries the signature.
pub const SIGNATURE_HEADER: &str = "Boxoffice-Provider-Signature";

/// Most `v1` entries one header may carry (a rotation needs two; the bound keeps the work per
/// request small).
pub const MAX_SIGNATURES: usize = 8;

/// Longest provider id (event or charge) accepted.
pub const MAX_PROVIDER_ID_LEN: usize = 255;

/// Longest provider message kept in the record (longer ones are cut, not refused: the event is
/// genuine, and refusing it would only make the provider retry it forever).
pub const MAX_DETAIL_CHARS: usize = 1000;

/// The event types that are forwarded.
pub const CHARGE_SUCCEEDED: &str = "charge.succeeded";
pub const CHARGE_FAILED: &str = "charge.failed";

/// Why a delivery's signature was refused. The messages name the problem, never the expected
/// signature or anything about the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the Boxoffice-Provider-Signature header is missing")]
    Missing,
    #[error("the Boxoffice-Provider-Signature header is malformed: {0}")]
    Malformed(&'static str),
    #[error(
        "the signature's timestamp is more than {tolerance_secs} s away from now (stale or from the future)"
    )]
    OutsideTolerance { tolerance_secs: u64 },
    #[error("no v1 signature matches the body")]
    Mismatch,
}

/// The header value a provider sends for `body` at `timestamp` (tests and tools).
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    format!(
        "t={timestamp},v1={}",
        signature::tag_hex(secret, timestamp, body)
    )
}

/// A parsed signature header: the timestamp as sent (its digits are what was signed) and the
/// candidate tags.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SignatureHeader<'a> {
    timestamp_text: &'a str,
    timestamp: i64,
    tags: Vec<[u8; TAG_LEN]>,
}

/// `t=<digits>` once and `v1=<64 hex>` one or more times, comma-separated, in any order;
/// entries of other schemes (`v0=`...) are skipped so the provider can add schemes.
fn parse_header(header: &str) -> Result<SignatureHeader<'_>, SignatureError> {
    let mut timestamp: Option<(&str, i64)> = None;
    let mut tags = Vec::new();
    for item in header.split(',') {
        let Some((key, value)) = item.trim().split_once('=') else {
            return Err(SignatureError::Malformed("every entry must be key=value"));
        };
        match key {
            "t" => {
                if timestamp.is_some() {
                    return Err(SignatureError::Malformed("t appears more than once"));
                }
                let digits = !value.is_empty()
                    && value.len() <= 12
                    && value.bytes().all(|b| b.is_ascii_digit());
                let parsed = value.parse::<i64>().ok().filter(|_| digits);
                let Some(parsed) = parsed else {
                    return Err(SignatureError::Malformed("t must be Unix seconds"));
                };
                timestamp = Some((value, parsed));
            }
            "v1" => {
                if tags.len() == MAX_SIGNATURES {
                    return Err(SignatureError::Malformed("too many v1 entries"));
                }
                let Some(tag) = signature::decode_tag(value) else {
                    return Err(SignatureError::Malformed(
                        "v1 must be 64 lower-case hex digits",
                    ));
                };
                tags.push(tag);
            }
            _ => {}
        }
    }
    let Some((timestamp_text, timestamp)) = timestamp else {
        return Err(SignatureError::Malformed("t is missing"));
    };
    if tags.is_empty() {
        return Err(SignatureError::Malformed("v1 is missing"));
    }
    Ok(SignatureHeader {
        timestamp_text,
        timestamp,
        tags,
    })
}

/// Checks a delivery: the header's shape, its timestamp against `now_secs` ± `tolerance`, then
/// the HMAC over the raw `body`. Returns the signed timestamp.
pub fn verify(
    secret: &[u8],
    header: Option<&str>,
    body: &[u8],
    now_secs: i64,
    tolerance: Duration,
) -> Result<i64, SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let parsed = parse_header(header)?;
    let tolerance_secs = tolerance.as_secs();
    if parsed.timestamp.abs_diff(now_secs) > tolerance_secs {
        return Err(SignatureError::OutsideTolerance { tolerance_secs });
    }
    let matches = parsed
        .tags
        .iter()
        .any(|tag| signature::verify_tag(secret, parsed.timestamp_text, body, tag));
    if matches {
        Ok(parsed.timestamp)
    } else {
        Err(SignatureError::Mismatch)
    }
}

// ------------------------------------------------------------------------------------ body

/// A provider event (the webhook's body). Unknown fields are ignored: providers add fields.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct ProviderEvent {
    /// The provider's event id (`evt_...`), the same on every retry of one event.
    #[schema(max_length = 255)]
    pub id: String,
    /// `charge.succeeded` and `charge.failed` are forwarded; every other type is acknowledged
    /// and ignored. (No `example` here: schemathesis 4.32 crashes building an example body
    /// around a property example this deep.)
    #[serde(rename = "type")]
    pub kind: String,
    /// When the provider created the event (Unix seconds).
    #[serde(default)]
    pub created: Option<i64>,
    pub data: ProviderEventData,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct ProviderEventData {
    pub object: ProviderCharge,
}

/// The charge an event is about.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct ProviderCharge {
    /// The provider's charge id (`ch_...`).
    #[schema(max_length = 255)]
    pub id: String,
    /// The payment id the charge was made with (UUID).
    #[schema(format = Uuid)]
    pub idempotency_key: String,
    /// `succeeded`, `failed` or `pending` (informational: the event type decides).
    #[serde(default)]
    pub status: Option<String>,
    /// The charge's amount in minor units; required for charge events (the payment processor
    /// refuses an event whose amount differs from the payment's).
    #[serde(default)]
    pub amount_minor: Option<i64>,
    /// ISO 4217 code; required for charge events, checked like the amount.
    #[serde(default)]
    pub currency: Option<String>,
    /// `card_declined`, `insufficient_funds`, `processing_error`, or another code.
    #[serde(default)]
    pub failure_code: Option<String>,
    #[serde(default)]
    pub failure_message: Option<String>,
    pub metadata: ChargeMetadata,
}

/// What boxoffice attached to the charge.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct ChargeMetadata {
    /// Must equal `idempotency_key`.
    #[schema(format = Uuid)]
    pub payment_id: String,
    #[schema(format = Uuid)]
    pub order_id: String,
}

/// Just what every delivery must have, to decide whether it is ours to handle.
#[derive(Debug, Deserialize)]
struct Envelope {
    id: String,
    #[serde(rename = "type")]
    kind: String,
}

/// A charge outcome, validated and ready to forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeEvent {
    pub provider_event_id: String,
    pub event_type: String,
    pub payment_id: String,
    pub order_id: String,
    /// What the provider says the charge was for (the payment processor compares them with
    /// the payment).
    pub amount_minor: i64,
    pub currency: String,
    pub outcome: ProviderChargeOutcome,
    pub provider_reference: String,
    pub failure_reason: Option<PaymentFailureReason>,
    pub detail: Option<String>,
}

/// What a verified delivery asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// A type ingest does not forward (acknowledged, so the provider stops retrying).
    Ignored {
        provider_event_id: String,
        event_type: String,
    },
    Charge(ChargeEvent),
}

/// Why a verified body cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// Not JSON, or not the shape of an event (400).
    #[error("the body is not a provider event: {0}")]
    Malformed(String),
    /// The right shape with unusable values (422).
    #[error("the event has invalid fields")]
    Invalid(Vec<FieldError>),
}

/// `failure_code` as the record's reason; unknown codes are declines.
pub fn failure_reason(code: Option<&str>) -> PaymentFailureReason {
    match code {
        Some("insufficient_funds") => PaymentFailureReason::InsufficientFunds,
        Some("processing_error") => PaymentFailureReason::ProviderError,
        _ => PaymentFailureReason::Declined,
    }
}

fn provider_id(value: &str) -> Result<String, String> {
    if (1..=MAX_PROVIDER_ID_LEN).contains(&value.len())
        && value.bytes().all(|b| b.is_ascii_graphic())
    {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "must be 1 to {MAX_PROVIDER_ID_LEN} visible ASCII characters"
        ))
    }
}

/// The provider's message, without control characters and at most [`MAX_DETAIL_CHARS`].
fn detail(message: Option<&str>) -> Option<String> {
    let cleaned: String = message?
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_DETAIL_CHARS)
        .collect();
    let trimmed = cleaned.trim();
    (!trimmed.is_empty()).then(|| trimmed.to_owned())
}

/// Parses and validates a verified body.
pub fn interpret(body: &[u8]) -> Result<Delivery, EventError> {
    let envelope: Envelope =
        serde_json::from_slice(body).map_err(|e| EventError::Malformed(e.to_string()))?;
    let outcome = match envelope.kind.as_str() {
        CHARGE_SUCCEEDED => ProviderChargeOutcome::Captured,
        CHARGE_FAILED => ProviderChargeOutcome::Declined,
        _ => {
            return Ok(Delivery::Ignored {
                provider_event_id: envelope.id,
                event_type: envelope.kind,
            });
        }
    };
    let event: ProviderEvent =
        serde_json::from_slice(body).map_err(|e| EventError::Malformed(e.to_string()))?;
    let charge = &event.data.object;
    let mut errors = Vec::new();
    let mut check = |field: &str, result: Result<String, String>| match result {
        Ok(value) => Some(value),
        Err(message) => {
            errors.push(FieldError::new(field, message));
            None
        }
    };
    let provider_event_id = check("id", provider_id(&event.id));
    let provider_reference = check("data.object.id", provider_id(&charge.id));
    let key = check(
        "data.object.idempotency_key",
        validate::id(&charge.idempotency_key),
    );
    let payment_id = check(
        "data.object.metadata.payment_id",
        validate::id(&charge.metadata.payment_id),
    );
    let order_id = check(
        "data.object.metadata.order_id",
        validate::id(&charge.metadata.order_id),
    );
    let currency = check(
        "data.object.currency",
        match charge.currency.as_deref() {
            Some(c) if c.len() == 3 && c.bytes().all(|b| b.is_ascii_alphabetic()) => {
                Ok(c.to_ascii_uppercase())
            }
            Some(_) => Err("must be a three-letter currency code".to_owned()),
            None => Err("is required (the payment processor checks it)".to_owned()),
        },
    );
    let amount_minor = match charge.amount_minor {
        Some(amount) if amount > 0 => Some(amount),
        other => {
            let message = if other.is_some() {
                "must be positive"
            } else {
                "is required (the payment processor checks it)"
            };
            errors.push(FieldError::new("data.object.amount_minor", message));
            None
        }
    };
    if let (Some(key), Some(payment_id)) = (&key, &payment_id)
        && key != payment_id
    {
        errors.push(FieldError::new(
            "data.object.metadata.payment_id",
            "must equal data.object.idempotency_key",
        ));
    }
    match (
        provider_event_id,
        provider_reference,
        payment_id,
        order_id,
        amount_minor,
        currency,
    ) {
        (
            Some(provider_event_id),
            Some(provider_reference),
            Some(payment_id),
            Some(order_id),
            Some(amount_minor),
            Some(currency),
        ) if errors.is_empty() => Ok(Delivery::Charge(ChargeEvent {
            provider_event_id,
            event_type: envelope.kind,
            payment_id,
            order_id,
            amount_minor,
            currency,
            outcome,
            provider_reference,
            failure_reason: (outcome == ProviderChargeOutcome::Declined)
                .then(|| failure_reason(charge.failure_code.as_deref())),
            detail: detail(charge.failure_message.as_deref()),
        })),
        _ => Err(EventError::Invalid(errors)),
    }
}

impl ChargeEvent {
    /// The record for this event; `accepted_at` is when ingest first accepted it, so every
    /// retry produces the same record.
    pub fn record(&self, accepted_at: Millis) -> PaymentProviderEvent {
        PaymentProviderEvent {
            record_id: ids::record_id_for::<PaymentProviderEvent>(&[&self.provider_event_id]),
            provider_event_id: self.provider_event_id.clone(),
            payment_id: self.payment_id.clone(),
            order_id: self.order_id.clone(),
            amount_minor: self.amount_minor,
            currency: self.currency.clone(),
            outcome: self.outcome,
            provider_reference: self.provider_reference.clone(),
            failure_reason: self.failure_reason,
            detail: self.detail.clone(),
            occurred_at: accepted_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"whsec_unit";
    const NOW: i64 = 1_800_000_000;
    const TOLERANCE: Duration = Duration::from_secs(300);

    fn check(header: &str, body: &[u8]) -> Result<i64, SignatureError> {
        verify(SECRET, Some(header), body, NOW, TOLERANCE)
    }

    #[test]
    fn signatures_verify_and_refuse_what_they_should() {
        let body = br#"{"id":"evt_1"}"#;
        let header = sign(SECRET, NOW, body);
        assert_eq!(check(&header, body), Ok(NOW));
        // The whole HMAC is over the exact bytes: one byte more, another key, another time.
        assert_eq!(
            check(&header, br#"{"id":"evt_1"} "#),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"other", Some(&header), body, NOW, TOLERANCE),
            Err(SignatureError::Mismatch)
        );
        let v1 = header.split_once(",v1=").unwrap().1;
        assert_eq!(
            check(&format!("t={},v1={v1}", NOW + 1), body),
            Err(SignatureError::Mismatch)
        );
        // Order and spaces do not matter; unknown schemes are skipped.
        assert_eq!(check(&format!("v0=abc, v1={v1} , t={NOW}"), body), Ok(NOW));
        assert_eq!(
            verify(SECRET, None, body, NOW, TOLERANCE),
            Err(SignatureError::Missing)
        );
    }

    #[test]
    fn the_timestamp_must_be_within_the_tolerance_either_way() {
        let body = b"{}";
        for (t, ok) in [
            (NOW - 300, true),
            (NOW + 300, true),
            (NOW - 301, false),
            (NOW + 301, false),
            (0, false),
        ] {
            let result = check(&sign(SECRET, t, body), body);
            if ok {
                assert_eq!(result, Ok(t));
            } else {
                assert_eq!(
                    result,
                    Err(SignatureError::OutsideTolerance {
                        tolerance_secs: 300
                    })
                );
            }
        }
    }

    #[test]
    fn any_of_several_v1_entries_may_match() {
        let body = b"{\"a\":1}";
        let good = sign(SECRET, NOW, body);
        let good_v1 = good.split_once(",v1=").unwrap().1;
        let old = sign(b"old secret", NOW, body);
        let old_v1 = old.split_once(",v1=").unwrap().1;
        assert_eq!(
            check(&format!("t={NOW},v1={old_v1},v1={good_v1}"), body),
            Ok(NOW)
        );
        assert_eq!(
            check(&format!("t={NOW},v1={good_v1},v1={old_v1}"), body),
            Ok(NOW)
        );
        assert_eq!(
            check(&format!("t={NOW},v1={old_v1},v1={old_v1}"), body),
            Err(SignatureError::Mismatch)
        );
        let many = std::iter::repeat_n(format!("v1={old_v1}"), MAX_SIGNATURES + 1)
            .collect::<Vec<_>>()
            .join(",");
        assert!(matches!(
            check(&format!("t={NOW},{many}"), body),
            Err(SignatureError::Malformed(_))
        ));
    }

    #[test]
    fn malformed_headers_are_named_and_never_echo_a_signature() {
        let body = b"{}";
        let v1 = "a".repeat(64);
        for header in [
            "",
            "garbage",
            &format!("v1={v1}"),
            &format!("t={NOW}"),
            &format!("t=abc,v1={v1}"),
            &format!("t=-5,v1={v1}"),
            &format!("t=+5,v1={v1}"),
            &format!("t={NOW},t={NOW},v1={v1}"),
            &format!("t={NOW},v1={}", "A".repeat(64)),
            &format!("t={NOW},v1={}", "a".repeat(63)),
            &format!("t={NOW},v1=zz{}", "a".repeat(62)),
            &format!("t=99999999999999999999,v1={v1}"),
        ] {
            let err = check(header, body).unwrap_err();
            assert!(
                matches!(err, SignatureError::Malformed(_)),
                "{header}: {err:?}"
            );
        }
        // No message carries the expected tag.
        let expected = sign(SECRET, NOW, body);
        let expected_v1 = expected.split_once(",v1=").unwrap().1;
        let wrong = format!("t={NOW},v1={v1}");
        let message = check(&wrong, body).unwrap_err().to_string();
        assert!(!message.contains(expected_v1), "{message}");
        assert!(!message.contains("whsec"), "{message}");
    }

    fn event(kind: &str, payment: &str, key: &str, failure_code: Option<&str>) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "id": "evt_123", "type": kind, "created": NOW,
            "data": {"object": {
                "id": "ch_9", "idempotency_key": key, "status": "succeeded",
                "amount_minor": 9000, "currency": "EUR",
                "failure_code": failure_code, "failure_message": failure_code.map(|_| "Your card\nwas declined."),
                "metadata": {"payment_id": payment, "order_id": "6F1C2A3B-0000-4000-8000-000000000001"},
                "extra": true
            }}
        }))
        .unwrap()
    }

    const PAYMENT: &str = "1b0e8f3a-0000-4000-8000-0000000000aa";

    #[test]
    fn charge_events_become_records() {
        let Delivery::Charge(ok) =
            interpret(&event("charge.succeeded", PAYMENT, PAYMENT, None)).unwrap()
        else {
            panic!("not a charge");
        };
        assert_eq!(ok.outcome, ProviderChargeOutcome::Captured);
        assert_eq!(ok.failure_reason, None);
        assert_eq!(ok.order_id, "6f1c2a3b-0000-4000-8000-000000000001");
        let record = ok.record(42);
        assert_eq!(
            record.record_id,
            ids::record_id_for::<PaymentProviderEvent>(&["evt_123"])
        );
        assert_eq!(
            (
                record.provider_reference.as_str(),
                record.payment_id.as_str(),
                record.occurred_at
            ),
            ("ch_9", PAYMENT, 42)
        );
        for (code, reason) in [
            (Some("card_declined"), PaymentFailureReason::Declined),
            (
                Some("insufficient_funds"),
                PaymentFailureReason::InsufficientFunds,
            ),
            (
                Some("processing_error"),
                PaymentFailureReason::ProviderError,
            ),
            (Some("something_new"), PaymentFailureReason::Declined),
            (None, PaymentFailureReason::Declined),
        ] {
            let Delivery::Charge(failed) =
                interpret(&event("charge.failed", PAYMENT, PAYMENT, code)).unwrap()
            else {
                panic!("not a charge");
            };
            assert_eq!(failed.outcome, ProviderChargeOutcome::Declined);
            assert_eq!(failed.failure_reason, Some(reason), "{code:?}");
            let expected_detail = code.map(|_| "Your card was declined.".to_owned());
            assert_eq!(failed.detail, expected_detail);
        }
    }

    #[test]
    fn charge_events_must_say_what_the_charge_was_for() {
        let with = |amount: serde_json::Value, currency: serde_json::Value| {
            let mut body: serde_json::Value =
                serde_json::from_slice(&event("charge.succeeded", PAYMENT, PAYMENT, None)).unwrap();
            body["data"]["object"]["amount_minor"] = amount;
            body["data"]["object"]["currency"] = currency;
            interpret(&serde_json::to_vec(&body).unwrap())
        };
        let Ok(Delivery::Charge(ok)) = with(9000.into(), "eur".into()) else {
            panic!("a valid charge was refused");
        };
        assert_eq!((ok.amount_minor, ok.currency.as_str()), (9000, "EUR"));
        let record = ok.record(1);
        assert_eq!(
            (record.amount_minor, record.currency.as_str()),
            (9000, "EUR")
        );
        for (amount, currency, field) in [
            (
                serde_json::Value::Null,
                "EUR".into(),
                "data.object.amount_minor",
            ),
            (0.into(), "EUR".into(), "data.object.amount_minor"),
            (9000.into(), serde_json::Value::Null, "data.object.currency"),
            (9000.into(), "EURO".into(), "data.object.currency"),
        ] {
            let Err(EventError::Invalid(errors)) = with(amount.clone(), currency.clone()) else {
                panic!("{amount} {currency} accepted");
            };
            assert_eq!(errors[0].field, field, "{amount} {currency}");
        }
    }

    #[test]
    fn other_types_are_ignored_and_bad_bodies_refused() {
        assert_eq!(
            interpret(br#"{"id":"evt_2","type":"charge.refunded","data":{}}"#).unwrap(),
            Delivery::Ignored {
                provider_event_id: "evt_2".into(),
                event_type: "charge.refunded".into()
            }
        );
        for bad in [
            &b"not json"[..],
            br#"{"type":"charge.succeeded"}"#,
            br#"{"id":"evt_3","type":"charge.succeeded","data":{"object":{}}}"#,
            br#"[]"#,
        ] {
            assert!(
                matches!(interpret(bad), Err(EventError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let other = "2c0e8f3a-0000-4000-8000-0000000000bb";
        let Err(EventError::Invalid(errors)) =
            interpret(&event("charge.succeeded", other, PAYMENT, None))
        else {
            panic!("a mismatch was accepted");
        };
        assert_eq!(errors[0].field, "data.object.metadata.payment_id");
        let Err(EventError::Invalid(errors)) =
            interpret(&event("charge.failed", "not-a-uuid", "also not", None))
        else {
            panic!("bad ids were accepted");
        };
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "data.object.idempotency_key",
                "data.object.metadata.payment_id"
            ]
        );
        // Same UUID in two spellings is the same payment.
        assert!(
            interpret(&event(
                "charge.succeeded",
                &PAYMENT.to_uppercase(),
                PAYMENT,
                None
            ))
            .is_ok()
        );
    }

    #[test]
    fn long_messages_are_cut_not_refused() {
        let long = "x".repeat(MAX_DETAIL_CHARS * 2);
        assert_eq!(
            detail(Some(&long)).map(|d| d.chars().count()),
            Some(MAX_DETAIL_CHARS)
        );
        assert_eq!(detail(Some("  \n ")), None);
        assert_eq!(detail(None), None);
    }
}
