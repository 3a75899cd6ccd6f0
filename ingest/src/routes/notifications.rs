//! `GET v1/notifications`: the caller's in-app notifications, newest first (written by the
//! notifier; the live feed is `GET v1/notifications/stream`); `POST v1/notifications/{id}/read`
//! and `POST v1/notifications/read` mark one or all of them read.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use super::views::{NotificationView, PageOf, PageQuery};
use super::{page_request, page_tokens};
use crate::auth::AuthUser;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiPath, ApiQuery};
use crate::openapi::problems::{InvalidPageToken, NoSuchNotification, NotSignedIn};
use crate::state::SharedState;
use crate::stores::TimeCursor;

/// Longest notification id accepted (they are record ids).
const MAX_ID_LEN: usize = 128;

/// The caller's notifications.
#[utoipa::path(get, path = "/v1/notifications", tag = "notifications", params(PageQuery), security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of notifications", body = PageOf<NotificationView>),
        InvalidPageToken,
        NotSignedIn,
    ))]
pub async fn list_notifications(
    State(state): State<SharedState>,
    user: AuthUser,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> ApiResult<Json<PageOf<NotificationView>>> {
    let list = format!("notifications:{}", user.user_id);
    let request = page_request(&state, &list, &query)?;
    let page = state
        .stores
        .notifications
        .list_notifications(&user.user_id, &request)
        .await?;
    let (next_token, previous_token) =
        page_tokens(&state, &list, &request, &page, |n| TimeCursor {
            at: n.created_at,
            id: n.id.clone(),
        });
    Ok(Json(PageOf {
        items: page.items.iter().map(NotificationView::from).collect(),
        next_token,
        previous_token,
    }))
}

/// Marks one of the caller's notifications read (again: no change).
#[utoipa::path(post, path = "/v1/notifications/{id}/read", tag = "notifications", security(("bearer" = [])),
    params(("id" = String, Path, description = "Notification id")),
    responses(
        (status = 204, description = "Read"),
        NotSignedIn,
        NoSuchNotification,
    ))]
pub async fn mark_read(
    State(state): State<SharedState>,
    user: AuthUser,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    let well_formed =
        !id.is_empty() && id.len() <= MAX_ID_LEN && id.bytes().all(|b| b.is_ascii_graphic());
    let no_such = || ApiError::NotFound("no such notification".to_owned());
    if !well_formed {
        return Err(no_such());
    }
    let notifications = &state.stores.notifications;
    if notifications.mark_read(&user.user_id, &id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(no_such())
    }
}

/// How many notifications were marked read.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MarkedRead {
    pub marked: usize,
}

/// Marks all of the caller's notifications read (the newest 10,000 are looked at).
#[utoipa::path(post, path = "/v1/notifications/read", tag = "notifications", security(("bearer" = [])),
    responses(
        (status = 200, description = "Marked", body = MarkedRead),
        NotSignedIn,
    ))]
pub async fn mark_all_read(
    State(state): State<SharedState>,
    user: AuthUser,
) -> ApiResult<Json<MarkedRead>> {
    let marked = state
        .stores
        .notifications
        .mark_all_read(&user.user_id)
        .await?;
    Ok(Json(MarkedRead { marked }))
}
