//! The built-in lag page: `/` (one HTML file, its CSS and script inline: no external assets),
//! `/api/lag` (the latest view as JSON) and `/events` (the view again after every collection,
//! as server-sent events). The view carries each group's recent history from a ring buffer kept
//! here, for the page's sparklines.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use tokio::sync::{Semaphore, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::WatchStream;

use crate::report::Report;

/// Points of history kept per group (at one collection a point).
pub const HISTORY_POINTS: usize = 120;
/// Live pages served at once; more are refused with 503 (each holds a connection).
pub const MAX_STREAMS: usize = 64;

const PAGE: &str = include_str!("page.html");

/// One partition of a group, as the page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionView {
    pub topic: String,
    pub partition: i32,
    pub status: &'static str,
    pub committed: Option<i64>,
    /// Effective lag (records).
    pub lag: Option<i64>,
    /// High watermark minus commit.
    pub lag_high_watermark: Option<i64>,
    pub lag_seconds: Option<f64>,
    pub owner: Option<String>,
}

/// One point of a group's history: `[collected at (ms), effective lag, time lag (s)]`.
pub type Point = (i64, i64, f64);

#[derive(Debug, Clone, Serialize)]
pub struct GroupView {
    pub name: String,
    pub status: &'static str,
    pub members: usize,
    pub read_committed: bool,
    pub lag: i64,
    pub lag_seconds: f64,
    pub partitions: Vec<PartitionView>,
    pub history: Vec<Point>,
}

/// What the page shows.
#[derive(Debug, Clone, Default, Serialize)]
pub struct View {
    pub collected_at_ms: i64,
    pub cluster: String,
    pub groups: Vec<GroupView>,
    /// Why the last collection failed, if it did.
    pub error: Option<String>,
}

/// Each group's recent points, bounded.
#[derive(Debug, Default)]
pub struct History {
    points: BTreeMap<String, VecDeque<Point>>,
}

impl History {
    /// The view of `report`, recording its points (groups absent from it are forgotten).
    pub fn view(&mut self, report: &Report, cluster: &str, at_ms: i64) -> View {
        self.points
            .retain(|name, _| report.groups.iter().any(|g| &g.name == name));
        let groups = report
            .groups
            .iter()
            .map(|g| {
                let lag: i64 = g.partitions.iter().filter_map(|p| p.lag.effective).sum();
                let lag_seconds = g
                    .partitions
                    .iter()
                    .filter_map(|p| p.lag.seconds)
                    .fold(0.0, f64::max);
                let points = self.points.entry(g.name.clone()).or_default();
                if points.len() == HISTORY_POINTS {
                    points.pop_front();
                }
                points.push_back((at_ms, lag, lag_seconds));
                GroupView {
                    name: g.name.clone(),
                    status: g.status.as_str(),
                    members: g.members,
                    read_committed: g.read_committed,
                    lag,
                    lag_seconds,
                    partitions: g
                        .partitions
                        .iter()
                        .map(|p| PartitionView {
                            topic: p.topic.clone(),
                            partition: p.partition,
                            status: p.status.as_str(),
                            committed: p.lag.committed,
                            lag: p.lag.effective,
                            lag_high_watermark: p.lag.compatible,
                            lag_seconds: p.lag.seconds,
                            owner: p
                                .owner
                                .as_ref()
                                .map(|o| format!("{} ({})", o.client_id, o.host)),
                        })
                        .collect(),
                    history: points.iter().copied().collect(),
                }
            })
            .collect();
        View {
            collected_at_ms: at_ms,
            cluster: cluster.to_owned(),
            groups,
            error: None,
        }
    }
}

#[derive(Clone)]
struct PageState {
    view: watch::Receiver<Arc<View>>,
    streams: Arc<Semaphore>,
}

/// `/`, `/api/lag` and `/events`, reading the views sent on `view`.
pub fn router(view: watch::Receiver<Arc<View>>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/api/lag", get(latest))
        .route("/events", get(events))
        .with_state(PageState {
            view,
            streams: Arc::new(Semaphore::new(MAX_STREAMS)),
        })
}

