//! Task state changes as they happen.
//!
//! Every transition script appends to its partition's events stream (`{tag}:events`, about
//! the last 10,000 entries each). One reader per partition and process follows it with
//! `XREAD BLOCK` on a connection of its own and fans the entries out to subscribers over one
//! broadcast channel, so any number of waiting HTTP requests cost one Redis connection per
//! partition and no polling. A stream (not pub/sub) works the same on Redis Cluster and
//! survives a reader's reconnect without gaps. Event ids increase within a partition; events
//! of different partitions are delivered in the order they are read.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::streams::{StreamReadOptions, StreamReadReply};
use serde::Serialize;
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::broker::Broker;
use crate::conn::Conn;
use crate::decode;
use crate::error::Result;
use crate::stream::Delta;
use crate::task::{Task, TaskId, TaskState};

/// One state change of one task.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskEvent {
    /// The stream entry id: increasing, usable as an SSE event id.
    pub event_id: String,
    pub task_id: String,
    pub queue: String,
    pub state: TaskState,
    /// Extra facts of the change: `progress` and `message`, `worker`, `error_kind`,
    /// `cancel_requested`, `released`, `retried`.
    pub details: HashMap<String, String>,
    /// A piece of answer text the running task generated (see [`crate::stream`]); its
    /// state is then `started`.
    pub delta: Option<Delta>,
}

/// Fans the events stream out to subscribers. Cheap to clone; the reader stops when the last
/// clone is dropped.
#[derive(Clone)]
pub struct EventHub {
    tx: broadcast::Sender<TaskEvent>,
    _readers: Arc<Vec<AbortOnDrop>>,
}

/// Aborts a background task when dropped.
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl EventHub {
    /// Starts the reader at the stream's current end: subscribers see every change made after
    /// this returns.
    pub(crate) async fn start(broker: Broker) -> Result<EventHub> {
        let (tx, _) = broadcast::channel(4096);
        let mut readers = Vec::new();
        for part in broker.keys().partitions() {
            let key = part.events();
            let mut conn = Conn::open(&broker.config().target, None).await?;
            let last: Vec<(String, HashMap<String, redis::Value>)> = redis::cmd("XREVRANGE")
                .arg(&key)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .query_async(&mut conn)
                .await?;
            let start = last
                .first()
                .map(|(id, _)| id.clone())
                .unwrap_or_else(|| "0-0".into());
            readers.push(AbortOnDrop(tokio::spawn(follow(
                conn,
                key,
                start,
                tx.clone(),
            ))));
        }
        Ok(EventHub {
            tx,
            _readers: Arc::new(readers),
        })
    }

    /// A receiver of every change from now on. A receiver that falls more than 4096 events
    /// behind gets `Lagged` and should re-read the state it cares about.
    pub fn subscribe(&self) -> broadcast::Receiver<TaskEvent> {
        self.tx.subscribe()
    }
}

async fn follow(mut conn: Conn, key: String, mut last: String, tx: broadcast::Sender<TaskEvent>) {
    let options = StreamReadOptions::default().count(512).block(2000);
    let mut backoff = Duration::from_millis(100);
    loop {
        let reply: redis::RedisResult<Option<StreamReadReply>> = redis::cmd("XREAD")
            .arg(&options)
            .arg("STREAMS")
            .arg(&key)
            .arg(&last)
            .query_async(&mut conn)
            .await;
        match reply {
            Ok(reply) => {
                backoff = Duration::from_millis(100);
                for entry in reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids) {
                    last = entry.id.clone();
                    let mut details: HashMap<String, String> = entry
                        .map
                        .iter()
                        .filter_map(|(k, v)| decode::scalar(v).ok().map(|v| (k.clone(), v)))
                        .collect();
                    let (Some(task_id), Some(queue), Some(state)) = (
                        details.remove("id"),
                        details.remove("queue"),
                        details.remove("state").and_then(|s| s.parse().ok()),
                    ) else {
                        continue;
                    };
                    let delta = take_delta(&mut details);
                    // No subscribers is fine: nobody is waiting.
                    let _ = tx.send(TaskEvent {
                        event_id: entry.id,
                        task_id,
                        queue,
                        state,
                        details,
                        delta,
                    });
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading task events failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// The piece of answer text an entry carries, taken out of its fields.
fn take_delta(details: &mut HashMap<String, String>) -> Option<Delta> {
    let text = details.remove("delta")?;
    let attempt = details.remove("attempt")?.parse().ok()?;
    let seq = details.remove("seq")?.parse().ok()?;
    let run = details.remove("run")?.parse().ok()?;
    Some(Delta {
        run,
        attempt,
        seq,
        text,
    })
}

impl Broker {
    /// Waits until the task ends or `timeout` passes, woken by its events rather than by
    /// polling. Returns the task as it is then (`None` when it does not exist).
    pub async fn wait_for_end(&self, id: &TaskId, timeout: Duration) -> Result<Option<Task>> {
        let hub = self.events().await?;
        // Subscribe before reading, so a change between the read and the wait is not missed.
        let mut rx = hub.subscribe();
        let deadline = Instant::now() + timeout;
        loop {
            let task = self.get(id).await?;
            match &task {
                Some(t) if !t.state.is_terminal() => {}
                _ => return Ok(task),
            }
            loop {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Err(_) => return Ok(task),
                    Ok(Ok(ev)) if ev.task_id == id.as_str() && ev.state.is_terminal() => break,
                    Ok(Ok(_)) => continue,
                    // Missed some events: re-read the task.
                    Ok(Err(broadcast::error::RecvError::Lagged(_))) => break,
                    Ok(Err(broadcast::error::RecvError::Closed)) => return Ok(task),
                }
            }
        }
    }
}
