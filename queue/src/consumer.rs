//! [`Consumer`]: claims tasks for one worker across its queues.
//!
//! Blocking cannot happen inside a Lua script, so a claim is two steps: try the atomic claim
//! script; if every queue is empty, block on the queues' wake-up lists (`BLPOP`, on a
//! connection of the consumer's own) until a token arrives or the block time ends, then try
//! again. Enqueue and every transition that makes a task ready push a token, so no wake-up is
//! lost between the try and the block.
//!
//! One script call can claim several tasks ([`Consumer::try_claim_many`]): a worker with `k`
//! free slots fills them in one round trip, each task still its own turn of the claim policy
//! and its own lease.

use std::sync::Mutex;
use std::time::Duration;

use redis::Value;
use tokio::time::Instant;

use crate::broker::{Broker, Lease, Retry, millis};
use crate::config::ClaimPolicy;
use crate::conn::Conn;
use crate::decode;
use crate::error::{QueueError, Result};
use crate::scripts;
use crate::task::{Task, TaskError, TaskId};

/// Who claims, from which queues, how.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Unique per worker process; recorded on the tasks it holds.
    pub worker_id: String,
    /// Queue names, highest priority first.
    pub queues: Vec<String>,
    pub policy: ClaimPolicy,
    /// Lease length: a task whose holder stops heartbeating is re-delivered this long after
    /// its last heartbeat.
    pub lease: Duration,
}

/// A claimed task and the lease to present when reporting on it.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub task: Task,
    pub lease: Lease,
}

/// Claims tasks; see the module documentation.
pub struct Consumer {
    broker: Broker,
    config: ConsumerConfig,
    weights: Vec<i64>,
    /// Smooth weighted round-robin state: one running credit per queue.
    credits: Mutex<Vec<i64>>,
    blocking: tokio::sync::Mutex<Option<Conn>>,
}

/// Longest single `BLPOP`, so a consumer notices a dropped connection and tasks made ready
/// without a token (a crash between two steps) within this time.
const MAX_BLOCK: Duration = Duration::from_secs(5);

/// Most tasks one claim call takes: the script holds Redis while it runs, so a call for a
/// thousand slots is split rather than stalling every other client for its duration.
pub const MAX_CLAIM: usize = 32;

impl Consumer {
    pub(crate) async fn new(broker: Broker, config: ConsumerConfig) -> Result<Consumer> {
        if config.queues.is_empty() {
            return Err(QueueError::Config(
                "a consumer needs at least one queue".into(),
            ));
        }
        if config.lease < Duration::from_millis(100) {
            return Err(QueueError::Config("lease must be at least 100 ms".into()));
        }
        let mut weights = Vec::with_capacity(config.queues.len());
        for name in &config.queues {
            weights.push(i64::from(broker.queue(name)?.weight.max(1)));
        }
        Ok(Consumer {
            credits: Mutex::new(vec![0; weights.len()]),
            weights,
            broker,
            config,
            blocking: tokio::sync::Mutex::new(None),
        })
    }

    pub fn config(&self) -> &ConsumerConfig {
        &self.config
    }

    /// The turns of the next `count` claims: the queues in their fall-through order, and for
    /// each turn the position in it of the queue tried first.
    ///
    /// Strict: the configured order, every turn starting at the top. Weighted: smooth weighted
    /// round-robin (as in nginx): each turn every queue earns its weight, the richest goes
    /// first and pays the total, and the others follow heaviest first. Over any window of
    /// sum(weights) turns with all queues busy, queue i goes first weight(i) times, however
    /// the turns are split into calls.
    fn turns(&self, count: usize) -> (Vec<usize>, Vec<usize>) {
        let n = self.config.queues.len();
        match self.config.policy {
            ClaimPolicy::Strict => ((0..n).collect(), vec![0; count]),
            ClaimPolicy::Weighted => {
                let mut fallback: Vec<usize> = (0..n).collect();
                fallback.sort_by_key(|&i| -self.weights[i]);
                let total: i64 = self.weights.iter().sum();
                let mut credits = self.credits.lock().unwrap_or_else(|p| p.into_inner());
                let firsts = (0..count)
                    .map(|_| {
                        for (c, w) in credits.iter_mut().zip(&self.weights) {
                            *c += w;
                        }
                        let first = (0..n)
                            .max_by_key(|&i| (credits[i], -(i as i64)))
                            .unwrap_or(0);
                        credits[first] -= total;
                        fallback.iter().position(|&i| i == first).unwrap_or(0)
                    })
                    .collect();
                (fallback, firsts)
            }
        }
    }

    /// One atomic claim attempt, without blocking.
    ///
    /// A claimed task whose hash does not decode (a foreign writer, or a payload that is not
    /// its kind's) is failed at once as `bad_input` under the fresh lease, and the claim goes
    /// on to the next task: left alone it would be re-delivered until its attempts ran out.
    pub async fn try_claim(&self) -> Result<Option<Claimed>> {
        Ok(self.try_claim_many(1).await?.pop())
    }

