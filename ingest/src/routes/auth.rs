//! `POST v1/register`, `v1/login`, `v1/refresh`, `v1/logout`: accounts, Argon2id passwords,
//! rate-limited logins, access tokens and rotating refresh tokens (reuse revokes the session).
//! Email verification and password reset are in `accounts`.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use boxoffice_avro::records::NotificationKind;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::{AuthUser, password, refresh};
use crate::client_address::ClientAddress;
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::ApiJson;
use crate::now_millis;
use crate::openapi::problems::{InvalidFields, NotSignedIn};
use crate::routes::accounts::{self, CheckYourEmail};
use crate::state::SharedState;
use crate::stores::{CreateAccountError, NewAccount, RefreshRecord, Role};
use crate::validate::{self, Checks};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    #[schema(example = "ann@example.com", format = "email", max_length = 254)]
    pub email: String,
    #[schema(example = "ann_1", pattern = "^[A-Za-z0-9][A-Za-z0-9_.-]{2,31}$")]
    pub user_name: String,
    #[schema(min_length = 1, max_length = 64)]
    pub first_name: String,
    #[schema(min_length = 1, max_length = 64)]
    pub last_name: String,
    /// 10 to 128 characters.
    #[schema(min_length = 10, max_length = 128)]
    pub password: String,
    #[schema(example = "+49 30 1234567", pattern = "^\\+?[0-9]{7,15}$")]
    pub mobile_phone: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// User name or email address (`user_name`, `username` and `email` are accepted too).
    #[serde(alias = "user_name", alias = "username", alias = "email")]
    #[schema(min_length = 1, max_length = 254)]
    pub login: String,
    #[schema(min_length = 1, max_length = 128)]
    pub password: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    #[schema(pattern = "^[A-Za-z0-9_-]{43}$")]
    pub refresh_token: String,
}

/// Tokens for a session.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenPair {
    /// JWT (HS256) for `Authorization: Bearer`.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// Opaque; exchange it at `POST v1/refresh` (once: it rotates).
    pub refresh_token: String,
    pub refresh_expires_in: u64,
    pub user_id: String,
    pub role: Role,
}

/// Starts an account (role `user`). The answer is the same 202 whatever happens next, so it
/// never tells whether an email address or user name has an account: the address gets a
/// verification link (a new account, which may book once it is verified), or a notice that it
/// has an account already, or that the user name is taken.
#[utoipa::path(post, path = "/v1/register", tag = "auth", request_body = RegisterRequest,
    responses(
        (status = 202, description = "Check your email (the same answer for every valid request)", body = CheckYourEmail),
        InvalidFields,
        (status = 429, description = "Too many registrations from this address, or too many password hashes in progress (Retry-After)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The email could not be queued: retry", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn register(
    State(state): State<SharedState>,
    ClientAddress(address): ClientAddress,
    ApiJson(body): ApiJson<RegisterRequest>,
) -> ApiResult<(StatusCode, Json<CheckYourEmail>)> {
    state
        .register_limiter
        .check(&address)
        .map_err(|retry_after| ApiError::TooManyRequests {
            detail: "too many registrations from this address; wait before trying again".to_owned(),
            retry_after,
        })?;
    let mut checks = Checks::new();
    let email = checks.check("email", validate::email(&body.email));
    let user_name = checks.check("user_name", validate::user_name(&body.user_name));
    let first_name = checks.check("first_name", validate::person_name(&body.first_name));
    let last_name = checks.check("last_name", validate::person_name(&body.last_name));
    let mobile_phone = checks.check("mobile_phone", validate::phone(&body.mobile_phone));
    let password = checks.check("password", validate::password(&body.password));
    if let (Some(pw), Some(name), Some(mail)) = (&password, &user_name, &email) {
        let lower = pw.to_lowercase();
        if lower == *name || lower == *mail {
            checks.fail("password", "must not be the user name or the email address");
        }
    }
    checks.finish()?;
    let (
        Some(email),
        Some(user_name),
        Some(first_name),
        Some(last_name),
        Some(mobile_phone),
        Some(password),
    ) = (
        email,
        user_name,
        first_name,
        last_name,
        mobile_phone,
        password,
    )
    else {
        return Err(ApiError::Internal(
            "validation passed without values".to_owned(),
        ));
    };
    let profile = Profile {
        email: email.clone(),
        user_name: user_name.clone(),
        first_name,
        last_name,
        mobile_phone,
    };
    // The hash runs whatever the outcome, so the answer takes as long either way.
    match create_account(&state, profile, password, Role::User, None).await? {
        Ok(user) => accounts::send_verification(&state, &user.id, &user.email).await?,
        Err(Taken::Email) => {
            let owner = state.stores.accounts.find_credentials(&email).await?;
            // An address not verified yet gets its link again (the first email may have been
            // lost: registration answers 503 when it cannot queue it); a verified one, a notice.
            if let Some(owner) = owner.as_ref().filter(|c| !c.email_verified) {
                accounts::send_verification(&state, &owner.user_id, &email).await?;
            } else if let Some(owner) = owner {
                accounts::send_notice(
                    &state,
                    NotificationKind::AccountExists,
                    &owner.user_id,
                    &email,
                    BTreeMap::new(),
                )
                .await?;
            }
        }
        Err(Taken::UserName) => {
            // No account has this address: the notice is keyed by a stand-in id.
            let stand_in = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, email.as_bytes());
            accounts::send_notice(
                &state,
                NotificationKind::UserNameTaken,
                &stand_in.to_string(),
                &email,
                BTreeMap::from([("user_name".to_owned(), user_name)]),
            )
            .await?;
        }
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(CheckYourEmail::new(
            "check your email: it has a link to confirm the address, or tells you why no account was created",
        )),
    ))
}

