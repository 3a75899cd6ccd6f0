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
mod statements;
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
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlTimestamp, CqlValue, Row};

use self::statements::{PageStatements, Pages, Statements};
use super::{Direction, Page, PageRequest, StoreError, StoreProbe, StoreResult, Stores};

/// Adds the columns of `boxoffice_store::schema::MIGRATIONS` that an existing keyspace lacks
/// (`CREATE TABLE IF NOT EXISTS` does not change a table that exists). Safe to run from several
/// replicas at once.
pub async fn ensure_columns(session: &Session, keyspace: &Keyspace) -> StoreResult<()> {
    boxoffice_store::schema::apply_migrations(session, keyspace)
        .await
        .map_err(|e| StoreError::unavailable("adding columns", e))
}

/// Every CQL store of ingest.
#[derive(Debug)]
pub struct CqlStores {
    session: Arc<Session>,
    s: Statements,
    pages: Pages,
    /// The booking processor's tables, through their owner's reader interface.
    inventory: InventoryReader,
    /// The payment processor's tables, through their owner's reader interface.
    payment_reader: PaymentReader,
    /// The notifier's in-app list, through its owner's reader interface.
    notification_reader: NotificationReader,
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
        let s = Statements::prepare(&session, keyspace).await?;
        let pages = Pages::prepare(&session, keyspace).await?;
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
            pages,
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
        let rows: Vec<T> = match &request.cursor {
            None => self.all(&statements.first, (key, fetch), operation).await?,
            Some(c) => {
                let statement = match request.direction {
                    Direction::Next => &statements.next,
                    Direction::Previous => &statements.previous,
                };
                let values = (key, CqlTimestamp(c.at), c.id.as_str(), fetch);
                self.all(statement, values, operation).await?
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
