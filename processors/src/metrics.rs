//! Processor metrics: plain atomics, rendered in the Prometheus text format on `/metrics` (the
//! consumer-lag dashboards scrape it beside Kafka's own lag).

use std::sync::atomic::{AtomicI64, AtomicU64};

pub use boxoffice_sinks::metrics::{Histogram, LATENCY_BUCKETS_MS, render_counters, render_gauges};

/// Upper bounds of the batch size histogram buckets.
const BATCH_BUCKETS: [u64; 8] = [1, 10, 50, 100, 500, 1000, 2000, 5000];

/// What the booking processor counts.
#[derive(Debug)]
pub struct BookingMetrics {
    pub records_processed: AtomicU64,
    pub records_skipped: AtomicU64,
    pub outputs_produced: AtomicU64,
    pub dead_letters: AtomicU64,
    pub batches: AtomicU64,
    pub batch_size: Histogram,
    /// From the command's broker timestamp to its decision being produced and committed.
    pub decision_latency_ms: Histogram,
    pub holds_active: AtomicI64,
    pub partitions_owned: AtomicI64,
    pub store_retries: AtomicU64,
    pub produce_retries: AtomicU64,
}

impl Default for BookingMetrics {
    fn default() -> Self {
        BookingMetrics {
            records_processed: AtomicU64::new(0),
            records_skipped: AtomicU64::new(0),
            outputs_produced: AtomicU64::new(0),
            dead_letters: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            batch_size: Histogram::new(&BATCH_BUCKETS),
            decision_latency_ms: Histogram::new(&LATENCY_BUCKETS_MS),
            holds_active: AtomicI64::new(0),
            partitions_owned: AtomicI64::new(0),
            store_retries: AtomicU64::new(0),
            produce_retries: AtomicU64::new(0),
        }
    }
}

impl BookingMetrics {
    pub fn render(&self) -> String {
        let mut out = String::new();
        let counters = [
            (
                "booking_records_processed_total",
                "Commands decided",
                &self.records_processed,
            ),
            (
                "booking_records_skipped_total",
                "Commands already applied (replay)",
                &self.records_skipped,
            ),
            (
                "booking_outputs_produced_total",
                "Records produced",
                &self.outputs_produced,
            ),
            (
                "booking_dead_letters_total",
                "Records sent to the dead-letter topic",
                &self.dead_letters,
            ),
            ("booking_batches_total", "Batches committed", &self.batches),
            (
                "booking_store_retries_total",
                "State writes retried",
                &self.store_retries,
            ),
            (
                "booking_produce_retries_total",
                "Output transactions retried",
                &self.produce_retries,
            ),
        ];
        render_counters(&mut out, &counters);
        let gauges = [
            (
                "booking_holds_active",
                "Unpaid holds waiting for their deadline",
                &self.holds_active,
            ),
            (
                "booking_partitions_owned",
                "Partitions this instance owns",
                &self.partitions_owned,
            ),
        ];
        render_gauges(&mut out, &gauges);
        self.batch_size
            .render(&mut out, "booking_batch_size", "Records per batch");
        self.decision_latency_ms.render(
            &mut out,
            "booking_decision_latency_ms",
            "Record timestamp to decision committed, milliseconds",
        );
        out
    }
}

/// Serves `/metrics` and `/healthz` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, metrics: std::sync::Arc<BookingMetrics>) {
    boxoffice_sinks::metrics::serve(listener, move || metrics.render()).await;
}
