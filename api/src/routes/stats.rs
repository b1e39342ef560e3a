//! `GET /api/queue/stats`: every queue's counts, rates, wait and processing times, and the
//! worker list (what rq-dashboard showed for the original design). Admin-only when auth is
//! on.

use axum::Json;
use axum::extract::{RawQuery, State};
use ragpool_queue::stats::OwnerStats;
use ragpool_queue::{QueueStats, WorkerInfo};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

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
    /// With `?by=owner`: each API key's queued and started tasks over every queue, by the
    /// key's name (never the key); keys with neither are left out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owners: Option<Vec<OwnerStats>>,
}

/// What `GET /api/queue/stats` adds to its answer.
#[derive(Debug, Deserialize, IntoParams)]
#[allow(dead_code)] // read by `parse_by`, declared for the API description
#[into_params(parameter_in = Query)]
pub struct StatsQuery {
    /// `owner`: add the tasks of each API key (`owners`).
    pub by: Option<StatsBy>,
}

/// See [`StatsQuery`].
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StatsBy {
    Owner,
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
    params(StatsQuery),
    responses(
        (status = 200, description = "Every queue and the live workers", body = StatsView),
        (status = 401, description = "Missing or unknown API key", body = ErrorBody),
        (status = 403, description = "Not an admin key", body = ErrorBody),
        (status = 422, description = "An unknown `by`", body = ErrorBody),
        (status = 503, description = "Redis unreachable; retry after the Retry-After seconds", body = ErrorBody,
            headers(("Retry-After" = u32))),
    ),
    security((), ("bearer" = [])),
)]
pub async fn queue_stats(
    caller: Caller,
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Json<StatsView>, ApiError> {
    caller.require_admin()?;
    let owners = match parse_by(query.as_deref())? {
        Some(StatsBy::Owner) => Some(state.broker().owner_stats().await?),
        None => None,
    };
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
        owners,
    }))
}

/// Reads `?by=`: see [`StatsQuery`].
fn parse_by(query: Option<&str>) -> Result<Option<StatsBy>, ApiError> {
    let by = query.and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes()).find_map(|(k, v)| (k == "by").then_some(v))
    });
    match by.as_deref() {
        None => Ok(None),
        Some("owner") => Ok(Some(StatsBy::Owner)),
        Some(other) => Err(ApiError::invalid_field(format!(
            "by must be \"owner\", not {other:?}"
        ))),
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
