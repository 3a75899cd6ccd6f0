//! The CQL implementations of every store trait, on one session with statements prepared once
//! at startup. Split by concern: `accounts` (profiles, uniqueness claims, refresh tokens),
//! `catalog` (events, categories, inventory counters), `orders`, `payments`,
//! `notifications`, `webhooks` (users' endpoints), `provider_events` (the payment provider's
//! deliveries, deduplicated). Absent texts are written as `''` rather than `null` (no
//! tombstones). The processors' and the notifier's tables are read only through their owners'
//! reader interfaces (`boxoffice_store::{inventory, payments, notifications}`).

mod accounts;
mod catalog;
mod notifications;
mod orders;
mod payments;
mod provider_events;
mod webhooks;

use std::sync::Arc;

use async_trait::async_trait;
use boxoffice_store::inventory::InventoryReader;
use boxoffice_store::notifications::NotificationReader;
use boxoffice_store::payments::PaymentReader;
use boxoffice_store::schema::Keyspace;
use scylla::client::session::Session;
use scylla::response::query_result::QueryResult;
use scylla::serialize::row::SerializeRow;
use scylla::serialize::value::SerializeValue;
use scylla::statement::Consistency;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlTimestamp, CqlValue, Row};

use super::{Direction, Page, PageRequest, StoreError, StoreProbe, StoreResult, Stores};

/// Adds the columns of `boxoffice_store::schema::MIGRATIONS` that an existing keyspace lacks
/// (`CREATE TABLE IF NOT EXISTS` does not change a table that exists). Safe to run from several
/// replicas at once.
pub async fn ensure_columns(session: &Session, keyspace: &Keyspace) -> StoreResult<()> {
    boxoffice_store::schema::apply_migrations(session, keyspace)
        .await
        .map_err(|e| StoreError::unavailable("adding columns", e))
}

/// Statements of one newest-first list: first page, older than a cursor, newer than a cursor.
#[derive(Debug)]
struct PageStatements {
    first: PreparedStatement,
    next: PreparedStatement,
    previous: PreparedStatement,
}

/// Every CQL store of ingest.
#[derive(Debug)]
pub struct CqlStores {
    session: Arc<Session>,
    s: Statements,
    /// The booking processor's tables, through their owner's reader interface.
    inventory: InventoryReader,
    /// The payment processor's tables, through their owner's reader interface.
    payment_reader: PaymentReader,
    /// The notifier's in-app list, through its owner's reader interface.
    notification_reader: NotificationReader,
}

#[derive(Debug)]
struct Statements {
    ping: PreparedStatement,
    // accounts
    claim_email: PreparedStatement,
    claim_user_name: PreparedStatement,
    release_email: PreparedStatement,
    release_user_name: PreparedStatement,
    insert_profile: PreparedStatement,
    insert_user: PreparedStatement,
    insert_user_listing: PreparedStatement,
    email_owner: PreparedStatement,
    user_name_owner: PreparedStatement,
    read_profile: PreparedStatement,
    read_user: PreparedStatement,
    update_user: PreparedStatement,
    update_profile_name: PreparedStatement,
    set_role: PreparedStatement,
    set_email_verified: PreparedStatement,
    set_password_hash: PreparedStatement,
    users_page: PageStatements,
    insert_refresh: PreparedStatement,
    read_refresh: PreparedStatement,
    consume_refresh: PreparedStatement,
    revoke_family: PreparedStatement,
    read_family: PreparedStatement,
    // catalog
    scan_events: PreparedStatement,
    read_event: PreparedStatement,
    insert_event: PreparedStatement,
    scan_categories: PreparedStatement,
    read_category: PreparedStatement,
    insert_category: PreparedStatement,
    // orders
    insert_order: PreparedStatement,
    insert_order_if_new: PreparedStatement,
    read_order: PreparedStatement,
    read_order_serial: PreparedStatement,
    insert_order_listing: PreparedStatement,
    delete_order_listing: PreparedStatement,
    delete_order: PreparedStatement,
    orders_page: PageStatements,
    // payments
    insert_payment_listing: PreparedStatement,
    insert_submission: PreparedStatement,
    read_submission: PreparedStatement,
    payments_page: PageStatements,
    // webhooks
    list_endpoints: PreparedStatement,
    read_endpoint: PreparedStatement,
    insert_endpoint: PreparedStatement,
    delete_endpoint: PreparedStatement,
    enable_endpoint: PreparedStatement,
    set_endpoint_secret: PreparedStatement,
    // provider events
    claim_provider_event: PreparedStatement,
    read_provider_event_serial: PreparedStatement,
    mark_provider_event_forwarded: PreparedStatement,
}

