//! The operator endpoints behind the dashboard, usable without it: task lists per queue and
//! state, the worker table, bulk retry and purge, a task's detail with a payload summary,
//! one snapshot of everything, and one live stream of queue-level changes. Admin-only when
//! API keys are configured (the detail endpoint follows the usual task visibility).
//!
//! Bulk actions work in chunks of 500 tasks, one atomic script call each, and stop after a
//! bounded number of tasks per request ([`MAX_RETRY_PER_CALL`], [`MAX_PURGE_PER_CALL`]);
//! the answer says how many are left, and the client calls again.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use ragpool_queue::payload::{InputSummary, Payload};
use ragpool_queue::{BulkOutcome, TaskPage, TaskState, browse};
use serde::Serialize;
use tokio::sync::broadcast::error::RecvError;
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::extract::TaskIdParam;
use crate::holds::Peer;
use crate::live::{self, DashboardSnapshot, WorkerRow};
use crate::routes::task::{view, visible_task};
use crate::routes::view::{EventView, TaskView};
use crate::state::AppState;

/// Page size when `limit` is not given.
pub const DEFAULT_PAGE: u32 = 50;
/// Failed tasks one retry-failed request puts back at most.
pub const MAX_RETRY_PER_CALL: u64 = 10_000;
/// Ended tasks one purge request deletes at most.
pub const MAX_PURGE_PER_CALL: u64 = 50_000;
/// Task changes listed individually per `changes` event; the rest are only counted.
const RECENT_PER_CHANGE: usize = 20;
/// Changes are gathered for this long before they are sent as one event.
const CHANGE_BATCH: Duration = Duration::from_millis(500);
/// How often an idle stream sends a comment, so proxies keep it open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The query string as a map (first value of each name wins).
fn query_map(query: Option<&str>) -> HashMap<String, String> {
    let mut out = HashMap::new();
    if let Some(q) = query {
        for (k, v) in url::form_urlencoded::parse(q.as_bytes()) {
            out.entry(k.into_owned()).or_insert_with(|| v.into_owned());
        }
    }
    out
}

/// `name` if it is a queue this deployment has (configured, or seen in Redis), else 404.
async fn known_queue(state: &AppState, name: &str) -> Result<String, ApiError> {
    let names = state.broker().queue_names().await?;
    if names.iter().any(|n| n == name) {
        Ok(name.to_string())
    } else {
        let shown: String = name.chars().take(64).collect();
        Err(ApiError::not_found(format!(
            "no queue {shown:?} (known: {})",
            names.join(", ")
        )))
    }
}

fn parse_state(value: &str) -> Result<TaskState, ApiError> {
    value.parse().map_err(|_| {
        ApiError::invalid_field(format!(
            "state must be one of queued, started, delayed, finished, failed, canceled; not {:?}",
            value.chars().take(32).collect::<String>()
        ))
    })
}

