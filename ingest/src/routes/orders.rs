//! Orders: `POST v1/orders` (accept a booking: produce `BookingRequested`, answer 202 after
//! the broker's ack; optionally wait for the decision), `GET v1/orders`, `GET v1/orders/{id}`
//! and `POST v1/orders/{id}/cancel`.
//!
//! Kafka is the only write on the accept path: the event comes from the catalogue cache, the
//! session check from its cache, and the booking processor writes the order's rows after it
//! decided it. Reads of an order of the caller's that has no row yet wait briefly for the
//! decision and answer 503 rather than 404 (`visible_order`).

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use boxoffice_avro::ids;
use boxoffice_avro::records::{BookingRequested, CancelRequested};
use boxoffice_avro::{BookingCommand, OrderEvent};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::views::{OrderView, PageOf, PageQuery};
use super::{page_request, page_tokens};
use crate::auth::{AuthUser, UncheckedUser};
use crate::client_address::ClientAddress;
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::openapi::problems::{
    InvalidPageToken, KafkaUnavailable, NoSuchEvent, NoSuchOrder, NotSignedIn, OrderNotStoredYet,
};
use crate::routes::tickets::find_event;
use crate::state::{MAX_ORDER_WAIT, SharedState};
use crate::stores::{OrderDecision, OrderRecord, TimeCursor};
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
/// `wait`, 200 with the decision if the booking processor decides in time. Kafka is the only
/// write before the answer: the booking processor decides the order and then stores it.
///
/// `Idempotency-Key` (scoped to the user and the event): the same key with the same body names
/// the same order, so a retry answers 202 with it again and it is decided once. The same key
/// with another body names another order, which the booking processor rejects with reason
/// `IDEMPOTENCY_KEY_REUSED` (visible on `GET v1/orders/{id}`); nothing is read before the
/// answer, so this is no longer a synchronous 422. An order id carries its owner: reading it
/// in the moments before it is stored answers 503 with `Retry-After`, never 404.
#[utoipa::path(post, path = "/v1/orders", tag = "orders", request_body = OrderRequest, security(("bearer" = [])),
    params(OrderWaitQuery, ("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe: the same key with the same body names the same order (per user and event); with another body it names another order, rejected as IDEMPOTENCY_KEY_REUSED")),
    responses(
        (status = 202, description = "Accepted (durably in Kafka), decision pending", body = OrderView),
        (status = 200, description = "Decided within `wait`", body = OrderView),
        NotSignedIn,
        (status = 403, description = "The account's email address is not verified yet (open the link from the registration email, then refresh the tokens)", body = Problem, content_type = "application/problem+json"),
        NoSuchEvent,
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
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
    // The accept path's only store access: the session check (a cached read). Nothing is
    // written before the record is produced; the booking processor writes the order's rows
    // after deciding it.
    caller.check(&state).await?;
    let order_id = match &key {
        Some(key) => ids::order_id_for_request(&user.user_id, key, &event.id, number_slot),
        None => ids::new_order_id(&user.user_id),
    };
    let order = OrderRecord {
        id: order_id.clone(),
        event_id: event.id.clone(),
        user_id: user.user_id.clone(),
        number_slot,
        created_at: crate::now_millis(),
        idempotency_key: key.clone(),
    };
    // Before producing, so the decision cannot slip past.
    let waiter = wait.map(|_| state.live.wait_for(&order_id));
    let command = BookingCommand::BookingRequested(BookingRequested {
        record_id: ids::record_id_for::<BookingRequested>(&[&order.id]),
        order_id: order.id.clone(),
        event_id: order.event_id.clone(),
        user_id: order.user_id.clone(),
        number_slot: order.number_slot,
        idempotency_key: order.idempotency_key.clone(),
        // The accept time: the processor's sale window and hold deadline are computed from it
        // (a retry's is ignored: the order is decided once, from the first request it reads).
        occurred_at: order.created_at,
    });
    state.bus.send_command(&command).await.map_err(|e| {
        tracing::warn!(error = %e, order_id = %order.id, "booking request not acknowledged by Kafka");
        ApiError::unavailable("the booking could not be recorded; retry (with the same Idempotency-Key)")
    })?;
    if let (Some(waiter), Some(wait)) = (waiter, wait) {
        if let Some(event) = waiter.wait(wait).await {
            return Ok(with_location(
                StatusCode::OK,
                view_from_event(&order, &event),
            ));
        }
        // A retry of an order decided before: its decision is not published again.
        if key.is_some()
            && let Some(decision) = state
                .stores
                .orders
                .decision(&order.event_id, &order.id)
                .await?
        {
            return Ok(with_location(
                StatusCode::OK,
                OrderView::new(&order, Some(&decision)),
            ));
        }
    }
    Ok(with_location(
        StatusCode::ACCEPTED,
        OrderView::new(&order, None),
    ))
}

