//! Processor metrics: plain atomics, rendered in the Prometheus text format on `/metrics` (the
//! consumer-lag dashboards scrape it beside Kafka's own lag).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Upper bounds (ms) of the latency histogram buckets.
const LATENCY_BUCKETS_MS: [u64; 12] = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000];
/// Upper bounds of the batch size histogram buckets.
const BATCH_BUCKETS: [u64; 8] = [1, 10, 50, 100, 500, 1000, 2000, 5000];

#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [u64],
    buckets: Vec<AtomicU64>,
    sum: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [u64]) -> Self {
        Histogram {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: u64) {
        if let Some(i) = self.bounds.iter().position(|&b| value <= b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum.fetch_add(value, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {}", self.sum.load(Ordering::Relaxed));
        let _ = writeln!(out, "{name}_count {count}");
    }
}

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
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
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
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
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
    use axum::routing::get;
    let app = axum::Router::new()
        .route("/metrics", get(move || async move { metrics.render() }))
        .route("/healthz", get(|| async { "ok" }));
    if let Err(e) = axum::serve(listener, app).await {
        tracing::warn!(error = %e, "metrics server stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::new(&LATENCY_BUCKETS_MS);
        for v in [0, 1, 3, 7000] {
            h.observe(v);
        }
        let mut out = String::new();
        h.render(&mut out, "x", "help");
        assert!(out.contains("x_bucket{le=\"1\"} 2"), "{out}");
        assert!(out.contains("x_bucket{le=\"5\"} 3"), "{out}");
        assert!(out.contains("x_bucket{le=\"5000\"} 3"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 4"), "{out}");
        assert!(out.contains("x_count 4"), "{out}");
    }
}
