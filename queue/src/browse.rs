//! Reading and acting on many tasks of a queue at once: what an operator's dashboard needs.
//!
//! Listing reads the per-state indexes the transition scripts already keep (`ready`,
//! `active`, `delayed`, `finished`, `failed`, `canceled`), one page per script call, so its
//! cost depends on the page size and not on how many tasks a queue holds. Bulk actions
//! (retry every failed task, purge ended ones) work in bounded chunks, one atomic script call
//! per chunk, so a million tasks never hold Redis for more than one chunk's time. The chart
//! history is one sample per minute in Redis, written by whichever reader comes first.

use std::collections::BTreeMap;

use redis::Value;
use serde::Serialize;

use crate::broker::Broker;
use crate::decode;
use crate::error::{QueueError, Result};
use crate::keys::Partition;
use crate::scripts;
use crate::task::{TaskId, TaskKind, TaskState};

/// The largest page [`Broker::list_tasks`] returns.
pub const MAX_PAGE: u32 = 200;

/// Tasks one bulk script call touches at most.
pub const BULK_CHUNK: u32 = 500;

/// A task in a list: enough for a row of a table, never the payload or the result.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskSummary {
    pub task_id: String,
    pub kind: TaskKind,
    pub queue: String,
    #[serde(rename = "status")]
    pub state: TaskState,
    /// Milliseconds since the epoch (Redis server clock).
    pub enqueued_at_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_at_ms: Option<u64>,
    pub attempts: u32,
    pub max_attempts: u32,
    /// 0 to 100.
    pub progress: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// The error's kind (`backend_unavailable`, `canceled`, …), when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<String>,
    /// The start (at most 200 bytes) of the error message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
}

/// One page of a state's index.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskPage {
    /// How many tasks the index holds (ended sets: those within their TTL).
    pub total: u64,
    pub tasks: Vec<TaskSummary>,
    /// Pass as `cursor` for the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

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

/// One minute's sample of a queue's running totals and wait times.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Default)]
pub struct HistorySample {
    /// The minute (since the epoch) the sample belongs to.
    pub minute: u64,
    /// When it was taken, milliseconds since the epoch (Redis server clock).
    pub at_ms: u64,
    pub enqueued: u64,
    pub finished: u64,
    pub failed: u64,
    pub wait_p50_ms: f64,
    pub wait_p95_ms: f64,
    pub processing_p50_ms: f64,
}

impl HistorySample {
    fn encode(&self) -> String {
        format!(
            "{} {} {} {} {} {} {}",
            self.at_ms,
            self.enqueued,
            self.finished,
            self.failed,
            self.wait_p50_ms,
            self.wait_p95_ms,
            self.processing_p50_ms
        )
    }

    fn decode(minute: &str, value: &str) -> Option<HistorySample> {
        let mut parts = value.split(' ');
        let mut next = || parts.next();
        Some(HistorySample {
            minute: minute.parse().ok()?,
            at_ms: next()?.parse().ok()?,
            enqueued: next()?.parse().ok()?,
            finished: next()?.parse().ok()?,
            failed: next()?.parse().ok()?,
            wait_p50_ms: next()?.parse().ok()?,
            wait_p95_ms: next()?.parse().ok()?,
            processing_p50_ms: next()?.parse().ok()?,
        })
    }
}

/// How many minutes of history are kept.
pub const HISTORY_MINUTES: u64 = 61;

/// True when `cursor` has the shape of a `next_cursor` (so a caller can refuse it with a
/// clear message before asking Redis).
pub fn valid_cursor(cursor: &str) -> bool {
    parse_cursor(cursor).is_ok()
}

