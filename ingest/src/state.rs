//! The shared state every handler sees: stores, the Kafka bus, token keys, limiters, the
//! session-revocation cache, the catalogue cache and the live fan-out.

use boxoffice_runtime::egress::EgressPolicy;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::auth::action_token::ActionKeys;
use crate::auth::jwt::TokenKeys;
use crate::auth::limiter::RateLimiter;
use crate::auth::password::PasswordWork;
use crate::bus::Bus;
use crate::catalogue::Catalogue;
use crate::config::ProviderWebhookSettings;
use crate::live::Live;
use crate::metrics::IngestMetrics;
use crate::pagination::Pager;
use crate::stores::{StoreResult, Stores};

/// How long a "not revoked" answer about a session is trusted before asking the store again:
/// a logout on another replica takes effect there within this time (on this one, at once).
pub const SESSION_CHECK_TTL: Duration = Duration::from_secs(5);

/// Longest `wait` a client may ask for on `POST v1/orders`.
pub const MAX_ORDER_WAIT: Duration = Duration::from_secs(10);

/// Most reads of not-yet-stored orders waiting at once on one replica; past it they answer 503
/// at once.
pub const MAX_PENDING_READS: usize = 1024;

/// Everything handlers share.
pub struct AppState {
    pub stores: Stores,
    pub bus: Arc<dyn Bus>,
    pub tokens: TokenKeys,
    /// Signs the links of account emails (verification, password reset).
    pub action_keys: ActionKeys,
    /// Where those links lead (the frontend).
    pub account_link_base: url::Url,
    pub pager: Pager,
    pub account_limiter: RateLimiter,
    pub ip_limiter: RateLimiter,
    /// `POST v1/orders` per account and per client address.
    pub order_user_limiter: RateLimiter,
    pub order_ip_limiter: RateLimiter,
    /// Registrations per client address.
    pub register_limiter: RateLimiter,
    /// Peers whose `X-Forwarded-For` is believed (see [`crate::client_address`]).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Open live streams, bounded per account, per address and in total.
    pub stream_slots: Arc<crate::stream_slots::StreamSlots>,
    /// The bound on Argon2 work (registration, login, admin bootstrap).
    pub password_work: PasswordWork,
    pub sessions: SessionCache,
    pub catalogue: Catalogue,
    pub live: Arc<Live>,
    /// Reads of orders accepted moments ago, waiting for their decision (at most
    /// [`MAX_PENDING_READS`] at once).
    pub pending_reads: tokio::sync::Semaphore,
    pub refresh_ttl: Duration,
    /// The payment provider's webhook: shared secret and timestamp tolerance.
    pub provider_webhook: ProviderWebhookSettings,
    /// Where users' webhook endpoints may point (checked at registration for literal
    /// addresses; the notifier checks every resolved address at delivery).
    pub egress: EgressPolicy,
    /// Set to `true` when the server shuts down: streams end so connections can close.
    pub stopping: tokio::sync::watch::Sender<bool>,
    pub metrics: Arc<IngestMetrics>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("tokens", &self.tokens)
            .finish_non_exhaustive()
    }
}

pub type SharedState = Arc<AppState>;

/// Remembers which login sessions are revoked (forever, until the process ends) and which were
/// seen valid recently (for [`SESSION_CHECK_TTL`]).
#[derive(Debug, Default)]
pub struct SessionCache {
    entries: Mutex<HashMap<String, (bool, Instant)>>,
}

impl SessionCache {
    /// Whether session `sid` is revoked, asking `lookup` when the cache does not know.
    pub async fn is_revoked<F, Fut>(&self, sid: &str, lookup: F) -> StoreResult<bool>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = StoreResult<bool>>,
    {
        let now = Instant::now();
        if let Ok(entries) = self.entries.lock()
            && let Some((revoked, at)) = entries.get(sid)
            && (*revoked || now.duration_since(*at) < SESSION_CHECK_TTL)
        {
            return Ok(*revoked);
        }
        let revoked = lookup().await?;
        self.remember(sid, revoked);
        Ok(revoked)
    }

    pub fn remember(&self, sid: &str, revoked: bool) {
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() > 100_000 {
                let now = Instant::now();
                entries.retain(|_, (revoked, at)| {
                    *revoked && now.duration_since(*at) < Duration::from_secs(3600)
                });
            }
            entries.insert(sid.to_owned(), (revoked, Instant::now()));
        }
    }
}
