//! What ingest keeps and reads, as traits: accounts and sessions, the catalogue, orders,
//! payments, notifications, webhook endpoints and the payment provider's events. The real
//! implementations are the CQL ones (`cql`); the router only sees the traits, so its pure tests
//! can run on in-memory fakes.

pub mod cql;

use async_trait::async_trait;

/// Milliseconds since the Unix epoch (UTC).
pub type Millis = i64;

/// A store call failed. Never shown to clients in detail: it becomes a 503.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("CQL store unavailable during {operation}: {reason}")]
    Unavailable {
        operation: &'static str,
        reason: String,
    },
    #[error("CQL store answered something unusable during {operation}: {reason}")]
    Corrupt {
        operation: &'static str,
        reason: String,
    },
}

impl StoreError {
    pub fn unavailable(operation: &'static str, e: impl std::fmt::Display) -> Self {
        StoreError::Unavailable {
            operation,
            reason: e.to_string(),
        }
    }

    pub fn corrupt(operation: &'static str, e: impl std::fmt::Display) -> Self {
        StoreError::Corrupt {
            operation,
            reason: e.to_string(),
        }
    }

    /// An error of another family's reader interface (`boxoffice_store`): unavailable when
    /// retrying may help, corrupt otherwise.
    pub fn from_reader(
        operation: &'static str,
        e: impl std::fmt::Display,
        retryable: bool,
    ) -> Self {
        if retryable {
            StoreError::unavailable(operation, e)
        } else {
            StoreError::corrupt(operation, e)
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A user's role.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Admin,
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Role {
        if s == "admin" {
            Role::Admin
        } else {
            Role::User
        }
    }
}

/// A new account: profile and credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAccount {
    pub user_id: String,
    /// Lower-cased.
    pub email: String,
    /// Lower-cased.
    pub user_name: String,
    pub first_name: String,
    pub last_name: String,
    pub mobile_phone: String,
    pub password_hash: String,
    pub role: Role,
    pub created_at: Millis,
    /// Set for accounts whose address needs no link (the operator's admin bootstrap).
    pub email_verified_at: Option<Millis>,
}

/// Why an account could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateAccountError {
    #[error("email already registered")]
    EmailTaken,
    #[error("user name already taken")]
    UserNameTaken,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What login checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user_id: String,
    pub password_hash: String,
    pub role: Role,
    /// The owner opened the verification link (or an admin vouched): the account may book.
    pub email_verified: bool,
}

/// A user's profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub id: String,
    pub email: String,
    pub user_name: String,
    pub first_name: String,
    pub last_name: String,
    /// Days since the Unix epoch.
    pub birth_day: Option<chrono::NaiveDate>,
    pub mobile_phone: String,
    pub role: Role,
    pub email_verified: bool,
    /// When the password was last reset: older refresh tokens no longer work.
    pub password_changed_at: Option<Millis>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// Fields `PUT v1/users/{id}` may change (all already validated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserUpdate {
    pub user_name: String,
    pub first_name: String,
    pub last_name: String,
    pub birth_day: Option<chrono::NaiveDate>,
    pub mobile_phone: String,
    pub updated_at: Millis,
}

#[derive(Debug, thiserror::Error)]
pub enum UpdateUserError {
    #[error("user name already taken")]
    UserNameTaken,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Which way a page goes from its cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Direction {
    /// Older items (further down the list).
    #[serde(rename = "n")]
    Next,
    /// Newer items (back up the list).
    #[serde(rename = "p")]
    Previous,
}

/// A position in a newest-first list: the `(created_at, id)` of an item.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TimeCursor {
    #[serde(rename = "t")]
    pub at: Millis,
    #[serde(rename = "i")]
    pub id: String,
}

/// A page request over a newest-first list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    /// `None`: the first page.
    pub cursor: Option<TimeCursor>,
    pub direction: Direction,
    pub limit: usize,
}