/// List a queue's tasks in one state.
#[utoipa::path(
    get,
    path = "/api/queue/{queue}/tasks",
    tag = "queues",
    params(
        ("queue" = String, Path, description = "Queue name"),
        ("state" = TaskState, Query, description = "Which state's tasks to list"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 200, description = "Page size (default 50)"),
    ),
    responses(
        (status = 200, description = "One page, newest first (queued: last enqueued first; \
            started: latest lease deadline; delayed: latest due time; ended: latest expiry)", body = TaskPage),
        (status = 400, description = "Malformed cursor", body = ErrorBody),
        (status = 401, description = "Missing or unknown API key", body = ErrorBody),
        (status = 403, description = "Not an admin key", body = ErrorBody),
        (status = 404, description = "No such queue", body = ErrorBody),
        (status = 422, description = "state missing or unknown, or limit out of range", body = ErrorBody),
        (status = 503, description = "Redis unreachable; retry after the Retry-After seconds", body = ErrorBody,
            headers(("Retry-After" = u32))),
    ),
    security((), ("bearer" = [])),
)]
pub async fn list_tasks(
    caller: Caller,
    State(state): State<AppState>,
    Path(queue): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<TaskPage>, ApiError> {
    caller.require_admin()?;
    let params = query_map(query.as_deref());
    let task_state = match params.get("state") {
        Some(s) => parse_state(s)?,
        None => {
            return Err(ApiError::invalid_field(
                "state is required: queued, started, delayed, finished, failed or canceled",
            ));
        }
    };
    let limit = match params.get("limit") {
        None => DEFAULT_PAGE,
        Some(l) => {
            let n: i64 = l.trim().parse().map_err(|_| {
                ApiError::invalid_field(format!("limit must be a whole number, not {l:?}"))
            })?;
            if !(1..=i64::from(browse::MAX_PAGE)).contains(&n) {
                return Err(ApiError::out_of_range(format!(
                    "limit must be between 1 and {}",
                    browse::MAX_PAGE
                )));
            }
            n as u32
        }
    };
    let cursor = params.get("cursor").filter(|c| !c.is_empty());
    if let Some(c) = cursor
        && !browse::valid_cursor(c)
    {
        return Err(ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "invalid_cursor",
            "cursor must be a next_cursor from a previous page",
        ));
    }
    let queue = known_queue(&state, &queue).await?;
    let page = state
        .broker()
        .list_tasks(&queue, task_state, cursor.map(String::as_str), limit)
        .await?;
    Ok(Json(page))
}

/// The live executors.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkersView {
    pub workers: Vec<WorkerRow>,
    /// When it was read (Redis server clock).
    pub at: String,
}

/// List the workers.
#[utoipa::path(
    get,
    path = "/api/workers",
    tag = "queues",
    responses(
        (status = 200, description = "Every executor heard from within the worker TTL", body = WorkersView),
        (status = 401, description = "Missing or unknown API key", body = ErrorBody),
        (status = 403, description = "Not an admin key", body = ErrorBody),
        (status = 503, description = "Redis unreachable; retry after the Retry-After seconds", body = ErrorBody,
            headers(("Retry-After" = u32))),
    ),
    security((), ("bearer" = [])),
)]
pub async fn workers(
    caller: Caller,
    State(state): State<AppState>,
) -> Result<Json<WorkersView>, ApiError> {
    caller.require_admin()?;
    let broker = state.broker();
    let workers = broker.workers(state.worker_ttl()).await?;
    let now = broker.server_time_ms().await?;
    Ok(Json(WorkersView {
        workers: live::worker_rows(workers, now, state.worker_ttl()),
        at: crate::routes::view::rfc3339(now),
    }))
}

/// Retry every failed task of a queue.
#[utoipa::path(
    post,
    path = "/api/queue/{queue}/retry-failed",
    tag = "queues",
    params(("queue" = String, Path, description = "Queue name")),
    responses(
        (status = 200, description = "How many were queued again (`done`) and how many failed \
            tasks are left (`remaining`, more than 0 only past 10,000 per call: call again)", body = BulkOutcome),
        (status = 401, description = "Missing or unknown API key", body = ErrorBody),
        (status = 403, description = "Not an admin key", body = ErrorBody),
        (status = 404, description = "No such queue", body = ErrorBody),
        (status = 503, description = "Redis unreachable; retry after the Retry-After seconds", body = ErrorBody,
            headers(("Retry-After" = u32))),
    ),
    security((), ("bearer" = [])),
)]
pub async fn retry_failed(
    caller: Caller,
    State(state): State<AppState>,
    Path(queue): Path<String>,
) -> Result<Json<BulkOutcome>, ApiError> {
    caller.require_admin()?;
    let queue = known_queue(&state, &queue).await?;
    let outcome = state
        .broker()
        .retry_failed(&queue, MAX_RETRY_PER_CALL)
        .await?;
    tracing::info!(%queue, retried = outcome.done, remaining = outcome.remaining, "retried failed tasks");
    Ok(Json(outcome))
}