/// The answer while the password hashing capacity is taken.
pub(crate) fn busy(_: password::Busy) -> ApiError {
    ApiError::TooManyRequests {
        detail: "too many sign-ups and sign-ins in progress; retry shortly".to_owned(),
        retry_after: std::time::Duration::from_secs(1),
    }
}

/// What a new account is called and how to reach its owner (validated).
#[derive(Debug, Clone)]
pub struct Profile {
    pub email: String,
    pub user_name: String,
    pub first_name: String,
    pub last_name: String,
    pub mobile_phone: String,
}

/// Which of an account's unique names another account holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    Email,
    UserName,
}

/// Creates an account; shared by registration and the first-admin bootstrap (which vouches
/// for its address: `email_verified_at`).
pub async fn create_account(
    state: &SharedState,
    profile: Profile,
    password: String,
    role: Role,
    email_verified_at: Option<crate::stores::Millis>,
) -> ApiResult<Result<crate::stores::UserRecord, Taken>> {
    let password_hash = state
        .password_work
        .hash(password)
        .await
        .map_err(busy)?
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let now = now_millis();
    let account = NewAccount {
        user_id: uuid::Uuid::new_v4().to_string(),
        email: profile.email,
        user_name: profile.user_name,
        first_name: profile.first_name,
        last_name: profile.last_name,
        mobile_phone: profile.mobile_phone,
        password_hash,
        role,
        created_at: now,
        email_verified_at,
    };
    match state.stores.accounts.create_account(&account).await {
        Ok(()) => {}
        Err(CreateAccountError::EmailTaken) => return Ok(Err(Taken::Email)),
        Err(CreateAccountError::UserNameTaken) => return Ok(Err(Taken::UserName)),
        Err(CreateAccountError::Store(e)) => return Err(e.into()),
    }
    Ok(Ok(crate::stores::UserRecord {
        id: account.user_id,
        email: account.email,
        user_name: account.user_name,
        first_name: account.first_name,
        last_name: account.last_name,
        birth_day: None,
        mobile_phone: account.mobile_phone,
        role,
        email_verified: email_verified_at.is_some(),
        password_changed_at: None,
        created_at: now,
        updated_at: now,
    }))
}