/// One page, always in display order (newest first), and whether more items lie beyond it in
/// the direction it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub more: bool,
}

/// Refresh-token bookkeeping: one row per issued token (by hash), one per family (a login).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshRecord {
    /// SHA-256 of the token, hex.
    pub token_hash: String,
    pub user_id: String,
    pub family_id: String,
    pub expires_at: Millis,
    pub used: bool,
    /// When this token was issued (rotation issues a new one).
    pub issued_at: Millis,
}

/// Accounts, profiles and sessions.
#[async_trait]
pub trait AccountStore: Send + Sync + 'static {
    /// Claims the email and the user name atomically (LWT), then writes the profile.
    async fn create_account(&self, account: &NewAccount) -> Result<(), CreateAccountError>;
    /// Looks up by (lower-cased) email when `login` contains `@`, else by user name.
    async fn find_credentials(&self, login: &str) -> StoreResult<Option<Credentials>>;
    async fn user_id_by_email(&self, email: &str) -> StoreResult<Option<String>>;
    async fn set_role(&self, user_id: &str, role: Role) -> StoreResult<()>;
    /// The credentials of account `user_id` (a password reset checks its token against them).
    async fn credentials_of(&self, user_id: &str) -> StoreResult<Option<Credentials>>;
    async fn set_email_verified(&self, user_id: &str, at: Millis) -> StoreResult<()>;
    /// Replaces the password hash; refresh tokens issued before `at` stop working.
    async fn set_password_hash(
        &self,
        user_id: &str,
        password_hash: &str,
        at: Millis,
    ) -> StoreResult<()>;
    async fn get_user(&self, user_id: &str) -> StoreResult<Option<UserRecord>>;
    /// Applies `update`; a new user name is claimed first (LWT) and the old one released.
    async fn update_user(
        &self,
        current: &UserRecord,
        update: &UserUpdate,
    ) -> Result<(), UpdateUserError>;
    async fn list_users(&self, page: &PageRequest) -> StoreResult<Page<UserRecord>>;

    async fn insert_refresh(&self, record: &RefreshRecord) -> StoreResult<()>;
    async fn get_refresh(&self, token_hash: &str) -> StoreResult<Option<RefreshRecord>>;
    /// Marks the token used if it was not (LWT): `false` when someone used it first.
    async fn consume_refresh(&self, token_hash: &str) -> StoreResult<bool>;
    async fn revoke_family(&self, family_id: &str, at: Millis) -> StoreResult<()>;
    async fn family_revoked(&self, family_id: &str) -> StoreResult<bool>;
}

/// A category of events (`cate_events`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CategoryRecord {
    pub id: String,
    pub name: String,
    pub is_free: bool,
}

/// An event of the catalogue (`events`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    pub id: String,
    pub name: String,
    pub description: String,
    pub venue: String,
    pub category_id: Option<String>,
    pub starts_at: Millis,
    pub price_minor: i64,
    pub currency: String,
    pub capacity: i32,
    pub sale_starts_at: Millis,
    pub sale_ends_at: Millis,
    pub hold_seconds: i32,
    pub max_per_order: i32,
    pub max_per_user: i32,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// The booking processor's counters for an event (`event_inventory` statics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InventoryCounters {
    pub capacity: i32,
    pub held: i32,
    pub sold: i32,
    pub sequence: i64,
}

/// Events and categories.
#[async_trait]
pub trait CatalogStore: Send + Sync + 'static {
    /// Every event (a full scan; the catalogue is small, see the README).
    async fn list_events(&self) -> StoreResult<Vec<EventRecord>>;
    async fn get_event(&self, id: &str) -> StoreResult<Option<EventRecord>>;
    async fn put_event(&self, event: &EventRecord) -> StoreResult<()>;
    async fn inventory(&self, event_id: &str) -> StoreResult<Option<InventoryCounters>>;
    async fn list_categories(&self) -> StoreResult<Vec<CategoryRecord>>;
    async fn get_category(&self, id: &str) -> StoreResult<Option<CategoryRecord>>;
    async fn put_category(&self, category: &CategoryRecord) -> StoreResult<()>;
}