/// Delete ended tasks of a queue before their TTL.
#[utoipa::path(
    post,
    path = "/api/queue/{queue}/purge",
    tag = "queues",
    params(
        ("queue" = String, Path, description = "Queue name"),
        ("state" = Option<String>, Query, description = "`finished` (default), `failed` or `canceled`"),
    ),
    responses(
        (status = 200, description = "How many were deleted (`done`) and how many are left \
            (`remaining`, more than 0 only past 50,000 per call: call again)", body = BulkOutcome),
        (status = 401, description = "Missing or unknown API key", body = ErrorBody),
        (status = 403, description = "Not an admin key", body = ErrorBody),
        (status = 404, description = "No such queue", body = ErrorBody),
        (status = 422, description = "state is not an ended state", body = ErrorBody),
        (status = 503, description = "Redis unreachable; retry after the Retry-After seconds", body = ErrorBody,
            headers(("Retry-After" = u32))),
    ),
    security((), ("bearer" = [])),
)]
pub async fn purge(
    caller: Caller,
    State(state): State<AppState>,
    Path(queue): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<BulkOutcome>, ApiError> {
    caller.require_admin()?;
    let params = query_map(query.as_deref());
    let ended = match params.get("state").map(String::as_str) {
        None | Some("finished") => TaskState::Finished,
        Some("failed") => TaskState::Failed,
        Some("canceled") => TaskState::Canceled,
        Some(other) => {
            return Err(ApiError::invalid_field(format!(
                "state must be finished, failed or canceled; not {:?}",
                other.chars().take(32).collect::<String>()
            )));
        }
    };
    let queue = known_queue(&state, &queue).await?;
    let outcome = state
        .broker()
        .purge(&queue, ended, MAX_PURGE_PER_CALL)
        .await?;
    tracing::info!(%queue, state = %ended, purged = outcome.done, remaining = outcome.remaining, "purged");
    Ok(Json(outcome))
}

/// Every queue and worker now.
#[utoipa::path(
    get,
    path = "/api/dashboard/snapshot",
    tag = "queues",
    responses(
        (status = 200, description = "Queues with counts, rates, timings and the last hour; workers", body = DashboardSnapshot),
        (status = 401, description = "Missing or unknown API key", body = ErrorBody),
        (status = 403, description = "Not an admin key", body = ErrorBody),
        (status = 503, description = "Redis unreachable; retry after the Retry-After seconds", body = ErrorBody,
            headers(("Retry-After" = u32))),
    ),
    security((), ("bearer" = [])),
)]
pub async fn snapshot(
    caller: Caller,
    State(state): State<AppState>,
) -> Result<Json<DashboardSnapshot>, ApiError> {
    caller.require_admin()?;
    Ok(Json(live::read(&state).await?))
}

/// Task changes since the previous `changes` event.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct ChangesView {
    /// Per queue, how many tasks entered each state.
    pub counts: HashMap<String, HashMap<String, u64>>,
    /// The latest changes, newest last (at most 20).
    pub recent: Vec<EventView>,
    /// Some changes were missed (this replica fell behind): re-read what is shown.
    pub lagged: bool,
}

/// One event of the dashboard stream, described the way OpenAPI describes event streams.
#[derive(ToSchema)]
#[allow(dead_code)] // Documents the stream; events are built with axum's `Event`.
pub struct DashboardSseEvent {
    /// `snapshot`, `changes` or `unavailable`.
    event: String,
    /// A `DashboardSnapshot`, a `ChangesView`, or an error message, as JSON.
    #[schema(content_media_type = "application/json")]
    data: String,
}

