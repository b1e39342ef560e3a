//! Probes, metrics and the API description: `/healthz` (the process answers), `/readyz`
//! (Redis answers too), `/metrics` and `/openapi.json`. None needs a key.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json};
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;

/// `/healthz` and `/readyz` alone, for the health listener (`--health-listen`).
pub fn probe_router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

/// A probe's answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok` or `ready`.
    pub status: String,
}

/// The process is alive.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses((status = 200, description = "Alive", body = Health)),
)]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// Redis answers: the API can take submissions.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Health),
        (status = 503, description = "Redis unreachable", body = ErrorBody,
            headers(("Retry-After" = u32))),
    ),
)]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    state.broker().ping().await?;
    Ok(Json(Health {
        status: "ready".into(),
    }))
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Prometheus metrics.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text", body = String)),
)]
pub async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    read_queue_gauges(&state).await;
    let text = state
        .metrics()
        .encode()
        .map_err(|e| ApiError::internal(format!("encoding metrics: {e}")))?;
    Ok((
        [(header::CONTENT_TYPE, HeaderValue::from_static(OPENMETRICS))],
        text,
    )
        .into_response())
}

/// Refreshes the gauges read from Redis (the configured queues' queued payload bytes, and
/// with `--metrics-per-owner` each key's tasks) and `redis_up`. A scrape while Redis is away
/// keeps the last values of the others: the request metrics still matter then.
async fn read_queue_gauges(state: &AppState) {
    let broker = state.broker();
    for queue in &broker.config().queues {
        match broker.queue_stats(&queue.name).await {
            Ok(stats) => state
                .metrics()
                .queued_payload_bytes(&queue.name, stats.queued_payload_bytes),
            Err(e) => {
                tracing::debug!(error = %e, "queue gauges not refreshed");
                state.metrics().redis_up(false);
                return;
            }
        }
    }
    state.metrics().redis_up(true);
    if state.metrics().per_owner() {
        read_owner_gauges(state).await;
    }
}

/// Each configured key's queued and started tasks; a key with none reads 0. Owners not in
/// the key list (a key since removed) get no series, so the series are bounded by the list.
async fn read_owner_gauges(state: &AppState) {
    let owners = match state.broker().owner_stats().await {
        Ok(owners) => owners,
        Err(e) => {
            tracing::debug!(error = %e, "owner gauges not refreshed");
            return;
        }
    };
    for name in state.keys().names() {
        let (queued, started) = owners
            .iter()
            .find(|o| o.owner == name)
            .map_or((0, 0), |o| (o.queued, o.started));
        state.metrics().owner_tasks(name, queued, started);
    }
}

/// The generated OpenAPI document, rendered once when the router is built.
#[derive(Clone)]
pub struct OpenApiJson(pub Arc<String>);

/// This API's OpenAPI 3.1 description.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object)),
)]
pub async fn openapi_json(Extension(doc): Extension<OpenApiJson>) -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        doc.0.as_str().to_owned(),
    )
        .into_response()
}
