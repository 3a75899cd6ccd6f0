//! `GET v1/users` (admin, cursor pages), `GET v1/users/{id}` and `PUT v1/users/{id}` (the user
//! themself or an admin; anyone else gets 404).

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use utoipa::ToSchema;

use super::views::{PageOf, PageQuery, UserView};
use super::{page_request, page_tokens};
use crate::auth::{AdminUser, AuthUser};
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::openapi::problems::{
    InvalidFields, InvalidPageToken, NoSuchUser, NotAdmin, NotSignedIn,
};
use crate::state::SharedState;
use crate::stores::{TimeCursor, UpdateUserError, UserUpdate};
use crate::validate::{self, Checks};

const LIST: &str = "users";

/// Lists users, newest first (admin).
#[utoipa::path(get, path = "/v1/users", tag = "users", params(PageQuery), security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of users", body = PageOf<UserView>),
        InvalidPageToken,
        NotSignedIn,
        NotAdmin,
    ))]
pub async fn list_users(
    State(state): State<SharedState>,
    _admin: AdminUser,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> ApiResult<Json<PageOf<UserView>>> {
    let request = page_request(&state, LIST, &query)?;
    let page = state.stores.accounts.list_users(&request).await?;
    let (next_token, previous_token) = page_tokens(&state, LIST, &request, &page, |u| TimeCursor {
        at: u.created_at,
        id: u.id.clone(),
    });
    Ok(Json(PageOf {
        items: page.items.iter().map(UserView::from).collect(),
        next_token,
        previous_token,
    }))
}

/// A user's profile (the user themself or an admin).
#[utoipa::path(get, path = "/v1/users/{id}", tag = "users", security(("bearer" = [])),
    params(("id" = String, Path, description = "User id")),
    responses(
        (status = 200, description = "The user", body = UserView),
        NotSignedIn,
        NoSuchUser,
    ))]
pub async fn get_user(
    State(state): State<SharedState>,
    caller: AuthUser,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<UserView>> {
    let user = load_visible(&state, &caller, &id).await?;
    Ok(Json(UserView::from(&user)))
}

async fn load_visible(
    state: &SharedState,
    caller: &AuthUser,
    id: &str,
) -> ApiResult<crate::stores::UserRecord> {
    let not_found = || ApiError::NotFound("no such user".to_owned());
    let id = validate::id(id).map_err(|_| not_found())?;
    if !caller.may_access(&id) {
        return Err(not_found());
    }
    state
        .stores
        .accounts
        .get_user(&id)
        .await?
        .ok_or_else(not_found)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUserRequest {
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9_.-]{2,31}$")]
    pub user_name: String,
    #[schema(min_length = 1, max_length = 64)]
    pub first_name: String,
    #[schema(min_length = 1, max_length = 64)]
    pub last_name: String,
    /// `YYYY-MM-DD`, or null to clear it.
    #[serde(default)]
    #[schema(format = Date)]
    pub birth_day: Option<String>,
    #[schema(pattern = "^\\+?[0-9]{7,15}$")]
    pub mobile_phone: String,
}

/// Changes a user's profile (the user themself or an admin).
#[utoipa::path(put, path = "/v1/users/{id}", tag = "users", security(("bearer" = [])),
    params(("id" = String, Path, description = "User id")), request_body = UpdateUserRequest,
    responses(
        (status = 200, description = "The updated user", body = UserView),
        NotSignedIn,
        NoSuchUser,
        (status = 409, description = "User name taken", body = Problem, content_type = "application/problem+json"),
        InvalidFields,
    ))]
pub async fn update_user(
    State(state): State<SharedState>,
    caller: AuthUser,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<UpdateUserRequest>,
) -> ApiResult<Json<UserView>> {
    let mut checks = Checks::new();
    let user_name = checks.check("user_name", validate::user_name(&body.user_name));
    let first_name = checks.check("first_name", validate::person_name(&body.first_name));
    let last_name = checks.check("last_name", validate::person_name(&body.last_name));
    let mobile_phone = checks.check("mobile_phone", validate::phone(&body.mobile_phone));
    let birth_day = match body.birth_day.as_deref() {
        None => Some(None),
        Some(text) => checks
            .check("birth_day", validate::birth_day(text))
            .map(Some),
    };
    checks.finish()?;
    let (Some(user_name), Some(first_name), Some(last_name), Some(mobile_phone), Some(birth_day)) =
        (user_name, first_name, last_name, mobile_phone, birth_day)
    else {
        return Err(ApiError::Internal(
            "validation passed without values".to_owned(),
        ));
    };
    let current = load_visible(&state, &caller, &id).await?;
    let update = UserUpdate {
        user_name,
        first_name,
        last_name,
        birth_day,
        mobile_phone,
        updated_at: crate::now_millis(),
    };
    match state.stores.accounts.update_user(&current, &update).await {
        Ok(()) => {}
        Err(UpdateUserError::UserNameTaken) => {
            return Err(ApiError::Conflict(
                "this user name is already taken".to_owned(),
            ));
        }
        Err(UpdateUserError::Store(e)) => return Err(e.into()),
    }
    let updated = crate::stores::UserRecord {
        user_name: update.user_name,
        first_name: update.first_name,
        last_name: update.last_name,
        birth_day: update.birth_day,
        mobile_phone: update.mobile_phone,
        updated_at: update.updated_at,
        ..current
    };
    Ok(Json(UserView::from(&updated)))
}

/// Marks a user's email address verified (admin): for support, and for test and load
/// harnesses that cannot read the email. It is an admin's act on one account, never a switch.
#[utoipa::path(post, path = "/v1/users/{id}/verify-email", tag = "users", security(("bearer" = [])),
    params(("id" = String, Path, description = "User id")),
    responses(
        (status = 200, description = "The user, with the address verified", body = UserView),
        NotSignedIn,
        NotAdmin,
        NoSuchUser,
    ))]
pub async fn vouch_for_email(
    State(state): State<SharedState>,
    admin: AdminUser,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<UserView>> {
    let id = validate::id(&id).map_err(|_| ApiError::NotFound("no such user".to_owned()))?;
    let accounts = &state.stores.accounts;
    let mut user = accounts
        .get_user(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound("no such user".to_owned()))?;
    if !user.email_verified {
        accounts
            .set_email_verified(&user.id, crate::now_millis())
            .await?;
        tracing::info!(user_id = %user.id, admin = %admin.0.user_id, "email address verified by an admin");
        user.email_verified = true;
    }
    Ok(Json(UserView::from(&user)))
}