/// Follow queue-level changes.
#[utoipa::path(
    get,
    path = "/api/dashboard/events",
    tag = "queues",
    responses(
        (status = 200, description = "Server-sent events: `snapshot` (a DashboardSnapshot, first at once and \
            then every 2 s, shared by every open stream of this server), `changes` (a ChangesView: task \
            state changes, gathered per half second), `unavailable` (Redis could not be read). Ends at \
            shutdown or after --max-stream-seconds; reconnect.",
            content_type = "text/event-stream", body = DashboardSseEvent),
        (status = 401, description = "Missing or unknown API key", body = ErrorBody),
        (status = 403, description = "Not an admin key", body = ErrorBody),
        (status = 429, description = "This key or address holds its most event streams and ?wait requests; \
            retry after the Retry-After seconds", body = ErrorBody, headers(("Retry-After" = u32))),
        (status = 503, description = "Redis unreachable; retry after the Retry-After seconds", body = ErrorBody,
            headers(("Retry-After" = u32))),
    ),
    security((), ("bearer" = [])),
)]
pub async fn events(
    caller: Caller,
    peer: Peer,
    State(state): State<AppState>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    caller.require_admin()?;
    let hold = state.holds().try_hold(&caller, peer)?;
    let mut changes_rx = state.broker().events().await?.subscribe();
    let mut snapshots = state.live().subscribe(&state);
    let shutdown = state.shutdown_token();
    let deadline =
        tokio::time::Instant::now() + Duration::from_secs(state.limits().max_stream_seconds);
    let stream = async_stream::stream! {
        // Given back when the stream ends or the client goes.
        let _hold = hold;
        let mut pending = ChangesView::default();
        let mut dirty = false;
        let mut flush = tokio::time::interval(CHANGE_BATCH);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The current snapshot, if the reader has one already; later ones as they come.
        let first = snapshots.borrow_and_update().clone();
        if let Some(value) = first {
            yield Ok(snapshot_event(&value));
        }
        loop {
            tokio::select! {
                changed = snapshots.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let value = snapshots.borrow_and_update().clone();
                    if let Some(value) = value {
                        yield Ok(snapshot_event(&value));
                    }
                }
                received = changes_rx.recv() => match received {
                    // Answer text is no state change; a task's page follows its own events.
                    Ok(event) if event.delta.is_some() => {}
                    Ok(event) => {
                        *pending
                            .counts
                            .entry(event.queue.clone())
                            .or_default()
                            .entry(event.state.as_str().to_string())
                            .or_default() += 1;
                        if pending.recent.len() == RECENT_PER_CHANGE {
                            pending.recent.remove(0);
                        }
                        pending.recent.push(EventView::from_event(&event));
                        dirty = true;
                    }
                    Err(RecvError::Lagged(_)) => {
                        pending.lagged = true;
                        dirty = true;
                    }
                    Err(RecvError::Closed) => break,
                },
                _ = flush.tick() => {
                    if dirty {
                        let batch = std::mem::take(&mut pending);
                        dirty = false;
                        yield Ok(Event::default()
                            .event("changes")
                            .json_data(&batch)
                            .unwrap_or_else(|_| Event::default().event("changes").data("{}")));
                    }
                }
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
    };
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

fn snapshot_event(value: &Result<String, String>) -> Event {
    match value {
        Ok(json) => Event::default().event("snapshot").data(json.as_str()),
        Err(message) => Event::default()
            .event("unavailable")
            .json_data(serde_json::json!({ "message": message }))
            .unwrap_or_else(|_| Event::default().event("unavailable").data("{}")),
    }
}

/// What a task asked for, without image data: texts shortened, an image described by size,
/// type and origin. Built from what the task keeps for its whole life (its payload's brief
/// and input summary), so it never reads the payload.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct PayloadSummary {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub question: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// The start of the context text, and its full length in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context_bytes: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context_task_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    /// Decoded size of an inline image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_bytes: Option<u64>,
    /// An inline image's type by its first bytes, when recognised.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_type: Option<String>,
    /// Bytes the stored payload took (an inline image as base64 included).
    pub input_bytes: u64,
    /// SHA-256 of the stored payload, hex.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub input_sha256: String,
    /// An image URL's scheme, host and path (no query, which may hold a token).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_url: Option<String>,
}

/// Longest text a payload summary shows, in characters.
const SUMMARY_CHARS: usize = 500;

fn shorten(text: &str) -> String {
    let mut out: String = text.chars().take(SUMMARY_CHARS).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out
}

fn image_url_summary(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(u) => format!(
            "{}://{}{}",
            u.scheme(),
            u.host_str().unwrap_or(""),
            shorten(u.path())
        ),
        Err(_) => "(not a URL)".to_string(),
    }
}

