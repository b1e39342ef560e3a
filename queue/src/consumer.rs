//! [`Consumer`]: claims tasks for one worker across its queues.
//!
//! Blocking cannot happen inside a Lua script, so a claim is two steps: try the atomic claim
//! script; if every queue is empty, block on the queues' wake-up lists (`BLPOP`, on a
//! connection of the consumer's own) until a token arrives or the block time ends, then try
//! again. Enqueue and every transition that makes a task ready push a token, so no wake-up is
//! lost between the try and the block.

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

    /// The order to try the queues in for the next claim.
    fn order(&self) -> Vec<usize> {
        let n = self.config.queues.len();
        match self.config.policy {
            ClaimPolicy::Strict => (0..n).collect(),
            ClaimPolicy::Weighted => {
                // Smooth weighted round-robin (as in nginx): each turn every queue earns its
                // weight, the richest goes first and pays the total. Over any window of
                // sum(weights) claims with all queues busy, queue i goes first weight(i) times.
                let total: i64 = self.weights.iter().sum();
                let mut credits = self.credits.lock().unwrap_or_else(|p| p.into_inner());
                for (c, w) in credits.iter_mut().zip(&self.weights) {
                    *c += w;
                }
                let first = (0..n)
                    .max_by_key(|&i| (credits[i], -(i as i64)))
                    .unwrap_or(0);
                credits[first] -= total;
                let mut order = vec![first];
                let mut rest: Vec<usize> = (0..n).filter(|&i| i != first).collect();
                rest.sort_by_key(|&i| -self.weights[i]);
                order.extend(rest);
                order
            }
        }
    }

    /// One atomic claim attempt, without blocking.
    ///
    /// A claimed task whose hash does not decode (a foreign writer, or a payload that is not
    /// its kind's) is failed at once as `bad_input` under the fresh lease, and the claim goes
    /// on to the next task: left alone it would be re-delivered until its attempts ran out.
    pub async fn try_claim(&self) -> Result<Option<Claimed>> {
        loop {
            let token = uuid::Uuid::new_v4().simple().to_string();
            let reply = self.claim_script(&token).await?;
            if reply == Value::Nil {
                return Ok(None);
            }
            let fields = decode::pairs(&reply)?;
            match decode::task(&fields) {
                Ok(task) => {
                    return Ok(Some(Claimed {
                        lease: self.lease(task.id.clone(), task.queue.clone(), token),
                        task,
                    }));
                }
                Err(e) => self.refuse_undecodable(&fields, token, e).await?,
            }
        }
    }

    /// Runs the claim script once over the queues in this turn's order.
    async fn claim_script(&self, token: &str) -> Result<Value> {
        let keys = self.broker.keys();
        let mut invocation = scripts::CLAIM.key(keys.events());
        for &i in &self.order() {
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
            .arg(token)
            .arg(millis(self.config.lease));
        let (reply, ack) = self.broker.change(&invocation).await?;
        // An unacknowledged claim still hands the task out: refusing it would leave it under
        // a lease nobody holds until the lease ran out. Should the claim be lost in a
        // failover, the task is delivered again; its completion is what must be replicated.
        if reply != Value::Nil
            && let Err(e) = ack.require()
        {
            tracing::warn!(error = %e, "claimed a task before a replica acknowledged the claim");
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
        let deadline = Instant::now() + block;
        loop {
            if let Some(claimed) = self.try_claim().await? {
                return Ok(Some(claimed));
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Ok(None);
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
