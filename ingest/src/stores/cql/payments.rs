//! Payments in CQL: ingest records each submission (`payment_submissions` by payment id,
//! `payments_by_user` for the listing); the payment processor's `payments` row and
//! `payment_histories` give the status and history once it has seen the payment.

use async_trait::async_trait;
use scylla::value::CqlTimestamp;

use boxoffice_store::payments::{PaymentStatus, PaymentView};

use super::{CqlStores, none_if_empty};
use crate::stores::{
    Page, PageRequest, PaymentHistoryEntry, PaymentRecord, PaymentStore, StoreError, StoreResult,
};

/// Status shown before the payment processor wrote the payment.
pub const SUBMITTED: &str = "SUBMITTED";

/// The status ingest shows: the processor's, or [`SUBMITTED`] before it wrote one.
fn shown_status(status: Option<PaymentStatus>) -> String {
    status.map_or_else(|| SUBMITTED.to_owned(), |s| s.name().to_owned())
}

type SubmissionRow = (
    String,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<String>,
    Option<CqlTimestamp>,
);

#[async_trait]
impl PaymentStore for CqlStores {
    async fn record_submission(&self, p: &PaymentRecord) -> StoreResult<()> {
        let at = CqlTimestamp(p.created_at);
        let listing = self.run(
            &self.s.insert_payment_listing,
            (
                &p.user_id,
                at,
                &p.id,
                &p.order_id,
                p.amount_minor,
                &p.currency,
            ),
            "write payment listing",
        );
        let lookup = self.run(
            &self.s.insert_submission,
            (
                &p.id,
                &p.order_id,
                &p.user_id,
                p.amount_minor,
                &p.currency,
                at,
            ),
            "write payment submission",
        );
        let (listing, lookup) = tokio::join!(listing, lookup);
        listing?;
        lookup?;
        Ok(())
    }

    async fn get_payment(&self, id: &str) -> StoreResult<Option<PaymentRecord>> {
        let (row, submission) = tokio::join!(
            self.read_payment(id),
            self.one::<SubmissionRow>(&self.s.read_submission, (id,), "read payment submission"),
        );
        let (row, submission) = (row?, submission?);
        let from_submission =
            submission.map(
                |(id, order_id, user_id, amount, currency, at)| PaymentRecord {
                    id,
                    order_id: order_id.unwrap_or_default(),
                    user_id: user_id.unwrap_or_default(),
                    amount_minor: amount.unwrap_or(0),
                    currency: currency.unwrap_or_default(),
                    status: SUBMITTED.to_owned(),
                    provider_reference: None,
                    created_at: at.map_or(0, |t| t.0),
                    updated_at: at.map_or(0, |t| t.0),
                },
            );
        Ok(match (row, from_submission) {
            (Some(r), submitted) => Some(PaymentRecord {
                id: r.id,
                order_id: r
                    .order_id
                    .or_else(|| submitted.as_ref().map(|s| s.order_id.clone()))
                    .unwrap_or_default(),
                user_id: r
                    .user_id
                    .or_else(|| submitted.as_ref().map(|s| s.user_id.clone()))
                    .unwrap_or_default(),
                amount_minor: r.amount_minor,
                currency: r.currency,
                status: shown_status(r.status),
                provider_reference: r.provider_reference,
                created_at: r.created_at.unwrap_or(0),
                updated_at: r.updated_at.unwrap_or(0),
            }),
            (None, submitted) => submitted,
        })
    }

    async fn history(&self, id: &str) -> StoreResult<Vec<PaymentHistoryEntry>> {
        let entries =
            self.payment_reader.history(id).await.map_err(|e| {
                StoreError::from_reader("read payment history", &e, e.is_retryable())
            })?;
        Ok(entries
            .into_iter()
            .map(|e| PaymentHistoryEntry {
                at: e.at,
                seq: e.seq,
                status: e.status,
                detail: none_if_empty(Some(e.detail)),
            })
            .collect())
    }

    async fn list_payments(
        &self,
        user_id: &str,
        request: &PageRequest,
    ) -> StoreResult<Page<PaymentRecord>> {
        type Listing = (
            String,
            Option<String>,
            Option<i64>,
            Option<String>,
            Option<CqlTimestamp>,
        );
        let page: Page<Listing> = self
            .page(&self.pages.payments, user_id, request, "list payments")
            .await?;
        let statuses =
            futures::future::try_join_all(page.items.iter().map(|(id, ..)| self.read_payment(id)))
                .await?;
        Ok(Page {
            items: page
                .items
                .into_iter()
                .zip(statuses)
                .map(|((id, order_id, amount, currency, at), row)| {
                    let at = at.map_or(0, |t| t.0);
                    PaymentRecord {
                        id,
                        order_id: order_id.unwrap_or_default(),
                        user_id: user_id.to_owned(),
                        amount_minor: amount.unwrap_or(0),
                        currency: currency.unwrap_or_default(),
                        status: row
                            .as_ref()
                            .map_or_else(|| SUBMITTED.to_owned(), |r| shown_status(r.status)),
                        provider_reference: row.as_ref().and_then(|r| r.provider_reference.clone()),
                        created_at: at,
                        updated_at: row.and_then(|r| r.updated_at).unwrap_or(at),
                    }
                })
                .collect(),
            more: page.more,
        })
    }
}

impl CqlStores {
    async fn read_payment(&self, id: &str) -> StoreResult<Option<PaymentView>> {
        self.payment_reader
            .payment(id)
            .await
            .map_err(|e| StoreError::from_reader("read payment", &e, e.is_retryable()))
    }
}