impl PayloadSummary {
    /// `brief` is the payload without its image ([`Payload::brief`]), `input` its summary.
    pub fn of(brief: Option<&Payload>, input: &InputSummary) -> Self {
        let texts = brief.map(Self::texts).unwrap_or_default();
        PayloadSummary {
            image_bytes: input.image_bytes,
            image_type: input.image_type.clone(),
            input_bytes: input.bytes,
            input_sha256: input.sha256.clone(),
            ..texts
        }
    }

    fn texts(payload: &Payload) -> Self {
        match payload {
            Payload::AnalyzeImage(p) => PayloadSummary {
                prompt: p.prompt.as_deref().map(shorten),
                image_url: p.image_url.as_deref().map(image_url_summary),
                ..Default::default()
            },
            Payload::CompleteAnswer(p) => PayloadSummary {
                question: Some(shorten(&p.question)),
                context: p.context.as_deref().map(shorten),
                context_bytes: p.context.as_ref().map(String::len),
                context_task_id: p.context_task_id.clone(),
                top_k: p.top_k,
                ..Default::default()
            },
            Payload::FullQuery(p) => PayloadSummary {
                question: Some(shorten(&p.question)),
                top_k: p.top_k,
                image_url: p.image_url.as_deref().map(image_url_summary),
                ..Default::default()
            },
        }
    }
}

/// A task with a summary of its payload.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskDetail {
    #[serde(flatten)]
    pub task: TaskView,
    pub payload: PayloadSummary,
}

/// Read a task with a summary of what it asked for.
#[utoipa::path(
    get,
    path = "/api/async/task/{task_id}/detail",
    tag = "tasks",
    params(("task_id" = String, Path, format = "uuid", description = "The task id (a UUID)")),
    responses(
        (status = 200, description = "The task and a payload summary (never image data)", body = TaskDetail),
        (status = 400, description = "Not a valid task id", body = ErrorBody),
        (status = 401, description = "Missing or unknown API key", body = ErrorBody),
        (status = 404, description = "Unknown, expired, or another key's task", body = ErrorBody),
        (status = 503, description = "Redis unreachable; retry after the Retry-After seconds", body = ErrorBody,
            headers(("Retry-After" = u32))),
    ),
    security((), ("bearer" = [])),
)]
pub async fn task_detail(
    caller: Caller,
    State(state): State<AppState>,
    TaskIdParam(id): TaskIdParam,
) -> Result<Json<TaskDetail>, ApiError> {
    let task = visible_task(&state, &caller, &id).await?;
    let brief = state.broker().brief(&id).await?;
    let payload = PayloadSummary::of(brief.as_ref(), &task.input);
    Ok(Json(TaskDetail {
        task: view(&state, task).await?,
        payload,
    }))
}

#[cfg(test)]
mod tests {
    use ragpool_queue::payload::{AnalyzeImage, CompleteAnswer};

    use super::*;

    #[test]
    fn payload_summaries_hold_no_image_data_or_url_query() {
        let image = "A".repeat(4000);
        let payload = Payload::AnalyzeImage(AnalyzeImage {
            image: Some(image.clone()),
            image_url: None,
            prompt: Some("what is it".into()),
        });
        let input = payload.summary(&payload.to_json().unwrap());
        let s = PayloadSummary::of(Some(&payload.brief()), &input);
        assert_eq!(s.image_bytes, Some(3000));
        assert_eq!(s.prompt.as_deref(), Some("what is it"));
        let json = serde_json::to_string(&s).unwrap();
        assert!(!json.contains("AAAA"), "{json}");

        let of = |p: &Payload| PayloadSummary::of(Some(p), &InputSummary::default());
        let s = of(&Payload::AnalyzeImage(AnalyzeImage {
            image: None,
            image_url: Some("https://img.example/a/b.png?token=secret".into()),
            prompt: None,
        }));
        assert_eq!(s.image_url.as_deref(), Some("https://img.example/a/b.png"));

        let s = of(&Payload::CompleteAnswer(CompleteAnswer {
            question: "q".repeat(600),
            context: Some("c".repeat(1000)),
            ..CompleteAnswer::default()
        }));
        assert_eq!(s.question.unwrap().chars().count(), SUMMARY_CHARS + 1);
        assert_eq!(s.context_bytes, Some(1000));
    }
}
