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
    /// A failed task's payload is gone (its failure TTL ran out, or it was removed), so it
    /// cannot run again; submit it anew.
    #[error("task {0} cannot be retried: its input is no longer stored; submit it again")]
    InputGone(String),
    /// Enqueueing would put more payload bytes in the queues than a backlog limit allows;
    /// nothing was written. Claims make room.
    #[error(
        "the queued tasks' payloads would exceed {}: {asked} more bytes asked for, {queued} \
         queued{}; try again once queued tasks have been claimed",
        limit.describe(), if *shares > 1 {
            format!(" in this task's partition, whose share of the limit is {share} bytes \
                     ({shares} partitions)")
        } else { String::new() }
    )]
    PayloadLimit {
        limit: PayloadLimit,
        /// The partition's share of the limit (the whole limit with one partition).
        share: u64,
        shares: u16,
        queued: u64,
        asked: u64,
    },
    /// An owner's new tasks would take its queued tasks past its `maxQueued`; nothing was
    /// written. Claims make room.
    #[error(
        "this key may have {max} queued tasks (its maxQueued); {queued} are queued and \
         {asked} more were asked for"
    )]
    OwnerQueued { max: u64, queued: u64, asked: u64 },
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
    /// This process's partition count differs from the one the key prefix was laid out with;
    /// it would look for tasks where they are not. See [`crate::keys`].
    #[error(
        "key prefix {key_prefix:?} is laid out in {recorded} partition(s) but this process is \
         configured with {configured} (--partitions / RAGPOOL_PARTITIONS): every API, executor \
         and operator of a key prefix must use the same count. To change it, stop them, run \
         `ragpool repartition --partitions {configured}` (it refuses while tasks wait or run) \
         and start them again with the new count"
    )]
    Layout {
        key_prefix: String,
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

/// Which backlog limit an enqueue ran into (see [`crate::PayloadLimits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadLimit {
    /// Payload bytes of all queued tasks of the key prefix, with its configured value.
    Total(u64),
    /// Payload bytes of one owner's (API key's) queued tasks, with its configured value.
    PerKey(u64),
}

impl PayloadLimit {
    /// The flag that sets it.
    pub fn flag(self) -> &'static str {
        match self {
            PayloadLimit::Total(_) => "max_queued_payload_bytes",
            PayloadLimit::PerKey(_) => "max_queued_payload_bytes_per_key",
        }
    }

    fn describe(self) -> String {
        match self {
            PayloadLimit::Total(n) => {
                format!("the key prefix's limit of {n} bytes (--max-queued-payload-bytes)")
            }
            PayloadLimit::PerKey(n) => {
                format!("this key's limit of {n} bytes (--max-queued-payload-bytes-per-key)")
            }
        }
    }
}

pub type Result<T, E = QueueError> = std::result::Result<T, E>;
