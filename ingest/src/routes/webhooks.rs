//! The caller's webhook endpoints: `POST v1/webhooks` (register; the signing secret is
//! generated here and shown once), `GET v1/webhooks`, `GET` / `DELETE v1/webhooks/{id}`,
//! `POST v1/webhooks/{id}/enable` (after the notifier disabled it on a 410 Gone) and
//! `POST v1/webhooks/{id}/rotate-secret` (a new secret, shown once). The notifier
//! (`sinks/src/notify`) reads the rows and signs every delivery with the secret's bytes.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use serde::Deserialize;
use utoipa::ToSchema;

use super::views::{WebhookList, WebhookView, WebhookWithSecretView};
use crate::auth::AuthUser;
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{ApiJson, ApiPath};
use crate::openapi::problems::{NoSuchEndpoint, NotSignedIn};
use crate::state::SharedState;
use crate::stores::WebhookEndpointRecord;
use crate::validate::{self, Checks};

/// Most endpoints one user may register (each notification is sent to every one of them).
pub const MAX_ENDPOINTS_PER_USER: usize = 10;

/// Longest description accepted.
pub const MAX_DESCRIPTION_CHARS: usize = 256;

/// What every secret starts with, so a leaked one is recognisable (secret scanners).
pub const SECRET_PREFIX: &str = "whsec_";

/// A new signing secret: [`SECRET_PREFIX`] and 32 random bytes, base64url without padding.
/// The notifier keys the HMAC with the whole string's bytes, prefix included.
pub fn generate_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{SECRET_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookRequest {
    /// Where deliveries are POSTed: an absolute http or https URL with a host and without
    /// user info, at most 2048 characters.
    #[schema(max_length = 2048, example = "https://example.com/hooks/boxoffice")]
    pub url: String,
    /// A note for yourself, at most 256 characters.
    #[schema(max_length = 256)]
    pub description: Option<String>,
}

fn not_found() -> ApiError {
    ApiError::NotFound("no such webhook endpoint".to_owned())
}

/// The caller's endpoint `id`; another user's (or a malformed id) is not found.
async fn own_endpoint(
    state: &SharedState,
    user: &AuthUser,
    id: &str,
) -> ApiResult<WebhookEndpointRecord> {
    let id = validate::id(id).map_err(|_| not_found())?;
    state
        .stores
        .webhooks
        .get_endpoint(&user.user_id, &id)
        .await?
        .ok_or_else(not_found)
}

/// Headers of an answer that carries a secret: it must not be kept by caches.
fn secret_headers(location: Option<&str>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(location) = location.and_then(|l| HeaderValue::from_str(l).ok()) {
        headers.insert(header::LOCATION, location);
    }
    headers
}

/// Registers a webhook endpoint for the caller.
#[utoipa::path(post, path = "/v1/webhooks", tag = "webhooks", request_body = WebhookRequest, security(("bearer" = [])),
    responses(
        (status = 201, description = "Registered; the secret is shown only in this answer", body = WebhookWithSecretView),
        NotSignedIn,
        (status = 409, description = "The caller already has 10 endpoints", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid URL or description, or a URL at a non-public address (loopback, private, link-local, ...) that WEBHOOK_ALLOW_NETWORKS does not list", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unavailable", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_webhook(
    State(state): State<SharedState>,
    user: AuthUser,
    ApiJson(body): ApiJson<WebhookRequest>,
) -> ApiResult<(StatusCode, HeaderMap, Json<WebhookWithSecretView>)> {
    let mut checks = Checks::new();
    let url = checks.check(
        "url",
        validate::webhook_url(&body.url)
            .and_then(|url| validate::webhook_destination(&url, &state.egress).map(|()| url)),
    );
    let description = match &body.description {
        Some(text) => checks
            .check(
                "description",
                validate::text(text, 0, MAX_DESCRIPTION_CHARS),
            )
            .filter(|d| !d.is_empty()),
        None => None,
    };
    checks.finish()?;
    let Some(url) = url else {
        return Err(ApiError::Internal(
            "validation passed without values".to_owned(),
        ));
    };
    let store = &state.stores.webhooks;
    let too_many = || {
        ApiError::Conflict(format!(
            "at most {MAX_ENDPOINTS_PER_USER} webhook endpoints per user; delete one first"
        ))
    };
    if store.list_endpoints(&user.user_id).await?.len() >= MAX_ENDPOINTS_PER_USER {
        return Err(too_many());
    }
    let endpoint = WebhookEndpointRecord {
        id: uuid::Uuid::new_v4().to_string(),
        user_id: user.user_id.clone(),
        url,
        description,
        secret: generate_secret(),
        disabled: false,
        disabled_reason: None,
        disabled_at: None,
        created_at: crate::now_millis(),
    };
    store.insert_endpoint(&endpoint).await?;
    // Concurrent registrations could each have seen room for one more: count again, and the
    // one that finds the list over the limit takes its endpoint back (both may; a retry then
    // succeeds). The limit holds without a lock.
    if store.list_endpoints(&user.user_id).await?.len() > MAX_ENDPOINTS_PER_USER {
        store.delete_endpoint(&user.user_id, &endpoint.id).await?;
        return Err(too_many());
    }
    // Not the URL: some receivers put a token in it.
    tracing::info!(user_id = %user.user_id, endpoint_id = %endpoint.id, "webhook endpoint registered");
    let location = format!("/v1/webhooks/{}", endpoint.id);
    Ok((
        StatusCode::CREATED,
        secret_headers(Some(&location)),
        Json(WebhookWithSecretView {
            endpoint: WebhookView::from(&endpoint),
            secret: endpoint.secret.clone(),
        }),
    ))
}

/// The caller's webhook endpoints (without secrets).
#[utoipa::path(get, path = "/v1/webhooks", tag = "webhooks", security(("bearer" = [])),
    responses(
        (status = 200, description = "The endpoints, oldest first", body = WebhookList),
        NotSignedIn,
    ))]
pub async fn list_webhooks(
    State(state): State<SharedState>,
    user: AuthUser,
) -> ApiResult<Json<WebhookList>> {
    let mut endpoints = state.stores.webhooks.list_endpoints(&user.user_id).await?;
    endpoints.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    Ok(Json(WebhookList {
        items: endpoints.iter().map(WebhookView::from).collect(),
    }))
}

/// One of the caller's webhook endpoints (without its secret).
#[utoipa::path(get, path = "/v1/webhooks/{id}", tag = "webhooks", security(("bearer" = [])),
    params(("id" = String, Path, description = "Endpoint id")),
    responses(
        (status = 200, description = "The endpoint", body = WebhookView),
        NotSignedIn,
        NoSuchEndpoint,
    ))]
