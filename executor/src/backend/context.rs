//! What a running task can tell its caller while it works.
//!
//! Progress is a "latest value wins" signal: the job loop only ever reports the newest
//! percentage in its next heartbeat, so a `watch` channel fits and a slow reader never makes a
//! backend wait.

use std::sync::Arc;

use ragpool_queue::{Progress, TaskId};
use tokio::sync::watch;

use super::gate::CallGate;

/// Handed to every [`Backend`](super::Backend) call: which task runs, where its progress
/// goes, and which gate its calls to a server pass.
pub struct TaskContext {
    progress: watch::Sender<Progress>,
    /// The task and attempt being run; `None` outside the job loop (tests, tools).
    task: Option<(TaskId, u32)>,
    /// The pool's limits on calls to the backend's server, when it has any.
    gate: Option<Arc<dyn CallGate>>,
}

impl std::fmt::Debug for TaskContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskContext")
            .field("task", &self.task)
            .field("gated", &self.gate.is_some())
            .finish_non_exhaustive()
    }
}

impl TaskContext {
    /// A context for no particular task, and the receiver its progress reports arrive on.
    pub fn new() -> (Self, watch::Receiver<Progress>) {
        let (progress, rx) = watch::channel(Progress::default());
        (
            Self {
                progress,
                task: None,
                gate: None,
            },
            rx,
        )
    }

    /// A context for attempt `attempt` (1 for the first) of task `id`.
    pub fn for_task(id: TaskId, attempt: u32) -> (Self, watch::Receiver<Progress>) {
        let (mut cx, rx) = Self::new();
        cx.task = Some((id, attempt));
        (cx, rx)
    }

    /// Sends this task's calls to a server through `gate`.
    pub fn with_gate(mut self, gate: Option<Arc<dyn CallGate>>) -> Self {
        self.gate = gate;
        self
    }

    /// The gate this task's calls to a server pass, if any.
    pub fn gate(&self) -> Option<&dyn CallGate> {
        self.gate.as_deref()
    }

    /// The task being run and its attempt number, so a backend can tell a re-delivered task
    /// from a new one.
    pub fn task(&self) -> Option<(&TaskId, u32)> {
        self.task.as_ref().map(|(id, attempt)| (id, *attempt))
    }

    /// Reports progress; values above 100 are clamped. Never blocks, never fails (a caller
    /// that dropped its receiver simply stops hearing about it).
    pub fn progress(&self, percent: u8, message: &str) {
        self.progress.send_replace(Progress {
            percent: percent.min(100),
            message: message.to_owned(),
        });
    }

    /// The most recent report.
    pub fn current(&self) -> Progress {
        self.progress.borrow().clone()
    }
}

impl Default for TaskContext {
    /// A context nobody listens to.
    fn default() -> Self {
        Self::new().0
    }
}