/// How long a read of an order that has no row yet waits for its decision: the order was
/// accepted moments ago and the booking processor writes its rows once it decided it.
pub const PENDING_ORDER_WAIT: Duration = Duration::from_secs(2);

fn not_decided_yet() -> ApiError {
    ApiError::unavailable(
        "this order was accepted moments ago and has no decision yet; retry shortly",
    )
}

/// The order a decision fact is about, as far as the fact tells (an order's first fact is its
/// decision: reserved, rejected, or confirmed when free).
fn record_from_decision(event: &OrderEvent) -> Option<OrderRecord> {
    let (number_slot, at) = match event {
        OrderEvent::OrderReserved(r) => (r.number_slot, r.occurred_at),
        OrderEvent::OrderRejected(r) => (r.number_slot, r.occurred_at),
        OrderEvent::OrderConfirmed(r) => (r.number_slot, r.occurred_at),
        _ => return None,
    };
    Some(OrderRecord {
        id: event.order_id().to_owned(),
        event_id: event.event_id().to_owned(),
        user_id: event.user_id().to_owned(),
        number_slot,
        created_at: at,
        idempotency_key: None,
    })
}

/// An order of the caller's that has no row yet (`id` carries the caller as its owner): waits
/// up to [`PENDING_ORDER_WAIT`] for its decision; 503 (retry) when none came, never 404.
async fn pending_order(state: &SharedState, id: &str) -> ApiResult<OrderRecord> {
    // Bounded: at most `MAX_PENDING_READS` reads wait at once on a replica.
    let Ok(_slot) = state.pending_reads.try_acquire() else {
        return Err(not_decided_yet());
    };
    let waiter = state.live.wait_for(id);
    // Decided (and stored) between the first read and the waiter: read once more.
    if let Some(order) = state.stores.orders.get_order(id).await? {
        return Ok(order);
    }
    let decided = waiter.wait(PENDING_ORDER_WAIT).await;
    // Stored meanwhile (the decision may have come before the waiter and missed it).
    if let Some(order) = state.stores.orders.get_order(id).await? {
        return Ok(order);
    }
    decided
        .as_deref()
        .and_then(record_from_decision)
        .ok_or_else(not_decided_yet)
}

/// The order with id `id` if the caller may see it (owner or admin); 404 otherwise. An order
/// accepted moments ago has no row until the booking processor decided it: when the id carries
/// the caller as its owner (`ids::order_id_owned_by`), the read waits briefly for the decision
/// and answers 503 (retry), never 404, if it is not there yet.
pub async fn visible_order(
    state: &SharedState,
    user: &AuthUser,
    id: &str,
) -> ApiResult<OrderRecord> {
    let not_found = || ApiError::NotFound("no such order".to_owned());
    let id = validate::id(id).map_err(|_| not_found())?;
    let order = match state.stores.orders.get_order(&id).await? {
        Some(order) => order,
        None if ids::order_id_owned_by(&id, &user.user_id) => pending_order(state, &id).await?,
        None => return Err(not_found()),
    };
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
        OrderNotStoredYet,
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
        OrderNotStoredYet,
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
