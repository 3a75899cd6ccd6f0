//! Orders: `POST v1/orders` (accept a booking: write the order rows, produce
//! `BookingRequested`, answer 202 after the broker's ack; optionally wait for the decision),
//! `GET v1/orders`, `GET v1/orders/{id}` and `POST v1/orders/{id}/cancel`.
//!
//! The accept path awaits one round trip per store: the order row and the listing row are
//! written concurrently, then the record is produced on the shared producer. The event lookup
//! comes from the catalogue cache.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use boxoffice_avro::ids;
use boxoffice_avro::records::{BookingRequested, CancelRequested};
use boxoffice_avro::{BookingCommand, OrderEvent};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use utoipa::{IntoParams, ToSchema};

use super::views::{OrderView, PageOf, PageQuery};
use super::{page_request, page_tokens};
use crate::auth::{AuthUser, UncheckedUser};
use crate::client_address::ClientAddress;
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::openapi::problems::{
    InvalidPageToken, KafkaUnavailable, NoSuchEvent, NoSuchOrder, NotSignedIn,
};
use crate::routes::tickets::find_event;
use crate::state::{MAX_ORDER_WAIT, SharedState};
use crate::stores::{CreateOrder, OrderDecision, OrderRecord, TimeCursor};
use crate::validate;

/// Most slots one request may ask for (the event's own limits are the processor's to apply).
pub const MAX_SLOTS_PER_ORDER: i64 = 100;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderRequest {
    #[schema(format = Uuid)]
    pub event_id: String,
    /// Slots wanted, 1 to 100.
    #[schema(minimum = 1, maximum = 100)]
    pub number_slot: i64,
}

#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OrderWaitQuery {
    /// Seconds (0 to 10) to wait for the booking processor's decision before answering.
    #[param(minimum = 0, maximum = 10)]
    pub wait: Option<u64>,
}

/// The fingerprint of a booking request, stored with the order so that a reused
/// `Idempotency-Key` with another body is refused.
pub fn fingerprint(event_id: &str, number_slot: i32) -> String {
    hex::encode(Sha256::digest(
        format!("{event_id}\n{number_slot}").as_bytes(),
    ))
}

/// An Avro enum symbol as it is written on the wire (`SOLD_OUT`, `USER_REQUESTED`).
fn wire_name(value: &impl serde::Serialize) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The decision an order fact carries, in the shape of the stored one.
fn decision_of(event: &OrderEvent) -> Option<OrderDecision> {
    match event {
        OrderEvent::OrderReserved(r) => Some(OrderDecision {
            status: "RESERVED".to_owned(),
            slots: r.number_slot,
            amount_minor: r.amount_minor,
            currency: r.currency.clone(),
            payment_id: r.payment_id.clone(),
            hold_expires_at: Some(r.hold_expires_at),
            reason: None,
            late: false,
        }),
        OrderEvent::OrderRejected(r) => Some(OrderDecision::closed(
            "REJECTED",
            r.number_slot,
            Some(wire_name(&r.reason)),
        )),
        OrderEvent::OrderConfirmed(r) => Some(OrderDecision {
            status: "CONFIRMED".to_owned(),
            slots: r.number_slot,
            amount_minor: r.amount_minor,
            currency: r.currency.clone(),
            payment_id: r.payment_id.clone(),
            hold_expires_at: None,
            reason: None,
            late: r.late_payment,
        }),
        OrderEvent::OrderCancelled(r) => Some(OrderDecision::closed(
            "CANCELLED",
            r.number_slot,
            Some(wire_name(&r.reason)),
        )),
        OrderEvent::OrderExpired(r) => Some(OrderDecision::closed("EXPIRED", r.number_slot, None)),
        OrderEvent::TicketsIssued(_) => None,
    }
}

pub fn view_from_event(order: &OrderRecord, event: &OrderEvent) -> OrderView {
    OrderView::new(order, decision_of(event).as_ref())
}

