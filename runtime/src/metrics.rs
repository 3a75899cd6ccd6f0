//! Metrics every boxoffice service exposes: counters and fixed-bucket histograms over plain
//! atomics, rendered in the Prometheus text format, and the small HTTP server that answers
//! `/metrics` and `/healthz` (what the consumer-lag dashboards scrape beside Kafka's own lag).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Upper bounds (ms) of the latency histogram buckets.
pub const LATENCY_BUCKETS_MS: [u64; 12] = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000];

/// A fixed-bucket histogram over atomics (lock-free `observe` from any task).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [u64],
    buckets: Vec<AtomicU64>,
    sum: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [u64]) -> Self {
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

    pub fn render(&self, out: &mut String, name: &str, help: &str) {
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

/// Writes counters (`# TYPE counter`): `(name, help, value)`.
pub fn render_counters(out: &mut String, counters: &[(&str, &str, &AtomicU64)]) {
    for (name, help, value) in counters {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
            value.load(Ordering::Relaxed)
        );
    }
}

/// Writes gauges (`# TYPE gauge`): `(name, help, value)`.
pub fn render_gauges(out: &mut String, gauges: &[(&str, &str, &AtomicI64)]) {
    for (name, help, value) in gauges {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}",
            value.load(Ordering::Relaxed)
        );
    }
}

/// Why a service is not ready (empty: ready), for `/readyz`; each part of the service (a
/// notifier channel, say) keeps its own list.
#[derive(Debug, Default)]
pub struct Readiness {
    reasons: std::sync::Mutex<std::collections::BTreeMap<String, Vec<String>>>,
}

impl Readiness {
    /// Replaces the reasons (an empty list: ready).
    pub fn set(&self, reasons: Vec<String>) {
        self.set_part("", reasons);
    }

    /// Replaces the reasons of one part of the service.
    pub fn set_part(&self, part: &str, reasons: Vec<String>) {
        // A poisoned lock only means a panic elsewhere; the data is plain lists.
        let mut guard = self.reasons.lock().unwrap_or_else(|p| p.into_inner());
        guard.insert(part.to_owned(), reasons);
    }

    /// `Ok` when ready; otherwise the reasons, one per line.
    pub fn check(&self) -> Result<(), String> {
        let guard = self.reasons.lock().unwrap_or_else(|p| p.into_inner());
        let reasons: Vec<&str> = guard.values().flatten().map(String::as_str).collect();
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons.join("\n"))
        }
    }
}

/// Serves `/metrics` (whatever `render` answers) and `/healthz` until the process ends.
pub async fn serve<F>(listener: tokio::net::TcpListener, render: F)
where
    F: Fn() -> String + Clone + Send + Sync + 'static,
{
    serve_with_readiness(listener, render, || Ok(())).await;
}

/// Serves `/metrics`, `/healthz` (the process answers) and `/readyz` (200, or 503 with the
/// reasons `ready` gives) until the process ends.
pub async fn serve_with_readiness<F, R>(listener: tokio::net::TcpListener, render: F, ready: R)
where
    F: Fn() -> String + Clone + Send + Sync + 'static,
    R: Fn() -> Result<(), String> + Clone + Send + Sync + 'static,
{
    use axum::http::StatusCode;
    use axum::routing::get;
    let app = axum::Router::new()
        .route("/metrics", get(move || async move { render() }))
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || async move {
                match ready() {
                    Ok(()) => (StatusCode::OK, "ready".to_owned()),
                    Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
                }
            }),
        );
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

    #[test]
    fn counters_and_gauges_render_with_their_type() {
        let (c, g) = (AtomicU64::new(7), AtomicI64::new(-2));
        let mut out = String::new();
        render_counters(&mut out, &[("a_total", "A", &c)]);
        render_gauges(&mut out, &[("b", "B", &g)]);
        assert_eq!(
            out,
            "# HELP a_total A\n# TYPE a_total counter\na_total 7\n# HELP b B\n# TYPE b gauge\nb -2\n"
        );
    }
}
