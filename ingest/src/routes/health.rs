//! `/healthz` (the process answers) and `/readyz` (Kafka metadata and a CQL query both answer
//! within two seconds).

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::{ApiError, ApiResult, Problem};
use crate::state::SharedState;

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub status: String,
}

/// Liveness.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, description = "Alive", body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".to_owned(),
    })
}

/// Readiness: Kafka and the CQL store answer.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "Ready", body = Health),
        (status = 503, description = "Kafka or the CQL store does not answer", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn readyz(State(state): State<SharedState>) -> ApiResult<(StatusCode, Json<Health>)> {
    let kafka = tokio::time::timeout(PROBE_TIMEOUT, state.bus.ping());
    let store = tokio::time::timeout(PROBE_TIMEOUT, state.stores.probe.ping());
    let (kafka, store) = tokio::join!(kafka, store);
    let mut down = Vec::new();
    if !matches!(kafka, Ok(Ok(()))) {
        down.push("Kafka");
    }
    if !matches!(store, Ok(Ok(()))) {
        down.push("the CQL store");
    }
    if !down.is_empty() {
        return Err(ApiError::unavailable(format!(
            "not ready: {} did not answer",
            down.join(" and ")
        )));
    }
    Ok((
        StatusCode::OK,
        Json(Health {
            status: "ready".to_owned(),
        }),
    ))
}
