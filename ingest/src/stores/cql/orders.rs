//! Orders in CQL, read only: the `orders` row and the user's `orders_by_user` listing (the
//! booking processor writes both once it decided the order, `boxoffice_store::orders`), and the
//! decision from the order's row in `event_inventory`.

use async_trait::async_trait;
use scylla::value::CqlTimestamp;

use super::{CqlStores, none_if_empty};
use crate::stores::{
    OrderDecision, OrderRecord, OrderStore, Page, PageRequest, StoreError, StoreResult,
};

type OrderRow = (
    String,
    Option<String>,
    Option<String>,
    Option<i32>,
    Option<CqlTimestamp>,
    Option<String>,
);

fn order(row: OrderRow) -> OrderRecord {
    let (id, event_id, user_id, number_slot, created_at, key) = row;
    OrderRecord {
        id,
        event_id: event_id.unwrap_or_default(),
        user_id: user_id.unwrap_or_default(),
        number_slot: number_slot.unwrap_or(0),
        created_at: created_at.map_or(0, |t| t.0),
        idempotency_key: none_if_empty(key),
    }
}

#[async_trait]
impl OrderStore for CqlStores {
    async fn get_order(&self, id: &str) -> StoreResult<Option<OrderRecord>> {
        let row: Option<OrderRow> = self.one(&self.s.read_order, (id,), "read order").await?;
        Ok(row.map(order))
    }

    async fn list_orders(
        &self,
        user_id: &str,
        request: &PageRequest,
    ) -> StoreResult<Page<OrderRecord>> {
        type Listing = (String, Option<String>, Option<i32>, Option<CqlTimestamp>);
        let page: Page<Listing> = self
            .page(&self.pages.orders, user_id, request, "list orders")
            .await?;
        Ok(Page {
            items: page
                .items
                .into_iter()
                .map(|(id, event_id, number_slot, created_at)| OrderRecord {
                    id,
                    event_id: event_id.unwrap_or_default(),
                    user_id: user_id.to_owned(),
                    number_slot: number_slot.unwrap_or(0),
                    created_at: created_at.map_or(0, |t| t.0),
                    idempotency_key: None,
                })
                .collect(),
            more: page.more,
        })
    }

    async fn decision(&self, event_id: &str, order_id: &str) -> StoreResult<Option<OrderDecision>> {
        let decision = self
            .inventory
            .decision(event_id, order_id)
            .await
            .map_err(|e| StoreError::from_reader("read decision", &e, e.is_retryable()))?;
        Ok(decision.map(|d| OrderDecision {
            status: d.status.as_str().to_owned(),
            slots: d.slots,
            amount_minor: d.amount_minor,
            currency: d.currency,
            payment_id: d.payment_id,
            hold_expires_at: d.hold_expires_at,
            reason: d.reason,
            late: d.late,
        }))
    }
}
