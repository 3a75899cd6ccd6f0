//! The orders read model: `orders` (one row per order, by id) and `orders_by_user` (a fan's
//! orders, newest first). Written by the booking processor, the single writer of each event,
//! once per order it decided, beside the batch's Kafka transaction and before its fenced
//! state save (the commit point that makes the decision readable; see the processor's
//! runtime). Ingest writes nothing here: it reads these rows for `GET v1/orders` and
//! `GET v1/orders/{id}` (its own statements, the columns below).
//!
//! Idempotent: every cell is written `USING TIMESTAMP` of the order's accept time (the
//! `BookingRequested`'s `occurred_at`, in microseconds), and the values are a function of the
//! request, so a replay after a crash writes the same cells again and changes nothing.

use std::sync::Arc;

use futures::StreamExt;
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlTimestamp;

use crate::inventory::StoreError;
use crate::schema::Keyspace;

/// Most writes in flight at once for one call of [`OrderRows::write`]: a batch's rows are
/// written in about (rows / CONCURRENCY) round trips, and that time bounds the booking
/// processor's throughput (its next commit waits for this one).
const CONCURRENCY: usize = 512;

/// One decided order's rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    pub order_id: String,
    pub event_id: String,
    pub user_id: String,
    pub number_slot: i32,
    /// When ingest accepted the request (ms since the epoch).
    pub created_at: i64,
    pub idempotency_key: Option<String>,
}

/// Writes the rows of decided orders.
#[derive(Debug, Clone)]
pub struct OrderRows {
    session: Arc<Session>,
    insert_order: PreparedStatement,
    insert_listing: PreparedStatement,
}

impl OrderRows {
    /// Prepares the statements. The schema must exist (`schema::ensure_schema`).
    pub async fn new(session: Arc<Session>, keyspace: &Keyspace) -> Result<Self, StoreError> {
        let orders = keyspace.table("orders");
        let listing = keyspace.table("orders_by_user");
        let prepare = |cql: String| {
            let session = Arc::clone(&session);
            async move { session.prepare(cql).await }
        };
        let failed = |e| StoreError::prepare("preparing order statements", e);
        let insert_order = prepare(format!(
            "INSERT INTO {orders} (id, event_id, user_id, number_slot, status, created_at, \
             updated_at, idempotency_key) VALUES (?, ?, ?, ?, 'PENDING', ?, ?, ?) \
             USING TIMESTAMP ?"
        ))
        .await
        .map_err(failed)?;
        let insert_listing = prepare(format!(
            "INSERT INTO {listing} (user_id, created_at, order_id, event_id, number_slot, \
             status) VALUES (?, ?, ?, ?, ?, 'PENDING') USING TIMESTAMP ?"
        ))
        .await
        .map_err(failed)?;
        Ok(OrderRows {
            session,
            insert_order,
            insert_listing,
        })
    }

    /// Writes both rows of every order, at most [`CONCURRENCY`] requests in flight; the first
    /// error (retryable when the store was unavailable) after every request has ended. Safe to
    /// repeat.
    pub async fn write(&self, orders: &[NewOrder]) -> Result<(), StoreError> {
        // Built eagerly: the stream below then holds no closure (a spawned caller must be
        // `Send` for every lifetime).
        let requests: Vec<_> = orders
            .iter()
            .flat_map(|o| {
                let at = CqlTimestamp(o.created_at);
                let micros = o.created_at.saturating_mul(1000);
                let key = o.idempotency_key.as_deref().unwrap_or("");
                let row = self.session.execute_unpaged(
                    &self.insert_order,
                    (
                        &o.order_id,
                        &o.event_id,
                        &o.user_id,
                        o.number_slot,
                        at,
                        at,
                        key,
                        micros,
                    ),
                );
                let listing = self.session.execute_unpaged(
                    &self.insert_listing,
                    (
                        &o.user_id,
                        at,
                        &o.order_id,
                        &o.event_id,
                        o.number_slot,
                        micros,
                    ),
                );
                [
                    futures::future::Either::Left(row),
                    futures::future::Either::Right(listing),
                ]
            })
            .collect();
        let mut results = futures::stream::iter(requests).buffer_unordered(CONCURRENCY);
        let mut first_error = None;
        // Bounded: one result per request.
        while let Some(result) = results.next().await {
            if let Err(e) = result
                && first_error.is_none()
            {
                first_error = Some(StoreError::execution("write order rows", e));
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}