/// A page position: the score and id of the last task of the previous page.
fn parse_cursor(cursor: &str) -> Result<(String, TaskId)> {
    let bad = || QueueError::Config(format!("invalid cursor {:?}", truncate(cursor)));
    let (score, id) = cursor.split_once(':').ok_or_else(bad)?;
    let score_ok = score.parse::<f64>().is_ok_and(f64::is_finite);
    if !score_ok {
        return Err(bad());
    }
    let id: TaskId = id.parse().map_err(|_| bad())?;
    Ok((score.to_string(), id))
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

fn opt_u64(v: &Value) -> Result<Option<u64>> {
    match v {
        Value::Nil => Ok(None),
        other => Ok(decode::scalar(other)?.parse().ok()),
    }
}

fn opt_string(v: &Value) -> Result<Option<String>> {
    match v {
        Value::Nil => Ok(None),
        other => decode::scalar(other).map(Some),
    }
}

/// A list row and its index score (the order pages are merged in across partitions).
fn summary(row: &Value) -> Result<(TaskSummary, f64)> {
    let Value::Array(f) = row else {
        return Err(QueueError::Corrupt(format!("list row {row:?}")));
    };
    let [
        id,
        state,
        kind,
        queue,
        enqueued,
        started,
        finished,
        attempts,
        max_attempts,
        error_kind,
        error_msg,
        progress,
        retry_at,
        worker,
        score,
    ] = f.as_slice()
    else {
        return Err(QueueError::Corrupt("list row has the wrong length".into()));
    };
    let corrupt = |what: &str| QueueError::Corrupt(format!("task field {what}"));
    let score: f64 = decode::scalar(score)?
        .parse()
        .map_err(|_| corrupt("index score"))?;
    let summary = TaskSummary {
        task_id: decode::scalar(id)?,
        state: decode::scalar(state)?
            .parse()
            .map_err(|_| corrupt("state"))?,
        kind: opt_string(kind)?
            .ok_or_else(|| corrupt("kind"))?
            .parse()
            .map_err(|_| corrupt("kind"))?,
        queue: opt_string(queue)?.unwrap_or_default(),
        enqueued_at_ms: opt_u64(enqueued)?.unwrap_or(0),
        started_at_ms: opt_u64(started)?,
        finished_at_ms: opt_u64(finished)?,
        retry_at_ms: opt_u64(retry_at)?,
        attempts: opt_u64(attempts)?
            .unwrap_or(0)
            .try_into()
            .unwrap_or(u32::MAX),
        max_attempts: opt_u64(max_attempts)?
            .unwrap_or(0)
            .try_into()
            .unwrap_or(u32::MAX),
        progress: opt_u64(progress)?.unwrap_or(0).min(100) as u8,
        worker: opt_string(worker)?.filter(|w| !w.is_empty()),
        error_kind: opt_string(error_kind)?,
        error_message: opt_string(error_msg)?,
    };
    Ok((summary, score))
}

impl Broker {
    /// The index key of `state` in `queue` of one partition.
    fn state_index(part: &Partition, queue: &str, state: TaskState) -> String {
        let qk = part.queue(queue);
        match state {
            TaskState::Queued => qk.ready,
            TaskState::Started => qk.started,
            TaskState::Delayed => qk.delayed,
            TaskState::Finished => qk.finished,
            TaskState::Failed => qk.failed,
            TaskState::Canceled => qk.canceled,
        }
    }

    /// One page of the tasks of `queue` in `state`, highest index score first: newest first
    /// for queued (by sequence) and ended tasks (by expiry, which is finish time plus a
    /// per-queue TTL); latest lease deadline first for started, latest due time for
    /// delayed. `cursor` is a previous page's `next_cursor`; `limit` is clamped to
    /// 1..=[`MAX_PAGE`].
    ///
    /// With several partitions each is read side by side from the same cursor and the pages
    /// are merged by (score, id); a queued task's score is its partition's sequence number,
    /// so across partitions "newest first" holds only roughly for the queued list.
    pub async fn list_tasks(
        &self,
        queue: &str,
        state: TaskState,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<TaskPage> {
        let limit = limit.clamp(1, MAX_PAGE);
        let (score, id) = match cursor {
            Some(c) => {
                let (score, id) = parse_cursor(c)?;
                (score, id.to_string())
            }
            None => (String::new(), String::new()),
        };
        let reads = self
            .keys()
            .partitions()
            .iter()
            .map(|part| self.list_in(part, queue, state, &id, &score, limit));
        let pages = futures::future::try_join_all(reads).await?;
        let mut total = 0;
        let mut more = false;
        let mut rows = Vec::new();
        for (t, full, r) in pages {
            total += t;
            more |= full;
            rows.extend(r);
        }
        rows.sort_by(|(a, sa), (b, sb)| sb.total_cmp(sa).then_with(|| b.task_id.cmp(&a.task_id)));
        more |= rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let next_cursor = match rows.last() {
            Some((last, score)) if more => Some(format!("{score}:{}", last.task_id)),
            _ => None,
        };
        Ok(TaskPage {
            total,
            tasks: rows.into_iter().map(|(t, _)| t).collect(),
            next_cursor,
        })
    }

    /// One partition's page: its total, whether it had a full page, and its rows.
    async fn list_in(
        &self,
        part: &Partition,
        queue: &str,
        state: TaskState,
        id: &str,
        score: &str,
        limit: u32,
    ) -> Result<(u64, bool, Vec<(TaskSummary, f64)>)> {
        let reply: Value = scripts::LIST
            .key(Self::state_index(part, queue, state))
            .arg(part.prefix())
            .arg(limit)
            .arg(id)
            .arg(score)
            .arg(if state.is_terminal() { "1" } else { "0" })
            .invoke_async(&mut self.conn())
            .await?;
        let Value::Array(parts) = reply else {
            return Err(QueueError::Corrupt(format!("list replied {reply:?}")));
        };
        let [total, next_id, _next_score, rows @ ..] = parts.as_slice() else {
            return Err(QueueError::Corrupt("list reply is too short".into()));
        };
        Ok((
            decode::int(total)?.max(0) as u64,
            !decode::scalar(next_id)?.is_empty(),
            rows.iter().map(summary).collect::<Result<_>>()?,
        ))
    }

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
            let (reply, ack) = self.change(&call).await?;
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
            self.in_chunks(max, "purge", |chunk| {
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
        max: u64,
        what: &str,
        call: impl Fn(u64) -> redis::ScriptInvocation<'static>,
    ) -> Result<BulkOutcome> {
        let mut out = BulkOutcome::default();
        let mut handled = 0;
        loop {
            let chunk = (max - handled).min(u64::from(BULK_CHUNK));
            let (reply, ack) = self.change(&call(chunk)).await?;
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

    /// Stores `sample` as its minute's entry unless another reader stored one first, drops
    /// entries older than [`HISTORY_MINUTES`], and returns what is kept, oldest first.
    pub async fn record_history(
        &self,
        queue: &str,
        sample: &HistorySample,
    ) -> Result<Vec<HistorySample>> {
        let reply: Value = scripts::HISTORY
            .key(history_key(self, queue))
            .arg(sample.minute)
            .arg(sample.encode())
            .arg(HISTORY_MINUTES)
            .invoke_async(&mut self.conn())
            .await?;
        let kept: BTreeMap<u64, HistorySample> = decode::pairs(&reply)?
            .iter()
            .filter_map(|(minute, value)| HistorySample::decode(minute, value))
            .map(|s| (s.minute, s))
            .collect();
        Ok(kept.into_values().collect())
    }

    /// The Redis server's clock, milliseconds since the epoch.
    pub async fn server_time_ms(&self) -> Result<u64> {
        let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut self.conn()).await?;
        Ok(secs * 1000 + micros / 1000)
    }
}

/// `{ns}:q:<queue>:history`: HASH minute → sample (see `history.lua`).
fn history_key(broker: &Broker, queue: &str) -> String {
    broker.keys().history(queue)
}

fn pair(reply: &Value, script: &str) -> Result<(u64, u64)> {
    match decode::status(reply)?.as_slice() {
        [a, b] => Ok((a.parse().unwrap_or(0), b.parse().unwrap_or(0))),
        other => Err(QueueError::Corrupt(format!("{script} replied {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_are_checked_before_they_reach_redis() {
        let id = TaskId::new();
        let (score, parsed) = parse_cursor(&format!("1700000000000:{id}")).unwrap();
        assert_eq!((score.as_str(), parsed), ("1700000000000", id.clone()));
        for bad in ["", "12", "x:y", &format!("inf:{id}"), "12:not-a-uuid"] {
            assert!(parse_cursor(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn history_samples_round_trip() {
        let s = HistorySample {
            minute: 28_000_000,
            at_ms: 1_680_000_001_234,
            enqueued: 10,
            finished: 8,
            failed: 1,
            wait_p50_ms: 12.5,
            wait_p95_ms: 40.0,
            processing_p50_ms: 300.0,
        };
        assert_eq!(
            HistorySample::decode("28000000", &s.encode()),
            Some(s),
            "{}",
            s.encode()
        );
        assert_eq!(HistorySample::decode("1", "garbage"), None);
    }
}
