//! boxoffice ingest: the stateless axum HTTP layer (auth, users, catalogue, orders, payments,
//! live streams) that turns booking commands into Kafka records keyed by event id.
//!
//! Modules: `config` (settings, topics), `error` (problem+json), `extract` (rejections as
//! problems), `validate` (field rules), `auth` (passwords, tokens, rate limits, caller
//! extractors), `stores` (storage traits and their CQL implementations), `bus` (the Kafka
//! producer), `catalogue` (cached events and search), `pagination` (signed page tokens),
//! `live` (topic followers and fan-out), `provider` (the payment provider's webhook signature
//! and events), `routes` (handlers), `openapi` (the API description), `state` (what handlers
//! share). [`run`] serves it all until shutdown.

pub mod auth;
pub mod bus;
pub mod catalogue;
pub mod client_address;
pub mod config;
pub mod error;
pub mod extract;
pub mod live;
pub mod metrics;
pub mod openapi;
pub mod pagination;
pub mod provider;
pub mod query_params;
pub mod routes;
pub mod state;
pub mod stores;
pub mod stream_slots;
pub mod validate;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{Request, StatusCode};
use axum::response::Response;
use boxoffice_avro::Codec;
use boxoffice_topics::kafka::KafkaArgs;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;

use crate::auth::jwt::TokenKeys;
use crate::auth::limiter::RateLimiter;
use crate::auth::password::PasswordWork;
use crate::bus::Bus;
use crate::config::{IngestSettings, ProviderWebhookSettings};
use crate::error::{ApiError, problem_response};
use crate::live::Live;
use crate::pagination::Pager;
use crate::state::{AppState, SessionCache, SharedState};
use crate::stores::{Role, Stores};

/// Largest request body accepted (larger ones get 413).
pub const BODY_LIMIT_BYTES: usize = 64 * 1024;

pub use boxoffice_avro::clock::now_millis;
pub use boxoffice_runtime::retry::RetryPolicy;
use metrics::IngestMetrics;

/// What [`run`] needs from the outside world.
pub struct Deps {
    pub settings: IngestSettings,
    pub stores: Stores,
    pub bus: Arc<dyn Bus>,
    /// Where the live streams come from; `None` serves no live updates (tests of the router).
    pub follow: Option<Follow>,
    /// The process's metrics (`main` serves them on `--metrics-addr`).
    pub metrics: Arc<IngestMetrics>,
}

impl std::fmt::Debug for Deps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deps")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// The Kafka side of the live streams.
#[derive(Debug, Clone)]
pub struct Follow {
    pub kafka: KafkaArgs,
    pub codec: Arc<Codec>,
    /// How long reaching the topics is retried before the failure is counted and readiness
    /// says so (then it starts again).
    pub retry: RetryPolicy,
}

/// The shared state for `settings`, with the payment provider webhook's local-development
/// defaults ([`state_with`] takes them).
pub fn state(
    settings: &IngestSettings,
    stores: Stores,
    bus: Arc<dyn Bus>,
    live: Arc<Live>,
) -> SharedState {
    state_with(
        settings,
        &ProviderWebhookSettings::default(),
        stores,
        bus,
        live,
    )
}

/// The shared state for `settings` and `provider_webhook`.
pub fn state_with(
    settings: &IngestSettings,
    provider_webhook: &ProviderWebhookSettings,
    stores: Stores,
    bus: Arc<dyn Bus>,
    live: Arc<Live>,
) -> SharedState {
    build_state(
        settings,
        provider_webhook,
        stores,
        bus,
        live,
        Arc::new(IngestMetrics::default()),
    )
}

fn build_state(
    settings: &IngestSettings,
    provider_webhook: &ProviderWebhookSettings,
    stores: Stores,
    bus: Arc<dyn Bus>,
    live: Arc<Live>,
    metrics: Arc<IngestMetrics>,
) -> SharedState {
    // `IngestSettings.jwt_secret` is not a flag: a parsed command line holds an empty one
    // until `config::read_secrets` fills it. Signing with an empty key must be impossible.
    assert!(
        settings.jwt_secret.bytes().len() >= config::MIN_JWT_SECRET_BYTES,
        "the JWT secret was not read (config::read_secrets) before building ingest's state"
    );
    Arc::new(AppState {
        stores,
        bus,
        tokens: TokenKeys::new(
            &settings.jwt_secret,
            &settings.jwt_issuer,
            &settings.jwt_audience,
            settings.access_token_ttl,
        ),
        action_keys: crate::auth::action_token::ActionKeys::new(
            &settings.jwt_secret,
            &settings.jwt_issuer,
            &settings.jwt_audience,
        ),
        account_link_base: settings.account_link_base.clone(),
        pager: Pager::new(&settings.jwt_secret),
        account_limiter: RateLimiter::new(
            settings.login_account_burst,
            settings.login_account_refill,
        ),
        ip_limiter: RateLimiter::new(settings.login_ip_burst, settings.login_ip_refill),
        order_user_limiter: RateLimiter::new(settings.order_user_burst, settings.order_user_refill),
        order_ip_limiter: RateLimiter::new(settings.order_ip_burst, settings.order_ip_refill),
        register_limiter: RateLimiter::new(settings.register_ip_burst, settings.register_ip_refill),
        trusted_proxies: settings.trusted_proxies.clone(),
        stream_slots: stream_slots::StreamSlots::new(
            settings.streams_per_user as usize,
            settings.streams_per_address as usize,
            settings.streams_total as usize,
        ),
        password_work: PasswordWork::new(
            usize::from(settings.password_hash_concurrency),
            usize::from(settings.password_hash_queue),
        ),
        sessions: SessionCache::default(),
        catalogue: catalogue::Catalogue::default(),
        live,
        pending_reads: tokio::sync::Semaphore::new(state::MAX_PENDING_READS),
        refresh_ttl: settings.refresh_token_ttl,
        provider_webhook: provider_webhook.clone(),
        egress: settings.egress.policy(),
        stopping: tokio::sync::watch::channel(false).0,
        metrics,
    })
}

