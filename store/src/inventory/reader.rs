//! The inventory family's reader interface for other services: what the booking processor last
//! saved of an event's counters and of one order's decision, read without loading the event's
//! state. Read-only (the booking processor is the family's only writer); ingest's availability
//! and order pages use it.

use std::sync::Arc;

use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;

use super::{StoreError, StoredStatus};
use crate::schema::Keyspace;

/// An event's counters as last saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredCounters {
    pub capacity: i32,
    pub held: i32,
    pub sold: i32,
    /// The availability sequence (every change counts one).
    pub sequence: i64,
}

/// One order's decision as last saved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDecision {
    pub status: StoredStatus,
    pub slots: i32,
    pub amount_minor: i64,
    pub currency: String,
    pub payment_id: Option<String>,
    /// When the hold ends (ms since the epoch), while the order is reserved.
    pub hold_expires_at: Option<i64>,
    /// The wire name of the reject or cancel reason (`SOLD_OUT`, `PAYMENT_FAILED`, ...).
    pub reason: Option<String>,
    /// Paid after its hold had expired.
    pub late: bool,
}

/// Reads the inventory family for other services.
#[derive(Debug, Clone)]
pub struct InventoryReader {
    session: Arc<Session>,
    counters: PreparedStatement,
    decision: PreparedStatement,
}

fn non_empty(text: Option<String>) -> Option<String> {
    text.filter(|t| !t.is_empty())
}

impl InventoryReader {
    /// Prepares the reads. The schema must exist (`schema::ensure_schema`).
    pub async fn new(session: Arc<Session>, keyspace: &Keyspace) -> Result<Self, StoreError> {
        let inventory = keyspace.table("event_inventory");
        const OPERATION: &str = "preparing the inventory reads";
        let mut counters = session
            .prepare(format!(
                "SELECT capacity, held, sold, sequence FROM {inventory} WHERE event_id = ? LIMIT 1"
            ))
            .await
            .map_err(|e| StoreError::prepare(OPERATION, e))?;
        let mut decision = session
            .prepare(format!(
                "SELECT status, slots, amount_minor, order_currency, payment_id, hold_expires_at, \
                 reject_reason, cancel_reason, late FROM {inventory} WHERE event_id = ? AND order_id = ?"
            ))
            .await
            .map_err(|e| StoreError::prepare(OPERATION, e))?;
        counters.set_is_idempotent(true);
        decision.set_is_idempotent(true);
        Ok(InventoryReader {
            session,
            counters,
            decision,
        })
    }

    /// The event's counters; `None` while the booking processor has not configured it.
    pub async fn counters(&self, event_id: &str) -> Result<Option<StoredCounters>, StoreError> {
        const OPERATION: &str = "read inventory counters";
        type Row = (Option<i32>, Option<i32>, Option<i32>, Option<i64>);
        let row: Option<Row> = self
            .first_row(&self.counters, (event_id,), OPERATION)
            .await?;
        Ok(row.and_then(|(capacity, held, sold, sequence)| {
            Some(StoredCounters {
                capacity: capacity?,
                held: held.unwrap_or(0),
                sold: sold.unwrap_or(0),
                sequence: sequence.unwrap_or(0),
            })
        }))
    }

    /// The order's decision; `None` while the booking processor has not decided it.
    pub async fn decision(
        &self,
        event_id: &str,
        order_id: &str,
    ) -> Result<Option<StoredDecision>, StoreError> {
        const OPERATION: &str = "read order decision";
        #[derive(scylla::DeserializeRow)]
        struct Row {
            status: Option<String>,
            slots: Option<i32>,
            amount_minor: Option<i64>,
            order_currency: Option<String>,
            payment_id: Option<String>,
            hold_expires_at: Option<i64>,
            reject_reason: Option<String>,
            cancel_reason: Option<String>,
            late: Option<bool>,
        }
        let row: Option<Row> = self
            .first_row(&self.decision, (event_id, order_id), OPERATION)
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let Some(status) = non_empty(row.status) else {
            return Ok(None);
        };
        let status = status.parse().map_err(|e| StoreError::BadData {
            event_id: event_id.to_owned(),
            reason: format!("order {order_id}: {e}"),
        })?;
        Ok(Some(StoredDecision {
            status,
            slots: row.slots.unwrap_or(0),
            amount_minor: row.amount_minor.unwrap_or(0),
            currency: row.order_currency.unwrap_or_default(),
            payment_id: non_empty(row.payment_id),
            hold_expires_at: row.hold_expires_at.filter(|&at| at != 0),
            reason: non_empty(row.reject_reason).or(non_empty(row.cancel_reason)),
            late: row.late.unwrap_or(false),
        }))
    }

    /// The first row `statement` answers, if any.
    async fn first_row<T>(
        &self,
        statement: &PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
        operation: &'static str,
    ) -> Result<Option<T>, StoreError>
    where
        T: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm>,
    {
        self.session
            .execute_unpaged(statement, values)
            .await
            .map_err(|e| StoreError::execution(operation, e))?
            .into_rows_result()
            .map_err(|e| StoreError::unusable(operation, e))?
            .maybe_first_row::<T>()
            .map_err(|e| StoreError::unusable(operation, e))
    }
}