/// An order as requested (the `orders` row the booking processor writes once it decided it,
/// or what ingest accepted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRecord {
    pub id: String,
    pub event_id: String,
    pub user_id: String,
    pub number_slot: i32,
    pub created_at: Millis,
    pub idempotency_key: Option<String>,
}

/// The booking processor's decision about an order (`event_inventory` row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderDecision {
    /// RESERVED, CONFIRMED, REJECTED, EXPIRED or CANCELLED.
    pub status: String,
    pub slots: i32,
    pub amount_minor: i64,
    pub currency: String,
    pub payment_id: Option<String>,
    pub hold_expires_at: Option<Millis>,
    pub reason: Option<String>,
    pub late: bool,
}

impl OrderDecision {
    /// A decision that ends the order without money held: rejected, cancelled or expired.
    pub fn closed(status: &str, slots: i32, reason: Option<String>) -> Self {
        OrderDecision {
            status: status.to_owned(),
            slots,
            amount_minor: 0,
            currency: String::new(),
            payment_id: None,
            hold_expires_at: None,
            reason,
            late: false,
        }
    }
}

#[async_trait]
/// Orders, read only: ingest writes none (the booking processor does, after deciding).
pub trait OrderStore: Send + Sync + 'static {
    async fn get_order(&self, id: &str) -> StoreResult<Option<OrderRecord>>;
    async fn list_orders(
        &self,
        user_id: &str,
        page: &PageRequest,
    ) -> StoreResult<Page<OrderRecord>>;
    async fn decision(&self, event_id: &str, order_id: &str) -> StoreResult<Option<OrderDecision>>;
}

/// A payment as ingest shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentRecord {
    pub id: String,
    pub order_id: String,
    pub user_id: String,
    pub amount_minor: i64,
    pub currency: String,
    /// The payment processor's status, or `SUBMITTED` before it wrote anything.
    pub status: String,
    pub provider_reference: Option<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentHistoryEntry {
    pub at: Millis,
    pub seq: i32,
    pub status: String,
    pub detail: Option<String>,
}

#[async_trait]
pub trait PaymentStore: Send + Sync + 'static {
    /// Records that the user submitted a payment (listing and lookup rows; idempotent).
    async fn record_submission(&self, payment: &PaymentRecord) -> StoreResult<()>;
    async fn get_payment(&self, id: &str) -> StoreResult<Option<PaymentRecord>>;
    async fn history(&self, id: &str) -> StoreResult<Vec<PaymentHistoryEntry>>;
    async fn list_payments(
        &self,
        user_id: &str,
        page: &PageRequest,
    ) -> StoreResult<Page<PaymentRecord>>;
}

/// An in-app notification (`notifications`, written by the notifier).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationRecord {
    pub id: String,
    pub user_id: String,
    pub kind: String,
    pub order_id: Option<String>,
    pub event_id: Option<String>,
    pub params: std::collections::BTreeMap<String, String>,
    /// Whether the user has read it; a row whose `read` was never written is unread.
    pub read: bool,
    pub created_at: Millis,
}

#[async_trait]
pub trait NotificationStore: Send + Sync + 'static {
    async fn list_notifications(
        &self,
        user_id: &str,
        page: &PageRequest,
    ) -> StoreResult<Page<NotificationRecord>>;

    /// Marks one of `user_id`'s notifications read; `false` when it has none with that id.
    async fn mark_read(&self, user_id: &str, notification_id: &str) -> StoreResult<bool>;

    /// Marks `user_id`'s unread notifications read (the newest 10,000 looked at): how many.
    async fn mark_all_read(&self, user_id: &str) -> StoreResult<usize>;
}

