//! The payments family's reader interface for other services: a payment as the payment
//! processor last saved it (without the fan's payment-method token) and its history. Read-only
//! (the payment processor is the family's only writer); ingest's payment pages use it. Plain
//! reads at the session's consistency (the processor's own load is a serial read).

use std::sync::Arc;

use futures::TryStreamExt;
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlTimestamp;

use super::{HistoryEntry, PaymentStatus, PaymentStoreError};
use crate::schema::Keyspace;

/// What other services may see of a stored payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentView {
    pub id: String,
    pub order_id: Option<String>,
    pub user_id: Option<String>,
    pub amount_minor: i64,
    pub currency: String,
    /// `None` while the row has no status yet.
    pub status: Option<PaymentStatus>,
    pub provider_reference: Option<String>,
    /// Milliseconds since the epoch; `None` when the row has none.
    pub created_at: Option<i64>,
    pub updated_at: Option<i64>,
}

/// Reads the payments family for other services.
#[derive(Debug, Clone)]
pub struct PaymentReader {
    session: Arc<Session>,
    payment: PreparedStatement,
    history: PreparedStatement,
}

fn non_empty(text: Option<String>) -> Option<String> {
    text.filter(|t| !t.is_empty())
}

impl PaymentReader {
    /// Prepares the reads. The schema must exist (`schema::ensure_schema`).
    pub async fn new(
        session: Arc<Session>,
        keyspace: &Keyspace,
    ) -> Result<Self, PaymentStoreError> {
        const OPERATION: &str = "preparing the payment reads";
        let mut payment = session
            .prepare(format!(
                "SELECT id, order_id, user_id, amount_minor, currency, status, provider_reference, \
                 created_at, updated_at FROM {} WHERE id = ?",
                keyspace.table("payments")
            ))
            .await
            .map_err(|e| PaymentStoreError::unusable(OPERATION, e))?;
        let mut history = session
            .prepare(format!(
                "SELECT at, seq, status, detail FROM {} WHERE payment_id = ?",
                keyspace.table("payment_histories")
            ))
            .await
            .map_err(|e| PaymentStoreError::unusable(OPERATION, e))?;
        payment.set_is_idempotent(true);
        history.set_is_idempotent(true);
        Ok(PaymentReader {
            session,
            payment,
            history,
        })
    }

    /// The payment; `None` while the payment processor has not written it.
    pub async fn payment(
        &self,
        payment_id: &str,
    ) -> Result<Option<PaymentView>, PaymentStoreError> {
        const OPERATION: &str = "read payment";
        #[derive(scylla::DeserializeRow)]
        struct Row {
            id: String,
            order_id: Option<String>,
            user_id: Option<String>,
            amount_minor: Option<i64>,
            currency: Option<String>,
            status: Option<String>,
            provider_reference: Option<String>,
            created_at: Option<CqlTimestamp>,
            updated_at: Option<CqlTimestamp>,
        }
        let row = self
            .session
            .execute_unpaged(&self.payment, (payment_id,))
            .await
            .map_err(|e| PaymentStoreError::execution(OPERATION, e))?
            .into_rows_result()
            .map_err(|e| PaymentStoreError::unusable(OPERATION, e))?
            .maybe_first_row::<Row>()
            .map_err(|e| PaymentStoreError::unusable(OPERATION, e))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let status =
            match non_empty(row.status) {
                None => None,
                Some(name) => Some(PaymentStatus::parse(&name).ok_or_else(|| {
                    PaymentStoreError::CorruptRow {
                        id: row.id.clone(),
                        reason: format!("unknown status {name:?}"),
                    }
                })?),
            };
        Ok(Some(PaymentView {
            id: row.id,
            order_id: non_empty(row.order_id),
            user_id: non_empty(row.user_id),
            amount_minor: row.amount_minor.unwrap_or(0),
            currency: row.currency.unwrap_or_default(),
            status,
            provider_reference: non_empty(row.provider_reference),
            created_at: row.created_at.map(|t| t.0),
            updated_at: row.updated_at.map(|t| t.0),
        }))
    }

    /// The payment's history, oldest first.
    pub async fn history(&self, payment_id: &str) -> Result<Vec<HistoryEntry>, PaymentStoreError> {
        const OPERATION: &str = "read payment history";
        type Row = (
            Option<CqlTimestamp>,
            Option<i32>,
            Option<String>,
            Option<String>,
        );
        self.session
            .execute_iter(self.history.clone(), (payment_id,))
            .await
            .map_err(|e| PaymentStoreError::Unavailable {
                operation: OPERATION,
                source: e.into(),
            })?
            .rows_stream::<Row>()
            .map_err(|e| PaymentStoreError::unusable(OPERATION, e))?
            .map_ok(|(at, seq, status, detail)| HistoryEntry {
                at: at.map_or(0, |t| t.0),
                seq: seq.unwrap_or(0),
                status: status.unwrap_or_default(),
                detail: detail.unwrap_or_default(),
            })
            .try_collect()
            .await
            .map_err(|e| PaymentStoreError::Unavailable {
                operation: OPERATION,
                source: e.into(),
            })
    }
}
