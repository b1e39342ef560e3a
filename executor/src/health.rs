//! The executor's HTTP endpoints: `/healthz` (the process answers), `/readyz` (Redis reachable
//! and the claim loop turning) and `/metrics`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;
use crate::runner::Health;

#[derive(Clone)]
struct Probe {
    health: Arc<Health>,
    metrics: Arc<Metrics>,
}

/// The router of the health and metrics endpoints.
pub fn router(health: Arc<Health>, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(render))
        .with_state(Probe { health, metrics })
}

async fn ready(State(p): State<Probe>) -> impl IntoResponse {
    // The loop turns at least every few seconds while idle (its wait for work is bounded).
    if p.health.ready(Duration::from_secs(15)) {
        (StatusCode::OK, "ready")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "redis unreachable or job loop stalled",
        )
    }
}

async fn render(State(p): State<Probe>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        p.metrics.render(),
    )
}
