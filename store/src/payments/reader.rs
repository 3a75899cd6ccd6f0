//! The payments family's reader interface for other services: a payment as the payment
//! processor last saved it (without the fan's payment-method token) and its history. Read-only
//! (the payment processor is the family's only writer); ingest's payment pages use it.

use std::sync::Arc;

use scylla::client::session::Session;

use super::{HistoryEntry, PaymentStatus, PaymentStore, PaymentStoreError};
use crate::schema::Keyspace;

/// What other services may see of a stored payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentView {
    pub id: String,
    pub order_id: Option<String>,
    pub user_id: Option<String>,
    pub amount_minor: i64,
    pub currency: String,
    pub status: PaymentStatus,
    pub provider_reference: Option<String>,
    /// Milliseconds since the epoch.
    pub created_at: i64,
    pub updated_at: i64,
}

/// Reads the payments family for other services.
#[derive(Debug, Clone)]
pub struct PaymentReader {
    store: PaymentStore,
}

fn non_empty(text: String) -> Option<String> {
    Some(text).filter(|t| !t.is_empty())
}

impl PaymentReader {
    /// Prepares the reads. The schema must exist (`schema::ensure_schema`).
    pub async fn new(
        session: Arc<Session>,
        keyspace: &Keyspace,
    ) -> Result<Self, PaymentStoreError> {
        Ok(PaymentReader {
            store: PaymentStore::new(session, keyspace).await?,
        })
    }

    /// The payment; `None` while the payment processor has not written it.
    pub async fn payment(
        &self,
        payment_id: &str,
    ) -> Result<Option<PaymentView>, PaymentStoreError> {
        Ok(self.store.load(payment_id).await?.map(|p| PaymentView {
            id: p.id,
            order_id: non_empty(p.order_id),
            user_id: non_empty(p.user_id),
            amount_minor: p.amount_minor,
            currency: p.currency,
            status: p.status,
            provider_reference: non_empty(p.provider_reference),
            created_at: p.created_at,
            updated_at: p.updated_at,
        }))
    }

    /// The payment's history, oldest first.
    pub async fn history(&self, payment_id: &str) -> Result<Vec<HistoryEntry>, PaymentStoreError> {
        self.store.history(payment_id).await
    }
}
