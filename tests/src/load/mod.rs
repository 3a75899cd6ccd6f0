//! What the load generators (`src/bin/*_load.rs`, `flash_sale.rs`, `notify_latency.rs`) share:
//! the wall clock in milliseconds, an event put on sale for a run, and percentiles of measured
//! latencies; `client` sends the HTTP requests, `cpu` says where the CPU went, `ingest` runs
//! ingest in-process with its setup, `postgres` runs the PostgreSQL row-lock baseline.

pub mod client;
pub mod cpu;
pub mod ingest;
pub mod kafka_perf;
pub mod postgres;

use std::time::{SystemTime, UNIX_EPOCH};

use boxoffice_avro::ids;
use boxoffice_avro::records::{BookingCommand, EventUpserted};

/// Logs of a load generator: to stderr (the figures go to stdout), `warn` unless `RUST_LOG`
/// says otherwise.
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Puts `event_id` on sale since a minute ago for a day: `capacity` slots at 45.00 EUR, up to
/// four per order, no per-user limit, 10-minute holds.
pub fn event_on_sale(event_id: &str, capacity: i32) -> BookingCommand {
    let at = now_ms() - 60_000;
    BookingCommand::EventUpserted(EventUpserted {
        record_id: ids::record_id("load-upsert", &[event_id]),
        event_id: event_id.into(),
        name: "Load test".into(),
        category_id: None,
        capacity,
        price_minor: 4500,
        currency: "EUR".into(),
        sale_starts_at: at,
        sale_ends_at: at + 24 * 3_600_000,
        hold_seconds: 600,
        max_per_order: 4,
        max_per_user: 0,
        occurred_at: at,
    })
}

/// The `p`th percentile (0-100, nearest rank) of sorted values; 0 when there are none.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&values, 50.0), 51);
        assert_eq!(percentile(&values, 99.0), 99);
        assert_eq!(percentile(&values, 100.0), 100);
        assert_eq!(percentile(&[], 50.0), 0);
    }
}
