//! `POST v1/payments/webhook`: an asynchronous payment provider reports a charge's outcome.
//! No access token: the delivery is authenticated by `Boxoffice-Provider-Signature` (see
//! `crate::provider`). A charge event is deduplicated by the provider's event id
//! (`payment_provider_events`), produced as `PaymentProviderEvent` to `payments.requests`
//! (keyed by order id) and acknowledged only after the broker's ack: any answer but 2xx makes
//! the provider retry, so a 503 while Kafka is down loses nothing.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use boxoffice_avro::PaymentRequest;
use boxoffice_avro::records::ProviderChargeOutcome;
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::{ApiError, ApiResult, Problem};
use crate::provider::{self, ChargeEvent, Delivery, EventError, SignatureError};
use crate::state::SharedState;
use crate::stores::{ProviderEventClaim, ProviderEventRecord};

/// The answer to an accepted delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ProviderWebhookAck {
    /// Always true: the provider may stop retrying this delivery.
    pub received: bool,
    /// For charge events: whether the event had been forwarded before (nothing was produced
    /// this time).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplicate: Option<bool>,
    /// For other event types: true (acknowledged, not forwarded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ignored: Option<bool>,
}

impl ProviderWebhookAck {
    fn forwarded(duplicate: bool) -> Self {
        ProviderWebhookAck {
            received: true,
            duplicate: Some(duplicate),
            ignored: None,
        }
    }

    fn ignored() -> Self {
        ProviderWebhookAck {
            received: true,
            duplicate: None,
            ignored: Some(true),
        }
    }
}

fn outcome_name(outcome: ProviderChargeOutcome) -> &'static str {
    match outcome {
        ProviderChargeOutcome::Captured => "CAPTURED",
        ProviderChargeOutcome::Declined => "DECLINED",
    }
}

fn body_problem(rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge(format!(
            "the body exceeds the limit of {} bytes",
            crate::BODY_LIMIT_BYTES
        ))
    } else {
        ApiError::BadRequest(rejection.body_text())
    }
}

fn signature_problem(error: SignatureError) -> ApiError {
    // The reason only: the header itself is never logged.
    tracing::warn!(reason = %error, "payment provider webhook refused");
    ApiError::InvalidSignature(error.to_string())
}

/// Receives a payment provider event.
#[utoipa::path(post, path = "/v1/payments/webhook", tag = "payments",
    request_body(content = provider::ProviderEvent, content_type = "application/json",
        description = "The provider's event. The signature covers the raw bytes exactly as sent."),
    params(
        ("Boxoffice-Provider-Signature" = String, Header,
         description = "`t=<unix seconds>,v1=<lower-case hex HMAC-SHA256(secret, \"<t>.<raw body>\")>`; several `v1` entries may appear (any match passes)"),
    ),
    responses(
        (status = 200, description = "Received (forwarded, a duplicate, or an ignored type)", body = ProviderWebhookAck),
        (status = 400, description = "Missing, malformed, stale or wrong signature, or a body that is not an event", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The event id was received before for another payment", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body larger than 64 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A charge event with invalid ids", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Kafka or the store unavailable: retry", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn receive_provider_event(
    State(state): State<SharedState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<ProviderWebhookAck>> {
    let body = body.map_err(body_problem)?;
    let accepted_at = crate::now_millis();
    let header = match headers.get(provider::SIGNATURE_HEADER).map(|v| v.to_str()) {
        None => None,
        Some(Ok(value)) => Some(value),
        Some(Err(_)) => {
            return Err(signature_problem(SignatureError::Malformed(
                "not visible ASCII",
            )));
        }
    };
    let settings = &state.provider_webhook;
    provider::verify(
        settings.secret.bytes(),
        header,
        &body,
        accepted_at.div_euclid(1000),
        settings.tolerance,
    )
    .map_err(signature_problem)?;
    let charge = match provider::interpret(&body) {
        Ok(Delivery::Charge(charge)) => charge,
        Ok(Delivery::Ignored {
            provider_event_id,
            event_type,
        }) => {
            tracing::info!(%provider_event_id, %event_type, "payment provider event ignored (type not forwarded)");
            return Ok(Json(ProviderWebhookAck::ignored()));
        }
        Err(EventError::Malformed(detail)) => {
            tracing::warn!(%detail, "payment provider webhook: signed body is not an event");
            return Err(ApiError::MalformedBody(format!(
                "the body is not a provider event: {detail}"
            )));
        }
        Err(EventError::Invalid(errors)) => {
            tracing::warn!(?errors, "payment provider webhook: invalid event");
            return Err(ApiError::fields(errors));
        }
    };
    forward(&state, &charge, accepted_at).await.map(Json)
}

/// Deduplicates, produces and records a verified charge event.
async fn forward(
    state: &SharedState,
    charge: &ChargeEvent,
    now: i64,
) -> ApiResult<ProviderWebhookAck> {
    let claim = state
        .stores
        .provider_events
        .claim_provider_event(&ProviderEventRecord {
            provider_event_id: charge.provider_event_id.clone(),
            payment_id: charge.payment_id.clone(),
            order_id: charge.order_id.clone(),
            event_type: charge.event_type.clone(),
            received_at: now,
            forwarded: false,
        })
        .await?;
    let (accepted_at, redelivered) = match claim {
        ProviderEventClaim::New => (now, false),
        ProviderEventClaim::Existing(seen)
            if seen.payment_id != charge.payment_id || seen.order_id != charge.order_id =>
        {
            tracing::warn!(
                provider_event_id = %charge.provider_event_id,
                payment_id = %charge.payment_id,
                first_payment_id = %seen.payment_id,
                "payment provider event id reused for another payment; refused"
            );
            return Err(ApiError::Conflict(
                "this event id was received before for another payment".to_owned(),
            ));
        }
        ProviderEventClaim::Existing(seen) if seen.forwarded => {
            tracing::info!(
                provider_event_id = %charge.provider_event_id,
                payment_id = %charge.payment_id,
                order_id = %charge.order_id,
                outcome = outcome_name(charge.outcome),
                "payment provider event already forwarded (duplicate delivery)"
            );
            return Ok(ProviderWebhookAck::forwarded(true));
        }
        // Claimed before but not known to be on Kafka (that attempt failed or is still
        // running): produce again with the first accept time. The record is identical, and
        // consumers drop the second copy by its record id.
        ProviderEventClaim::Existing(seen) => (seen.received_at, true),
    };
    let record = charge.record(accepted_at);
    state
        .bus
        .send_payment(&PaymentRequest::PaymentProviderEvent(record))
        .await
        .map_err(|e| {
            tracing::warn!(
                error = %e,
                provider_event_id = %charge.provider_event_id,
                order_id = %charge.order_id,
                "payment provider event not acknowledged by Kafka"
            );
            ApiError::unavailable("the event could not be forwarded; retry")
        })?;
    if let Err(e) = state
        .stores
        .provider_events
        .mark_provider_event_forwarded(&charge.provider_event_id)
        .await
    {
        // The record is on Kafka, so the answer is still a success; a redelivery will find
        // the row unmarked and produce the same record again, which is harmless.
        tracing::warn!(error = %e, provider_event_id = %charge.provider_event_id,
                       "could not mark the provider event forwarded");
    }
    tracing::info!(
        provider_event_id = %charge.provider_event_id,
        payment_id = %charge.payment_id,
        order_id = %charge.order_id,
        outcome = outcome_name(charge.outcome),
        redelivered,
        "payment provider event forwarded"
    );
    Ok(ProviderWebhookAck::forwarded(false))
}
