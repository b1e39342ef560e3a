//! The ragpool task queue: the task model and its Redis protocol.
//!
//! Every state change of a task is one atomic Lua script (see `lua/` and `docs/queue.md`),
//! called through a typed method on [`Broker`]. All keys of one namespace share one hash tag,
//! so the protocol runs unchanged on Redis Cluster.

pub mod error;
pub mod payload;
pub mod stats;
pub mod task;

pub use error::{QueueError, Result};
pub use stats::{DurationSummary, QueueStats, WorkerInfo};
pub use task::{Progress, Task, TaskError, TaskId, TaskKind, TaskState};
