//! Answer text streamed while a task runs.
//!
//! A backend that generates its answer piece by piece hands the pieces to its executor, which
//! publishes them, coalesced, with [`Broker::publish_delta`]. Each piece is appended to the
//! task's text so far (a string key of its partition, [`crate::keys::Partition::text`]) and
//! announced on the events stream as a `started` event carrying a [`Delta`], in one script:
//! the text so far and the events never disagree. Pieces are numbered from 1 within a run of
//! the task (a lease); the next run starts again from 1 with its own attempt number, so a
//! reader can drop the text of an attempt that failed. Runs are also numbered, from 1 per
//! task: attempt numbers start over when a failed task is retried by hand, run numbers never. [`Broker::streamed_text`] reads the
//! current run's text so far, for a reader that arrives late or comes back.

use redis::Value;
use serde::Serialize;

use crate::broker::{Broker, Lease};
use crate::decode;
use crate::error::{QueueError, Result};
use crate::scripts;
use crate::task::TaskId;

/// A piece of a running task's answer text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Delta {
    /// The run (lease) of the task that generated it, from 1.
    pub run: u64,
    /// The attempt that generated it (1 for the first).
    pub attempt: u32,
    /// Its number within the attempt, from 1 without gaps.
    pub seq: u64,
    /// The text to append to the attempt's earlier pieces.
    pub text: String,
}

/// What publishing a piece learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeltaAck {
    pub run: u64,
    pub attempt: u32,
    pub seq: u64,
    /// The task was canceled while running: stop it, as after a heartbeat that says so.
    pub cancel_requested: bool,
}

/// The text the current run of a task has streamed so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamedText {
    pub run: u64,
    pub attempt: u32,
    /// The number of the last piece it includes.
    pub seq: u64,
    pub text: String,
}

impl Broker {
    /// Appends `text` to the task's answer so far and announces it. Fails with
    /// [`QueueError::LeaseLost`] when the lease was lost, like a heartbeat.
    pub async fn publish_delta(&self, lease: &Lease, text: &str) -> Result<DeltaAck> {
        let part = self.keys().of_task(&lease.task);
        let id = lease.task.as_str();
        let reply: Value = scripts::DELTA
            .key(part.task(id))
            .key(part.events())
            .key(part.text(id))
            .arg(id)
            .arg(&lease.token)
            .arg(text)
            .invoke_async(&mut self.conn())
            .await?;
        let reply = decode::status(&reply)?;
        match reply.as_slice() {
            [ok, attempt, seq, cancel, run] if ok == "ok" => Ok(DeltaAck {
                run: number(run)?,
                attempt: number(attempt)?,
                seq: number(seq)?,
                cancel_requested: cancel == "1",
            }),
            other => Err(crate::broker::refusal(&lease.task, other)),
        }
    }

    /// The text the task's current run has streamed so far; `None` when it is not running or
    /// its run has streamed nothing yet.
    pub async fn streamed_text(&self, id: &TaskId) -> Result<Option<StreamedText>> {
        let part = self.keys().of_task(id);
        let reply: Value = scripts::STREAM_TEXT
            .key(part.task(id.as_str()))
            .key(part.text(id.as_str()))
            .invoke_async(&mut self.conn())
            .await?;
        match decode::status(&reply)?.as_slice() {
            [] => Ok(None),
            [attempt, seq, text, run] => Ok(Some(StreamedText {
                run: number(run)?,
                attempt: number(attempt)?,
                seq: number(seq)?,
                text: text.clone(),
            })),
            other => Err(QueueError::Corrupt(format!(
                "unexpected reply {other:?} reading the streamed text of {id}"
            ))),
        }
    }
}

fn number<T: std::str::FromStr>(value: &str) -> Result<T> {
    value
        .parse()
        .map_err(|_| QueueError::Corrupt(format!("expected a number, got {value:?}")))
}