/// Bucket of the single `users_by_created` partition.
const USERS_BUCKET: i32 = 0;

impl CqlStores {
    /// Adds the migrated columns the keyspace lacks, then prepares every statement. The tables
    /// must exist (`ensure_schema`).
    pub async fn new(session: Arc<Session>, keyspace: &Keyspace) -> StoreResult<Self> {
        // Here rather than only at startup: statements below name the added columns, and
        // every way of building the stores (the binary, the test harness, the load
        // generator) must find them.
        ensure_columns(&session, keyspace).await?;
        let t = |name: &str| keyspace.table(name);
        let p = Preparer { session: &session };
        let page = |table: String, columns: &str, key: &str, at: &str, id: &str| {
            (
                format!("SELECT {columns} FROM {table} WHERE {key} = ? LIMIT ?"),
                format!(
                    "SELECT {columns} FROM {table} WHERE {key} = ? AND ({at}, {id}) < (?, ?) LIMIT ?"
                ),
                format!(
                    "SELECT {columns} FROM {table} WHERE {key} = ? AND ({at}, {id}) > (?, ?) ORDER BY {at} ASC, {id} ASC LIMIT ?"
                ),
            )
        };
        let users_page = page(
            t("users_by_created"),
            "user_id, created_at",
            "bucket",
            "created_at",
            "user_id",
        );
        let orders_page = page(
            t("orders_by_user"),
            "order_id, event_id, number_slot, created_at",
            "user_id",
            "created_at",
            "order_id",
        );
        let payments_page = page(
            t("payments_by_user"),
            "payment_id, order_id, amount_minor, currency, created_at",
            "user_id",
            "created_at",
            "payment_id",
        );
        let mut read_order_serial = p
            .prepare(format!("{ORDER_SELECT} FROM {} WHERE id = ?", t("orders")))
            .await?;
        read_order_serial.set_consistency(Consistency::LocalSerial);
        let mut read_provider_event_serial = p
            .prepare(format!(
                "SELECT {PROVIDER_EVENT_COLUMNS} FROM {} WHERE provider_event_id = ?",
                t("payment_provider_events")
            ))
            .await?;
        read_provider_event_serial.set_consistency(Consistency::LocalSerial);
        let s = Statements {
            ping: p.prepare("SELECT now() FROM system.local".to_owned()).await?,
            claim_email: p
                .prepare(format!("INSERT INTO {} (email, user_id) VALUES (?, ?) IF NOT EXISTS", t("auth_by_email")))
                .await?,
            claim_user_name: p
                .prepare(format!(
                    "INSERT INTO {} (user_name, user_id) VALUES (?, ?) IF NOT EXISTS",
                    t("auth_by_user_name")
                ))
                .await?,
            release_email: p
                .prepare(format!("DELETE FROM {} WHERE email = ? IF user_id = ?", t("auth_by_email")))
                .await?,
            release_user_name: p
                .prepare(format!("DELETE FROM {} WHERE user_name = ? IF user_id = ?", t("auth_by_user_name")))
                .await?,
            insert_profile: p
                .prepare(format!(
                    "INSERT INTO {} (user_id, email, user_name, password_hash, role, created_at, email_verified_at) \
                     VALUES (?, ?, ?, ?, ?, ?, ?)",
                    t("auth_profiles")
                ))
                .await?,
            insert_user: p
                .prepare(format!(
                    "INSERT INTO {} (id, email, user_name, first_name, last_name, mobile_phone, created_at, updated_at) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    t("users")
                ))
                .await?,
            insert_user_listing: p
                .prepare(format!(
                    "INSERT INTO {} (bucket, created_at, user_id) VALUES (?, ?, ?)",
                    t("users_by_created")
                ))
                .await?,
            email_owner: p
                .prepare(format!("SELECT user_id FROM {} WHERE email = ?", t("auth_by_email")))
                .await?,
            user_name_owner: p
                .prepare(format!("SELECT user_id FROM {} WHERE user_name = ?", t("auth_by_user_name")))
                .await?,
            read_profile: p
                .prepare(format!(
                    "SELECT password_hash, role, email_verified_at, password_changed_at FROM {} WHERE user_id = ?",
                    t("auth_profiles")
                ))
                .await?,
            set_email_verified: p
                .prepare(format!("UPDATE {} SET email_verified_at = ? WHERE user_id = ?", t("auth_profiles")))
                .await?,
            set_password_hash: p
                .prepare(format!(
                    "UPDATE {} SET password_hash = ?, password_changed_at = ? WHERE user_id = ?",
                    t("auth_profiles")
                ))
                .await?,
            read_user: p
                .prepare(format!(
                    "SELECT id, email, user_name, first_name, last_name, birth_day, mobile_phone, created_at, updated_at \
                     FROM {} WHERE id = ?",
                    t("users")
                ))
                .await?,
            update_user: p
                .prepare(format!(
                    "UPDATE {} SET user_name = ?, first_name = ?, last_name = ?, birth_day = ?, mobile_phone = ?, \
                     updated_at = ? WHERE id = ?",
                    t("users")
                ))
                .await?,
            update_profile_name: p
                .prepare(format!("UPDATE {} SET user_name = ? WHERE user_id = ?", t("auth_profiles")))
                .await?,
            set_role: p
                .prepare(format!("UPDATE {} SET role = ? WHERE user_id = ?", t("auth_profiles")))
                .await?,
            users_page: p.page(users_page).await?,
            insert_refresh: p
                .prepare(format!(
                    "INSERT INTO {} (token_hash, user_id, family_id, expires_at, used, created_at) \
                     VALUES (?, ?, ?, ?, false, ?) USING TTL ?",
                    t("refresh_tokens")
                ))
                .await?,
            read_refresh: p
                .prepare(format!(
                    "SELECT user_id, family_id, expires_at, used, created_at FROM {} WHERE token_hash = ?",
                    t("refresh_tokens")
                ))
                .await?,
            consume_refresh: p
                .prepare(format!("UPDATE {} SET used = true WHERE token_hash = ? IF used = false", t("refresh_tokens")))
                .await?,
            revoke_family: p
                .prepare(format!(
                    "UPDATE {} SET revoked = true, revoked_at = ? WHERE family_id = ?",
                    t("auth_sessions")
                ))
                .await?,
            read_family: p
                .prepare(format!("SELECT revoked FROM {} WHERE family_id = ?", t("auth_sessions")))
                .await?,
            scan_events: p.prepare(format!("SELECT {EVENT_COLUMNS} FROM {}", t("events"))).await?,
            read_event: p
                .prepare(format!("SELECT {EVENT_COLUMNS} FROM {} WHERE id = ?", t("events")))
                .await?,
            insert_event: p
                .prepare(format!(
                    "INSERT INTO {} ({EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    t("events")
                ))
                .await?,
            scan_categories: p.prepare(format!("SELECT id, name, is_free FROM {}", t("cate_events"))).await?,
            read_category: p
                .prepare(format!("SELECT id, name, is_free FROM {} WHERE id = ?", t("cate_events")))
                .await?,
            insert_category: p
                .prepare(format!("INSERT INTO {} (id, name, is_free) VALUES (?, ?, ?)", t("cate_events")))
                .await?,
            insert_order: p.prepare(format!("{ORDER_INSERT} {}{ORDER_VALUES}", t("orders"))).await?,
            insert_order_if_new: p
                .prepare(format!("{ORDER_INSERT} {}{ORDER_VALUES} IF NOT EXISTS", t("orders")))
                .await?,
            read_order: p.prepare(format!("{ORDER_SELECT} FROM {} WHERE id = ?", t("orders"))).await?,
            read_order_serial,
            insert_order_listing: p
                .prepare(format!(
                    "INSERT INTO {} (user_id, created_at, order_id, event_id, number_slot, status) VALUES (?, ?, ?, ?, ?, 'PENDING')",
                    t("orders_by_user")
                ))
                .await?,
            delete_order_listing: p
                .prepare(format!(
                    "DELETE FROM {} WHERE user_id = ? AND created_at = ? AND order_id = ?",
                    t("orders_by_user")
                ))
                .await?,
            delete_order: p
                .prepare(format!("DELETE FROM {} WHERE id = ?", t("orders")))
                .await?,
            orders_page: p.page(orders_page).await?,
            insert_payment_listing: p
                .prepare(format!(
                    "INSERT INTO {} (user_id, created_at, payment_id, order_id, amount_minor, currency) VALUES (?, ?, ?, ?, ?, ?)",
                    t("payments_by_user")
                ))
                .await?,
            insert_submission: p
                .prepare(format!(
                    "INSERT INTO {} (payment_id, order_id, user_id, amount_minor, currency, submitted_at) VALUES (?, ?, ?, ?, ?, ?)",
                    t("payment_submissions")
                ))
                .await?,
            read_submission: p
                .prepare(format!(
                    "SELECT payment_id, order_id, user_id, amount_minor, currency, submitted_at FROM {} WHERE payment_id = ?",
                    t("payment_submissions")
                ))
                .await?,
            payments_page: p.page(payments_page).await?,
            list_endpoints: p
                .prepare(format!("SELECT {ENDPOINT_COLUMNS} FROM {} WHERE user_id = ?", t("webhook_endpoints")))
                .await?,
            read_endpoint: p
                .prepare(format!(
                    "SELECT {ENDPOINT_COLUMNS} FROM {} WHERE user_id = ? AND endpoint_id = ?",
                    t("webhook_endpoints")
                ))
                .await?,
            // `disabled_at` is left unset (no tombstone); `''` is "no reason".
            insert_endpoint: p
                .prepare(format!(
                    "INSERT INTO {} (user_id, endpoint_id, url, description, secret, disabled, disabled_reason, \
                     created_at) VALUES (?, ?, ?, ?, ?, false, '', ?)",
                    t("webhook_endpoints")
                ))
                .await?,
            // Lightweight transactions from here on: an UPDATE without `IF EXISTS` would
            // recreate a row deleted meanwhile, without URL or secret, and the notifier would
            // then fail every delivery to it.
            delete_endpoint: p
                .prepare(format!(
                    "DELETE FROM {} WHERE user_id = ? AND endpoint_id = ? IF EXISTS",
                    t("webhook_endpoints")
                ))
                .await?,
            enable_endpoint: p
                .prepare(format!(
                    "UPDATE {} SET disabled = false, disabled_reason = '', disabled_at = null \
                     WHERE user_id = ? AND endpoint_id = ? IF EXISTS",
                    t("webhook_endpoints")
                ))
                .await?,
            set_endpoint_secret: p
                .prepare(format!(
                    "UPDATE {} SET secret = ? WHERE user_id = ? AND endpoint_id = ? IF EXISTS",
                    t("webhook_endpoints")
                ))
                .await?,
            claim_provider_event: p
                .prepare(format!(
                    "INSERT INTO {} ({PROVIDER_EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, false) IF NOT EXISTS",
                    t("payment_provider_events")
                ))
                .await?,
            read_provider_event_serial,
            // An LWT like the claim: mixing Paxos and plain writes on one row can order them
            // wrongly when clocks disagree.
            mark_provider_event_forwarded: p
                .prepare(format!(
                    "UPDATE {} SET forwarded = true WHERE provider_event_id = ? IF EXISTS",
                    t("payment_provider_events")
                ))
                .await?,
        };
        let inventory = InventoryReader::new(Arc::clone(&session), keyspace)
            .await
            .map_err(|e| StoreError::unavailable("preparing the inventory reads", e))?;
        let payment_reader = PaymentReader::new(Arc::clone(&session), keyspace)
            .await
            .map_err(|e| StoreError::unavailable("preparing the payment reads", e))?;
        let notification_reader = NotificationReader::new(Arc::clone(&session), keyspace)
            .await
            .map_err(|e| StoreError::unavailable("preparing the notification reads", e))?;
        Ok(CqlStores {
            session,
            s,
            inventory,
            payment_reader,
            notification_reader,
        })
    }

