//! The task model: what a task is and the states it moves through.
//!
//! A task lives in Redis as one hash (see `docs/queue.md`); [`Task`] is that hash decoded.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::QueueError;
use crate::payload::InputSummary;

/// A task's id: a random UUID, unguessable by other clients. With one partition it is a
/// version 4 UUID (122 random bits); with more, version 8 with the partition in its last two
/// bytes (106 random bits; see [`crate::keys::Partition::new_task_id`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TaskId(String);

impl TaskId {
    /// A fresh random id.
    pub fn new() -> Self {
        TaskId(uuid::Uuid::new_v4().to_string())
    }

    /// A fresh random id of partition `index` of `count` (count at least 2).
    pub(crate) fn in_partition(index: u16, count: u16) -> Self {
        let mut bytes = *uuid::Uuid::new_v4().as_bytes();
        bytes[14] = count as u8;
        bytes[15] = index as u8;
        TaskId(uuid::Uuid::new_v8(bytes).to_string())
    }

    /// The partition `(index, count)` the id was made in; `None` for an id of a key prefix
    /// with one partition (or one that names no valid partition).
    pub fn partition(&self) -> Option<(u16, u16)> {
        let u = uuid::Uuid::try_parse(&self.0).ok()?;
        if u.get_version_num() != 8 {
            return None;
        }
        let b = u.as_bytes();
        let (count, index) = (u16::from(b[14]), u16::from(b[15]));
        (count >= 2 && index < count && count <= crate::keys::MAX_PARTITIONS)
            .then_some((index, count))
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

/// What a task asks for: the discriminant of [`Payload`], for labels, logs and checks that
/// need the kind without its payload. A stored task's kind is its payload's, written beside
/// it at enqueue. Every fact about a kind (its names, queue, paths and defaults) is its row
/// of the kind table below: see [`KindDescriptor`] and [`TaskKind::descriptor`].
///
/// [`Payload`]: crate::Payload
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum TaskKind {
    AnalyzeImage,
    CompleteAnswer,
    FullQuery,
}

/// The names and defaults of one task kind, in the one table every component reads them
/// from. Wire names are older than the code's and differ per place; they stay as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KindDescriptor {
    pub kind: TaskKind,
    /// The kind on the wire: the task hash's `kind`, a batch item's `kind`, metric labels.
    pub name: &'static str,
    /// The queue every task of this kind goes to.
    pub queue: &'static str,
    /// The API's submission path below `/api/async/`.
    pub api_path: &'static str,
    /// The `ragpool submit` subcommand.
    pub cli_word: &'static str,
    /// The queue's default time limit of one attempt, in seconds.
    pub timeout_secs: u64,
    /// The queue's default share of claims under the weighted policy.
    pub weight: u32,
    /// The `http` backend's path below the RAG service's base URL.
    pub backend_path: &'static str,
}

/// Writes [`TaskKind::ALL`] (the rows in order, which is also the default queue priority) and
/// [`TaskKind::descriptor`] from one row per kind. The `match` it writes has no `_` arm, so a
/// variant without a row, or a row without a variant, does not compile.
macro_rules! kind_table {
    ($($variant:ident { $($field:ident: $value:expr),* $(,)? }),* $(,)?) => {
        impl TaskKind {
            /// Every kind, highest default priority first.
            pub const ALL: [TaskKind; [$(TaskKind::$variant),*].len()] = [$(TaskKind::$variant),*];

            /// This kind's row of the table.
            pub const fn descriptor(self) -> &'static KindDescriptor {
                match self {
                    $(TaskKind::$variant => {
                        const ROW: KindDescriptor = KindDescriptor {
                            kind: TaskKind::$variant,
                            $($field: $value),*
                        };
                        &ROW
                    })*
                }
            }
        }
    };
}

kind_table! {
    AnalyzeImage {
        name: "analyze_image",
        queue: "image_analysis",
        api_path: "analyze-image",
        cli_word: "image",
        timeout_secs: 600,
        weight: 6,
        backend_path: "analyze-image",
    },
    CompleteAnswer {
        name: "complete_answer",
        queue: "answer_generation",
        api_path: "complete-answer",
        cli_word: "answer",
        timeout_secs: 600,
        weight: 3,
        backend_path: "complete-answer",
    },
    FullQuery {
        name: "full_query",
        queue: "full_query",
        api_path: "query",
        cli_word: "query",
        timeout_secs: 900,
        weight: 1,
        backend_path: "query",
    },
}

impl TaskKind {
    pub fn as_str(self) -> &'static str {
        self.descriptor().name
    }

    /// The queue every task of this kind goes to; the one place a kind meets its queue.
    pub fn queue(self) -> &'static str {
        self.descriptor().queue
    }

    /// The default queue list, highest priority first, as the executor's `--queues` reads it:
    /// every kind's queue, comma-separated.
    pub fn default_queue_list() -> &'static str {
        static LIST: std::sync::LazyLock<String> =
            std::sync::LazyLock::new(|| TaskKind::ALL.map(TaskKind::queue).join(","));
        LIST.as_str()
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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

/// The W3C trace context a task was submitted under, kept with the task so that the attempts
/// running it join the submitter's trace. The queue carries it as text and never reads it:
/// `traceparent` as the W3C header has it, `tracestate` empty when there was none.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TraceContext {
    pub traceparent: String,
    pub tracestate: String,
}

/// Progress a worker reports while it runs a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Progress {
    /// 0 to 100.
    pub percent: u8,
    pub message: String,
}

/// A task as stored, decoded: everything but its payload, which only a claim reads (see
/// [`crate::Claimed`] and [`crate::Broker::payload`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub id: TaskId,
    pub queue: String,
    /// The variant of its payload.
    pub kind: TaskKind,
    /// Sizes, image type and digest of its payload, recorded at enqueue.
    pub input: InputSummary,
    pub state: TaskState,
    /// Claims that counted against `max_attempts` so far.
    pub attempts: u32,
    pub max_attempts: u32,
    /// Milliseconds since the epoch (Redis server time).
    pub enqueued_at_ms: u64,
    pub started_at_ms: Option<u64>,
    pub finished_at_ms: Option<u64>,
    /// When a `delayed` task becomes `queued` again.
    pub retry_at_ms: Option<u64>,
    /// The worker holding the lease while `started`.
    pub worker: Option<String>,
    pub progress: Progress,
    pub result: Option<serde_json::Value>,
    pub error: Option<TaskError>,
    pub timeout: Duration,
    pub result_ttl: Duration,
    pub failure_ttl: Duration,
    pub idempotency_key: Option<String>,
    /// Who submitted it (an API key's name), when the API runs with keys.
    pub owner: Option<String>,
    /// Set when a cancel was asked for while the task was running.
    pub cancel_requested: bool,
}

impl Task {
    /// The task's kind: the variant of its payload.
    pub fn kind(&self) -> TaskKind {
        self.kind
    }
}
