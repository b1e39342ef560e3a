//! What a running task can tell its caller while it works.
//!
//! Progress is a "latest value wins" signal: the job loop only ever reports the newest
//! percentage in its next heartbeat, so a `watch` channel fits and a slow reader never makes a
//! backend wait. Answer text generated piece by piece goes into an [`AnswerText`] the job loop
//! publishes from at its own pace: the backend never waits for Redis either.

use std::sync::{Arc, Mutex, PoisonError};

use ragpool_queue::{Progress, TaskId};
use tokio::sync::{Notify, watch};

use super::gate::CallGate;

/// Handed to every [`Backend`](super::Backend) call: which task runs, where its progress
/// goes, and which gate its calls to a server pass.
pub struct TaskContext {
    progress: watch::Sender<Progress>,
    /// The task and attempt being run; `None` outside the job loop (tests, tools).
    task: Option<(TaskId, u32)>,
    /// The pool's limits on calls to the backend's server, when it has any.
    gate: Option<Arc<dyn CallGate>>,
    /// The answer text streamed so far.
    text: Arc<AnswerText>,
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
                text: Arc::default(),
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

    /// Appends a piece of the answer as the model generates it. The pieces, with leading and
    /// trailing white space left out, must add up to the answer the backend returns. Never
    /// blocks.
    pub fn stream_text(&self, piece: &str) {
        self.text.push(piece);
    }

    /// The answer text streamed so far, for the job loop to publish.
    pub fn answer_text(&self) -> Arc<AnswerText> {
        Arc::clone(&self.text)
    }
}

/// A task's answer as generated so far, and how much of it is published.
///
/// What is published is the text without leading white space, up to its last character that
/// is not white space: trailing white space waits for more text, since the final answer is
/// trimmed. So the published pieces always add up to a prefix of the trimmed answer, and to
/// all of it once everything is published.
#[derive(Debug, Default)]
pub struct AnswerText {
    state: Mutex<TextState>,
    changed: Notify,
}

#[derive(Debug, Default)]
struct TextState {
    raw: String,
    /// Bytes of the publishable text already published.
    published: usize,
}

impl AnswerText {
    fn push(&self, piece: &str) {
        if piece.is_empty() {
            return;
        }
        self.lock().raw.push_str(piece);
        self.changed.notify_one();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TextState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Bytes received so far, white space included: grows while an answer streams.
    pub fn received(&self) -> usize {
        self.lock().raw.len()
    }

    /// Waits until text arrives (at once when some arrived since the last wait).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// The publishable text not published yet, and where it ends; `None` when there is none.
    pub fn pending(&self) -> Option<(String, usize)> {
        let state = self.lock();
        let text = state.raw.trim_start();
        let end = text.trim_end().len();
        (end > state.published).then(|| (text[state.published..end].to_owned(), end))
    }

    /// Records that the text up to `end` (from [`AnswerText::pending`]) is published.
    pub fn published(&self, end: usize) {
        let mut state = self.lock();
        state.published = state.published.max(end);
    }
}

impl Default for TaskContext {
    /// A context nobody listens to.
    fn default() -> Self {
        Self::new().0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Publishes everything pending after each piece, as the job loop does.
    fn publish_after_each(pieces: &[&str]) -> Vec<String> {
        let text = AnswerText::default();
        let mut out = Vec::new();
        for piece in pieces {
            text.push(piece);
            if let Some((sent, end)) = text.pending() {
                out.push(sent);
                text.published(end);
            }
        }
        out
    }

    #[test]
    fn published_pieces_add_up_to_the_trimmed_answer() {
        let cases: [(&[&str], &[&str]); 5] = [
            (&["Hello", " world"], &["Hello", " world"]),
            // Leading white space never goes out; trailing waits for more text.
            (&["  ", "\nHi ", " there", "  \n"], &["Hi", "  there"]),
            (&["a ", "b ", "c "], &["a", " b", " c"]),
            (&["   "], &[]),
            (&["é ", "ü"], &["é", " ü"]),
        ];
        for (pieces, published) in cases {
            let out = publish_after_each(pieces);
            assert_eq!(out, published, "{pieces:?}");
            assert_eq!(out.concat(), pieces.concat().trim(), "{pieces:?}");
        }
    }

    #[test]
    fn nothing_is_pending_twice_and_unpublished_text_stays_pending() {
        let text = AnswerText::default();
        text.push("one");
        let (first, end) = text.pending().expect("pending");
        assert_eq!(first, "one");
        // Not marked published (the send failed): it goes with what comes next.
        text.push(" two");
        let (both, end2) = text.pending().expect("pending");
        assert_eq!(both, "one two");
        text.published(end2);
        text.published(end);
        assert_eq!(text.pending(), None);
        assert_eq!(text.received(), 7);
    }
}
