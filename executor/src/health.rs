//! The executor's HTTP endpoints: `/healthz` (the process answers), `/readyz` (the backend
//! built, Redis reachable and the claim loop turning) and `/metrics`, and [`Health`], what the
//! executor tells them.
//!
//! They answer from the start, before the backend has indexed its documents: a large corpus
//! takes a while, and a liveness probe must not kill the pod meanwhile, while the readiness
//! probe keeps it out of rotation until tasks can run.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;

/// What the job loop reports for the health endpoints and the worker registry.
#[derive(Debug, Default)]
pub struct Health {
    in_flight: AtomicU32,
    draining: AtomicBool,
    /// Milliseconds since the epoch of the claim loop's last turn.
    loop_beat_ms: AtomicU64,
    redis_ok: AtomicBool,
    /// The backend is built (its documents indexed).
    backend_ready: AtomicBool,
}

impl Health {
    /// Tasks running now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// The backend is built, Redis answered the last time the loop talked to it, and the
    /// loop turned recently.
    pub fn ready(&self, max_silence: Duration) -> bool {
        let last = self.loop_beat_ms.load(Ordering::Relaxed);
        self.backend_ready()
            && self.redis_ok.load(Ordering::Relaxed)
            && now_ms().saturating_sub(last) <= max_silence.as_millis() as u64
    }

    /// Whether the backend is built: until then no task can run.
    pub fn backend_ready(&self) -> bool {
        self.backend_ready.load(Ordering::Relaxed)
    }

    /// The backend is built and its documents indexed.
    pub fn backend_built(&self) {
        self.backend_ready.store(true, Ordering::Relaxed);
    }

    /// The claim loop turned.
    pub(crate) fn beat(&self) {
        self.loop_beat_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Whether the loop's last call to Redis got an answer.
    pub(crate) fn redis_answered(&self, ok: bool) {
        self.redis_ok.store(ok, Ordering::Relaxed);
    }

    pub(crate) fn task_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn task_ended(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }
}

/// Milliseconds since the epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

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
    } else if !p.health.backend_ready() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "starting: building the backend (indexing documents)",
        )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_ready_until_the_backend_is_built() {
        let health = Health::default();
        // Redis answers and the loop turns (as it would for a backend given ready-made) …
        health.redis_answered(true);
        health.beat();
        assert!(!health.ready(Duration::from_secs(15)));
        // … but only a built backend makes the executor ready.
        health.backend_built();
        assert!(health.ready(Duration::from_secs(15)));
        health.redis_answered(false);
        assert!(!health.ready(Duration::from_secs(15)));
    }
}