    /// The stores as the router takes them.
    pub fn into_stores(self) -> Stores {
        let all = Arc::new(self);
        Stores {
            accounts: all.clone(),
            catalog: all.clone(),
            orders: all.clone(),
            payments: all.clone(),
            notifications: all.clone(),
            webhooks: all.clone(),
            provider_events: all.clone(),
            probe: all,
        }
    }

    async fn run(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
        operation: &'static str,
    ) -> StoreResult<QueryResult> {
        self.session
            .execute_unpaged(statement, values)
            .await
            .map_err(|e| StoreError::unavailable(operation, e))
    }

    /// Every row of a single-row-or-none read.
    async fn one<T>(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
        operation: &'static str,
    ) -> StoreResult<Option<T>>
    where
        T: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm>,
    {
        self.run(statement, values, operation)
            .await?
            .into_rows_result()
            .map_err(|e| StoreError::corrupt(operation, e))?
            .maybe_first_row::<T>()
            .map_err(|e| StoreError::corrupt(operation, e))
    }

    async fn all<T>(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
        operation: &'static str,
    ) -> StoreResult<Vec<T>>
    where
        T: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm>,
    {
        let rows = self
            .run(statement, values, operation)
            .await?
            .into_rows_result()
            .map_err(|e| StoreError::corrupt(operation, e))?;
        rows.rows::<T>()
            .map_err(|e| StoreError::corrupt(operation, e))?
            .collect::<Result<Vec<T>, _>>()
            .map_err(|e| StoreError::corrupt(operation, e))
    }

