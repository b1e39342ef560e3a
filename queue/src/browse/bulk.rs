//! Bulk actions on a queue's tasks: retry every failed task, purge ended ones; bounded
//! chunks, one atomic script call each.

use redis::Value;
use serde::Serialize;

use crate::broker::Broker;
use crate::decode;
use crate::error::{QueueError, Result};
use crate::keys::Partition;
use crate::scripts;
use crate::task::TaskState;

/// Tasks one bulk script call touches at most.
pub const BULK_CHUNK: u32 = 500;

/// What a bulk action did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BulkOutcome {
    /// Tasks the action applied to.
    pub done: u64,
    /// Tasks still in the set when the call stopped (at its per-call bound); call again.
    pub remaining: u64,
    /// Failed tasks left failed because their payload is gone (retry only).
    #[serde(skip_serializing_if = "is_zero")]
    pub input_gone: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Broker {
    /// Puts failed tasks of `queue` back on it with their attempts reset, oldest first, in
    /// chunks of [`BULK_CHUNK`] (one atomic script call each), until none is left or `max`
    /// have been handled. Failed tasks whose payload is gone stay failed and are counted in
    /// [`BulkOutcome::input_gone`].
    pub async fn retry_failed(&self, queue: &str, max: u64) -> Result<BulkOutcome> {
        let index = |part: &Partition| part.queue(queue).failed;
        self.in_partitions(max, index, |part, max| {
            self.retry_failed_in(part, queue, max)
        })
        .await
    }

    /// [`Broker::retry_failed`] in one partition: chunks, each starting behind the tasks
    /// earlier chunks passed over.
    async fn retry_failed_in(
        &self,
        part: &Partition,
        queue: &str,
        max: u64,
    ) -> Result<BulkOutcome> {
        let qk = part.queue(queue);
        let mut out = BulkOutcome::default();
        let mut handled = 0;
        loop {
            let chunk = (max - handled).min(u64::from(BULK_CHUNK));
            let mut call = scripts::RETRY_FAILED.key(&qk.failed);
            call.key(&qk.ready)
                .key(&qk.signal)
                .key(part.seq())
                .key(part.events())
                .key(part.queued_bytes())
                .arg(part.prefix())
                .arg(chunk)
                .arg(out.input_gone);
            let (reply, ack) = self.change(part, &call).await?;
            let [done, left, gone] = decode::status(&reply)?
                .iter()
                .map(|v| v.parse().unwrap_or(0))
                .collect::<Vec<u64>>()[..]
            else {
                return Err(QueueError::Corrupt(format!(
                    "retry_failed replied {reply:?}"
                )));
            };
            ack.require()?;
            out.done += done;
            out.input_gone += gone;
            out.remaining = left;
            handled += chunk;
            if left == 0 || handled >= max {
                return Ok(out);
            }
        }
    }

    /// Runs a bulk action on each partition in turn (over the set `index` names), sharing
    /// `max` between them.
    async fn in_partitions<'a, F, Fut>(
        &'a self,
        max: u64,
        index: impl Fn(&Partition) -> String,
        action: F,
    ) -> Result<BulkOutcome>
    where
        F: Fn(&'a Partition, u64) -> Fut,
        Fut: std::future::Future<Output = Result<BulkOutcome>>,
    {
        let mut out = BulkOutcome::default();
        for part in self.keys().partitions() {
            let left = max - out.done.min(max);
            if left == 0 {
                // Out of budget: count what this partition still holds without touching it.
                let held: u64 = redis::cmd("ZCARD")
                    .arg(index(part))
                    .query_async(&mut self.conn())
                    .await?;
                out.remaining += held;
                continue;
            }
            let o = action(part, left).await?;
            out.done += o.done;
            out.remaining += o.remaining;
            out.input_gone += o.input_gone;
        }
        Ok(out)
    }

    /// Deletes ended tasks of `queue` in `state` (finished, failed or canceled) before their
    /// TTL, oldest first, in chunks of [`BULK_CHUNK`], until none is left or `max` have been
    /// handled.
    pub async fn purge(&self, queue: &str, state: TaskState, max: u64) -> Result<BulkOutcome> {
        if !state.is_terminal() {
            return Err(QueueError::WrongState {
                id: queue.to_string(),
                state: state.to_string(),
                action: "purge",
            });
        }
        let index = |part: &Partition| Self::state_index(part, queue, state);
        self.in_partitions(max, index, |part, max| async move {
            let index = Self::state_index(part, queue, state);
            self.in_chunks(part, max, "purge", |chunk| {
                let mut call = scripts::PURGE.key(&index);
                call.arg(part.prefix()).arg(state.as_str()).arg(chunk);
                call
            })
            .await
        })
        .await
    }

    /// Runs a bulk script (replying `{done, remaining}`) for chunks of at most [`BULK_CHUNK`]
    /// until nothing remains or `max` have been handled. Each chunk is a state change of its
    /// own: under `replicated` an unconfirmed one fails the call, and calling again redoes
    /// whatever a failover lost.
    async fn in_chunks(
        &self,
        part: &Partition,
        max: u64,
        what: &str,
        call: impl Fn(u64) -> redis::ScriptInvocation<'static>,
    ) -> Result<BulkOutcome> {
        let mut out = BulkOutcome::default();
        let mut handled = 0;
        loop {
            let chunk = (max - handled).min(u64::from(BULK_CHUNK));
            let (reply, ack) = self.change(part, &call(chunk)).await?;
            let (done, left) = pair(&reply, what)?;
            ack.require()?;
            out.done += done;
            out.remaining = left;
            handled += chunk;
            if left == 0 || handled >= max {
                return Ok(out);
            }
        }
    }
}

fn pair(reply: &Value, script: &str) -> Result<(u64, u64)> {
    match decode::status(reply)?.as_slice() {
        [a, b] => Ok((a.parse().unwrap_or(0), b.parse().unwrap_or(0))),
        other => Err(QueueError::Corrupt(format!("{script} replied {other:?}"))),
    }
}
