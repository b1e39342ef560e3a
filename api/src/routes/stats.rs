//! `GET /api/queue/stats`: every queue's counts, rates, wait and processing times, and the
//! worker list (what rq-dashboard showed for the original design). Admin-only when auth is
//! on.

use std::collections::HashMap;

use axum::Json;
use axum::extract::State;
use ragpool_queue::{DurationSummary, QueueStats, WorkerInfo};
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::rates::{Rates, Totals};
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

/// One queue.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueStatsView {
    pub queue: String,
    /// Waiting to be claimed.
    pub queued: u64,
    /// Running under a lease.
    pub started: u64,
    /// Waiting out a retry backoff.
    pub delayed: u64,
    /// Ended and still kept.
    pub finished: u64,
    pub failed: u64,
    pub canceled: u64,
    /// Totals since the queue was first used.
    pub total_enqueued: u64,
    pub total_finished: u64,
    pub total_failed: u64,
    /// Leases that expired (a worker died or stalled).
    pub total_lease_expired: u64,
    /// Claim to completion, over the last 1000 tasks.
    pub processing: DurationView,
    /// Ready to claimed, over the last 1000 tasks.
    pub wait: DurationView,
    /// Age of the oldest queued task, 0 when none waits.
    pub oldest_queued_age_ms: u64,
    /// Per-second rates since this server's oldest stats reading of the last five minutes;
    /// absent until two readings at least a second apart exist.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rates: Option<RatesView>,
}

/// Mean and percentiles of a duration, in milliseconds.
#[derive(Debug, Serialize, ToSchema)]
pub struct DurationView {
    pub samples: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
}

/// Throughput of a queue.
#[derive(Debug, Serialize, ToSchema)]
pub struct RatesView {
    pub window_seconds: f64,
    pub enqueued_per_second: f64,
    pub finished_per_second: f64,
    pub failed_per_second: f64,
}

/// A live executor.
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
    let totals: HashMap<String, Totals> = queues
        .iter()
        .map(|q| {
            let t = Totals {
                enqueued: q.total_enqueued,
                finished: q.total_finished,
                failed: q.total_failed,
            };
            (q.queue.clone(), t)
        })
        .collect();
    let mut rates = state
        .rates()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .record(at_ms, totals);
    let capacity: u64 = workers.iter().map(|w| u64::from(w.concurrency)).sum();
    let busy: u64 = workers.iter().map(|w| u64::from(w.in_flight)).sum();
    let utilization = (capacity > 0).then(|| busy as f64 / capacity as f64);
    Ok(Json(StatsView {
        queues: queues
            .into_iter()
            .map(|q| {
                let r = rates.remove(&q.queue);
                queue_view(q, r)
            })
            .collect(),
        workers: workers.into_iter().map(worker_view).collect(),
        utilization,
        at: rfc3339(at_ms),
    }))
}

fn queue_view(q: QueueStats, rates: Option<Rates>) -> QueueStatsView {
    QueueStatsView {
        queue: q.queue,
        queued: q.queued,
        started: q.started,
        delayed: q.delayed,
        finished: q.finished,
        failed: q.failed,
        canceled: q.canceled,
        total_enqueued: q.total_enqueued,
        total_finished: q.total_finished,
        total_failed: q.total_failed,
        total_lease_expired: q.total_lease_expired,
        processing: duration_view(q.processing),
        wait: duration_view(q.wait),
        oldest_queued_age_ms: q.oldest_queued_age_ms,
        rates: rates.map(|r| RatesView {
            window_seconds: r.window_seconds,
            enqueued_per_second: r.enqueued_per_second,
            finished_per_second: r.finished_per_second,
            failed_per_second: r.failed_per_second,
        }),
    }
}

fn duration_view(d: DurationSummary) -> DurationView {
    DurationView {
        samples: d.samples,
        mean_ms: d.mean_ms,
        p50_ms: d.p50_ms,
        p95_ms: d.p95_ms,
    }
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