    /// A full scan, paged by the driver.
    async fn scan<T>(
        &self,
        statement: &PreparedStatement,
        operation: &'static str,
    ) -> StoreResult<Vec<T>>
    where
        T: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm> + 'static,
    {
        use futures::TryStreamExt;
        self.session
            .execute_iter(statement.clone(), &[])
            .await
            .map_err(|e| StoreError::unavailable(operation, e))?
            .rows_stream::<T>()
            .map_err(|e| StoreError::corrupt(operation, e))?
            .try_collect()
            .await
            .map_err(|e| StoreError::unavailable(operation, e))
    }

    /// One page of a newest-first list (see `PageStatements`).
    async fn page<K, T>(
        &self,
        statements: &PageStatements,
        key: K,
        request: &PageRequest,
        operation: &'static str,
    ) -> StoreResult<Page<T>>
    where
        K: SerializeValue,
        T: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm>,
    {
        let fetch = fetch_count(request);
        let rows: Vec<T> = match (&request.cursor, request.direction) {
            (None, _) => self.all(&statements.first, (key, fetch), operation).await?,
            (Some(c), Direction::Next) => {
                self.all(
                    &statements.next,
                    (key, CqlTimestamp(c.at), c.id.as_str(), fetch),
                    operation,
                )
                .await?
            }
            (Some(c), Direction::Previous) => {
                self.all(
                    &statements.previous,
                    (key, CqlTimestamp(c.at), c.id.as_str(), fetch),
                    operation,
                )
                .await?
            }
        };
        Ok(into_page(rows, request))
    }
}