/// The page's Content-Security-Policy: its one inline script by hash, its inline style, and
/// connections to this server only.
fn content_security_policy() -> String {
    use base64::Engine;
    use sha2::Digest;
    let script = PAGE
        .split_once("<script>")
        .and_then(|(_, rest)| rest.split_once("</script>"))
        .map_or("", |(script, _)| script);
    let hash = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(script));
    format!(
        "default-src 'none'; script-src 'sha256-{hash}'; style-src 'unsafe-inline'; \
         connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
}

async fn page() -> Response {
    static CSP: std::sync::LazyLock<String> = std::sync::LazyLock::new(content_security_policy);
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP.as_str()),
        ],
        PAGE,
    )
        .into_response()
}

async fn latest(State(state): State<PageState>) -> Response {
    let view = Arc::clone(&state.view.borrow());
    axum::Json(view.as_ref().clone()).into_response()
}

async fn events(State(state): State<PageState>) -> Response {
    let Ok(permit) = Arc::clone(&state.streams).try_acquire_owned() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "too many live pages open").into_response();
    };
    let stream = WatchStream::new(state.view.clone()).map(move |view| {
        // The permit lives as long as the stream.
        let _held = &permit;
        Ok::<_, Infallible>(match serde_json::to_string(view.as_ref()) {
            Ok(json) => Event::default().event("lag").data(json),
            Err(e) => Event::default().event("error").data(e.to_string()),
        })
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::{Collection, GroupView as Seen};
    use crate::lag::PartitionOffsets;
    use crate::report::Reporter;

    fn collection(group: &str, committed: i64, end: i64) -> Collection {
        let tp = ("orders".to_owned(), 0);
        let offsets = PartitionOffsets {
            log_start: 0,
            high_watermark: end,
            last_stable: end,
        };
        Collection {
            offsets: BTreeMap::from([(tp.clone(), offsets)]),
            groups: vec![Seen {
                name: group.into(),
                state: "Stable".into(),
                members: 1,
                read_committed: true,
                committed: BTreeMap::from([(tp, committed)]),
                owners: BTreeMap::new(),
                first: BTreeMap::new(),
            }],
        }
    }

    #[test]
    fn the_history_is_bounded_and_forgets_groups_that_went_away() {
        let mut reporter = Reporter::new(60_000, 10);
        let mut history = History::default();
        for i in 0..(HISTORY_POINTS as i64 + 10) {
            let report = reporter.report(&collection("g", 10, 10 + i), i * 1_000);
            let view = history.view(&report, "c", i * 1_000);
            assert!(view.groups[0].history.len() <= HISTORY_POINTS);
        }
        let report = reporter.report(&collection("g", 10, 20), 500_000);
        let view = history.view(&report, "c", 500_000);
        assert_eq!(view.groups[0].history.len(), HISTORY_POINTS);
        assert_eq!(view.groups[0].history.last(), Some(&(500_000, 10, 0.0)));
        let report = reporter.report(&collection("h", 0, 0), 501_000);
        history.view(&report, "c", 501_000);
        assert_eq!(history.points.keys().collect::<Vec<_>>(), ["h"]);
    }

    #[test]
    fn the_policy_allows_exactly_the_pages_script() {
        let csp = content_security_policy();
        assert!(
            csp.starts_with("default-src 'none'; script-src 'sha256-"),
            "{csp}"
        );
        assert!(!csp.contains("unsafe-inline'; connect-src *"), "{csp}");
        assert_eq!(
            PAGE.matches("<script>").count(),
            1,
            "one inline script, hashed"
        );
    }

    #[test]
    fn the_page_has_no_external_assets() {
        for needle in ["src=\"http", "href=\"http", "//cdn", "@import"] {
            assert!(!PAGE.contains(needle), "{needle}");
        }
    }
}
