//! Request extractors for the caller: [`AuthUser`] (any valid access token of a session that
//! is not revoked) and [`AdminUser`] (the same, with the admin role). Every failure is a 401
//! problem (403 for a non-admin), whatever the reason: expired, tampered, wrong algorithm,
//! wrong key, wrong issuer or audience, revoked.

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;

use crate::error::ApiError;
use crate::state::SharedState;
use crate::stores::Role;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthUser {
    pub user_id: String,
    pub role: Role,
    /// The login session (refresh-token family).
    pub session_id: String,
    /// When the access token expires (seconds since the epoch): streams end then.
    pub expires_at: u64,
    /// The account's email address was verified when the token was issued: it may book.
    pub email_verified: bool,
}

impl AuthUser {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// The caller may act on `owner`'s resource (owner or admin).
    pub fn may_access(&self, owner: &str) -> bool {
        self.is_admin() || self.user_id == owner
    }
}

/// The bearer token of a request, if it has one.
pub fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// A caller whose access token verified (signature, algorithm, key, issuer, audience,
/// expiry) but whose session has not been checked for revocation yet: call
/// [`UncheckedUser::check`] (the order path runs it concurrently with its writes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UncheckedUser(pub AuthUser);

impl UncheckedUser {
    /// Refuses the caller when their session was logged out or revoked.
    pub async fn check(&self, state: &SharedState) -> Result<(), ApiError> {
        let accounts = state.stores.accounts.clone();
        let sid = self.0.session_id.clone();
        let revoked = state
            .sessions
            .is_revoked(&self.0.session_id, || async move {
                accounts.family_revoked(&sid).await
            })
            .await?;
        if revoked {
            return Err(ApiError::Unauthorized(
                "the session was logged out".to_owned(),
            ));
        }
        Ok(())
    }
}

impl FromRequestParts<SharedState> for UncheckedUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &SharedState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(parts).ok_or_else(|| {
            ApiError::Unauthorized("missing `Authorization: Bearer <access token>`".to_owned())
        })?;
        let claims = state.tokens.verify(token).map_err(|e| {
            tracing::debug!(reason = %e, "access token refused");
            ApiError::Unauthorized("the access token is invalid or expired".to_owned())
        })?;
        Ok(UncheckedUser(AuthUser {
            user_id: claims.sub,
            role: claims.role,
            session_id: claims.sid,
            expires_at: claims.exp,
            email_verified: claims.ev,
        }))
    }
}

impl FromRequestParts<SharedState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &SharedState,
    ) -> Result<Self, Self::Rejection> {
        let user = UncheckedUser::from_request_parts(parts, state).await?;
        user.check(state).await?;
        Ok(user.0)
    }
}

/// An authenticated caller with the admin role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminUser(pub AuthUser);

impl FromRequestParts<SharedState> for AdminUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &SharedState,
    ) -> Result<Self, Self::Rejection> {
        let user = AuthUser::from_request_parts(parts, state).await?;
        if !user.is_admin() {
            return Err(ApiError::Forbidden("this needs the admin role".to_owned()));
        }
        Ok(AdminUser(user))
    }
}
