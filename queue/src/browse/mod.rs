//! Reading and acting on many tasks of a queue at once: what an operator's dashboard needs.
//!
//! Listing reads the per-state indexes the transition scripts already keep (`ready`,
//! `active`, `delayed`, `finished`, `failed`, `canceled`), one page per script call, so its
//! cost depends on the page size and not on how many tasks a queue holds. Bulk actions
//! (retry every failed task, purge ended ones) work in bounded chunks, one atomic script call
//! per chunk, so a million tasks never hold Redis for more than one chunk's time. The chart
//! history is one sample per minute in Redis, written by whichever reader comes first.

use redis::Value;
use serde::Serialize;

use crate::broker::Broker;
use crate::decode;
use crate::error::{QueueError, Result};
use crate::keys::Partition;
use crate::scripts;
use crate::task::{TaskId, TaskKind, TaskState};

mod bulk;
mod history;

pub use bulk::{BULK_CHUNK, BulkOutcome};
pub use history::{HISTORY_MINUTES, HistorySample};

/// The largest page [`Broker::list_tasks`] returns.
pub const MAX_PAGE: u32 = 200;

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
}