fn panic_problem(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    let problem = ApiError::Internal("unexpected error".to_owned()).problem();
    problem_response(StatusCode::INTERNAL_SERVER_ERROR, &problem)
}

/// Headers every answer carries: no MIME sniffing, never framed, no referrer, and not stored
/// by caches (answers are per user: tokens, orders, payments).
const SECURITY_HEADERS: [(&str, &str); 4] = [
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-store"),
];

/// The API's answers are JSON and event streams, never pages: nothing may load or run.
const API_CSP: &str = "default-src 'none'; frame-ancestors 'none'";

/// The API reference at `/docs` (Swagger UI, served from the binary): its own scripts, styles
/// and `/openapi.json` only; no third party, no inline script. Swagger UI sets inline styles
/// and data: images.
const DOCS_CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; \
                        frame-ancestors 'none'";

/// The router with its middleware: request ids (`x-request-id`, generated when absent, echoed
/// back), a tracing span per request, the body limit, panics as problem+json, security headers
/// ([`SECURITY_HEADERS`], [`API_CSP`]), `/openapi.json` and `/docs`.
pub fn router(state: SharedState) -> Router {
    use axum::http::{HeaderName, HeaderValue};
    use tower_http::set_header::SetResponseHeaderLayer;
    let spec = openapi::ApiDoc::openapi();
    let known_query = Arc::new(query_params::KnownQueryParameters::from_spec(&spec));
    // Swagger UI's files are compiled into the binary (utoipa-swagger-ui's `vendored` feature:
    // from crates.io, no download at build or run time); it also serves `/openapi.json`.
    let docs: Router<SharedState> = Router::from(
        utoipa_swagger_ui::SwaggerUi::new("/docs")
            .external_url_unchecked("/openapi.json", openapi::document()),
    )
    .layer(SetResponseHeaderLayer::if_not_present(
        axum::http::header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(DOCS_CSP),
    ));
    let metrics = Arc::clone(&state.metrics);
    let mut app = routes::api()
        .route_layer(axum::middleware::from_fn_with_state(
            known_query,
            query_params::refuse_unknown,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            metrics,
            metrics::track,
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            axum::http::header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(API_CSP),
        ))
        .merge(docs);
    for (name, value) in SECURITY_HEADERS {
        app = app.layer(SetResponseHeaderLayer::if_not_present(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        ));
    }
    app.layer(DefaultBodyLimit::max(BODY_LIMIT_BYTES))
        .layer(CatchPanicLayer::custom(panic_problem))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(TraceLayer::new_for_http().make_span_with(|request: &Request<_>| {
            let id = request
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            tracing::info_span!("request", method = %request.method(), path = %request.uri().path(), request_id = %id)
        }))
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(state)
}

/// Why the first admin could not be created.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("INGEST_ADMIN_EMAIL / --email is not a valid email address: {0}")]
    Email(String),
    #[error("INGEST_ADMIN_PASSWORD is not acceptable: {0}")]
    Password(String),
    #[error("creating the admin failed: {0}")]
    Failed(String),
    #[error(
        "INGEST_ADMIN_EMAIL {0} belongs to an account that is not an admin. Startup never \
         promotes one: choose another admin email, or, once the account's owner has verified \
         the address, promote it with `boxoffice-ingest create-admin --email {0}`"
    )]
    ExistingNotAdmin(String),
    #[error(
        "{0} belongs to an account whose email address is not verified: anyone can register \
         any address, so it is not promoted. Its owner opens the verification link first (or \
         asks for a password reset, which verifies it too)"
    )]
    Unverified(String),
}

/// What [`ensure_admin`] does when the email is registered already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExistingAccount {
    /// Give it the admin role if its email address is verified: an operator's deliberate
    /// `create-admin`.
    Promote,
    /// Accept it only if it is an admin already (the startup bootstrap, run by every replica):
    /// whoever registered the email first must not become admin.
    RequireAdmin,
}

