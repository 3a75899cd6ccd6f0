//! The catalogue in CQL: `events` (written by admins through ingest), `cate_events`, and the
//! booking processor's counters read from `event_inventory`'s static columns.

use async_trait::async_trait;
use scylla::value::CqlTimestamp;

use super::{CqlStores, none_if_empty, text};
use crate::stores::{
    CatalogStore, CategoryRecord, EventRecord, InventoryCounters, StoreError, StoreResult,
};

#[derive(scylla::DeserializeRow)]
struct EventRow {
    id: String,
    name: Option<String>,
    description: Option<String>,
    venue: Option<String>,
    category_id: Option<String>,
    starts_at: Option<CqlTimestamp>,
    price_minor: Option<i64>,
    currency: Option<String>,
    capacity: Option<i32>,
    sale_starts_at: Option<CqlTimestamp>,
    sale_ends_at: Option<CqlTimestamp>,
    hold_seconds: Option<i32>,
    max_per_order: Option<i32>,
    max_per_user: Option<i32>,
    created_at: Option<CqlTimestamp>,
    updated_at: Option<CqlTimestamp>,
}

impl From<EventRow> for EventRecord {
    fn from(r: EventRow) -> Self {
        let ms = |t: Option<CqlTimestamp>| t.map_or(0, |t| t.0);
        EventRecord {
            id: r.id,
            name: r.name.unwrap_or_default(),
            description: r.description.unwrap_or_default(),
            venue: r.venue.unwrap_or_default(),
            category_id: none_if_empty(r.category_id),
            starts_at: ms(r.starts_at),
            price_minor: r.price_minor.unwrap_or(0),
            currency: r.currency.unwrap_or_default(),
            capacity: r.capacity.unwrap_or(0),
            sale_starts_at: ms(r.sale_starts_at),
            sale_ends_at: ms(r.sale_ends_at),
            hold_seconds: r.hold_seconds.unwrap_or(600),
            max_per_order: r.max_per_order.unwrap_or(0),
            max_per_user: r.max_per_user.unwrap_or(0),
            created_at: ms(r.created_at),
            updated_at: ms(r.updated_at),
        }
    }
}

type CategoryRow = (String, Option<String>, Option<bool>);

fn category(row: CategoryRow) -> CategoryRecord {
    CategoryRecord {
        id: row.0,
        name: row.1.unwrap_or_default(),
        is_free: row.2.unwrap_or(false),
    }
}

#[async_trait]
impl CatalogStore for CqlStores {
    async fn list_events(&self) -> StoreResult<Vec<EventRecord>> {
        let rows: Vec<EventRow> = self.scan(&self.s.scan_events, "scan events").await?;
        Ok(rows.into_iter().map(EventRecord::from).collect())
    }

    async fn get_event(&self, id: &str) -> StoreResult<Option<EventRecord>> {
        let row: Option<EventRow> = self.one(&self.s.read_event, (id,), "read event").await?;
        Ok(row.map(EventRecord::from))
    }

    async fn put_event(&self, e: &EventRecord) -> StoreResult<()> {
        let ts = CqlTimestamp;
        self.run(
            &self.s.insert_event,
            (
                &e.id,
                &e.name,
                &e.description,
                &e.venue,
                text(&e.category_id),
                ts(e.starts_at),
                e.price_minor,
                &e.currency,
                e.capacity,
                ts(e.sale_starts_at),
                ts(e.sale_ends_at),
                e.hold_seconds,
                e.max_per_order,
                e.max_per_user,
                ts(e.created_at),
                ts(e.updated_at),
            ),
            "write event",
        )
        .await
        .map(|_| ())
    }

    async fn inventory(&self, event_id: &str) -> StoreResult<Option<InventoryCounters>> {
        let counters = self
            .inventory
            .counters(event_id)
            .await
            .map_err(|e| StoreError::from_reader("read inventory", &e, e.is_retryable()))?;
        Ok(counters.map(|c| InventoryCounters {
            capacity: c.capacity,
            held: c.held,
            sold: c.sold,
            sequence: c.sequence,
        }))
    }

    async fn list_categories(&self) -> StoreResult<Vec<CategoryRecord>> {
        let rows: Vec<CategoryRow> = self
            .scan(&self.s.scan_categories, "scan categories")
            .await?;
        let mut categories: Vec<CategoryRecord> = rows.into_iter().map(category).collect();
        categories.sort_by(|a, b| {
            a.name
                .to_lowercase()
                .cmp(&b.name.to_lowercase())
                .then(a.id.cmp(&b.id))
        });
        Ok(categories)
    }

    async fn get_category(&self, id: &str) -> StoreResult<Option<CategoryRecord>> {
        let row: Option<CategoryRow> = self
            .one(&self.s.read_category, (id,), "read category")
            .await?;
        Ok(row.map(category))
    }

    async fn put_category(&self, c: &CategoryRecord) -> StoreResult<()> {
        self.run(
            &self.s.insert_category,
            (&c.id, &c.name, c.is_free),
            "write category",
        )
        .await
        .map(|_| ())
    }
}
