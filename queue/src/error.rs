//! Errors of the queue protocol.

use thiserror::Error;

/// Everything a queue operation can fail with.
#[derive(Debug, Error)]
pub enum QueueError {
    /// Redis could not be reached or answered with an error. Callers map this to
    /// "unavailable, try again" (HTTP 503); no half-written state is left behind because every
    /// transition is one atomic script.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("invalid task id {0:?}: expected a UUID")]
    InvalidTaskId(String),
    #[error("no such task {0}")]
    NotFound(String),
    /// The caller does not hold the task's lease (never did, lost it to the reaper, or the
    /// task moved on).
    #[error("lease lost on task {0}: the task is not held under this lease")]
    LeaseLost(String),
    /// The transition is not allowed from the task's current state.
    #[error("task {id} is {state}, which does not allow {action}")]
    WrongState {
        id: String,
        state: String,
        action: &'static str,
    },
    #[error("unknown queue {0:?}")]
    UnknownQueue(String),
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Under `replicated` durability: the primary applied the change but no replica
    /// acknowledged it in time, so a failover now could undo it. Retrying is safe (the
    /// retried call confirms or redoes the change); see [`crate::durability`].
    #[error(
        "no replica acknowledged the change within {timeout:?} (durability replicated); \
         it may be lost in a failover, try again"
    )]
    NotReplicated { timeout: std::time::Duration },
    /// This process's partition count differs from the one the namespace was laid out with;
    /// it would look for tasks where they are not. See [`crate::keys`].
    #[error(
        "namespace {namespace:?} is laid out in {recorded} partition(s) but this process is \
         configured with {configured} (--partitions / RAGPOOL_PARTITIONS): every API, executor \
         and operator of a namespace must use the same count. To change it, stop them, run \
         `ragpool repartition --partitions {configured}` (it refuses while tasks wait or run) \
         and start them again with the new count"
    )]
    Layout {
        namespace: String,
        recorded: String,
        configured: u16,
    },
    /// Stored data did not decode; a bug or a foreign writer.
    #[error("corrupt data in redis: {0}")]
    Corrupt(String),
}

impl QueueError {
    /// True when the error is about reaching Redis (or, under `replicated` durability, its
    /// replicas) rather than about the request: try again later.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            QueueError::Redis(_) | QueueError::NotReplicated { .. }
        )
    }
}

impl QueueError {
    /// True when a state change may have taken effect although it failed: Redis was reached
    /// but did not answer (the reply timed out, or the connection dropped after the command
    /// was sent). False when Redis refused before running anything, and for every other error.
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, QueueError::Redis(e)
            if !crate::broker::never_ran(e) && (e.is_io_error() || e.is_timeout()))
    }
}

pub type Result<T, E = QueueError> = std::result::Result<T, E>;