/// The admin account with `email`, handled as `existing` says; `None` when there is no such
/// account.
async fn existing_admin(
    state: &SharedState,
    email: &str,
    existing: ExistingAccount,
) -> Result<Option<String>, AdminError> {
    let accounts = &state.stores.accounts;
    let failed = |e: crate::stores::StoreError| AdminError::Failed(e.to_string());
    let Some(user_id) = accounts.user_id_by_email(email).await.map_err(failed)? else {
        return Ok(None);
    };
    match existing {
        ExistingAccount::Promote => {
            let user = accounts.get_user(&user_id).await.map_err(failed)?;
            // An admin from before email verification stays one; anyone else must have
            // verified the address.
            if user.as_ref().is_some_and(|u| u.role == Role::Admin) {
                return Ok(Some(user_id));
            }
            if !user.is_some_and(|u| u.email_verified) {
                return Err(AdminError::Unverified(email.to_owned()));
            }
            accounts
                .set_role(&user_id, Role::Admin)
                .await
                .map_err(failed)?;
        }
        ExistingAccount::RequireAdmin => {
            let role = accounts
                .get_user(&user_id)
                .await
                .map_err(failed)?
                .map(|u| u.role);
            if role != Some(Role::Admin) {
                return Err(AdminError::ExistingNotAdmin(email.to_owned()));
            }
        }
    }
    Ok(Some(user_id))
}

/// Makes `email` an admin: creates the account (user name from `user_name`, or from the email;
/// its address counts as verified: the operator named it) or, when the email is registered
/// already, handles it as `existing` says (the password is left as it is). Idempotent.
pub async fn ensure_admin(
    state: &SharedState,
    email: &str,
    password: &str,
    user_name: Option<&str>,
    existing: ExistingAccount,
) -> Result<String, AdminError> {
    let email = validate::email(email).map_err(AdminError::Email)?;
    let password = validate::password(password).map_err(AdminError::Password)?;
    let failed = |e: &dyn std::fmt::Display| AdminError::Failed(e.to_string());
    if let Some(user_id) = existing_admin(state, &email, existing).await? {
        return Ok(user_id);
    }
    let base = user_name.map(str::to_owned).unwrap_or_else(|| {
        let local: String = email
            .split('@')
            .next()
            .unwrap_or("admin")
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .take(24)
            .collect();
        if local.len() >= 3 {
            local
        } else {
            "admin".to_owned()
        }
    });
    let user_name = validate::user_name(&base).map_err(AdminError::Failed)?;
    for attempt in 0..3 {
        let name = if attempt == 0 {
            user_name.clone()
        } else {
            format!(
                "{user_name}_{}",
                &uuid::Uuid::new_v4().simple().to_string()[..6]
            )
        };
        let profile = routes::auth::Profile {
            email: email.clone(),
            user_name: name,
            first_name: "Admin".to_owned(),
            last_name: "Admin".to_owned(),
            mobile_phone: "+0000000000".to_owned(),
        };
        let created = routes::auth::create_account(
            state,
            profile,
            password.clone(),
            Role::Admin,
            Some(now_millis()),
        )
        .await;
        match created {
            Ok(Ok(user)) => return Ok(user.id),
            Ok(Err(_)) => {
                // Email claimed concurrently: by another replica's bootstrap (an admin), or by
                // someone registering it (then `existing` decides).
                if let Some(user_id) = existing_admin(state, &email, existing).await? {
                    return Ok(user_id);
                }
            }
            Err(e) => return Err(failed(&e)),
        }
    }
    Err(AdminError::Failed(
        "no free user name for the admin".to_owned(),
    ))
}

/// Serves the API on `listener` until `shutdown` resolves, then stops accepting, ends the live
/// streams, finishes the requests in flight and returns. The payment provider's webhook uses
/// the local-development defaults ([`run_with`] takes them).
pub async fn run(
    deps: Deps,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    run_with(deps, ProviderWebhookSettings::default(), listener, shutdown).await
}

/// [`run`] with the payment provider webhook's settings.
pub async fn run_with(
    deps: Deps,
    provider_webhook: ProviderWebhookSettings,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let live = Arc::new(Live::new());
    let state = build_state(
        &deps.settings,
        &provider_webhook,
        deps.stores,
        deps.bus,
        Arc::clone(&live),
        Arc::clone(&deps.metrics),
    );
    let stopping = state.stopping.subscribe();
    if let Some(follow) = deps.follow {
        let topics = deps.settings.topic_prefix.topics();
        let mut stop = stopping.clone();
        tokio::spawn(live::follow(
            follow,
            topics,
            live,
            deps.metrics,
            async move {
                let _ = stop.changed().await;
            },
        ));
    }
    serve(state, listener, shutdown).await
}

/// Serves an already-built state (tests use it to reach the state).
pub async fn serve(
    state: SharedState,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(Arc::clone(&state));
    let address = listener.local_addr()?;
    tracing::info!(%address, "ingest listening");
    let stopping = state.stopping.clone();
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        shutdown.await;
        tracing::info!("shutting down: finishing requests in flight");
        let _ = stopping.send(true);
        // Streams end at once; anything else gets a moment to finish.
        tokio::time::sleep(Duration::from_millis(10)).await;
    })
    .await
}
