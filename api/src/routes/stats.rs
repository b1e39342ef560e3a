//! `GET /api/queue/stats`: every queue's counts, rates, wait and processing times, and the
//! worker list (what rq-dashboard showed for the original design). Admin-only when auth is
//! on.

use axum::Json;
use axum::extract::State;
use ragpool_queue::{QueueStats, WorkerInfo};
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::rates::{Rates, Totals, utilization};
use crate::routes::view::rfc3339;
use crate::state::AppState;

/// Queues and workers.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatsView {
    pub queues: Vec<QueueStatsView>,
    pub workers: Vec<WorkerView>,
    /// Tasks in flight over the capacity of all live workers (0 to 1); absent with no workers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub utilization: Option<f64>,
    /// When the snapshot was taken (Redis server clock).
    pub at: String,
}

/// One queue: the queue's own statistics, and its rates. Differs from [`QueueStats`] only
/// by `rates`, which this API replica derives from successive snapshots.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueStatsView {
    #[serde(flatten)]
    pub stats: QueueStats,
    /// Per-second rates since this server's oldest stats reading of the last five minutes;
    /// absent until two readings at least a second apart exist.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rates: Option<Rates>,
}

/// A live executor. Differs from [`WorkerInfo`] (its registry record): times are RFC 3339
/// instead of epoch milliseconds.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkerView {
    pub id: String,
    pub host: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    pub queues: Vec<String>,
    /// Tasks it runs at once, and how many it runs now.
    pub concurrency: u32,
    pub in_flight: u32,
    pub started_at: String,
    pub last_seen_at: String,
    /// Shutting down: it claims nothing more and finishes what it holds.
    pub draining: bool,
}

/// Queue statistics and workers.
#[utoipa::path(
    get,
    path = "/api/queue/stats",
    tag = "queues",
    responses(
        (status = 200, description = "Every queue and the live workers", body = StatsView),
        (status = 401, description = "Missing or unknown API key", body = ErrorBody),
        (status = 403, description = "Not an admin key", body = ErrorBody),
        (status = 503, description = "Redis unreachable; retry after the Retry-After seconds", body = ErrorBody,
            headers(("Retry-After" = u32))),
    ),
    security((), ("bearer" = [])),
)]
pub async fn queue_stats(
    caller: Caller,
    State(state): State<AppState>,
) -> Result<Json<StatsView>, ApiError> {
    caller.require_admin()?;
    let queues = state.broker().stats().await?;
    let workers = state.broker().workers(state.worker_ttl()).await?;
    let at_ms = queues.iter().map(|q| q.at_ms).max().unwrap_or(0);
    let mut rates = state
        .rates()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .record(at_ms, Totals::of(&queues));
    let utilization = utilization(&workers);
    Ok(Json(StatsView {
        queues: queues
            .into_iter()
            .map(|q| {
                let rates = rates.remove(&q.queue);
                QueueStatsView { stats: q, rates }
            })
            .collect(),
        workers: workers.into_iter().map(worker_view).collect(),
        utilization,
        at: rfc3339(at_ms),
    }))
}

fn worker_view(w: WorkerInfo) -> WorkerView {
    WorkerView {
        id: w.id,
        host: w.host,
        pod: w.pod,
        queues: w.queues,
        concurrency: w.concurrency,
        in_flight: w.in_flight,
        started_at: rfc3339(w.started_at_ms),
        last_seen_at: rfc3339(w.last_seen_ms),
        draining: w.draining,
    }
}
