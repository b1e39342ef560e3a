//! An operator's actions on one task: cancel and retry.

use super::{Broker, refusal};
use crate::decode;
use crate::error::{QueueError, Result};
use crate::scripts;
use crate::task::TaskId;

/// What a cancel did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The task was queued or delayed and is now canceled.
    Canceled,
    /// The task is running; its worker stops it at its next heartbeat.
    Requested,
}

impl Broker {
    /// The queue a task is on, read before a transition whose keys depend on it.
    async fn queue_of(&self, id: &TaskId) -> Result<String> {
        let queue: Option<String> = redis::cmd("HGET")
            .arg(self.keys().of_task(id).task(id.as_str()))
            .arg("queue")
            .query_async(&mut self.conn())
            .await?;
        queue.ok_or_else(|| QueueError::NotFound(id.to_string()))
    }

    /// Cancels a task: at once when it waits, at its next heartbeat when it runs.
    pub async fn cancel(&self, id: &TaskId) -> Result<CancelOutcome> {
        let queue = self.queue_of(id).await?;
        let keys = &self.keys().of_task(id);
        let qk = keys.queue(&queue);
        let (reply, ack) = self
            .change(
                keys,
                scripts::CANCEL
                    .key(keys.task(id.as_str()))
                    .key(&qk.ready)
                    .key(&qk.delayed)
                    .key(&qk.canceled)
                    .key(keys.events())
                    .key(keys.payload(id.as_str()))
                    .key(keys.queued_bytes())
                    .arg(id.as_str()),
            )
            .await?;
        let outcome = match decode::status(&reply)?.as_slice() {
            [s] if s == "canceled" => CancelOutcome::Canceled,
            [s] if s == "cancel_requested" => CancelOutcome::Requested,
            [s, state] if s == "ended" => {
                return Err(QueueError::WrongState {
                    id: id.to_string(),
                    state: state.clone(),
                    action: "cancel",
                });
            }
            other => return Err(refusal(id, other)),
        };
        ack.require()?;
        Ok(outcome)
    }

    /// Puts a `failed` task back on its queue with its attempts reset.
    pub async fn retry(&self, id: &TaskId) -> Result<()> {
        let queue = self.queue_of(id).await?;
        let keys = &self.keys().of_task(id);
        // A task made under another partition count would go back to a queue no process of
        // this count claims from.
        if !self.keys().partitions().contains(keys) {
            return Err(QueueError::WrongState {
                id: id.to_string(),
                state: "from an earlier partition layout (resubmit it instead)".into(),
                action: "retry",
            });
        }
        let qk = keys.queue(&queue);
        let (reply, ack) = self
            .change(
                keys,
                scripts::RETRY
                    .key(keys.task(id.as_str()))
                    .key(&qk.failed)
                    .key(&qk.ready)
                    .key(&qk.signal)
                    .key(keys.seq())
                    .key(keys.events())
                    .key(keys.payload(id.as_str()))
                    .key(keys.queued_bytes())
                    .arg(id.as_str()),
            )
            .await?;
        match decode::status(&reply)?.as_slice() {
            [s] if s == "queued" => ack.require(),
            [s] if s == "input_gone" => Err(QueueError::InputGone(id.to_string())),
            [s, state] if s == "wrong_state" => Err(QueueError::WrongState {
                id: id.to_string(),
                state: state.clone(),
                action: "retry",
            }),
            other => Err(refusal(id, other)),
        }
    }
}