/// Rows a page read asks for: one more than the page holds, to tell whether more lie beyond.
fn fetch_count(request: &PageRequest) -> i32 {
    i32::try_from(request.limit + 1).unwrap_or(i32::MAX)
}

/// The page [`fetch_count`] rows make: `more` when the extra row came, and newest first again
/// after a read towards newer items (which reads oldest first).
fn into_page<T>(mut rows: Vec<T>, request: &PageRequest) -> Page<T> {
    let more = rows.len() > request.limit;
    rows.truncate(request.limit);
    if request.cursor.is_some() && request.direction == Direction::Previous {
        rows.reverse();
    }
    Page { items: rows, more }
}

struct Preparer<'a> {
    session: &'a Session,
}

impl Preparer<'_> {
    async fn prepare(&self, cql: String) -> StoreResult<PreparedStatement> {
        let mut statement =
            self.session.prepare(cql.clone()).await.map_err(|e| {
                StoreError::unavailable("preparing statements", format!("{e} ({cql})"))
            })?;
        statement.set_is_idempotent(!cql.contains(" IF "));
        Ok(statement)
    }

    async fn page(
        &self,
        (first, next, previous): (String, String, String),
    ) -> StoreResult<PageStatements> {
        Ok(PageStatements {
            first: self.prepare(first).await?,
            next: self.prepare(next).await?,
            previous: self.prepare(previous).await?,
        })
    }
}

