//! What the payment processor counts, in the process's one registry, and the server of its
//! `/metrics`, `/healthz` and `/readyz`.

use boxoffice_runtime::metrics::{
    Counter, Gauge, Histogram, LATENCY_BUCKETS_MS, Readiness, Registry, counter, gauge, histogram,
};

/// What the payment processor counts.
#[derive(Debug)]
pub struct PaymentMetrics {
    pub records_processed: Counter,
    /// Time to apply one record (load, decide, write, produce, gateway calls), ms.
    pub apply_ms: Histogram,
    /// From a record's timestamp to its being applied, ms (how old events are when processed).
    pub record_age_ms: Histogram,
    pub records_skipped: Counter,
    pub dead_letters: Counter,
    /// Signed provider events refused because they name another order, amount or currency
    /// than their payment (each is also dead-lettered).
    pub provider_events_refused: Counter,
    pub charges: Counter,
    pub queries: Counter,
    pub refunds: Counter,
    pub captured: Counter,
    pub failed: Counter,
    pub outputs_produced: Counter,
    pub store_retries: Counter,
    pub conflicts: Counter,
    /// Payments woken by their timer.
    pub wakes: Counter,
    /// Payment timers held in memory now (gauge).
    pub timers: Gauge,
    /// Partitions replayed because the store's watermark was behind Kafka or went backwards
    /// (the store lost writes it had acknowledged).
    pub store_loss_replays: Counter,
    pub store_fault_replays: Counter,
    /// Calls still failing when their retry budget ran out (their partition was given up).
    pub retries_exhausted: Counter,
    /// Partitions given up and waiting to be taken again (gauge).
    pub partitions_parked: Gauge,
    /// Why the instance is not ready: the partitions given up.
    pub readiness: Readiness,
    registry: Registry,
}

impl Default for PaymentMetrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let r = &mut registry;
        PaymentMetrics {
            records_processed: counter(r, "payments_records_processed_total", "Records applied"),
            apply_ms: histogram(
                r,
                "payments_apply_duration_ms",
                "Time to apply one record, gateway calls included (ms)",
                &LATENCY_BUCKETS_MS,
            ),
            record_age_ms: histogram(
                r,
                "payments_record_age_ms",
                "From a record's timestamp to its being applied (ms)",
                &LATENCY_BUCKETS_MS,
            ),
            records_skipped: counter(
                r,
                "payments_records_skipped_total",
                "Records already applied (replay)",
            ),
            dead_letters: counter(
                r,
                "payments_dead_letters_total",
                "Records sent to the dead-letter topic",
            ),
            provider_events_refused: counter(
                r,
                "payments_provider_events_refused_total",
                "Provider events refused: another order, amount or currency than the payment",
            ),
            charges: counter(r, "payments_gateway_charges_total", "Charge calls"),
            queries: counter(
                r,
                "payments_gateway_queries_total",
                "Charge or refund queries",
            ),
            refunds: counter(r, "payments_gateway_refunds_total", "Refund calls"),
            captured: counter(r, "payments_captured_total", "Payments captured"),
            failed: counter(r, "payments_failed_total", "Payments failed"),
            outputs_produced: counter(r, "payments_outputs_produced_total", "Records produced"),
            store_retries: counter(r, "payments_store_retries_total", "Store calls retried"),
            conflicts: counter(
                r,
                "payments_conflicts_total",
                "Payment writes refused (another owner)",
            ),
            wakes: counter(r, "payments_wakes_total", "Payments woken by their timer"),
            timers: gauge(
                r,
                "payments_timers",
                "Payment timers held for the owned partitions",
            ),
            store_loss_replays: counter(
                r,
                "payments_store_loss_replays_total",
                "Partitions replayed from the store's watermark (the store lost writes)",
            ),
            store_fault_replays: counter(
                r,
                "payments_store_fault_replays_total",
                "Partitions replayed from the store's watermark after a failed store call (writes since may be lost)",
            ),
            retries_exhausted: counter(
                r,
                "payments_retries_exhausted_total",
                "Calls still failing after the retry budget (their partition was given up)",
            ),
            partitions_parked: gauge(
                r,
                "payments_partitions_parked",
                "Partitions given up after a fault outlasted the retry budget",
            ),
            readiness: Default::default(),
            registry,
        }
    }
}

impl PaymentMetrics {
    pub fn render(&self) -> String {
        boxoffice_runtime::metrics::render(&self.registry)
    }
}