fn with_location(status: StatusCode, view: OrderView) -> Response {
    let location = HeaderValue::from_str(&view.links.self_).ok();
    let mut response = (status, Json(view)).into_response();
    if let Some(location) = location {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// Books slots. Answers 202 once the request is durably in Kafka (status PENDING), or, with
/// `wait`, 200 with the decision if the booking processor decides in time. The same
/// `Idempotency-Key` (per user) returns the same order; with another body it is refused (422).
#[utoipa::path(post, path = "/v1/orders", tag = "orders", request_body = OrderRequest, security(("bearer" = [])),
    params(OrderWaitQuery, ("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe: the same key returns the same order")),
    responses(
        (status = 202, description = "Accepted (durably in Kafka), decision pending", body = OrderView),
        (status = 200, description = "Decided within `wait`", body = OrderView),
        NotSignedIn,
        (status = 403, description = "The account's email address is not verified yet (open the link from the registration email, then refresh the tokens)", body = Problem, content_type = "application/problem+json"),
        NoSuchEvent,
        (status = 422, description = "Invalid fields, or key reused with another body", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many orders from this account or address (Retry-After)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Kafka unavailable: retry (with the same key)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_order(
    State(state): State<SharedState>,
    caller: UncheckedUser,
    ClientAddress(address): ClientAddress,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<OrderWaitQuery>,
    ApiJson(body): ApiJson<OrderRequest>,
) -> ApiResult<Response> {
    // Read from the token: the accept path gains no store read. A token issued before the
    // verification says no until the client refreshes it.
    if !caller.0.email_verified {
        return Err(ApiError::Forbidden(
            "verify your email address before booking: open the link from the registration \
             email (POST v1/verify-email), then sign in again or refresh your tokens"
                .to_owned(),
        ));
    }
    let mut checks = validate::Checks::new();
    let event_id = checks.check("event_id", validate::id(&body.event_id));
    let slots = checks.check(
        "number_slot",
        validate::range(body.number_slot, 1, MAX_SLOTS_PER_ORDER),
    );
    let wait = match query.wait {
        None | Some(0) => None,
        Some(w) => checks
            .check("wait", validate::range(w, 0, MAX_ORDER_WAIT.as_secs()))
            .map(Duration::from_secs),
    };
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(value) => checks.check(
            "Idempotency-Key",
            value
                .to_str()
                .map_err(|_| "must be visible ASCII".to_owned())
                .and_then(validate::idempotency_key),
        ),
    };
    checks.finish()?;
    let (Some(event_id), Some(slots)) = (event_id, slots) else {
        return Err(ApiError::Internal(
            "validation passed without values".to_owned(),
        ));
    };
    let number_slot =
        i32::try_from(slots).map_err(|_| ApiError::field("number_slot", "out of range"))?;
    let user = &caller.0;
    // In memory, per replica: no shared state on the accept path. The hard cap per fan stays
    // the event's `max_per_user`, decided by the booking processor.
    let limited = |who: &'static str| {
        move |retry_after| ApiError::TooManyRequests {
            detail: format!("too many orders from this {who}; wait before trying again"),
            retry_after,
        }
    };
    state
        .order_user_limiter
        .check(&user.user_id)
        .map_err(limited("account"))?;
    state
        .order_ip_limiter
        .check(&address)
        .map_err(limited("address"))?;
    let event = find_event(&state, &event_id).await?;

    let order_id = match &key {
        Some(key) => ids::order_id_for_idempotency_key(&user.user_id, key),
        None => uuid::Uuid::new_v4().to_string(),
    };
    let mut order = OrderRecord {
        id: order_id.clone(),
        event_id: event.id.clone(),
        user_id: user.user_id.clone(),
        number_slot,
        created_at: crate::now_millis(),
        fingerprint: fingerprint(&event.id, number_slot),
        idempotency_key: key.clone(),
    };
    // Before producing, so the decision cannot slip past.
    let waiter = wait.map(|_| state.live.wait_for(&order_id));
    let mut retried = false;
    // The session check (a read, cached) and the order writes go to the store together: one
    // round trip on the accept path.
    let (session, created) = tokio::join!(
        caller.check(&state),
        state.stores.orders.create_order(&order, key.is_some())
    );
    let created = created?;
    if let Err(refused) = session {
        if created == CreateOrder::Created
            && let Err(e) = state.stores.orders.remove_order(&order).await
        {
            tracing::warn!(error = %e, order_id = %order.id, "order of a logged-out session not removed");
        }
        return Err(refused);
    }
    if let CreateOrder::Existing(existing) = created {
        if existing.fingerprint != order.fingerprint || existing.user_id != order.user_id {
            return Err(ApiError::IdempotencyMismatch(
                "this Idempotency-Key was already used for a different order request".to_owned(),
            ));
        }
        order = existing;
        retried = true;
    }
    let command = BookingCommand::BookingRequested(BookingRequested {
        record_id: ids::record_id_for::<BookingRequested>(&[&order.id]),
        order_id: order.id.clone(),
        event_id: order.event_id.clone(),
        user_id: order.user_id.clone(),
        number_slot: order.number_slot,
        idempotency_key: order.idempotency_key.clone(),
        // The accept time (the first accept's, on a retry): the processor's sale window and
        // hold deadline are computed from it.
        occurred_at: order.created_at,
    });
    state.bus.send_command(&command).await.map_err(|e| {
        tracing::warn!(error = %e, order_id = %order.id, "booking request not acknowledged by Kafka");
        ApiError::unavailable("the booking could not be recorded; retry (with the same Idempotency-Key)")
    })?;
    if retried {
        let decision = state
            .stores
            .orders
            .decision(&order.event_id, &order.id)
            .await?;
        if decision.is_some() {
            return Ok(with_location(
                StatusCode::OK,
                OrderView::new(&order, decision.as_ref()),
            ));
        }
    }
    if let (Some(waiter), Some(wait)) = (waiter, wait)
        && let Some(event) = waiter.wait(wait).await
    {
        return Ok(with_location(
            StatusCode::OK,
            view_from_event(&order, &event),
        ));
    }
    Ok(with_location(
        StatusCode::ACCEPTED,
        OrderView::new(&order, None),
    ))
}

/// The order with id `id` if the caller may see it (owner or admin); 404 otherwise.
pub async fn visible_order(
    state: &SharedState,
    user: &AuthUser,
    id: &str,
) -> ApiResult<OrderRecord> {
    let not_found = || ApiError::NotFound("no such order".to_owned());
    let id = validate::id(id).map_err(|_| not_found())?;
    let order = state
        .stores
        .orders
        .get_order(&id)
        .await?
        .ok_or_else(not_found)?;
    if !user.may_access(&order.user_id) {
        return Err(not_found());
    }
    Ok(order)
}

/// One order with its current status (owner or admin).
#[utoipa::path(get, path = "/v1/orders/{id}", tag = "orders", security(("bearer" = [])),
    params(("id" = String, Path, description = "Order id")),
    responses(
        (status = 200, description = "The order", body = OrderView),
        NotSignedIn,
        NoSuchOrder,
    ))]