/// Reads the `[applied]` column of a lightweight transaction's answer.
fn applied(result: QueryResult, operation: &'static str) -> StoreResult<bool> {
    let rows = result
        .into_rows_result()
        .map_err(|e| StoreError::corrupt(operation, e))?;
    let row: Row = rows
        .first_row::<Row>()
        .map_err(|e| StoreError::corrupt(operation, e))?;
    match row.columns.first() {
        Some(Some(CqlValue::Boolean(applied))) => Ok(*applied),
        other => Err(StoreError::corrupt(
            operation,
            format!("no [applied] column: {other:?}"),
        )),
    }
}

const EVENT_COLUMNS: &str = "id, name, description, venue, category_id, starts_at, price_minor, currency, \
    capacity, sale_starts_at, sale_ends_at, hold_seconds, max_per_order, max_per_user, created_at, updated_at";

const ENDPOINT_COLUMNS: &str = "endpoint_id, url, description, secret, disabled, disabled_reason, \
    disabled_at, created_at";

const PROVIDER_EVENT_COLUMNS: &str =
    "provider_event_id, payment_id, order_id, event_type, received_at, forwarded";

const ORDER_INSERT: &str = "INSERT INTO";
const ORDER_VALUES: &str = " (id, event_id, user_id, number_slot, status, created_at, updated_at, \
    request_fingerprint, idempotency_key) VALUES (?, ?, ?, ?, 'PENDING', ?, ?, ?, ?)";
const ORDER_SELECT: &str =
    "SELECT id, event_id, user_id, number_slot, created_at, request_fingerprint, idempotency_key";

#[async_trait]
impl StoreProbe for CqlStores {
    async fn ping(&self) -> StoreResult<()> {
        self.run(&self.s.ping, (), "ping").await.map(|_| ())
    }
}

/// Text as stored: `''` for none.
fn text(value: &Option<String>) -> &str {
    value.as_deref().unwrap_or("")
}

/// Text as read: `''` and `null` are none.
fn none_if_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}
