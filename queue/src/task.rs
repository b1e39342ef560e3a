//! The task model: what a task is and the states it moves through.
//!
//! A task lives in Redis as one hash (see `docs/queue.md`); [`Task`] is that hash decoded.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::QueueError;

/// A task's id: a random UUID (122 random bits), unguessable by other clients.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TaskId(String);

impl TaskId {
    /// A fresh random id.
    pub fn new() -> Self {
        TaskId(uuid::Uuid::new_v4().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Wraps an id read back from Redis, which was checked when it was created.
    pub(crate) fn from_str_unchecked(s: String) -> Self {
        TaskId(s)
    }
}

impl Default for TaskId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TaskId {
    type Err = QueueError;

    /// Accepts only the canonical hyphenated UUID form, so ids from clients can be checked
    /// before they reach Redis.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match uuid::Uuid::try_parse(s) {
            Ok(u) if u.hyphenated().to_string() == s.to_ascii_lowercase() => {
                Ok(TaskId(s.to_ascii_lowercase()))
            }
            _ => Err(QueueError::InvalidTaskId(s.chars().take(64).collect())),
        }
    }
}

/// What a task asks for. Each kind has its payload type in [`crate::payload`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    AnalyzeImage,
    CompleteAnswer,
    FullQuery,
}

impl TaskKind {
    pub const ALL: [TaskKind; 3] = [
        TaskKind::AnalyzeImage,
        TaskKind::CompleteAnswer,
        TaskKind::FullQuery,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::AnalyzeImage => "analyze_image",
            TaskKind::CompleteAnswer => "complete_answer",
            TaskKind::FullQuery => "full_query",
        }
    }

    /// The queue a kind goes to unless the submitter names another.
    pub fn default_queue(self) -> &'static str {
        match self {
            TaskKind::AnalyzeImage => "image_analysis",
            TaskKind::CompleteAnswer => "answer_generation",
            TaskKind::FullQuery => "full_query",
        }
    }
}

impl fmt::Display for TaskKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskKind {
    type Err = QueueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| QueueError::Corrupt(format!("unknown task kind {s:?}")))
    }
}

/// Where a task is in its life. See `docs/queue.md` for the transitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Waiting in its queue to be claimed.
    Queued,
    /// Held by a worker under a lease.
    Started,
    /// Waiting out a retry backoff; promoted to `queued` when due.
    Delayed,
    Finished,
    Failed,
    Canceled,
}

impl TaskState {
    pub const ALL: [TaskState; 6] = [
        TaskState::Queued,
        TaskState::Started,
        TaskState::Delayed,
        TaskState::Finished,
        TaskState::Failed,
        TaskState::Canceled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Started => "started",
            TaskState::Delayed => "delayed",
            TaskState::Finished => "finished",
            TaskState::Failed => "failed",
            TaskState::Canceled => "canceled",
        }
    }

    /// True for the states a task never leaves on its own.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Finished | TaskState::Failed | TaskState::Canceled
        )
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskState {
    type Err = QueueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskState::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| QueueError::Corrupt(format!("unknown task state {s:?}")))
    }
}

/// Why a task failed: a machine-readable kind (`timeout`, `lease_expired`, `bad_input`,
/// `backend_unavailable`, `canceled`, …) and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskError {
    pub kind: String,
    pub message: String,
}

impl TaskError {
    pub fn new(kind: impl Into<String>, message: impl Into<String>) -> Self {
        TaskError {
            kind: kind.into(),
            message: message.into(),
        }
    }
}

/// Progress a worker reports while it runs a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Progress {
    /// 0 to 100.
    pub percent: u8,
    pub message: String,
}

/// A task as stored, decoded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: TaskId,
    pub kind: TaskKind,
    pub queue: String,
    pub payload: serde_json::Value,
    pub state: TaskState,
    /// Claims that counted against `max_attempts` so far.
    pub attempts: u32,
    pub max_attempts: u32,
    /// Milliseconds since the epoch (Redis server time).
    pub enqueued_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
    /// When a `delayed` task becomes `queued` again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at_ms: Option<u64>,
    /// The worker holding the lease while `started`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    pub progress: Progress,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<TaskError>,
    #[serde(with = "millis")]
    pub timeout: Duration,
    #[serde(with = "millis")]
    pub result_ttl: Duration,
    #[serde(with = "millis")]
    pub failure_ttl: Duration,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Who submitted it (an API key's name), when the API runs with keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Set when a cancel was asked for while the task was running.
    #[serde(default)]
    pub cancel_requested: bool,
}

mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}