    /// Claims up to `max` tasks in one atomic script call, without blocking: fewer (or none)
    /// when fewer are ready. Each task is one turn of the claim policy, so the tasks are the
    /// ones `max` calls of [`Consumer::try_claim`] would have returned, in the same order, and
    /// each has a lease of its own. A worker with `k` free slots fills them in one round trip.
    ///
    /// Undecodable tasks are failed as in [`Consumer::try_claim`] and left out; the result is
    /// empty only when every queue was.
    pub async fn try_claim_many(&self, max: usize) -> Result<Vec<Claimed>> {
        let max = max.clamp(1, MAX_CLAIM);
        loop {
            let tokens: Vec<String> = (0..max)
                .map(|_| uuid::Uuid::new_v4().simple().to_string())
                .collect();
            let reply = self.claim_script(&tokens).await?;
            let Value::Array(hashes) = reply else {
                return Err(QueueError::Corrupt(format!("claim replied {reply:?}")));
            };
            let returned = hashes.len();
            let mut out = Vec::with_capacity(returned);
            for (hash, token) in hashes.iter().zip(tokens) {
                let fields = decode::pairs(hash)?;
                match decode::task(&fields) {
                    Ok(task) => out.push(Claimed {
                        lease: self.lease(task.id.clone(), task.queue.clone(), token),
                        task,
                    }),
                    Err(e) => self.refuse_undecodable(&fields, token, e).await?,
                }
            }
            // Only undecodable tasks came back: the queues may hold good ones behind them.
            if out.is_empty() && returned > 0 {
                continue;
            }
            return Ok(out);
        }
    }

    /// Runs the claim script once for `tokens.len()` turns.
    async fn claim_script(&self, tokens: &[String]) -> Result<Value> {
        let keys = self.broker.keys();
        let (order, firsts) = self.turns(tokens.len());
        let mut invocation = scripts::CLAIM.key(keys.events());
        for &i in &order {
            let qk = keys.queue(&self.config.queues[i]);
            invocation
                .key(qk.ready)
                .key(qk.started)
                .key(qk.signal)
                .key(qk.wait);
        }
        invocation
            .arg(keys.prefix())
            .arg(&self.config.worker_id)
            .arg(millis(self.config.lease))
            .arg(tokens.len());
        for token in tokens {
            invocation.arg(token);
        }
        for first in firsts {
            invocation.arg(first + 1);
        }
        let (reply, ack) = self.broker.change(&invocation).await?;
        // An unacknowledged claim still hands the tasks out: refusing them would leave them
        // under leases nobody holds until the leases ran out. Should the claim be lost in a
        // failover, the tasks are delivered again; their completion is what must be replicated.
        if matches!(&reply, Value::Array(claimed) if !claimed.is_empty())
            && let Err(e) = ack.require()
        {
            tracing::warn!(error = %e, "claimed tasks before a replica acknowledged the claim");
        }
        Ok(reply)
    }

    fn lease(&self, task: TaskId, queue: String, token: String) -> Lease {
        Lease {
            task,
            queue,
            token,
            duration: self.config.lease,
        }
    }

    /// Fails a claimed task that does not decode; see [`Consumer::try_claim`].
    async fn refuse_undecodable(
        &self,
        fields: &decode::Fields,
        token: String,
        error: QueueError,
    ) -> Result<()> {
        let (Some(id), Some(queue)) = (fields.get("id"), fields.get("queue")) else {
            return Err(error);
        };
        tracing::warn!(task_id = %id, %error, "claimed a task that does not decode; failing it");
        let lease = self.lease(TaskId::from_str_unchecked(id.clone()), queue.clone(), token);
        let reason = TaskError::new(
            "bad_input",
            format!("the stored task does not decode: {error}"),
        );
        self.broker.fail(&lease, &reason, Retry::Permanent).await?;
        Ok(())
    }

    /// Claims a task, waiting up to `block` for one to arrive. `None` when none did.
    pub async fn claim(&self, block: Duration) -> Result<Option<Claimed>> {
        Ok(self.claim_many(1, block).await?.pop())
    }

    /// Claims up to `max` tasks (see [`Consumer::try_claim_many`]), waiting up to `block` for
    /// the first to arrive. Empty when none did.
    pub async fn claim_many(&self, max: usize, block: Duration) -> Result<Vec<Claimed>> {
        let deadline = Instant::now() + block;
        loop {
            let claimed = self.try_claim_many(max).await?;
            if !claimed.is_empty() {
                return Ok(claimed);
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Ok(Vec::new());
            }
            self.wait_for_signal(remaining.min(MAX_BLOCK)).await?;
        }
    }

    /// Waits until a task may be ready on one of the queues, or `wait` (at most 5 s) passes;
    /// then call [`Consumer::try_claim`]. Unlike a claim, this wait may be abandoned at any
    /// point (a shutdown) without losing a task.
    pub async fn wait_for_work(&self, wait: Duration) -> Result<()> {
        self.wait_for_signal(wait.min(MAX_BLOCK)).await
    }

    /// Blocks until one of the queues' wake-up lists has a token, or `wait` passes.
    async fn wait_for_signal(&self, wait: Duration) -> Result<()> {
        let mut guard = self.blocking.lock().await;
        let established = guard.is_some();
        let conn = match guard.as_mut() {
            Some(conn) => conn,
            None => guard.insert(Conn::open(&self.broker.config().target, None).await?),
        };
        let keys = self.broker.keys();
        let mut cmd = redis::cmd("BLPOP");
        for name in &self.config.queues {
            cmd.arg(keys.queue(name).signal);
        }
        // BLPOP takes seconds as a decimal; 0 would mean forever.
        cmd.arg(format!("{:.3}", wait.as_secs_f64().max(0.01)));
        let result: redis::RedisResult<Value> = cmd.query_async(conn).await;
        if let Err(e) = result {
            // Open a fresh connection next time rather than trusting this one.
            *guard = None;
            // A connection that worked and was cut (a failover demoting the primary ends its
            // blocked commands) counts as a wake-up: the caller claims again, on the
            // multiplexed connection, which reports a real outage.
            if established && (e.is_connection_dropped() || e.code() == Some("UNBLOCKED")) {
                return Ok(());
            }
            return Err(e.into());
        }
        Ok(())
    }
}
