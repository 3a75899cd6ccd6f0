//! Metrics every boxoffice service exposes, through `prometheus-client`: each service's metrics
//! struct owns the process's one [`Registry`] and registers its counters, gauges and histograms
//! in it under their existing names; [`render`] writes the OpenMetrics text, and [`serve`] /
//! [`serve_with_readiness`] answer `/metrics`, `/healthz` and `/readyz` (what the consumer-lag
//! dashboards scrape beside Kafka's own lag).

pub use prometheus_client::metrics::counter::Counter;
pub use prometheus_client::metrics::family::Family;
pub use prometheus_client::metrics::gauge::Gauge;
pub use prometheus_client::metrics::histogram::Histogram;
pub use prometheus_client::registry::Registry;

/// Upper bounds (ms) of the latency histogram buckets.
pub const LATENCY_BUCKETS_MS: [f64; 12] = [
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0,
];

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A counter registered as `name` (which ends in `_total`, as exposed).
pub fn counter(registry: &mut Registry, name: &str, help: &str) -> Counter {
    let counter = Counter::default();
    // prometheus-client adds the `_total` suffix itself.
    registry.register(name.trim_end_matches("_total"), help, counter.clone());
    counter
}

/// A gauge registered as `name`.
pub fn gauge(registry: &mut Registry, name: &str, help: &str) -> Gauge {
    let gauge = Gauge::default();
    registry.register(name, help, gauge.clone());
    gauge
}

/// A histogram with `bounds` as bucket upper bounds, registered as `name`.
pub fn histogram(registry: &mut Registry, name: &str, help: &str, bounds: &[f64]) -> Histogram {
    let histogram = Histogram::new(bounds.iter().copied());
    registry.register(name, help, histogram.clone());
    histogram
}

/// Labels of a metric family: `(name, value)` pairs.
pub type Labels = Vec<(&'static str, String)>;

/// A family of latency histograms (ms, [`LATENCY_BUCKETS_MS`]) by labels.
pub type LatencyFamily =
    prometheus_client::metrics::family::Family<Labels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS_MS.iter().copied())
}

/// A [`LatencyFamily`] registered as `name`.
pub fn latency_family(registry: &mut Registry, name: &str, help: &str) -> LatencyFamily {
    let family = LatencyFamily::new_with_constructor(latency_histogram);
    registry.register(name, help, family.clone());
    family
}

/// The registry's metrics in the OpenMetrics text format.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
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

    /// How many reasons there are, over every part.
    pub fn count(&self) -> usize {
        let guard = self.reasons.lock().unwrap_or_else(|p| p.into_inner());
        guard.values().map(Vec::len).sum()
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
    if let Err(e) = axum::serve(listener, health_router(render, ready)).await {
        tracing::warn!(error = %e, "metrics server stopped");
    }
}

/// The routes of [`serve_with_readiness`], for a service that serves more beside them.
pub fn health_router<F, R>(render: F, ready: R) -> axum::Router
where
    F: Fn() -> String + Clone + Send + Sync + 'static,
    R: Fn() -> Result<(), String> + Clone + Send + Sync + 'static,
{
    use axum::http::StatusCode;
    use axum::routing::get;
    axum::Router::new()
        .route(
            "/metrics",
            get(move || async move { ([(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)], render()) }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || async move {
                match ready() {
                    Ok(()) => (StatusCode::OK, "ready".to_owned()),
                    Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
                }
            }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_under_their_names_with_cumulative_buckets() {
        let mut registry = Registry::default();
        let c = counter(&mut registry, "a_total", "A");
        let g = gauge(&mut registry, "b", "B");
        let h = histogram(&mut registry, "x", "X", &LATENCY_BUCKETS_MS);
        c.inc_by(7);
        g.set(-2);
        for v in [0.0, 1.0, 3.0, 7000.0] {
            h.observe(v);
        }
        let out = render(&registry);
        assert!(out.contains("# TYPE a counter\na_total 7\n"), "{out}");
        assert!(out.contains("# TYPE b gauge\nb -2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"1.0\"} 2"), "{out}");
        assert!(out.contains("x_bucket{le=\"5.0\"} 3"), "{out}");
        assert!(out.contains("x_bucket{le=\"5000.0\"} 3"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 4"), "{out}");
        assert!(out.contains("x_count 4"), "{out}");
        assert!(out.ends_with("# EOF\n"), "{out}");
    }
}