pub async fn get_webhook(
    State(state): State<SharedState>,
    user: AuthUser,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<WebhookView>> {
    let endpoint = own_endpoint(&state, &user, &id).await?;
    Ok(Json(WebhookView::from(&endpoint)))
}

/// Deletes one of the caller's webhook endpoints (no more deliveries to it).
#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "webhooks", security(("bearer" = [])),
    params(("id" = String, Path, description = "Endpoint id")),
    responses(
        (status = 204, description = "Deleted"),
        NotSignedIn,
        NoSuchEndpoint,
    ))]
pub async fn delete_webhook(
    State(state): State<SharedState>,
    user: AuthUser,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    let id = validate::id(&id).map_err(|_| not_found())?;
    if !state
        .stores
        .webhooks
        .delete_endpoint(&user.user_id, &id)
        .await?
    {
        return Err(not_found());
    }
    tracing::info!(user_id = %user.user_id, endpoint_id = %id, "webhook endpoint deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Turns deliveries back on for an endpoint the notifier disabled (it answered 410 Gone).
/// Notifications sent while it was disabled are not sent again.
#[utoipa::path(post, path = "/v1/webhooks/{id}/enable", tag = "webhooks", security(("bearer" = [])),
    params(("id" = String, Path, description = "Endpoint id")),
    responses(
        (status = 200, description = "Enabled (also when it was not disabled)", body = WebhookView),
        NotSignedIn,
        NoSuchEndpoint,
    ))]
pub async fn enable_webhook(
    State(state): State<SharedState>,
    user: AuthUser,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<WebhookView>> {
    let endpoint = own_endpoint(&state, &user, &id).await?;
    if !state
        .stores
        .webhooks
        .enable_endpoint(&user.user_id, &endpoint.id)
        .await?
    {
        return Err(not_found());
    }
    tracing::info!(user_id = %user.user_id, endpoint_id = %endpoint.id,
                   was_disabled = endpoint.disabled, "webhook endpoint enabled");
    Ok(Json(WebhookView::from(&WebhookEndpointRecord {
        disabled: false,
        disabled_reason: None,
        disabled_at: None,
        ..endpoint
    })))
}

/// Replaces an endpoint's signing secret; the new secret is shown only in this answer.
/// Notifications the notifier picks up from now on are signed with it (retries already under
/// way may still carry the old one for a few minutes).
#[utoipa::path(post, path = "/v1/webhooks/{id}/rotate-secret", tag = "webhooks", security(("bearer" = [])),
    params(("id" = String, Path, description = "Endpoint id")),
    responses(
        (status = 200, description = "The endpoint with its new secret", body = WebhookWithSecretView),
        NotSignedIn,
        NoSuchEndpoint,
    ))]
pub async fn rotate_webhook_secret(
    State(state): State<SharedState>,
    user: AuthUser,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<(HeaderMap, Json<WebhookWithSecretView>)> {
    let endpoint = own_endpoint(&state, &user, &id).await?;
    let secret = generate_secret();
    if !state
        .stores
        .webhooks
        .set_endpoint_secret(&user.user_id, &endpoint.id, &secret)
        .await?
    {
        return Err(not_found());
    }
    tracing::info!(user_id = %user.user_id, endpoint_id = %endpoint.id, "webhook secret rotated");
    Ok((
        secret_headers(None),
        Json(WebhookWithSecretView {
            endpoint: WebhookView::from(&endpoint),
            secret,
        }),
    ))
}
