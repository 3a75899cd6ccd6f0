//! Orders in CQL: ingest's `orders` row and the user's `orders_by_user` listing row, written
//! together (concurrently) before the request is produced; the processor's decision read from
//! the order's row in `event_inventory`.

use async_trait::async_trait;
use scylla::value::CqlTimestamp;

use super::{CqlStores, applied, none_if_empty};
use crate::stores::{
    CreateOrder, OrderDecision, OrderRecord, OrderStore, Page, PageRequest, StoreError, StoreResult,
};

type OrderRow = (
    String,
    Option<String>,
    Option<String>,
    Option<i32>,
    Option<CqlTimestamp>,
    Option<String>,
    Option<String>,
);

fn order(row: OrderRow) -> OrderRecord {
    let (id, event_id, user_id, number_slot, created_at, fingerprint, key) = row;
    OrderRecord {
        id,
        event_id: event_id.unwrap_or_default(),
        user_id: user_id.unwrap_or_default(),
        number_slot: number_slot.unwrap_or(0),
        created_at: created_at.map_or(0, |t| t.0),
        fingerprint: fingerprint.unwrap_or_default(),
        idempotency_key: none_if_empty(key),
    }
}

#[async_trait]
impl OrderStore for CqlStores {
    async fn create_order(&self, o: &OrderRecord, idempotent: bool) -> StoreResult<CreateOrder> {
        let at = CqlTimestamp(o.created_at);
        let values = (
            &o.id,
            &o.event_id,
            &o.user_id,
            o.number_slot,
            at,
            at,
            &o.fingerprint,
            o.idempotency_key.as_deref().unwrap_or(""),
        );
        let statement = if idempotent {
            &self.s.insert_order_if_new
        } else {
            &self.s.insert_order
        };
        let row = self.run(statement, values, "write order");
        let listing = self.run(
            &self.s.insert_order_listing,
            (&o.user_id, at, &o.id, &o.event_id, o.number_slot),
            "write order listing",
        );
        let (row, listing) = tokio::join!(row, listing);
        let row = row?;
        listing?;
        if !idempotent || applied(row, "write order")? {
            return Ok(CreateOrder::Created);
        }
        // The order exists: this was a retry (or a reused key). Our listing row is a duplicate
        // of the first one (which has the first request's time): remove it.
        let existing: Option<OrderRow> = self
            .one(&self.s.read_order_serial, (&o.id,), "read order")
            .await?;
        let existing = existing.map(order);
        if existing
            .as_ref()
            .is_none_or(|e| e.created_at != o.created_at)
        {
            self.run(
                &self.s.delete_order_listing,
                (&o.user_id, at, &o.id),
                "remove order listing",
            )
            .await?;
        }
        match existing {
            Some(existing) => Ok(CreateOrder::Existing(existing)),
            // Cannot be (the insert said it exists); treat as created by this call.
            None => Ok(CreateOrder::Created),
        }
    }

    async fn remove_order(&self, o: &OrderRecord) -> StoreResult<()> {
        let row = self.run(&self.s.delete_order, (&o.id,), "remove order");
        let listing = self.run(
            &self.s.delete_order_listing,
            (&o.user_id, CqlTimestamp(o.created_at), &o.id),
            "remove order listing",
        );
        let (row, listing) = tokio::join!(row, listing);
        row?;
        listing?;
        Ok(())
    }

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
                    fingerprint: String::new(),
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
