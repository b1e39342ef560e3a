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
//!
//! With several partitions (see [`crate::keys`]) a claim is planned first: one read of the
//! first `k` ready entries of each queue in every partition (side by side), then each turn of
//! the policy takes its queue's oldest task across the partitions (ready-set scores are queue
//! times, comparable across partitions), and one claim script runs per partition that got
//! turns, side by side. So priorities and weights hold across queues, tasks of a queue are
//! claimed oldest first wherever they landed, no partition is starved, and a claim costs two
//! round trips instead of one. Waiting blocks on every
//! partition's wake-up lists at once, one `BLPOP` per partition on a connection of its own
//! (a cluster cannot block on keys of several slots in one command); a token taken after the
//! consumer stopped waiting is pushed back for another consumer.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use redis::Value;
use tokio::time::Instant;

use crate::broker::{Broker, Lease, Retry, millis};
use crate::config::ClaimPolicy;
use crate::conn::Conn;
use crate::decode;
use crate::error::{QueueError, Result};
use crate::keys::Partition;
use crate::payload::Payload;
use crate::scripts;
use crate::task::{Task, TaskError, TaskId, TraceContext};

mod plan;
mod wait;

use plan::{Head, Shares, plan_turns};
use wait::Watch;

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

/// A claimed task, its payload (read once, by the claim) and the lease to present when
/// reporting on it.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub task: Task,
    /// What to run; its variant is `task.kind`.
    pub payload: Payload,
    pub lease: Lease,
    /// The trace the task was submitted under; `None` for one submitted without tracing.
    pub trace: Option<TraceContext>,
    /// The span (in `traceparent` form) of the task's first attempt that failed and was
    /// retried, which later attempts link to; see [`Lease::span`].
    pub first_attempt: Option<String>,
}

/// Claims tasks; see the module documentation.
pub struct Consumer {
    broker: Broker,
    config: ConsumerConfig,
    weights: Vec<i64>,
    /// Smooth weighted round-robin state: one running credit per queue.
    credits: Mutex<Vec<i64>>,
    blocking: tokio::sync::Mutex<Option<Conn>>,
    /// With several partitions: the per-partition waiters, started on the first wait.
    watch: tokio::sync::Mutex<Option<Watch>>,
    /// With several partitions: fair share between owners across them.
    shares: Mutex<Shares>,
}

/// Longest single `BLPOP`, so a consumer notices a dropped connection and tasks made ready
/// without a token (a crash between two steps) within this time.
const MAX_BLOCK: Duration = Duration::from_secs(5);

/// Most tasks one claim call takes: the script holds Redis while it runs, so a call for a
/// thousand slots is split rather than stalling every other client for its duration.
pub const MAX_CLAIM: usize = 32;

/// One entry of the claim script's reply: the task hash and its payload (nil when its own key
/// is gone).
fn claimed_entry(entry: Value) -> Result<(decode::Fields, Option<String>)> {
    let Value::Array(mut parts) = entry else {
        return Err(QueueError::Corrupt(format!("claim replied {entry:?}")));
    };
    // Taken, not copied: it may be an image of many megabytes.
    let payload =
        match parts.len() {
            2 => match parts.pop() {
                Some(Value::BulkString(bytes)) => Some(String::from_utf8(bytes).map_err(|e| {
                    QueueError::Corrupt(format!("a stored payload is not UTF-8: {e}"))
                })?),
                _ => None,
            },
            _ => None,
        };
    parts.truncate(1);
    let hash = parts
        .pop()
        .ok_or_else(|| QueueError::Corrupt("claim replied an empty entry".into()))?;
    Ok((decode::pairs(&hash)?, payload))
}

