//! Processor metrics: plain atomics, rendered in the Prometheus text format on `/metrics` (the
//! consumer-lag dashboards scrape it beside Kafka's own lag).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64};

pub use boxoffice_runtime::metrics::{
    Histogram, LATENCY_BUCKETS_MS, Readiness, render_counters, render_gauges,
};

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
    /// Partitions assigned to this instance, and how many of them are processed (owned),
    /// waiting for a restore, or stopped.
    pub partitions_assigned: AtomicI64,
    pub partitions_owned: AtomicI64,
    pub partitions_waiting: AtomicI64,
    pub partitions_stopped: AtomicI64,
    pub store_retries: AtomicU64,
    pub produce_retries: AtomicU64,
    /// Restores completed (assignment, rebalance, restart, after a fault).
    pub restores: AtomicU64,
    /// Partitions given up after a fault and restored again.
    pub rebuilds: AtomicU64,
    /// A save found the store behind this owner: it lost acknowledged writes.
    pub store_loss_detected: AtomicU64,
    /// Events a restore found behind Kafka and re-folded from the log.
    pub events_refolded: AtomicU64,
    /// Commands folded again without publishing (re-folds).
    pub commands_refolded: AtomicU64,
    /// Re-folds whose decisions differed from the published ones (must stay 0).
    pub refold_mismatches: AtomicU64,
    /// Retries that ran out of budget (the partition was given up and restored).
    pub retries_exhausted: AtomicU64,
    /// Events whose state is lost beyond the log start (their commands are dead-lettered).
    pub events_lost: AtomicI64,
    /// Why the instance is not ready (empty: ready).
    readiness: Readiness,
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
            partitions_assigned: AtomicI64::new(0),
            partitions_owned: AtomicI64::new(0),
            partitions_waiting: AtomicI64::new(0),
            partitions_stopped: AtomicI64::new(0),
            store_retries: AtomicU64::new(0),
            produce_retries: AtomicU64::new(0),
            restores: AtomicU64::new(0),
            rebuilds: AtomicU64::new(0),
            store_loss_detected: AtomicU64::new(0),
            events_refolded: AtomicU64::new(0),
            commands_refolded: AtomicU64::new(0),
            refold_mismatches: AtomicU64::new(0),
            retries_exhausted: AtomicU64::new(0),
            events_lost: AtomicI64::new(0),
            readiness: Readiness::default(),
        }
    }
}

impl BookingMetrics {
    /// Records why the instance is not ready (every assigned partition not processed).
    pub fn set_not_ready(&self, reasons: Vec<String>) {
        self.readiness.set(reasons);
    }

    /// `Ok` when every assigned partition is processed; otherwise why not.
    pub fn readiness(&self) -> Result<(), String> {
        self.readiness.check()
    }

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
            (
                "booking_restores_total",
                "Partitions restored (fenced, compared with Kafka, resumed)",
                &self.restores,
            ),
            (
                "booking_rebuilds_total",
                "Partitions given up after a fault and restored again",
                &self.rebuilds,
            ),
            (
                "booking_store_loss_detected_total",
                "Saves that found the store behind this owner (it lost acknowledged writes)",
                &self.store_loss_detected,
            ),
            (
                "booking_events_refolded_total",
                "Events a restore found behind Kafka and re-folded from the log",
                &self.events_refolded,
            ),
            (
                "booking_commands_refolded_total",
                "Commands folded again without publishing",
                &self.commands_refolded,
            ),
            (
                "booking_refold_mismatches_total",
                "Re-folds whose decisions differed from those published (must stay 0)",
                &self.refold_mismatches,
            ),
            (
                "booking_retries_exhausted_total",
                "Retries that ran out of budget (the partition was given up)",
                &self.retries_exhausted,
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
                "booking_partitions_assigned",
                "Partitions assigned to this instance",
                &self.partitions_assigned,
            ),
            (
                "booking_partitions_owned",
                "Partitions this instance owns and processes",
                &self.partitions_owned,
            ),
            (
                "booking_partitions_waiting",
                "Assigned partitions not processed: being restored or waiting after a fault",
                &self.partitions_waiting,
            ),
            (
                "booking_partitions_stopped",
                "Assigned partitions stopped (published decisions and the log differ)",
                &self.partitions_stopped,
            ),
            (
                "booking_events_lost",
                "Events whose state is lost beyond the log start (commands dead-lettered)",
                &self.events_lost,
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

/// Serves `/metrics`, `/healthz` and `/readyz` (503 while an assigned partition is not
/// processed, with the reasons) until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, metrics: std::sync::Arc<BookingMetrics>) {
    let ready = Arc::clone(&metrics);
    boxoffice_runtime::metrics::serve_with_readiness(
        listener,
        move || metrics.render(),
        move || ready.readiness(),
    )
    .await;
}
