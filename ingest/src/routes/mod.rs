//! The HTTP surface: every route, the shared pagination helpers, and the problem+json answers
//! for unknown paths and methods.

pub mod accounts;
pub mod auth;
pub mod health;
pub mod live;
pub mod notifications;
pub mod orders;
pub mod payments;
pub mod provider_webhook;
pub mod tickets;
pub mod users;
pub mod views;
pub mod webhooks;

use axum::Router;
use axum::routing::{get, post};

use crate::error::{ApiError, ApiResult};
use crate::state::SharedState;
use crate::stores::{Direction, Page, PageRequest, TimeCursor};
use crate::validate;
use views::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, PageQuery};

/// Every API route (without middleware; `crate::router` adds it).
pub fn api() -> Router<SharedState> {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/v1/register", post(auth::register))
        .route("/v1/login", post(auth::login))
        .route("/v1/verify-email", post(accounts::verify_email))
        .route("/v1/password-reset", post(accounts::request_password_reset))
        .route(
            "/v1/password-reset/confirm",
            post(accounts::confirm_password_reset),
        )
        .route("/v1/refresh", post(auth::refresh_tokens))
        .route("/v1/logout", post(auth::logout))
        .route("/v1/users", get(users::list_users))
        .route(
            "/v1/users/{id}",
            get(users::get_user).put(users::update_user),
        )
        .route("/v1/users/{id}/verify-email", post(users::vouch_for_email))
        .route(
            "/v1/tickets",
            get(tickets::search).post(tickets::create_event),
        )
        .route(
            "/v1/tickets/{id}",
            get(tickets::get_event).put(tickets::update_event),
        )
        .route(
            "/v1/tickets/{id}/availability/stream",
            get(live::availability_stream),
        )
        .route(
            "/v1/categories",
            get(tickets::list_categories).post(tickets::create_category),
        )
        .route(
            "/v1/categories/{id}",
            axum::routing::put(tickets::update_category),
        )
        .route(
            "/v1/orders",
            get(orders::list_orders).post(orders::create_order),
        )
        .route("/v1/orders/{id}", get(orders::get_order))
        .route("/v1/orders/{id}/cancel", post(orders::cancel_order))
        .route("/v1/orders/{id}/stream", get(live::order_stream))
        .route(
            "/v1/payments",
            get(payments::list_payments).post(payments::create_payment),
        )
        // A static segment: matched before `{id}` (GET here answers 405, not a payment lookup).
        .route(
            "/v1/payments/webhook",
            post(provider_webhook::receive_provider_event),
        )
        .route("/v1/payments/{id}", get(payments::get_payment))
        .route("/v1/notifications", get(notifications::list_notifications))
        .route("/v1/notifications/stream", get(live::notification_stream))
        .route("/v1/notifications/read", post(notifications::mark_all_read))
        .route(
            "/v1/notifications/{id}/read",
            post(notifications::mark_read),
        )
        .route(
            "/v1/webhooks",
            get(webhooks::list_webhooks).post(webhooks::create_webhook),
        )
        .route(
            "/v1/webhooks/{id}",
            get(webhooks::get_webhook).delete(webhooks::delete_webhook),
        )
        .route("/v1/webhooks/{id}/enable", post(webhooks::enable_webhook))
        .route(
            "/v1/webhooks/{id}/rotate-secret",
            post(webhooks::rotate_webhook_secret),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such resource".to_owned())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed("this method is not allowed on this resource".to_owned())
}

/// The page a client asked for on list `list`.
pub fn page_request(state: &SharedState, list: &str, query: &PageQuery) -> ApiResult<PageRequest> {
    let limit = validate::range(
        query.limit.unwrap_or(DEFAULT_PAGE_SIZE as i64),
        1,
        MAX_PAGE_SIZE as i64,
    )
    .map_err(|m| ApiError::field("limit", m))?;
    let (cursor, direction) = match state.pager.position::<TimeCursor>(list, &query.tokens())? {
        None => (None, Direction::Next),
        Some((direction, cursor)) => (Some(cursor), direction),
    };
    Ok(PageRequest {
        cursor,
        direction,
        limit: usize::try_from(limit).unwrap_or(DEFAULT_PAGE_SIZE),
    })
}

/// The `next_token` and `previous_token` around `page`.
pub fn page_tokens<T>(
    state: &SharedState,
    list: &str,
    request: &PageRequest,
    page: &Page<T>,
    cursor_of: impl Fn(&T) -> TimeCursor,
) -> (Option<String>, Option<String>) {
    let came = request.cursor.is_some();
    let (has_next, has_previous) = match request.direction {
        _ if !came => (page.more, false),
        Direction::Next => (page.more, true),
        Direction::Previous => (true, page.more),
    };
    let first = page
        .items
        .first()
        .map(&cursor_of)
        .or_else(|| request.cursor.clone());
    let last = page
        .items
        .last()
        .map(&cursor_of)
        .or_else(|| request.cursor.clone());
    let next = has_next
        .then_some(last)
        .flatten()
        .map(|c| state.pager.sign(list, Direction::Next, &c));
    let previous = has_previous
        .then_some(first)
        .flatten()
        .map(|c| state.pager.sign(list, Direction::Previous, &c));
    (next, previous)
}