/// A claimed task and its payload; a task stored before payloads had their own key holds it
/// in its hash. A task whose payload is gone does not decode (see
/// [`Consumer::try_claim`]).
fn decode_claimed(fields: &decode::Fields, payload: Option<String>) -> Result<(Task, Payload)> {
    let task = decode::task(fields)?;
    let json = payload
        .or_else(|| fields.get("payload").cloned())
        .ok_or_else(|| QueueError::Corrupt(format!("task {} has no stored payload", task.id)))?;
    let payload = decode::payload(task.kind, &json)?;
    Ok((task, payload))
}

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
            shares: Mutex::new(Shares::default()),
            weights,
            broker,
            config,
            blocking: tokio::sync::Mutex::new(None),
            watch: tokio::sync::Mutex::new(None),
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
            let hashes = self.claim_round(tokens).await?;
            let returned = hashes.len();
            let mut out = Vec::with_capacity(returned);
            for (entry, token) in hashes {
                let (fields, payload) = claimed_entry(entry)?;
                match decode_claimed(&fields, payload) {
                    Ok((task, payload)) => out.push(Claimed {
                        lease: self.lease(task.id.clone(), task.queue.clone(), token),
                        trace: decode::trace(&fields),
                        first_attempt: fields.get("first_attempt").cloned(),
                        task,
                        payload,
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

    /// Claims up to `tokens.len()` tasks: one script call with one partition; with several,
    /// a plan over their queued counts, then one call per partition that got turns (see the
    /// module documentation). Returns the claimed hashes, each with its lease token.
    async fn claim_round(&self, tokens: Vec<String>) -> Result<Vec<(Value, String)>> {
        self.broker.check_layout().await?;
        let parts = self.broker.keys().partitions();
        let (order, firsts) = self.turns(tokens.len());
        if parts.len() == 1 {
            return self.claim_in(&parts[0], &order, &firsts, tokens).await;
        }
        let k = tokens.len();
        let heads =
            futures::future::try_join_all(parts.iter().map(|p| self.heads_in(p, k))).await?;
        let plan = {
            let mut shares = self.shares.lock().unwrap_or_else(PoisonError::into_inner);
            plan_turns(heads, &order, &firsts, &mut shares)
        };
        let mut tokens = tokens.into_iter();
        let order = &order;
        let calls = plan
            .iter()
            .enumerate()
            .filter(|(_, turns)| !turns.is_empty())
            .map(|(p, turns)| {
                let firsts: Vec<usize> = turns.iter().map(|&(_, first)| first).collect();
                let mine: Vec<String> = tokens.by_ref().take(turns.len()).collect();
                async move {
                    let got = self.claim_in(&parts[p], order, &firsts, mine).await?;
                    // The i-th task a partition returns is its i-th turn's (fewer when
                    // another consumer was quicker).
                    Ok::<_, QueueError>(turns.iter().map(|&(turn, _)| turn).zip(got))
                }
            })
            .collect::<Vec<_>>();
        let mut claimed: Vec<(usize, (Value, String))> = futures::future::try_join_all(calls)
            .await?
            .into_iter()
            .flatten()
            .collect();
        // In turn order, as one partition's call would have returned them.
        claimed.sort_by_key(|&(turn, _)| turn);
        Ok(claimed.into_iter().map(|(_, c)| c).collect())
    }

    /// The next `k` tasks of each of the consumer's queues in one partition, in the order
    /// its claims would take them (queues in configuration order; `lua/heads.lua`).
    async fn heads_in(&self, part: &Partition, k: usize) -> Result<Vec<Vec<Head>>> {
        let mut invocation = scripts::HEADS.prepare_invoke();
        for name in &self.config.queues {
            invocation.key(part.queue(name).ready);
        }
        invocation.arg(part.prefix()).arg(k);
        let heads: Vec<Vec<String>> = invocation.invoke_async(&mut self.broker.conn()).await?;
        heads
            .into_iter()
            .map(|flat| {
                flat.chunks(3)
                    .map(|t| match t {
                        [seq, owner, weight] => Ok(Head {
                            seq: seq.parse().unwrap_or(f64::MAX),
                            owner: owner.clone(),
                            weight: weight.parse().unwrap_or(1.0),
                        }),
                        other => Err(QueueError::Corrupt(format!("heads replied {other:?}"))),
                    })
                    .collect()
            })
            .collect()
    }

    /// Runs the claim script once in one partition, for as many turns as `firsts` has (one
    /// token each).
    async fn claim_in(
        &self,
        keys: &Partition,
        order: &[usize],
        firsts: &[usize],
        tokens: Vec<String>,
    ) -> Result<Vec<(Value, String)>> {
        let mut invocation = scripts::CLAIM.key(keys.events());
        invocation.key(keys.queued_bytes());
        for &i in order {
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
        for token in &tokens {
            invocation.arg(token);
        }
        for first in firsts {
            invocation.arg(first + 1);
        }
        let (reply, ack) = self.broker.change(keys, &invocation).await?;
        // An unacknowledged claim still hands the tasks out: refusing them would leave them
        // under leases nobody holds until the leases ran out. Should the claim be lost in a
        // failover, the tasks are delivered again; their completion is what must be replicated.
        if matches!(&reply, Value::Array(claimed) if !claimed.is_empty())
            && let Err(e) = ack.require()
        {
            tracing::warn!(error = %e, "claimed tasks before a replica acknowledged the claim");
        }
        let Value::Array(hashes) = reply else {
            return Err(QueueError::Corrupt(format!("claim replied {reply:?}")));
        };
        Ok(hashes.into_iter().zip(tokens).collect())
    }

    fn lease(&self, task: TaskId, queue: String, token: String) -> Lease {
        Lease {
            task,
            queue,
            token,
            duration: self.config.lease,
            span: None,
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
}
