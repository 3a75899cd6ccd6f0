//! `GET v1/notifications`: the caller's in-app notifications, newest first (written by the
//! notifier; the live feed is `GET v1/notifications/stream`).

use axum::Json;
use axum::extract::State;

use super::views::{NotificationView, PageOf, PageQuery};
use super::{page_request, page_tokens};
use crate::auth::AuthUser;
use crate::error::ApiResult;
use crate::extract::ApiQuery;
use crate::openapi::problems::{InvalidPageToken, NotSignedIn};
use crate::state::SharedState;
use crate::stores::TimeCursor;

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
