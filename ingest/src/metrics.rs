//! Ingest's metrics, through the runtime's `prometheus-client` helpers (one registry per
//! process): every answered request by method, matched route and status, its latency, and the
//! live follower's state. `main` serves them on `--metrics-addr` beside `/healthz` and
//! `/readyz` (there: whether the live streams follow Kafka; the API's own `/readyz` probes
//! Kafka and the CQL store).

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use boxoffice_runtime::metrics::{
    Counter, Gauge, LatencyFamily, Readiness, Registry, counter, gauge, latency_family, render,
};
use futures::FutureExt;
use prometheus_client::metrics::family::Family;

use boxoffice_runtime::metrics::Labels;

/// Ingest's metrics and the registry they are in.
#[derive(Debug)]
pub struct IngestMetrics {
    registry: Registry,
    /// `ingest_http_requests_total{method, route, status}`.
    pub requests: Family<Labels, Counter>,
    /// `ingest_http_request_duration_ms{method, route}`.
    pub latency: LatencyFamily,
    /// `ingest_kafka_produce_duration_ms{topic, result}`: from send to the broker's
    /// acknowledgement (or the failure).
    pub produce: LatencyFamily,
    /// 1 once the live streams have their topics assigned (after that librdkafka reconnects by
    /// itself; an outage then shows in the streams' silence, not here).
    pub live_following: Gauge,
    /// Times the live follower could not reach its topics within its retry budget.
    pub live_retries_exhausted: Counter,
    /// The live follower's readiness (`/readyz` on the metrics address).
    pub readiness: Readiness,
}

impl Default for IngestMetrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<Labels, Counter>::default();
        registry.register(
            "ingest_http_requests",
            "Requests answered, by method, matched route and status",
            requests.clone(),
        );
        let latency = latency_family(
            &mut registry,
            "ingest_http_request_duration_ms",
            "Time to answer a request (ms; streams: until their headers), by method and matched route",
        );
        let produce = latency_family(
            &mut registry,
            "ingest_kafka_produce_duration_ms",
            "Time from producing a record to the broker's acknowledgement or the failure (ms), by topic and result",
        );
        let live_following = gauge(
            &mut registry,
            "ingest_live_following",
            "1 once the live streams have orders, availability and notifications assigned",
        );
        let live_retries_exhausted = counter(
            &mut registry,
            "ingest_live_retries_exhausted_total",
            "Times the live follower could not reach its topics within its retry budget",
        );
        let readiness = Readiness::default();
        readiness.set(vec!["live streams: not following Kafka yet".to_owned()]);
        IngestMetrics {
            registry,
            requests,
            latency,
            produce,
            live_following,
            live_retries_exhausted,
            readiness,
        }
    }
}

impl IngestMetrics {
    pub fn render(&self) -> String {
        render(&self.registry)
    }

    /// One produce to `topic`, acknowledged (`ok`) or not, that took `elapsed`.
    pub fn observe_produce(&self, topic: &str, ok: bool, elapsed: std::time::Duration) {
        let result = if ok { "ok" } else { "error" };
        self.produce
            .get_or_create(&vec![
                ("topic", topic.to_owned()),
                ("result", result.to_owned()),
            ])
            .observe(elapsed.as_secs_f64() * 1000.0);
    }
}

/// Middleware (on matched routes) that counts every answer and times it.
pub async fn track(
    State(metrics): State<Arc<IngestMetrics>>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    // A handler that panics is counted as the 500 the panic layer outside answers with.
    let outcome = std::panic::AssertUnwindSafe(next.run(request))
        .catch_unwind()
        .await;
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    let status = match &outcome {
        Ok(response) => response.status().as_u16().to_string(),
        Err(_) => "500".to_owned(),
    };
    metrics
        .latency
        .get_or_create(&vec![("method", method.clone()), ("route", route.clone())])
        .observe(elapsed_ms);
    metrics
        .requests
        .get_or_create(&vec![
            ("method", method),
            ("route", route),
            ("status", status),
        ])
        .inc();
    match outcome {
        Ok(response) => response,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_has_the_request_families() {
        let metrics = IngestMetrics::default();
        metrics
            .requests
            .get_or_create(&vec![
                ("method", "POST".to_owned()),
                ("route", "/v1/orders".to_owned()),
                ("status", "202".to_owned()),
            ])
            .inc();
        metrics
            .latency
            .get_or_create(&vec![
                ("method", "POST".to_owned()),
                ("route", "/v1/orders".to_owned()),
            ])
            .observe(3.0);
        let text = metrics.render();
        assert!(
            text.contains(
                r#"ingest_http_requests_total{method="POST",route="/v1/orders",status="202"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"ingest_http_request_duration_ms_bucket{le="5.0",method="POST",route="/v1/orders"} 1"#)
                || text.contains(r#"ingest_http_request_duration_ms_bucket{method="POST",route="/v1/orders",le="5.0"} 1"#),
            "{text}"
        );
        assert!(text.contains("ingest_live_following 0"), "{text}");
        assert!(metrics.readiness.check().is_err());
    }
}