/// Signs in with user name or email and password.
#[utoipa::path(post, path = "/v1/login", tag = "auth", request_body = LoginRequest,
    responses(
        (status = 200, description = "Signed in", body = TokenPair),
        (status = 401, description = "Wrong user or password", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many attempts (per account or per address), or too many password hashes in progress (Retry-After)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn login(
    State(state): State<SharedState>,
    ClientAddress(address): ClientAddress,
    ApiJson(body): ApiJson<LoginRequest>,
) -> ApiResult<Json<TokenPair>> {
    let login = body.login.trim().to_lowercase();
    let mut checks = Checks::new();
    if login.is_empty() || login.chars().count() > 254 {
        checks.fail("login", "must be a user name or an email address");
    }
    if body.password.is_empty() || body.password.chars().count() > 128 {
        checks.fail("password", "must be 1 to 128 characters");
    }
    checks.finish()?;
    let limited = |retry_after| ApiError::TooManyRequests {
        detail: "too many login attempts; wait before trying again".to_owned(),
        retry_after,
    };
    state.ip_limiter.check(&address).map_err(limited)?;
    let credentials = state.stores.accounts.find_credentials(&login).await?;
    // One bucket per account, whichever of its email or user name is typed; an unknown login
    // gets a bucket of its own.
    let bucket = credentials.as_ref().map_or_else(
        || format!("login:{login}"),
        |c| format!("user:{}", c.user_id),
    );
    state.account_limiter.check(&bucket).map_err(limited)?;
    let stored = credentials.as_ref().map_or_else(
        || password::dummy_hash().to_owned(),
        |c| c.password_hash.clone(),
    );
    let matches = state
        .password_work
        .verify(body.password, stored)
        .await
        .map_err(busy)?;
    let Some(credentials) = credentials.filter(|_| matches) else {
        return Err(ApiError::Unauthorized(
            "wrong user name, email or password".to_owned(),
        ));
    };
    let family = uuid::Uuid::new_v4().to_string();
    Ok(Json(
        issue_pair(
            &state,
            &credentials.user_id,
            credentials.role,
            credentials.email_verified,
            &family,
            now_millis() + i64::try_from(state.refresh_ttl.as_millis()).unwrap_or(i64::MAX / 2),
        )
        .await?,
    ))
}

/// An access token and a refresh token for session `family`, which ends at `session_ends_at`
/// (set at login; rotation keeps it, so a session has an absolute end).
async fn issue_pair(
    state: &SharedState,
    user_id: &str,
    role: Role,
    email_verified: bool,
    family: &str,
    session_ends_at: crate::stores::Millis,
) -> ApiResult<TokenPair> {
    let refresh_token = refresh::generate();
    let record = RefreshRecord {
        token_hash: refresh::hash(&refresh_token),
        user_id: user_id.to_owned(),
        family_id: family.to_owned(),
        expires_at: session_ends_at,
        used: false,
        issued_at: now_millis(),
    };
    state.stores.accounts.insert_refresh(&record).await?;
    let access_token = state
        .tokens
        .issue(user_id, role, family, email_verified)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(TokenPair {
        access_token,
        token_type: "Bearer".to_owned(),
        expires_in: state.tokens.ttl().as_secs(),
        refresh_token,
        refresh_expires_in: u64::try_from((session_ends_at - now_millis()) / 1000).unwrap_or(0),
        user_id: user_id.to_owned(),
        role,
    })
}

/// Exchanges a refresh token for new tokens. The token rotates: presenting a used one again
/// revokes the whole session.
#[utoipa::path(post, path = "/v1/refresh", tag = "auth", request_body = RefreshRequest,
    responses(
        (status = 200, description = "New tokens", body = TokenPair),
        (status = 401, description = "Unknown, expired, reused or revoked refresh token", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn refresh_tokens(
    State(state): State<SharedState>,
    ApiJson(body): ApiJson<RefreshRequest>,
) -> ApiResult<Json<TokenPair>> {
    let refused =
        || ApiError::Unauthorized("the refresh token is invalid, expired or revoked".to_owned());
    if !refresh::well_formed(&body.refresh_token) {
        return Err(refused());
    }
    let accounts = &state.stores.accounts;
    let hash = refresh::hash(&body.refresh_token);
    let Some(record) = accounts.get_refresh(&hash).await? else {
        return Err(refused());
    };
    if record.expires_at <= now_millis() || accounts.family_revoked(&record.family_id).await? {
        return Err(refused());
    }
    if record.used || !accounts.consume_refresh(&hash).await? {
        tracing::warn!(user_id = %record.user_id, family = %record.family_id, "refresh token reused: session revoked");
        accounts
            .revoke_family(&record.family_id, now_millis())
            .await?;
        state.sessions.remember(&record.family_id, true);
        return Err(refused());
    }
    let Some(user) = accounts.get_user(&record.user_id).await? else {
        return Err(refused());
    };
    // A password reset ends the sessions that were open before it.
    if user
        .password_changed_at
        .is_some_and(|changed| record.issued_at < changed)
    {
        return Err(refused());
    }
    Ok(Json(
        issue_pair(
            &state,
            &user.id,
            user.role,
            user.email_verified,
            &record.family_id,
            record.expires_at,
        )
        .await?,
    ))
}

/// Ends the session of the access token: its refresh tokens and access tokens stop working.
#[utoipa::path(post, path = "/v1/logout", tag = "auth", security(("bearer" = [])),
    responses(
        (status = 204, description = "Logged out"),
        NotSignedIn,
    ))]
pub async fn logout(
    State(state): State<SharedState>,
    user: AuthUser,
    _headers: HeaderMap,
) -> ApiResult<StatusCode> {
    state
        .stores
        .accounts
        .revoke_family(&user.session_id, now_millis())
        .await?;
    state.sessions.remember(&user.session_id, true);
    Ok(StatusCode::NO_CONTENT)
}