pub async fn get_order(
    State(state): State<SharedState>,
    user: AuthUser,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<OrderView>> {
    let order = visible_order(&state, &user, &id).await?;
    let decision = state
        .stores
        .orders
        .decision(&order.event_id, &order.id)
        .await?;
    Ok(Json(OrderView::new(&order, decision.as_ref())))
}

const LIST: &str = "orders";

/// The caller's orders, newest first.
#[utoipa::path(get, path = "/v1/orders", tag = "orders", params(PageQuery), security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of orders", body = PageOf<OrderView>),
        InvalidPageToken,
        NotSignedIn,
    ))]
pub async fn list_orders(
    State(state): State<SharedState>,
    user: AuthUser,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> ApiResult<Json<PageOf<OrderView>>> {
    let list = format!("{LIST}:{}", user.user_id);
    let request = page_request(&state, &list, &query)?;
    let page = state
        .stores
        .orders
        .list_orders(&user.user_id, &request)
        .await?;
    let decisions = futures::future::try_join_all(
        page.items
            .iter()
            .map(|o| state.stores.orders.decision(&o.event_id, &o.id)),
    )
    .await?;
    let (next_token, previous_token) =
        page_tokens(&state, &list, &request, &page, |o| TimeCursor {
            at: o.created_at,
            id: o.id.clone(),
        });
    let items = page
        .items
        .iter()
        .zip(&decisions)
        .map(|(order, decision)| OrderView::new(order, decision.as_ref()))
        .collect();
    Ok(Json(PageOf {
        items,
        next_token,
        previous_token,
    }))
}

/// Asks to cancel an order (owner only). Answers 202 once the request is in Kafka; the
/// booking processor releases the slots (and refunds a paid order).
#[utoipa::path(post, path = "/v1/orders/{id}/cancel", tag = "orders", security(("bearer" = [])),
    params(("id" = String, Path, description = "Order id")),
    responses(
        (status = 202, description = "Cancel requested", body = OrderView),
        NotSignedIn,
        NoSuchOrder,
        (status = 409, description = "The order already ended", body = Problem, content_type = "application/problem+json"),
        KafkaUnavailable,
    ))]
pub async fn cancel_order(
    State(state): State<SharedState>,
    user: AuthUser,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Response> {
    let order = visible_order(&state, &user, &id).await?;
    // Only the owner cancels (the processor checks too); an admin sees the order but 404 here
    // would hide it, so refuse plainly.
    if order.user_id != user.user_id {
        return Err(ApiError::Forbidden(
            "only the order's owner can cancel it".to_owned(),
        ));
    }
    let decision = state
        .stores
        .orders
        .decision(&order.event_id, &order.id)
        .await?;
    if let Some(d) = &decision
        && matches!(d.status.as_str(), "REJECTED" | "EXPIRED" | "CANCELLED")
    {
        return Err(ApiError::Conflict(format!(
            "the order is {} and cannot be cancelled",
            d.status
        )));
    }
    let command = BookingCommand::CancelRequested(CancelRequested {
        record_id: ids::record_id_for::<CancelRequested>(&[&order.id]),
        order_id: order.id.clone(),
        event_id: order.event_id.clone(),
        user_id: order.user_id.clone(),
        occurred_at: crate::now_millis(),
    });
    state.bus.send_command(&command).await.map_err(|e| {
        tracing::warn!(error = %e, order_id = %order.id, "cancel request not acknowledged by Kafka");
        ApiError::unavailable("the cancellation could not be recorded; retry")
    })?;
    Ok(with_location(
        StatusCode::ACCEPTED,
        OrderView::new(&order, decision.as_ref()),
    ))
}
