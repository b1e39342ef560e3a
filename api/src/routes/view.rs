//! The JSON shapes the task endpoints answer with, and how a stored task becomes one.
//!
//! Wherever the wire shape is the queue's own (a task's state and kind, its progress and
//! error) the queue's types are used directly, with their schema derived in `ragpool-queue`
//! (feature `openapi`). The types here exist only where the shape differs; each says how.

use std::collections::HashMap;
use std::time::{Duration, UNIX_EPOCH};

use ragpool_queue::{Progress, Task, TaskError, TaskEvent, TaskId, TaskKind, TaskState};
use serde::Serialize;
use utoipa::ToSchema;

/// The answer to a submission. Not a queue type: it is what enqueueing did, with links.
#[derive(Debug, Serialize, ToSchema)]
pub struct Submitted {
    pub task_id: String,
    /// `queued` for a new task; an idempotent replay reports the existing task's state.
    #[serde(rename = "status")]
    pub state: TaskState,
    pub queue: String,
    /// Where to read the task (also in the `Location` header).
    pub status_url: String,
    /// Where to follow its state changes as server-sent events.
    pub events_url: String,
}

impl Submitted {
    pub fn new(id: &TaskId, state: TaskState, queue: String) -> Self {
        Submitted {
            task_id: id.to_string(),
            state,
            queue,
            status_url: status_url(id),
            events_url: format!("{}/events", status_url(id)),
        }
    }
}

pub fn status_url(id: &TaskId) -> String {
    format!("/api/async/task/{id}")
}

/// A task as clients see it. Differs from [`Task`]: times are RFC 3339 instead of epoch
/// milliseconds, the queue position and expiry time are added, and the payload (which may
/// hold a 10 MiB image) and the owner are left out.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskView {
    pub task_id: String,
    pub kind: TaskKind,
    pub queue: String,
    #[serde(rename = "status")]
    pub state: TaskState,
    /// Place in the queue while `queued` (0 = next to be claimed). Exact with one partition;
    /// with several (`RAGPOOL_PARTITIONS` > 1) an estimate: the tasks queued before it in every
    /// partition, as far as the Redis masters' clocks agree.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
    pub progress: Progress,
    /// Attempts spent so far, and the limit.
    pub attempts: u32,
    pub max_attempts: u32,
    /// RFC 3339 times (Redis server clock).
    pub enqueued_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// When a `delayed` task is queued again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<String>,
    /// When an ended task (and its result) will be removed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// The worker running it while `started`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// The result once `finished`: the JSON the RAG backend produced.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Value>)]
    pub result: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<TaskError>,
    /// A cancel was asked for while it runs; the worker stops at its next heartbeat.
    pub cancel_requested: bool,
}

impl TaskView {
    pub fn new(task: Task, position: Option<u64>) -> Self {
        let expires_at = task.finished_at_ms.and_then(|done| {
            let ttl = match task.state {
                TaskState::Finished => task.result_ttl,
                TaskState::Failed | TaskState::Canceled => task.failure_ttl,
                _ => return None,
            };
            Some(done.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)))
        });
        TaskView {
            task_id: task.id.to_string(),
            kind: task.kind(),
            queue: task.queue,
            state: task.state,
            position,
            progress: task.progress,
            attempts: task.attempts,
            max_attempts: task.max_attempts,
            enqueued_at: rfc3339(task.enqueued_at_ms),
            started_at: task.started_at_ms.map(rfc3339),
            finished_at: task.finished_at_ms.map(rfc3339),
            retry_at: task.retry_at_ms.map(rfc3339),
            expires_at: expires_at.map(rfc3339),
            worker: task.worker,
            result: task.result,
            error: task.error,
            cancel_requested: task.cancel_requested,
        }
    }
}

/// One state change, as sent on the events stream (`data:` of each server-sent event).
/// Differs from [`TaskEvent`]: the first event of a stream is the task's state when it
/// opened, which has no stream entry and so no `event_id`.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventView {
    /// The events stream entry id (also the SSE `id:`); absent on the first event, which
    /// is the task's state when the stream opened.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    pub task_id: String,
    pub queue: String,
    pub state: TaskState,
    /// Facts of the change: `progress`, `message`, `worker`, `error_kind`, …
    pub details: HashMap<String, String>,
}

impl EventView {
    pub fn from_event(event: &TaskEvent) -> Self {
        EventView {
            event_id: Some(event.event_id.clone()),
            task_id: event.task_id.clone(),
            queue: event.queue.clone(),
            state: event.state,
            details: event.details.clone(),
        }
    }

    /// The task's state as read, for the first event of a stream.
    pub fn snapshot(task: &Task) -> Self {
        let mut details = HashMap::new();
        if task.state == TaskState::Started {
            details.insert("progress".into(), task.progress.percent.to_string());
            details.insert("message".into(), task.progress.message.clone());
            if let Some(w) = &task.worker {
                details.insert("worker".into(), w.clone());
            }
        }
        if let Some(e) = &task.error {
            details.insert("error_kind".into(), e.kind.clone());
        }
        EventView {
            event_id: None,
            task_id: task.id.to_string(),
            queue: task.queue.clone(),
            state: task.state,
            details,
        }
    }
}

/// Milliseconds since the epoch as RFC 3339 with milliseconds, UTC.
pub fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_times() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }

    #[test]
    fn submitted_links_point_at_the_task() {
        let id = TaskId::new();
        let s = Submitted::new(&id, TaskState::Queued, "full_query".into());
        assert_eq!(s.status_url, format!("/api/async/task/{id}"));
        assert_eq!(s.events_url, format!("/api/async/task/{id}/events"));
    }
}