/// A user's webhook endpoint (`webhook_endpoints`; the notifier delivers to it).
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookEndpointRecord {
    pub id: String,
    pub user_id: String,
    pub url: String,
    pub description: Option<String>,
    /// The HMAC key, as text (the notifier signs with its bytes).
    pub secret: String,
    pub disabled: bool,
    pub disabled_reason: Option<String>,
    pub disabled_at: Option<Millis>,
    pub created_at: Millis,
}

impl std::fmt::Debug for WebhookEndpointRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookEndpointRecord")
            .field("id", &self.id)
            .field("user_id", &self.user_id)
            .field("url", &self.url)
            .field("disabled", &self.disabled)
            .finish_non_exhaustive()
    }
}

/// A user's webhook endpoints. Every call is scoped to the user: another user's endpoint id
/// is simply not found.
#[async_trait]
pub trait WebhookStore: Send + Sync + 'static {
    async fn list_endpoints(&self, user_id: &str) -> StoreResult<Vec<WebhookEndpointRecord>>;
    async fn get_endpoint(
        &self,
        user_id: &str,
        endpoint_id: &str,
    ) -> StoreResult<Option<WebhookEndpointRecord>>;
    /// Writes a new endpoint (enabled).
    async fn insert_endpoint(&self, endpoint: &WebhookEndpointRecord) -> StoreResult<()>;
    /// Removes it; `false` when there was none.
    async fn delete_endpoint(&self, user_id: &str, endpoint_id: &str) -> StoreResult<bool>;
    /// Enables it again (clears the reason and time it was disabled); `false` when there is
    /// none. Never creates a row.
    async fn enable_endpoint(&self, user_id: &str, endpoint_id: &str) -> StoreResult<bool>;
    /// Replaces its secret; `false` when there is none. Never creates a row.
    async fn set_endpoint_secret(
        &self,
        user_id: &str,
        endpoint_id: &str,
        secret: &str,
    ) -> StoreResult<bool>;
}

/// A payment provider event received on `POST v1/payments/webhook`
/// (`payment_provider_events`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderEventRecord {
    pub provider_event_id: String,
    pub payment_id: String,
    pub order_id: String,
    pub event_type: String,
    /// When ingest first accepted it (the record's `occurred_at`, on every retry).
    pub received_at: Millis,
    /// Whether its record is on `payments.requests` (the broker acknowledged it).
    pub forwarded: bool,
}

/// What claiming a provider event id found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderEventClaim {
    /// First delivery: the row was written (not forwarded yet).
    New,
    /// Seen before: the stored row.
    Existing(ProviderEventRecord),
}

/// Deduplication of the provider's events by its event id.
#[async_trait]
pub trait ProviderEventStore: Send + Sync + 'static {
    /// Writes `event` unless its id is known (`INSERT ... IF NOT EXISTS`).
    async fn claim_provider_event(
        &self,
        event: &ProviderEventRecord,
    ) -> StoreResult<ProviderEventClaim>;
    /// Records that the event's record is on Kafka.
    async fn mark_provider_event_forwarded(&self, provider_event_id: &str) -> StoreResult<()>;
}

/// Readiness of the CQL store.
#[async_trait]
pub trait StoreProbe: Send + Sync + 'static {
    async fn ping(&self) -> StoreResult<()>;
}

/// Everything the router needs from storage, as shared trait objects.
#[derive(Clone)]
pub struct Stores {
    pub accounts: std::sync::Arc<dyn AccountStore>,
    pub catalog: std::sync::Arc<dyn CatalogStore>,
    pub orders: std::sync::Arc<dyn OrderStore>,
    pub payments: std::sync::Arc<dyn PaymentStore>,
    pub notifications: std::sync::Arc<dyn NotificationStore>,
    pub webhooks: std::sync::Arc<dyn WebhookStore>,
    pub provider_events: std::sync::Arc<dyn ProviderEventStore>,
    pub probe: std::sync::Arc<dyn StoreProbe>,
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores").finish_non_exhaustive()
    }
}
