//! The booking processor's metrics, in the process's one registry (`prometheus-client`), served
//! on `/metrics` (the consumer-lag dashboards scrape it beside Kafka's own lag).

pub use boxoffice_runtime::metrics::{
    Counter, Family, Gauge, Histogram, LATENCY_BUCKETS_MS, Labels, LatencyFamily, Readiness,
    Registry, counter, gauge, histogram, latency_family,
};

/// Upper bounds of the batch size histogram buckets.
const BATCH_BUCKETS: [f64; 8] = [1.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 2000.0, 5000.0];

/// What the booking processor counts.
#[derive(Debug)]
pub struct BookingMetrics {
    pub records_processed: Counter,
    /// `booking_order_events_total{kind}`: order events produced (reservations, rejections,
    /// confirmations, cancellations, hold expiries, tickets), counted once committed.
    pub order_events: Family<Labels, Counter>,
    pub records_skipped: Counter,
    pub outputs_produced: Counter,
    pub availability_superseded: Counter,
    pub dead_letters: Counter,
    pub batches: Counter,
    pub batch_size: Histogram,
    /// From the command's broker timestamp to its decision being produced and committed.
    pub decision_latency_ms: Histogram,
    /// Time a batch spends in each stage, `stage` = `decide` (deciding and encoding),
    /// `transaction` (producing outputs and offsets), `store` (the fenced state write).
    pub stage_ms: LatencyFamily,
    pub holds_active: Gauge,
    /// Orders kept in memory across owned events (live ones, and ended ones not yet saved).
    pub orders_in_memory: Gauge,
    /// Partitions assigned to this instance, and how many of them are processed (owned),
    /// waiting for a restore, or stopped.
    pub partitions_assigned: Gauge,
    pub partitions_owned: Gauge,
    pub partitions_waiting: Gauge,
    pub partitions_stopped: Gauge,
    pub store_retries: Counter,
    /// Orders read from the store because a command needed one not kept in memory.
    pub orders_read: Counter,
    pub produce_retries: Counter,
    /// Restores completed (assignment, rebalance, restart, after a fault).
    pub restores: Counter,
    /// Partitions given up after a fault and restored again.
    pub rebuilds: Counter,
    /// A save found the store behind this owner: it lost acknowledged writes.
    pub store_loss_detected: Counter,
    /// Events a restore found behind Kafka and re-folded from the log.
    pub events_refolded: Counter,
    /// Commands folded again without publishing (re-folds).
    pub commands_refolded: Counter,
    /// Re-folds whose decisions differed from the published ones (must stay 0).
    pub refold_mismatches: Counter,
    /// Retries that ran out of budget (the partition was given up and restored).
    pub retries_exhausted: Counter,
    /// Events whose state is lost beyond the log start (their commands are dead-lettered).
    pub events_lost: Gauge,
    /// Why the instance is not ready (empty: ready).
    readiness: Readiness,
    registry: Registry,
}

impl Default for BookingMetrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let r = &mut registry;
        BookingMetrics {
            records_processed: counter(r, "booking_records_processed_total", "Commands decided"),
            order_events: {
                let family = Family::<Labels, Counter>::default();
                r.register(
                    "booking_order_events",
                    "Order events produced and committed, by record name",
                    family.clone(),
                );
                family
            },
            records_skipped: counter(
                r,
                "booking_records_skipped_total",
                "Commands already applied (replay)",
            ),
            outputs_produced: counter(r, "booking_outputs_produced_total", "Records produced"),
            availability_superseded: counter(
                r,
                "booking_availability_superseded_total",
                "Availability changes not published because a later change of the same event in the same batch replaced them",
            ),
            dead_letters: counter(
                r,
                "booking_dead_letters_total",
                "Records sent to the dead-letter topic",
            ),
            batches: counter(r, "booking_batches_total", "Batches committed"),
            batch_size: histogram(r, "booking_batch_size", "Records per batch", &BATCH_BUCKETS),
            decision_latency_ms: histogram(
                r,
                "booking_decision_latency_ms",
                "Record timestamp to decision committed, milliseconds",
                &LATENCY_BUCKETS_MS,
            ),
            stage_ms: latency_family(
                r,
                "booking_stage_duration_ms",
                "Time a batch spends deciding and encoding, in its transaction, and storing state (ms), by stage",
            ),
            orders_in_memory: gauge(
                r,
                "booking_orders_in_memory",
                "Orders kept in memory: live ones, and ended ones whose last change is not saved yet",
            ),
            holds_active: gauge(
                r,
                "booking_holds_active",
                "Unpaid holds waiting for their deadline",
            ),
            partitions_assigned: gauge(
                r,
                "booking_partitions_assigned",
                "Partitions assigned to this instance",
            ),
            partitions_owned: gauge(
                r,
                "booking_partitions_owned",
                "Partitions this instance owns and processes",
            ),
            partitions_waiting: gauge(
                r,
                "booking_partitions_waiting",
                "Assigned partitions not processed: being restored or waiting after a fault",
            ),
            partitions_stopped: gauge(
                r,
                "booking_partitions_stopped",
                "Assigned partitions stopped (published decisions and the log differ)",
            ),
            store_retries: counter(r, "booking_store_retries_total", "State writes retried"),
            orders_read: counter(
                r,
                "booking_orders_read_total",
                "Orders read from the store for a command (not kept in memory)",
            ),
            produce_retries: counter(
                r,
                "booking_produce_retries_total",
                "Output transactions retried",
            ),
            restores: counter(
                r,
                "booking_restores_total",
                "Partitions restored (fenced, compared with Kafka, resumed)",
            ),
            rebuilds: counter(
                r,
                "booking_rebuilds_total",
                "Partitions given up after a fault and restored again",
            ),
            store_loss_detected: counter(
                r,
                "booking_store_loss_detected_total",
                "Saves that found the store behind this owner (it lost acknowledged writes)",
            ),
            events_refolded: counter(
                r,
                "booking_events_refolded_total",
                "Events a restore found behind Kafka and re-folded from the log",
            ),
            commands_refolded: counter(
                r,
                "booking_commands_refolded_total",
                "Commands folded again without publishing",
            ),
            refold_mismatches: counter(
                r,
                "booking_refold_mismatches_total",
                "Re-folds whose decisions differed from those published (must stay 0)",
            ),
            retries_exhausted: counter(
                r,
                "booking_retries_exhausted_total",
                "Retries that ran out of budget (the partition was given up)",
            ),
            events_lost: gauge(
                r,
                "booking_events_lost",
                "Events whose state is lost beyond the log start (commands dead-lettered)",
            ),
            readiness: Default::default(),
            registry,
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
        boxoffice_runtime::metrics::render(&self.registry)
    }
}
