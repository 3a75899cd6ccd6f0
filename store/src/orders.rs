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
use scylla::serialize::SerializationError;
use scylla::serialize::row::{RowSerializationContext, SerializeRow};
use scylla::serialize::writers::RowWriter;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlTimestamp;

use crate::inventory::StoreError;
use crate::schema::Keyspace;

/// Orders per write request: one unlogged batch carries each order's two rows (its row and its
/// listing, two partitions), so a request costs the store one parse and one answer for ten
/// rows. Five orders keep a batch at ten partitions, the point past which Cassandra logs a
/// warning for every unlogged batch (`unlogged_batch_across_partitions_warn_threshold`), and
/// at about 2 KiB, far below the size warning. The rows need no atomicity (each is
/// idempotent); the batch only saves round trips.
const ORDERS_PER_BATCH: usize = 5;

/// Most batches in flight at once for one call of [`OrderRows::write`]: a batch's rows are
/// written in about (orders / ORDERS_PER_BATCH / CONCURRENCY) round trips, and that time
/// bounds the booking processor's throughput (its next commit waits for this one).
const CONCURRENCY: usize = 64;

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
#[derive(Clone)]
pub struct OrderRows {
    session: Arc<Session>,
    insert_order: PreparedStatement,
    insert_listing: PreparedStatement,
    /// The statements of a batch of [`ORDERS_PER_BATCH`] orders, built once.
    full_batch: Batch,
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
        let full_batch = batch_of(&insert_order, &insert_listing, ORDERS_PER_BATCH);
        Ok(OrderRows {
            session,
            insert_order,
            insert_listing,
            full_batch,
        })
    }

    /// Writes both rows of every order, [`ORDERS_PER_BATCH`] orders per request and at most
    /// [`CONCURRENCY`] requests in flight; the first error (retryable when the store was
    /// unavailable) after every request has ended. Safe to repeat.
    pub async fn write(&self, orders: &[NewOrder]) -> Result<(), StoreError> {
        // Built eagerly: the stream below then holds no closure (a spawned caller must be
        // `Send` for every lifetime).
        let short = orders.len() % ORDERS_PER_BATCH;
        let short_batch =
            (short > 0).then(|| batch_of(&self.insert_order, &self.insert_listing, short));
        let chunks = orders.chunks(ORDERS_PER_BATCH);
        let mut requests = Vec::with_capacity(chunks.len());
        for chunk in chunks {
            // Only the last chunk can be short (a chunk is never empty, so with no short chunk
            // the full batch is always chosen).
            let batch = match &short_batch {
                Some(batch) if chunk.len() == short => batch,
                _ => &self.full_batch,
            };
            let values: Vec<RowValues<'_>> = chunk.iter().flat_map(RowValues::of).collect();
            requests.push(self.session.batch(batch, values));
        }
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

impl std::fmt::Debug for OrderRows {
    // By hand: the driver's `Batch` has no `Debug`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrderRows")
            .field("insert_order", &self.insert_order)
            .field("insert_listing", &self.insert_listing)
            .finish_non_exhaustive()
    }
}

/// An unlogged batch of `orders` orders' statements: each order's row, then its listing.
fn batch_of(
    insert_order: &PreparedStatement,
    insert_listing: &PreparedStatement,
    orders: usize,
) -> Batch {
    let mut batch = Batch::new(BatchType::Unlogged);
    for _ in 0..orders {
        batch.append_statement(insert_order.clone());
        batch.append_statement(insert_listing.clone());
    }
    batch
}

type OrderRowValues<'a> = (
    &'a str,
    &'a str,
    &'a str,
    i32,
    CqlTimestamp,
    CqlTimestamp,
    &'a str,
    i64,
);
type ListingRowValues<'a> = (&'a str, CqlTimestamp, &'a str, &'a str, i32, i64);

/// The values of one statement of a batch from [`batch_of`].
enum RowValues<'a> {
    Order(OrderRowValues<'a>),
    Listing(ListingRowValues<'a>),
}

impl<'a> RowValues<'a> {
    /// One order's values, in the order [`batch_of`] puts its statements.
    fn of(o: &'a NewOrder) -> [RowValues<'a>; 2] {
        let at = CqlTimestamp(o.created_at);
        // Every cell at the accept time, in microseconds: a replay writes the same cells.
        let micros = o.created_at.saturating_mul(1000);
        let key = o.idempotency_key.as_deref().unwrap_or("");
        [
            RowValues::Order((
                &o.order_id,
                &o.event_id,
                &o.user_id,
                o.number_slot,
                at,
                at,
                key,
                micros,
            )),
            RowValues::Listing((
                &o.user_id,
                at,
                &o.order_id,
                &o.event_id,
                o.number_slot,
                micros,
            )),
        ]
    }
}

impl SerializeRow for RowValues<'_> {
    fn serialize(
        &self,
        ctx: &RowSerializationContext<'_>,
        writer: &mut RowWriter,
    ) -> Result<(), SerializationError> {
        match self {
            RowValues::Order(v) => v.serialize(ctx, writer),
            RowValues::Listing(v) => v.serialize(ctx, writer),
        }
    }

    fn is_empty(&self) -> bool {
        false
    }
}
