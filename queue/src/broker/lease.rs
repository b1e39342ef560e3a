//! A claimed task's transitions under its lease: heartbeat, complete, fail, release.

use std::time::Duration;

use rand::Rng;
use redis::Value;
use serde_json::Value as Json;

use super::{Broker, millis, refusal};
use crate::decode;
use crate::durability::Durability;
use crate::error::{QueueError, Result};
use crate::scripts;
use crate::task::{Progress, TaskError, TaskId};

/// A worker's hold on a claimed task. Every later transition of the task by that worker
/// presents it; a lease that expired and was reaped no longer works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub task: TaskId,
    pub queue: String,
    pub token: String,
    /// How far each heartbeat pushes the deadline.
    pub duration: Duration,
    /// The span (in `traceparent` form) of the attempt that holds the lease, when it is
    /// traced: the first attempt to fail with a retry leaves it on the task, for the later
    /// attempts to link to ([`crate::Claimed::first_attempt`]).
    pub span: Option<String>,
}

/// What a heartbeat learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// The task was canceled while running: stop it and call [`Broker::fail`] (it will end
    /// `canceled`).
    pub cancel_requested: bool,
}

/// How a failure should be treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Retry with backoff while attempts remain; wait at least this long when given (a
    /// server's `Retry-After`).
    Retryable(Option<Duration>),
    /// Fail now: retrying cannot help (bad input, a model's 4xx).
    Permanent,
}

/// Where a failed attempt left the task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailOutcome {
    /// Will be retried when the backoff ends (milliseconds since the epoch).
    Delayed {
        retry_at_ms: u64,
    },
    Failed,
    Canceled,
}

/// What a release did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseOutcome {
    Requeued,
    /// A cancel had been asked for, so the task ended instead of going back.
    Canceled,
}

impl Broker {
    /// Extends the lease and records progress. Fails with [`QueueError::LeaseLost`] when the
    /// lease was lost: the worker must stop working on the task.
    pub async fn heartbeat(&self, lease: &Lease, progress: Option<&Progress>) -> Result<Heartbeat> {
        let keys = &self.keys().of_task(&lease.task);
        let (percent, message) = match progress {
            Some(p) => (i64::from(p.percent.min(100)), p.message.as_str()),
            None => (-1, ""),
        };
        let reply: Value = scripts::HEARTBEAT
            .key(keys.task(lease.task.as_str()))
            .key(keys.queue(&lease.queue).started)
            .key(keys.events())
            .arg(lease.task.as_str())
            .arg(&lease.token)
            .arg(millis(lease.duration))
            .arg(percent)
            .arg(message)
            .invoke_async(&mut self.conn())
            .await?;
        let reply = decode::status(&reply)?;
        match reply.as_slice() {
            [ok, cancel] if ok == "ok" => Ok(Heartbeat {
                cancel_requested: cancel == "1",
            }),
            other => Err(refusal(&lease.task, other)),
        }
    }

    /// Stores the result; the task is `finished`.
    pub async fn complete(&self, lease: &Lease, result: &Json) -> Result<()> {
        let keys = &self.keys().of_task(&lease.task);
        let qk = keys.queue(&lease.queue);
        let result = serde_json::to_string(result)
            .map_err(|e| QueueError::Corrupt(format!("result does not serialize: {e}")))?;
        let (reply, ack) = self
            .change(
                keys,
                scripts::COMPLETE
                    .key(keys.task(lease.task.as_str()))
                    .key(&qk.started)
                    .key(&qk.finished)
                    .key(&qk.counters)
                    .key(&qk.processing)
                    .key(keys.events())
                    .key(keys.payload(lease.task.as_str()))
                    .arg(lease.task.as_str())
                    .arg(&lease.token)
                    .arg(result),
            )
            .await?;
        match self.unrepeat(decode::status(&reply)?).as_slice() {
            [ok] if ok == "ok" => ack.require(),
            other => Err(refusal(&lease.task, other)),
        }
    }

    /// Records a failed attempt: retried after a backoff while attempts remain and the error is
    /// retryable, else `failed`.
    pub async fn fail(
        &self,
        lease: &Lease,
        error: &TaskError,
        retry: Retry,
    ) -> Result<FailOutcome> {
        let keys = &self.keys().of_task(&lease.task);
        let qk = keys.queue(&lease.queue);
        let (retryable, min_delay) = match retry {
            Retry::Retryable(after) => (1, after.map(millis).unwrap_or(0)),
            Retry::Permanent => (0, 0),
        };
        let jitter: f64 = rand::rng().random_range(0.0..1.0);
        let (reply, ack) = self
            .change(
                keys,
                scripts::FAIL
                    .key(keys.task(lease.task.as_str()))
                    .key(&qk.started)
                    .key(&qk.delayed)
                    .key(&qk.failed)
                    .key(&qk.canceled)
                    .key(&qk.counters)
                    .key(keys.events())
                    .key(keys.payload(lease.task.as_str()))
                    .arg(lease.task.as_str())
                    .arg(&lease.token)
                    .arg(&error.kind)
                    .arg(&error.message)
                    .arg(retryable)
                    .arg(format!("{jitter:.6}"))
                    .arg(min_delay)
                    .arg(lease.span.as_deref().unwrap_or_default()),
            )
            .await?;
        let reply = self.unrepeat(decode::status(&reply)?);
        let outcome = match reply.as_slice() {
            [s, due] if s == "delayed" => FailOutcome::Delayed {
                retry_at_ms: due.parse().unwrap_or(0),
            },
            [s] if s == "failed" => FailOutcome::Failed,
            [s] if s == "canceled" => FailOutcome::Canceled,
            other => return Err(refusal(&lease.task, other)),
        };
        ack.require()?;
        Ok(outcome)
    }

    /// Gives a task back without spending an attempt (a worker shutting down).
    pub async fn release(&self, lease: &Lease) -> Result<ReleaseOutcome> {
        let keys = &self.keys().of_task(&lease.task);
        let qk = keys.queue(&lease.queue);
        let (reply, ack) = self
            .change(
                keys,
                scripts::RELEASE
                    .key(keys.task(lease.task.as_str()))
                    .key(&qk.started)
                    .key(&qk.ready)
                    .key(&qk.signal)
                    .key(&qk.canceled)
                    .key(keys.events())
                    .key(keys.payload(lease.task.as_str()))
                    .key(keys.queued_bytes())
                    .arg(lease.task.as_str())
                    .arg(&lease.token),
            )
            .await?;
        let outcome = match self.unrepeat(decode::status(&reply)?).as_slice() {
            [s] if s == "queued" => ReleaseOutcome::Requeued,
            [s] if s == "canceled" => ReleaseOutcome::Canceled,
            other => return Err(refusal(&lease.task, other)),
        };
        ack.require()?;
        Ok(outcome)
    }

    /// A worker's report answered `{'repeat', <first reply>…}`: this lease already made it.
    /// Under `replicated` the first reply stands (the caller is confirming a change whose
    /// replication it could not see); under `local` the lease is spent, as it always was.
    fn unrepeat(&self, mut reply: Vec<String>) -> Vec<String> {
        if reply.first().map(String::as_str) != Some("repeat") {
            return reply;
        }
        match self.inner.config.durability {
            Durability::Replicated => {
                reply.remove(0);
                reply
            }
            Durability::Local => vec!["lease_lost".into()],
        }
    }
}
