//! The demo events `scripts/run` puts on sale: fixed ids and a fixed creation time, so seeding
//! twice is a repeated edit the processor ignores.

use boxoffice_avro::ids;
use boxoffice_avro::records::EventUpserted;

/// 2026-01-01T00:00:00Z: the demo catalogue's creation time (fixed, so re-seeding is a no-op).
const CREATED_AT: i64 = 1_767_225_600_000;
/// On sale for ten years from then.
const SALE_ENDS_AT: i64 = CREATED_AT + 10 * 365 * 24 * 3_600_000;

pub fn events() -> Vec<EventUpserted> {
    [
        ("Flash Sale Arena Concert", 1000, 4500, 4, 4),
        ("Sunday League Final", 300, 2000, 6, 10),
        ("Rust Workshop (free)", 40, 0, 1, 1),
    ]
    .into_iter()
    .map(
        |(name, capacity, price_minor, max_per_order, max_per_user)| {
            let event_id = ids::record_id("demo-event", &[name]);
            EventUpserted {
                record_id: ids::record_id("demo-event-upsert", &[&event_id]),
                event_id,
                name: name.to_owned(),
                category_id: None,
                capacity,
                price_minor,
                currency: "EUR".into(),
                sale_starts_at: CREATED_AT,
                sale_ends_at: SALE_ENDS_AT,
                hold_seconds: 600,
                max_per_order,
                max_per_user,
                occurred_at: CREATED_AT,
            }
        },
    )
    .collect()
}
