//! Admission to calls to the model server or RAG service.
//!
//! Every request the remote backends send passes a [`CallGate`] first when the task's
//! [`TaskContext`](super::TaskContext) carries one: the gate decides when the call may start
//! (a pool-wide concurrency limit, a request rate, a pause the server asked for) and hears
//! how it went. The job loop installs the Redis-backed gate of [`crate::limits`]; without
//! one, calls start at once.

use std::time::Duration;

use async_trait::async_trait;
pub use ragpool_queue::CallOutcome;

use super::BackendError;

/// Decides when a call may start.
#[async_trait]
pub trait CallGate: Send + Sync {
    /// Waits until a call estimated to use `tokens` model tokens (0 when unknown) may start;
    /// the returned pass is held while it runs. An error ends the task's attempt.
    async fn enter(&self, tokens: u32) -> Result<Box<dyn CallPass>, BackendError>;
}

/// Admission of one call, held while it runs. Dropping it without [`CallPass::finish`] (the
/// task was canceled mid-call) gives it back too.
#[async_trait]
pub trait CallPass: Send {
    /// Reports how the call went and gives the admission back.
    async fn finish(self: Box<Self>, report: CallReport);
}

/// How one call went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallReport {
    pub outcome: CallOutcome,
    pub latency: Duration,
    /// The server asked every caller to wait this long (`Retry-After` on 429 or 503).
    pub pause: Option<Duration>,
    /// Model tokens the call used, as the response's `usage.total_tokens` said.
    pub tokens_used: Option<u32>,
}
