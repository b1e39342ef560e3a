//! The ragpool task queue: the task model and its Redis protocol.
//!
//! Every state change of a task is one atomic Lua script (see `lua/` and `docs/queue.md`),
//! called through a typed method on [`Broker`]. Every script touches the keys of one
//! partition, which share one hash tag, so the protocol runs unchanged on Redis Cluster, and a
//! key prefix split into several partitions spreads over its masters (see [`keys`]).
//!
//! ```no_run
//! # async fn demo() -> ragpool_queue::Result<()> {
//! use ragpool_queue::{Broker, BrokerConfig, NewTask, payload::FullQuery};
//! let broker = Broker::connect(BrokerConfig::from_url("redis://127.0.0.1:6379")?).await?;
//! let question = FullQuery { question: "why?".into(), ..FullQuery::default() };
//! let queued = broker.enqueue(NewTask::new(question)).await?;
//! println!("task {}", queued.id);
//! # Ok(()) }
//! ```

mod broker;
pub mod browse;
pub mod config;
pub mod conn;
mod consumer;
mod decode;
pub mod durability;
pub mod error;
pub mod events;
pub mod keys;
pub mod limits;
pub mod payload;
pub mod redact;
mod scripts;
mod sentinel;
pub mod stats;
pub mod stream;
pub mod task;
#[cfg(feature = "test-support")]
pub mod testing;

pub use broker::{
    AUTO_PARTITIONS, Broker, BrokerConfig, CancelOutcome, Enqueued, FailOutcome, Heartbeat, Lease,
    MAX_ENQUEUE_BATCH, Maintenance, NewTask, OutageClock, OwnerShare, PayloadLimits,
    ReleaseOutcome, Retry,
};
pub use browse::{BulkOutcome, HistorySample, TaskPage, TaskSummary};
pub use config::{
    ClaimPolicy, QueueConfig, QueueEntry, QueueSettings, check_layout_at_start, default_queues,
};
pub use conn::{RedisTarget, SentinelTarget};
pub use consumer::{Claimed, Consumer, ConsumerConfig, MAX_CLAIM};
pub use durability::Durability;
pub use error::{PayloadLimit, QueueError, Result};
pub use events::{EventHub, TaskEvent};
pub use keys::DEFAULT_KEY_PREFIX;
pub use limits::{
    Adaptive, Admission, BackendLimiter, BackendLimits, CallOutcome, LimitState, Permit, Released,
};
pub use payload::{InputSummary, Payload};
pub use stats::{DurationSummary, QueueStats, WorkerInfo};
pub use stream::{Delta, DeltaAck, StreamedText};
pub use task::{Progress, Task, TaskError, TaskId, TaskKind, TaskState, TraceContext};
