//! Reading one task: its record, its payload, its brief and its place in the queue.

use super::Broker;
use crate::decode;
use crate::error::Result;
use crate::payload::Payload;
use crate::task::{Task, TaskId};

impl Broker {
    /// Reads a task; `None` when it never existed or has expired. Reads only the fields a
    /// [`Task`] holds: never the payload.
    pub async fn get(&self, id: &TaskId) -> Result<Option<Task>> {
        let values: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(self.keys().of_task(id).task(id.as_str()))
            .arg(&decode::TASK_FIELDS[..])
            .query_async(&mut self.conn())
            .await?;
        match decode::task_fields(values) {
            Some(fields) => decode::task(&fields).map(Some),
            None => Ok(None),
        }
    }

    /// A task's payload while it is stored (until the task ends, see `docs/queue.md`);
    /// `None` once it is gone or for an unknown task. Reads the whole input: for inspection
    /// and tests, never on a status read.
    pub async fn payload(&self, id: &TaskId) -> Result<Option<Payload>> {
        let part = self.keys().of_task(id);
        let (kind, legacy, own): (Option<String>, Option<String>, Option<String>) = redis::pipe()
            .hget(part.task(id.as_str()), "kind")
            .hget(part.task(id.as_str()), "payload")
            .get(part.payload(id.as_str()))
            .query_async(&mut self.conn())
            .await?;
        match (kind, own.or(legacy)) {
            (Some(kind), Some(json)) => decode::payload(kind.parse()?, &json).map(Some),
            _ => Ok(None),
        }
    }

    /// What a task asked for without its inline image ([`Payload::brief`]): kept for the
    /// task's whole life, for a detail view. `None` for an unknown task.
    pub async fn brief(&self, id: &TaskId) -> Result<Option<Payload>> {
        let (kind, brief): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(self.keys().task(id))
            .arg("kind")
            .arg("input_brief")
            .query_async(&mut self.conn())
            .await?;
        match (kind, brief) {
            (Some(kind), Some(json)) => decode::payload(kind.parse()?, &json).map(Some),
            // A task stored before briefs were kept: its payload, while it has one.
            (Some(_), None) => Ok(self.payload(id).await?.map(|p| p.brief())),
            _ => Ok(None),
        }
    }

    /// A queued task's place in its queue (0 = next), `None` when it is not queued.
    ///
    /// With one partition it is exact. With more it counts, in every other partition, the
    /// tasks queued before it (ready-set scores are queue times): exact as far as the
    /// masters' clocks agree and no claim runs between the reads, so an estimate.
    pub async fn position(&self, id: &TaskId, queue: &str) -> Result<Option<u64>> {
        let keys = self.keys();
        let own = keys.of_task(id);
        let (rank, score): (Option<u64>, Option<f64>) = redis::pipe()
            .zrank(own.queue(queue).ready, id.as_str())
            .zscore(own.queue(queue).ready, id.as_str())
            .query_async(&mut self.conn())
            .await?;
        let (Some(rank), Some(score)) = (rank, score) else {
            return Ok(None);
        };
        let before = format!("({score}");
        let others = keys
            .partitions()
            .iter()
            .filter(|p| p.prefix() != own.prefix())
            .map(|p| {
                let before = &before;
                async move {
                    redis::cmd("ZCOUNT")
                        .arg(p.queue(queue).ready)
                        .arg("-inf")
                        .arg(before)
                        .query_async::<u64>(&mut self.conn())
                        .await
                }
            });
        let ahead = futures::future::try_join_all(others).await?;
        Ok(Some(rank + ahead.into_iter().sum::<u64>()))
    }
}
