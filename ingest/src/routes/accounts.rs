//! Email ownership: `POST v1/verify-email` (the link sent at registration), `POST
//! v1/password-reset` and `v1/password-reset/confirm`, and the account notices ingest hands to
//! the notifier's email channel (`NotificationRequested` with an account kind, the address in
//! `params.to`). Answers never say whether an address has an account: the owner of the address
//! learns it by email.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use boxoffice_avro::records::{NotificationKind, NotificationRequested};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::action_token::{Purpose, password_fingerprint};
use crate::auth::jwt::now_secs;
use crate::client_address::ClientAddress;
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::ApiJson;
use crate::now_millis;
use crate::openapi::problems::InvalidFields;
use crate::state::SharedState;
use crate::validate;

/// The one answer to a registration or a reset request, whatever happened.
#[derive(Debug, Serialize, ToSchema)]
pub struct CheckYourEmail {
    /// Always `check-your-email`.
    pub status: String,
    pub detail: String,
}

impl CheckYourEmail {
    pub fn new(detail: &str) -> Self {
        CheckYourEmail {
            status: "check-your-email".to_owned(),
            detail: detail.to_owned(),
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyEmailRequest {
    /// The token from the link in the verification email.
    #[schema(min_length = 1, max_length = 2048)]
    pub token: String,
}

/// The address is verified.
#[derive(Debug, Serialize, ToSchema)]
pub struct EmailVerified {
    pub user_id: String,
    pub email_verified: bool,
    pub detail: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordResetRequest {
    #[schema(example = "ann@example.com", format = "email", max_length = 254)]
    pub email: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordResetConfirm {
    /// The token from the link in the reset email.
    #[schema(min_length = 1, max_length = 2048)]
    pub token: String,
    /// The new password, 10 to 128 characters.
    #[schema(min_length = 10, max_length = 128)]
    pub password: String,
}

fn bad_link() -> ApiError {
    ApiError::BadRequest("the link is invalid, used or expired; ask for a new one".to_owned())
}

/// Hands an account notice to Kafka for the notifier's email channel (503 if the broker does
/// not acknowledge it: the caller may retry).
pub async fn send_notice(
    state: &SharedState,
    kind: NotificationKind,
    user_id: &str,
    to: &str,
    mut params: BTreeMap<String, String>,
) -> ApiResult<()> {
    params.insert("to".to_owned(), to.to_owned());
    let notice = NotificationRequested {
        record_id: uuid::Uuid::new_v4().to_string(),
        user_id: user_id.to_owned(),
        order_id: None,
        event_id: None,
        kind,
        params,
        occurred_at: now_millis(),
    };
    state.bus.send_notice(&notice).await.map_err(|e| {
        tracing::warn!(error = %e, kind = kind.wire_name(), "account notice not acknowledged by Kafka");
        ApiError::unavailable("the email could not be queued; retry")
    })
}

/// The parameters of a link email: the link (`{base}/{page}#token=...`: a fragment, so the
/// token stays out of servers' logs), the bare token and its expiry.
fn link_params(
    state: &SharedState,
    purpose: Purpose,
    page: &str,
    user_id: &str,
    email: &str,
    pwf: Option<String>,
) -> ApiResult<BTreeMap<String, String>> {
    let now = now_secs();
    let token = state
        .action_keys
        .issue(purpose, user_id, email, pwf, now)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let base = state.account_link_base.as_str().trim_end_matches('/');
    let valid_until = (now + purpose.ttl().as_secs()).saturating_mul(1000);
    Ok(BTreeMap::from([
        ("link".to_owned(), format!("{base}/{page}#token={token}")),
        ("token".to_owned(), token),
        ("valid_until".to_owned(), valid_until.to_string()),
    ]))
}

/// Sends the verification link of a new account.
pub async fn send_verification(state: &SharedState, user_id: &str, email: &str) -> ApiResult<()> {
    let params = link_params(
        state,
        Purpose::VerifyEmail,
        "verify-email",
        user_id,
        email,
        None,
    )?;
    send_notice(
        state,
        NotificationKind::EmailVerification,
        user_id,
        email,
        params,
    )
    .await
}

/// Verifies the account's email address with the token from its link. Sign in again (or
/// refresh) afterwards: the new access token lets the account book.
#[utoipa::path(post, path = "/v1/verify-email", tag = "auth", request_body = VerifyEmailRequest,
    responses(
        (status = 200, description = "The address is verified", body = EmailVerified),
        (status = 400, description = "The link is invalid or expired", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn verify_email(
    State(state): State<SharedState>,
    ApiJson(body): ApiJson<VerifyEmailRequest>,
) -> ApiResult<Json<EmailVerified>> {
    let claims = state
        .action_keys
        .verify(Purpose::VerifyEmail, body.token.trim(), now_secs())
        .map_err(|e| {
            tracing::debug!(reason = %e, "verification link refused");
            bad_link()
        })?;
    let accounts = &state.stores.accounts;
    let user = accounts.get_user(&claims.sub).await?.ok_or_else(bad_link)?;
    // A link sent to an earlier address of the account proves nothing about the current one.
    if user.email != claims.email {
        return Err(bad_link());
    }
    if !user.email_verified {
        accounts.set_email_verified(&user.id, now_millis()).await?;
        tracing::info!(user_id = %user.id, "email address verified");
    }
    Ok(Json(EmailVerified {
        user_id: user.id,
        email_verified: true,
        detail: "sign in again (or refresh your tokens) to book".to_owned(),
    }))
}

/// Asks for a password reset link. The answer is the same whether or not the address has an
/// account; if it has, its owner gets the link by email (valid for an hour, usable once).
#[utoipa::path(post, path = "/v1/password-reset", tag = "auth", request_body = PasswordResetRequest,
    responses(
        (status = 202, description = "If the address has an account, a link is on its way", body = CheckYourEmail),
        InvalidFields,
        (status = 429, description = "Too many account emails asked for from this address (Retry-After)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The email could not be queued: retry", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn request_password_reset(
    State(state): State<SharedState>,
    ClientAddress(address): ClientAddress,
    ApiJson(body): ApiJson<PasswordResetRequest>,
) -> ApiResult<(StatusCode, Json<CheckYourEmail>)> {
    let email = validate::email(&body.email).map_err(|m| ApiError::field("email", m))?;
    // Shares the registration bucket: both send email to an address the caller names.
    state
        .register_limiter
        .check(&address)
        .map_err(|retry_after| ApiError::TooManyRequests {
            detail: "too many account emails from this address; wait before trying again"
                .to_owned(),
            retry_after,
        })?;
    if let Some(credentials) = state.stores.accounts.find_credentials(&email).await? {
        let user_id = &credentials.user_id;
        let params = link_params(
            &state,
            Purpose::ResetPassword,
            "reset-password",
            user_id,
            &email,
            Some(password_fingerprint(&credentials.password_hash)),
        )?;
        send_notice(
            &state,
            NotificationKind::PasswordReset,
            user_id,
            &email,
            params,
        )
        .await?;
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(CheckYourEmail::new(
            "if this address has an account, a reset link is on its way to it",
        )),
    ))
}

/// Sets a new password with the token from a reset link. The link works once; the address
/// counts as verified (the link reached it). Refresh tokens issued before the reset stop
/// working (the sessions end within one access-token lifetime).
#[utoipa::path(post, path = "/v1/password-reset/confirm", tag = "auth", request_body = PasswordResetConfirm,
    responses(
        (status = 204, description = "The password is changed"),
        (status = 400, description = "The link is invalid, used or expired", body = Problem, content_type = "application/problem+json"),
        InvalidFields,
        (status = 429, description = "Too many password hashes in progress (Retry-After)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn confirm_password_reset(
    State(state): State<SharedState>,
    ApiJson(body): ApiJson<PasswordResetConfirm>,
) -> ApiResult<StatusCode> {
    let claims = state
        .action_keys
        .verify(Purpose::ResetPassword, body.token.trim(), now_secs())
        .map_err(|e| {
            tracing::debug!(reason = %e, "reset link refused");
            bad_link()
        })?;
    let accounts = &state.stores.accounts;
    let credentials = accounts
        .credentials_of(&claims.sub)
        .await?
        .ok_or_else(bad_link)?;
    if claims.pwf.as_deref() != Some(password_fingerprint(&credentials.password_hash).as_str()) {
        return Err(bad_link());
    }
    let password =
        validate::password(&body.password).map_err(|m| ApiError::field("password", m))?;
    let hash = state
        .password_work
        .hash(password)
        .await
        .map_err(crate::routes::auth::busy)?
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let now = now_millis();
    accounts.set_password_hash(&claims.sub, &hash, now).await?;
    if !credentials.email_verified {
        accounts.set_email_verified(&claims.sub, now).await?;
    }
    tracing::info!(user_id = %claims.sub, "password reset");
    Ok(StatusCode::NO_CONTENT)
}
