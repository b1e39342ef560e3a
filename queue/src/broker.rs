//! [`Broker`]: the typed face of the Redis protocol. One method per transition, each one
//! script call.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rand::Rng;
use redis::Value;
use serde_json::Value as Json;

use crate::config::{QueueConfig, default_queues};
use crate::conn::{Conn, RedisTarget};
use crate::decode;
use crate::durability::{Ack, Acknowledged, Durability};
use crate::error::{PayloadLimit, QueueError, Result};
use crate::keys::{Keys, MAX_PARTITIONS, Partition};
use crate::payload::Payload;
use crate::scripts;
use crate::stats::{DurationSummary, QueueStats, WorkerInfo};
use crate::task::{Progress, Task, TaskError, TaskId};

/// A replica on the same network acknowledges in about a millisecond; one second leaves room
/// for a busy replica and still answers a client well inside its patience.
pub const DEFAULT_REPLICATION_TIMEOUT: Duration = Duration::from_secs(1);

/// [`BrokerConfig::partitions`] meaning "choose for me": the namespace's recorded count, and
/// for a new namespace 1 on a single server or Sentinel, [`PARTITIONS_PER_MASTER`] per master
/// on a cluster (counted when the broker connects).
pub const AUTO_PARTITIONS: u16 = 0;

/// Partitions per master of a new namespace on a cluster under [`AUTO_PARTITIONS`]: two, so
/// each master holds more than one (a reshard can move one whole) while claims and stats
/// read few.
pub const PARTITIONS_PER_MASTER: u16 = 2;

/// How to reach Redis and which queues exist.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub target: RedisTarget,
    /// Prefix (and part of every hash tag) of every key; several deployments can share one Redis
    /// under different namespaces.
    pub namespace: String,
    pub queues: Vec<QueueConfig>,
    /// How long a non-blocking command may take before it counts as a failure.
    pub response_timeout: Duration,
    /// When a state change counts as done; see [`Durability`].
    pub durability: Durability,
    /// Under `replicated`: how long a change waits for a replica's acknowledgement before
    /// it is reported [`QueueError::NotReplicated`]. Shorter than `response_timeout`.
    pub replication_timeout: Duration,
    /// How many partitions every queue is split into (see [`crate::keys`]): 1 keeps all keys
    /// under one hash tag; on Redis Cluster, a few per master spread the load over them.
    /// Every process of a namespace must use the same count; the first records it.
    /// [`AUTO_PARTITIONS`] (the default) takes the namespace's recorded count, and for a new
    /// namespace 1 on a single server or Sentinel, [`PARTITIONS_PER_MASTER`] per master on a
    /// cluster.
    pub partitions: u16,
    /// Bounds on the payload bytes of queued tasks, checked by every enqueue.
    pub payload_limits: PayloadLimits,
}

/// Bounds on the payload bytes of queued tasks (see `docs/queue.md`): enqueueing more is
/// refused with [`QueueError::PayloadLimit`] and writes nothing; claims make room. Zero means
/// no limit. With several partitions each partition holds an equal share of each limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PayloadLimits {
    /// All queued tasks of the namespace.
    pub namespace: u64,
    /// The queued tasks of one owner (an API key's name); tasks without an owner count
    /// against the namespace limit only.
    pub per_key: u64,
}

impl PayloadLimits {
    /// Partition `index`'s share of `limit` out of `count`: equal parts, the remainder to the
    /// first partitions, so the shares add up to the limit. Zero stays "no limit".
    pub fn share(limit: u64, index: u16, count: u16) -> u64 {
        if limit == 0 {
            return 0;
        }
        let count = u64::from(count.max(1));
        (limit / count + u64::from(u64::from(index) < limit % count)).max(1)
    }
}

impl BrokerConfig {
    /// The seed's three queues in namespace `ragpool`.
    pub fn new(target: RedisTarget) -> Self {
        BrokerConfig {
            target,
            namespace: "ragpool".into(),
            queues: default_queues(),
            response_timeout: Duration::from_secs(5),
            durability: Durability::Local,
            replication_timeout: DEFAULT_REPLICATION_TIMEOUT,
            partitions: AUTO_PARTITIONS,
            payload_limits: PayloadLimits::default(),
        }
    }

    /// Parses `url` (see [`RedisTarget`]) and uses the defaults for the rest.
    pub fn from_url(url: &str) -> Result<Self> {
        Ok(Self::new(url.parse()?))
    }
}

/// A new task to enqueue. Its kind, and so its queue, is its payload's variant.
#[derive(Debug, Clone)]
pub struct NewTask {
    pub payload: Payload,
    /// While a task created with this key is kept, enqueueing with the same key returns it.
    pub idempotency_key: Option<String>,
    pub owner: Option<String>,
}

impl NewTask {
    pub fn new(payload: impl Into<Payload>) -> Self {
        NewTask {
            payload: payload.into(),
            idempotency_key: None,
            owner: None,
        }
    }
}

/// What [`Broker::enqueue`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enqueued {
    pub id: TaskId,
    pub queue: String,
    /// False when an idempotency key matched a task that already exists.
    pub created: bool,
}

/// A worker's hold on a claimed task. Every later transition of the task by that worker
/// presents it; a lease that expired and was reaped no longer works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub task: TaskId,
    pub queue: String,
    pub token: String,
    /// How far each heartbeat pushes the deadline.
    pub duration: Duration,
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

/// What a cancel did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The task was queued or delayed and is now canceled.
    Canceled,
    /// The task is running; its worker stops it at its next heartbeat.
    Requested,
}

/// What a release did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseOutcome {
    Requeued,
    /// A cancel had been asked for, so the task ended instead of going back.
    Canceled,
}

/// What one maintenance pass did across all queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Maintenance {
    /// Expired leases put back on their queue.
    pub requeued: u64,
    /// Expired leases on their last attempt, now failed.
    pub failed: u64,
    /// Delayed tasks moved back to their queue.
    pub promoted: u64,
    /// Set while reaping is held after an outage: no lease is reaped before this server time
    /// (milliseconds since the epoch).
    pub held_until_ms: Option<u64>,
}

/// How an executor's periodic calls keep the outage clock, from its lease length.
///
/// A live executor touches the clock at least every third of a lease (its registry beat), so
/// a gap of more than half a lease means nobody reached Redis; and a lease that was renewed
/// before such a gap can only have run out if the gap exceeded about two thirds of a lease.
/// After a gap, reaping waits a whole lease: every live executor reconnects and heartbeats
/// its tasks well within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutageClock {
    /// A pause longer than this between periodic calls counts as an outage.
    pub gap: Duration,
    /// After an outage, no lease is reaped for this long.
    pub hold: Duration,
}

impl OutageClock {
    /// Half a lease for the gap, a whole lease for the hold.
    pub fn for_lease(lease: Duration) -> Self {
        OutageClock {
            gap: lease / 2,
            hold: lease,
        }
    }
}

/// The queue protocol over one Redis deployment. Cheap to clone.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Conn,
    keys: Keys,
    config: BrokerConfig,
    queues: HashMap<String, QueueConfig>,
    events: tokio::sync::OnceCell<crate::events::EventHub>,
    /// Set once the recorded partition count was found equal to ours.
    layout: tokio::sync::OnceCell<()>,
    /// The partition of the next task enqueued without an idempotency key.
    next_partition: AtomicUsize,
}

/// Leases and maintenance passes touch at most this many tasks per script call, so one call
/// never holds Redis for long.
const MAINTENANCE_BATCH: u32 = 500;

/// The most tasks one enqueue script call carries. [`Broker::enqueue_many`] splits larger
/// batches, so one call never holds Redis for long (about a millisecond per few hundred
/// tasks) and its argument lists stay well inside Lua's stack.
pub const MAX_ENQUEUE_BATCH: usize = 1000;

impl Broker {
    /// Validates the configuration and prepares a connection. For a single server nothing is
    /// sent yet, so a broker can be built while Redis is down; for a cluster the topology is
    /// read now.
    pub async fn connect(mut config: BrokerConfig) -> Result<Broker> {
        let mut queues = HashMap::new();
        for q in &config.queues {
            q.validate()?;
            if queues.insert(q.name.clone(), q.clone()).is_some() {
                return Err(QueueError::Config(format!(
                    "queue {:?} listed twice",
                    q.name
                )));
            }
        }
        if config.namespace.is_empty() || config.namespace.contains(['{', '}']) {
            return Err(QueueError::Config(
                "namespace must be non-empty and free of braces".into(),
            ));
        }
        if config.partitions > MAX_PARTITIONS {
            return Err(QueueError::Config(format!(
                "partitions must be between 1 and {MAX_PARTITIONS} (or auto), got {}",
                config.partitions
            )));
        }
        if config.durability == Durability::Replicated {
            if config.target.cluster {
                return Err(QueueError::Config(
                    "durability replicated is not supported on Redis Cluster (WAIT must reach \
                     the shard that took the write); use a primary with replicas, with or \
                     without Sentinel"
                        .into(),
                ));
            }
            if config.replication_timeout.is_zero()
                || config.replication_timeout >= config.response_timeout
            {
                return Err(QueueError::Config(format!(
                    "the replication timeout ({:?}) must be positive and shorter than the \
                     response timeout ({:?})",
                    config.replication_timeout, config.response_timeout
                )));
            }
        }
        let conn = Conn::open(&config.target, Some(config.response_timeout)).await?;
        if config.partitions == AUTO_PARTITIONS {
            config.partitions = auto_partitions(&conn, &config).await?;
        }
        Ok(Broker {
            inner: Arc::new(Inner {
                conn,
                keys: Keys::with_partitions(&config.namespace, config.partitions),
                config,
                queues,
                events: tokio::sync::OnceCell::new(),
                layout: tokio::sync::OnceCell::new(),
                next_partition: AtomicUsize::new(
                    rand::rng().random_range(0..usize::from(MAX_PARTITIONS)),
                ),
            }),
        })
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.inner.config
    }

    pub fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    /// The settings of a configured queue.
    pub fn queue(&self, name: &str) -> Result<&QueueConfig> {
        self.inner
            .queues
            .get(name)
            .ok_or_else(|| QueueError::UnknownQueue(name.to_string()))
    }

    pub(crate) fn conn(&self) -> Conn {
        self.inner.conn.clone()
    }

    /// Runs a state-changing script. Under `replicated` it is followed by `WAIT` on the same
    /// connection (see [`crate::durability`]); the caller calls [`Ack::require`] once the
    /// reply says something changed (a refusal changed nothing and needs no replica).
    pub(crate) async fn change(
        &self,
        script: &redis::ScriptInvocation<'_>,
    ) -> Result<(Value, Ack)> {
        let mut conn = self.conn();
        match self.inner.config.durability {
            Durability::Local => Ok((script.invoke_async(&mut conn).await?, Ack::NotAsked)),
            Durability::Replicated => {
                let probe = self.keys().replication_probe();
                let mut acknowledged =
                    Acknowledged::new(&mut conn, &probe, self.inner.config.replication_timeout);
                let reply = script.invoke_async(&mut acknowledged).await?;
                Ok((reply, acknowledged.ack()))
            }
        }
    }

    /// Checks this process's partition count against the one recorded for the namespace,
    /// recording it when the namespace has none yet; once per process. Writers (enqueue,
    /// claim) and readers of every partition (stats, maintenance) check before their first
    /// call, so a process with the wrong count fails with [`QueueError::Layout`] instead of
    /// looking for tasks where they are not.
    pub async fn check_layout(&self) -> Result<()> {
        self.inner
            .layout
            .get_or_try_init(|| async {
                let keys = self.keys();
                let count = keys.count();
                let mut conn = self.conn();
                let recorded: Option<String> = redis::cmd("GET")
                    .arg(keys.layout())
                    .query_async(&mut conn)
                    .await?;
                let recorded = match recorded {
                    Some(r) => r,
                    None => {
                        // A namespace used before its count was recorded has the one-partition
                        // layout; its sequence key exists from the first task on.
                        let used: bool = redis::cmd("EXISTS")
                            .arg(keys.partitions()[0].seq())
                            .query_async(&mut conn)
                            .await?;
                        let used = used && count > 1;
                        let old: Option<String> = redis::cmd("SET")
                            .arg(keys.layout())
                            .arg(if used { 1 } else { count })
                            .arg("NX")
                            .arg("GET")
                            .query_async(&mut conn)
                            .await?;
                        old.unwrap_or_else(|| if used { "1".into() } else { count.to_string() })
                    }
                };
                if recorded == count.to_string() {
                    Ok(())
                } else {
                    Err(QueueError::Layout {
                        namespace: keys.namespace().to_string(),
                        recorded,
                        configured: count,
                    })
                }
            })
            .await
            .map(|_| ())
    }

    /// Changes the namespace's recorded partition count to `count`, when no task of any
    /// queue waits, runs or waits out a backoff under the recorded one. Ended tasks stay
    /// readable by id until their TTL (an id names its own partition); they leave the state
    /// counts. Stop every process of the namespace first: a running one keeps its count.
    pub async fn repartition(&self, count: u16) -> Result<u16> {
        if count == 0 || count > MAX_PARTITIONS {
            return Err(QueueError::Config(format!(
                "partitions must be between 1 and {MAX_PARTITIONS}, got {count}"
            )));
        }
        let keys = self.keys();
        let mut conn = self.conn();
        let recorded: Option<String> = redis::cmd("GET")
            .arg(keys.layout())
            .query_async(&mut conn)
            .await?;
        let old: u16 = match recorded {
            Some(r) => r
                .parse()
                .map_err(|_| QueueError::Corrupt(format!("recorded partition count {r:?}")))?,
            None => 1,
        };
        let old_keys = Keys::with_partitions(keys.namespace(), old);
        let mut busy = Vec::new();
        for part in old_keys.partitions() {
            let names: Vec<String> = redis::cmd("SMEMBERS")
                .arg(part.queues())
                .query_async(&mut conn)
                .await?;
            for name in names {
                let qk = part.queue(&name);
                let (ready, started, delayed): (u64, u64, u64) = redis::pipe()
                    .zcard(&qk.ready)
                    .zcard(&qk.started)
                    .zcard(&qk.delayed)
                    .query_async(&mut conn)
                    .await?;
                if ready + started + delayed > 0 {
                    busy.push(format!(
                        "{name} (partition {}: {ready} queued, {started} started, {delayed} \
                         delayed)",
                        part.index()
                    ));
                }
            }
        }
        if !busy.is_empty() {
            return Err(QueueError::Config(format!(
                "cannot change the partition count of namespace {:?} from {old} to {count} \
                 while tasks wait or run: {}; let the executors drain them first",
                keys.namespace(),
                busy.join(", ")
            )));
        }
        let _: () = redis::cmd("SET")
            .arg(keys.layout())
            .arg(count)
            .query_async(&mut conn)
            .await?;
        Ok(old)
    }

    /// Checks that Redis answers.
    pub async fn ping(&self) -> Result<()> {
        let _: String = redis::cmd("PING").query_async(&mut self.conn()).await?;
        Ok(())
    }

    /// Puts a new task on its queue, or returns the task an idempotency key already names.
    pub async fn enqueue(&self, new: NewTask) -> Result<Enqueued> {
        let mut done = self.enqueue_many(vec![new]).await?;
        done.pop()
            .ok_or_else(|| QueueError::Corrupt("enqueue replied with no task".into()))
    }

    /// Puts many tasks on their queues (any mix of kinds), in one script call per
    /// [`MAX_ENQUEUE_BATCH`] tasks, so a batch costs one round trip rather than one per task.
    /// The answers are in the order of `tasks`. Idempotency keys work as in
    /// [`Broker::enqueue`], within the batch too: a second task with a key an earlier one
    /// used gets the earlier one's id, with `created: false`. Tasks of one queue keep their
    /// order in it. A batch of at most [`MAX_ENQUEUE_BATCH`] tasks is written atomically;
    /// nothing is sent for an empty one.
    pub async fn enqueue_many(&self, tasks: Vec<NewTask>) -> Result<Vec<Enqueued>> {
        let mut out = Vec::with_capacity(tasks.len());
        let mut tasks = tasks.into_iter().peekable();
        while tasks.peek().is_some() {
            let chunk: Vec<NewTask> = tasks.by_ref().take(MAX_ENQUEUE_BATCH).collect();
            out.extend(self.enqueue_chunk(chunk).await?);
        }
        Ok(out)
    }

    /// Enqueues a chunk: one script call per partition it touches, run side by side. A task
    /// with an idempotency key goes to that key's partition; the others of the chunk go
    /// together to the next partition in turn, so a chunk without keys is one atomic call.
    async fn enqueue_chunk(&self, tasks: Vec<NewTask>) -> Result<Vec<Enqueued>> {
        self.check_layout().await?;
        let keys = self.keys();
        let parts = keys.partitions();
        if parts.len() == 1 {
            return self.enqueue_in(&parts[0], &tasks).await;
        }
        let turn = self.inner.next_partition.fetch_add(1, Ordering::Relaxed) % parts.len();
        // Per partition the tasks whose key puts them there; last, the tasks without a key,
        // which may go to any partition.
        let mut groups: Vec<(Vec<usize>, Vec<NewTask>)> = vec![Default::default(); parts.len() + 1];
        for (i, new) in tasks.into_iter().enumerate() {
            let g = match &new.idempotency_key {
                Some(key) => usize::from(keys.of_idempotency(key).index()),
                None => parts.len(),
            };
            groups[g].0.push(i);
            groups[g].1.push(new);
        }
        let calls = groups
            .into_iter()
            .enumerate()
            .filter(|(_, (at, _))| !at.is_empty())
            .map(|(g, (at, tasks))| async move {
                let done = match parts.get(g) {
                    Some(part) => self.enqueue_in(part, &tasks).await,
                    None => self.enqueue_anywhere(turn, &tasks).await,
                };
                done.map(|done| (at, done))
            });
        let mut out: Vec<Option<Enqueued>> = Vec::new();
        for (at, done) in futures::future::try_join_all(calls).await? {
            for (i, e) in at.into_iter().zip(done) {
                if out.len() <= i {
                    out.resize(i + 1, None);
                }
                out[i] = Some(e);
            }
        }
        out.into_iter()
            .map(|e| e.ok_or_else(|| QueueError::Corrupt("enqueue left out a task".into())))
            .collect()
    }

    /// Enqueues tasks without idempotency keys in partition `first`, or, while a partition's
    /// server refuses before running anything (a cluster master down: connection refused,
    /// `CLUSTERDOWN`), in the next one: a master away costs its partitions, not submissions.
    /// An error that may come after the script ran is returned, never retried elsewhere,
    /// since that could create the tasks twice. A partition whose share of a payload limit
    /// is full wrote nothing either: the next one is tried, and the first refusal is
    /// returned when every share is full.
    async fn enqueue_anywhere(&self, first: usize, tasks: &[NewTask]) -> Result<Vec<Enqueued>> {
        let parts = self.keys().partitions();
        let (mut unreachable, mut full) = (None, None);
        for p in (0..parts.len()).map(|i| (first + i) % parts.len()) {
            match self.enqueue_in(&parts[p], tasks).await {
                Err(QueueError::Redis(e)) if never_ran(&e) => {
                    tracing::debug!(partition = p, error = %e, "partition unavailable; trying the next");
                    unreachable = Some(QueueError::Redis(e));
                }
                Err(e @ QueueError::PayloadLimit { .. }) => {
                    full.get_or_insert(e);
                }
                done => return done,
            }
        }
        Err(full
            .or(unreachable)
            .unwrap_or_else(|| QueueError::Corrupt("no partition to enqueue in".into())))
    }

    /// One call of the enqueue script in one partition (see `lua/enqueue.lua`).
    async fn enqueue_in(&self, part: &Partition, tasks: &[NewTask]) -> Result<Vec<Enqueued>> {
        let mut queues: Vec<&QueueConfig> = Vec::new();
        let mut prepared = Vec::with_capacity(tasks.len());
        for new in tasks {
            let q = self.queue(new.payload.kind().queue())?;
            let index = match queues.iter().position(|known| known.name == q.name) {
                Some(i) => i,
                None => {
                    queues.push(q);
                    queues.len() - 1
                }
            };
            prepared.push((index + 1, StoredInput::of(&new.payload)?, new));
        }
        let limits = &self.inner.config.payload_limits;
        let share = |limit| PayloadLimits::share(limit, part.index(), self.keys().count());
        let mut invocation = scripts::ENQUEUE.key(part.events());
        invocation
            .key(part.seq())
            .key(part.queues())
            .key(part.queued_bytes());
        for q in &queues {
            let qk = part.queue(&q.name);
            invocation.key(qk.ready).key(qk.counters).key(qk.signal);
        }
        invocation
            .arg(part.prefix())
            .arg(queues.len())
            .arg(share(limits.namespace))
            .arg(share(limits.per_key));
        for q in &queues {
            invocation
                .arg(&q.name)
                .arg(q.max_attempts)
                .arg(millis(q.timeout))
                .arg(millis(q.result_ttl))
                .arg(millis(q.failure_ttl))
                .arg(millis(q.backoff_base))
                .arg(millis(q.backoff_max))
                .arg(millis(q.keep_payload));
        }
        for (queue, input, new) in prepared {
            let id = part.new_task_id();
            let idem = new.idempotency_key.as_deref().unwrap_or_default();
            invocation
                .key(part.task(id.as_str()))
                .key(if idem.is_empty() {
                    part.seq()
                } else {
                    part.idempotency(idem)
                })
                .key(part.payload(id.as_str()));
            invocation
                .arg(id.as_str())
                .arg(queue)
                .arg(new.payload.kind().as_str())
                .arg(input.json)
                .arg(idem)
                .arg(new.owner.as_deref().unwrap_or_default())
                .arg(input.summary.bytes)
                .arg(
                    input
                        .summary
                        .image_bytes
                        .map(|n| n.to_string())
                        .unwrap_or_default(),
                )
                .arg(input.summary.image_type.unwrap_or_default())
                .arg(input.summary.sha256)
                .arg(input.brief);
        }
        let (reply, ack) = self.change(&invocation).await?;
        let reply = decode::status(&reply)?;
        if let Some(refused) = self.over_limit(&reply) {
            return Err(refused);
        }
        ack.require()?;
        reply
            .chunks(3)
            .map(|answer| match answer {
                [created, id, queue] => Ok(Enqueued {
                    id: id.parse()?,
                    queue: queue.clone(),
                    created: created == "1",
                }),
                other => Err(QueueError::Corrupt(format!("enqueue replied {other:?}"))),
            })
            .collect()
    }

    /// The enqueue script's refusal `{'over_limit', which, share, queued, asked}`, if that is
    /// what it replied.
    fn over_limit(&self, reply: &[String]) -> Option<QueueError> {
        let [code, which, share, queued, asked] = reply else {
            return None;
        };
        if code != "over_limit" {
            return None;
        }
        let limits = &self.inner.config.payload_limits;
        let num = |v: &String| v.parse().unwrap_or(0);
        Some(QueueError::PayloadLimit {
            limit: if which == "owner" {
                PayloadLimit::PerKey(limits.per_key)
            } else {
                PayloadLimit::Namespace(limits.namespace)
            },
            share: num(share),
            shares: self.keys().count(),
            queued: num(queued),
            asked: num(asked),
        })
    }

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
                    .arg(min_delay),
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

    /// Reaps expired leases of one queue in every partition. Harmless to run from many
    /// processes at once. Respects a hold after an outage but does not look for one; see
    /// [`Broker::maintain_for`].
    pub async fn reap(&self, queue: &str) -> Result<(u64, u64)> {
        let mut total = (0, 0);
        for part in self.keys().partitions() {
            let (requeued, failed, _) = self.reap_in(part, queue, None).await?;
            total.0 += requeued;
            total.1 += failed;
        }
        Ok(total)
    }

    /// Reaps one queue of one partition; with `clock`, first observes that partition's
    /// outage clock. Returns the requeued and failed counts and, while reaping is held, the
    /// hold deadline.
    async fn reap_in(
        &self,
        keys: &Partition,
        queue: &str,
        clock: Option<&OutageClock>,
    ) -> Result<(u64, u64, Option<u64>)> {
        let qk = keys.queue(queue);
        let (gap, hold) = clock.map_or((0, 0), |c| (millis(c.gap).max(1), millis(c.hold)));
        let mut total = (0, 0);
        loop {
            let reply: Value = scripts::REAP
                .key(&qk.started)
                .key(&qk.ready)
                .key(&qk.signal)
                .key(&qk.finished)
                .key(&qk.failed)
                .key(&qk.canceled)
                .key(&qk.counters)
                .key(keys.events())
                .key(keys.clock())
                .key(keys.queued_bytes())
                .arg(keys.prefix())
                .arg(MAINTENANCE_BATCH)
                .arg(gap)
                .arg(hold)
                .invoke_async(&mut self.conn())
                .await?;
            let reply = decode::status(&reply)?;
            let (requeued, failed, held): (u64, u64, u64) = match reply.as_slice() {
                [r, f, h] => (
                    r.parse().unwrap_or(0),
                    f.parse().unwrap_or(0),
                    h.parse().unwrap_or(0),
                ),
                other => return Err(QueueError::Corrupt(format!("reap replied {other:?}"))),
            };
            total.0 += requeued;
            total.1 += failed;
            if requeued + failed < u64::from(MAINTENANCE_BATCH) {
                return Ok((total.0, total.1, (held > 0).then_some(held)));
            }
        }
    }

    /// Moves due delayed tasks of one queue back to it, in every partition. Harmless to run
    /// concurrently.
    pub async fn promote(&self, queue: &str) -> Result<u64> {
        let mut total = 0;
        for part in self.keys().partitions() {
            total += self.promote_in(part, queue).await?;
        }
        Ok(total)
    }

    async fn promote_in(&self, keys: &Partition, queue: &str) -> Result<u64> {
        let qk = keys.queue(queue);
        let mut total = 0;
        loop {
            let promoted: u64 = scripts::PROMOTE
                .key(&qk.delayed)
                .key(&qk.ready)
                .key(&qk.signal)
                .key(keys.seq())
                .key(keys.events())
                .key(keys.queued_bytes())
                .arg(keys.prefix())
                .arg(MAINTENANCE_BATCH)
                .invoke_async(&mut self.conn())
                .await?;
            total += promoted;
            if promoted < u64::from(MAINTENANCE_BATCH) {
                return Ok(total);
            }
        }
    }

    /// Reaps and promotes on every known queue, respecting a hold after an outage.
    pub async fn maintain(&self) -> Result<Maintenance> {
        self.maintain_observing(None).await
    }

    /// An executor's maintenance pass: [`Broker::maintain`], and the outage clock kept with
    /// the executor's lease length, so that a time when nobody could reach Redis holds
    /// reaping until every live executor has had a lease to heartbeat again.
    pub async fn maintain_for(&self, lease: Duration) -> Result<Maintenance> {
        self.maintain_observing(Some(&OutageClock::for_lease(lease)))
            .await
    }

    /// One pass over every queue; the partitions side by side (each keeps its own outage
    /// clock: in a cluster, one master's restart holds reaping on its partitions only).
    async fn maintain_observing(&self, clock: Option<&OutageClock>) -> Result<Maintenance> {
        self.check_layout().await?;
        let queues = self.queue_names().await?;
        let passes = self.keys().partitions().iter().map(|part| {
            let queues = &queues;
            async move {
                let mut out = Maintenance::default();
                for queue in queues {
                    let (requeued, failed, held) = self.reap_in(part, queue, clock).await?;
                    out.requeued += requeued;
                    out.failed += failed;
                    out.held_until_ms = out.held_until_ms.max(held);
                    out.promoted += self.promote_in(part, queue).await?;
                }
                Ok::<_, QueueError>(out)
            }
        });
        let mut out = Maintenance::default();
        for m in futures::future::try_join_all(passes).await? {
            out.requeued += m.requeued;
            out.failed += m.failed;
            out.promoted += m.promoted;
            out.held_until_ms = out.held_until_ms.max(m.held_until_ms);
        }
        Ok(out)
    }

    /// Configured queues first (in configuration order), then any other queue that has seen
    /// tasks in this namespace (in any partition).
    pub async fn queue_names(&self) -> Result<Vec<String>> {
        let reads = self.keys().partitions().iter().map(|part| async move {
            redis::cmd("SMEMBERS")
                .arg(part.queues())
                .query_async::<BTreeSet<String>>(&mut self.conn())
                .await
        });
        let known: BTreeSet<String> = futures::future::try_join_all(reads)
            .await?
            .into_iter()
            .flatten()
            .collect();
        let mut names: Vec<String> = self
            .inner
            .config
            .queues
            .iter()
            .map(|q| q.name.clone())
            .collect();
        names.extend(
            known
                .into_iter()
                .filter(|k| !self.inner.queues.contains_key(k)),
        );
        Ok(names)
    }

    /// One queue's statistics: one atomic snapshot per partition, the partitions read side
    /// by side and added up (durations from the samples of all of them).
    pub async fn queue_stats(&self, queue: &str) -> Result<QueueStats> {
        self.check_layout().await?;
        let reads = self
            .keys()
            .partitions()
            .iter()
            .map(|part| self.stats_in(part, queue));
        let mut out = QueueStats {
            queue: queue.to_string(),
            ..QueueStats::default()
        };
        let (mut processing, mut wait) = (Vec::new(), Vec::new());
        for (s, p, w) in futures::future::try_join_all(reads).await? {
            out.queued += s.queued;
            out.started += s.started;
            out.delayed += s.delayed;
            out.finished += s.finished;
            out.failed += s.failed;
            out.canceled += s.canceled;
            out.total_enqueued += s.total_enqueued;
            out.total_finished += s.total_finished;
            out.total_failed += s.total_failed;
            out.total_lease_expired += s.total_lease_expired;
            out.oldest_queued_age_ms = out.oldest_queued_age_ms.max(s.oldest_queued_age_ms);
            out.queued_payload_bytes += s.queued_payload_bytes;
            out.at_ms = out.at_ms.max(s.at_ms);
            processing.extend(p);
            wait.extend(w);
        }
        out.processing = summarize(&processing);
        out.wait = summarize(&wait);
        Ok(out)
    }

    /// One partition's snapshot of a queue: its counts, and its duration samples unsummarized.
    async fn stats_in(
        &self,
        keys: &Partition,
        queue: &str,
    ) -> Result<(QueueStats, Vec<String>, Vec<String>)> {
        let qk = keys.queue(queue);
        let reply: Value = scripts::STATS
            .key(&qk.ready)
            .key(&qk.started)
            .key(&qk.delayed)
            .key(&qk.finished)
            .key(&qk.failed)
            .key(&qk.canceled)
            .key(&qk.counters)
            .key(&qk.processing)
            .key(&qk.wait)
            .key(keys.queued_bytes())
            .arg(keys.prefix())
            .arg(queue)
            .invoke_async(&mut self.conn())
            .await?;
        let Value::Array(parts) = reply else {
            return Err(QueueError::Corrupt(format!("stats replied {reply:?}")));
        };
        let [
            now,
            queued,
            started,
            delayed,
            finished,
            failed,
            canceled,
            counters,
            processing,
            wait,
            oldest,
            queued_payload_bytes,
        ] = parts.as_slice()
        else {
            return Err(QueueError::Corrupt(
                "stats reply has the wrong length".into(),
            ));
        };
        let counters = decode::pairs(counters)?;
        let counter = |name: &str| counters.get(name).and_then(|v| v.parse().ok()).unwrap_or(0);
        let now = decode::int(now)?.max(0) as u64;
        let oldest = decode::int(oldest)?;
        let stats = QueueStats {
            queue: queue.to_string(),
            queued: decode::int(queued)?.max(0) as u64,
            started: decode::int(started)?.max(0) as u64,
            delayed: decode::int(delayed)?.max(0) as u64,
            finished: decode::int(finished)?.max(0) as u64,
            failed: decode::int(failed)?.max(0) as u64,
            canceled: decode::int(canceled)?.max(0) as u64,
            total_enqueued: counter("enqueued"),
            total_finished: counter("finished"),
            total_failed: counter("failed"),
            total_lease_expired: counter("lease_expired"),
            processing: DurationSummary::default(),
            wait: DurationSummary::default(),
            oldest_queued_age_ms: if oldest < 0 {
                0
            } else {
                now.saturating_sub(oldest as u64)
            },
            at_ms: now,
            queued_payload_bytes: decode::int(queued_payload_bytes)?.max(0) as u64,
        };
        Ok((stats, decode::list(processing)?, decode::list(wait)?))
    }

    /// Statistics of every known queue.
    pub async fn stats(&self) -> Result<Vec<QueueStats>> {
        let names = self.queue_names().await?;
        futures::future::try_join_all(names.iter().map(|queue| self.queue_stats(queue))).await
    }

    /// Registers a worker or refreshes its record; it drops out of [`Broker::workers`] when
    /// not refreshed within `ttl`. Returns the server time.
    pub async fn register_worker(&self, info: &WorkerInfo, ttl: Duration) -> Result<u64> {
        self.worker_beat(info, ttl, None).await
    }

    /// A running executor's registry beat: its entry is kept for two leases, and the outage
    /// clock is observed with its lease length (see [`Broker::maintain_for`]). Returns the
    /// server time.
    pub async fn beat_worker(&self, info: &WorkerInfo, lease: Duration) -> Result<u64> {
        self.worker_beat(info, lease * 2, Some(&OutageClock::for_lease(lease)))
            .await
    }

    async fn worker_beat(
        &self,
        info: &WorkerInfo,
        ttl: Duration,
        clock: Option<&OutageClock>,
    ) -> Result<u64> {
        let keys = self.keys();
        let record = serde_json::to_string(info)
            .map_err(|e| QueueError::Corrupt(format!("worker record: {e}")))?;
        // With one partition the beat also keeps that partition's outage clock (after a gap
        // the beat may arrive before any maintenance pass). With more, the clocks live in
        // other slots and the maintenance passes keep them.
        let clock = clock.filter(|_| keys.count() == 1);
        let (gap, hold) = clock.map_or((0, 0), |c| (millis(c.gap).max(1), millis(c.hold)));
        let now: u64 = scripts::WORKER_BEAT
            .key(keys.workers())
            .key(keys.worker(&info.id))
            .key(keys.clock())
            .arg(&info.id)
            .arg(record)
            .arg(millis(ttl))
            .arg(gap)
            .arg(hold)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(now)
    }

    /// Removes a worker from the registry at once (a clean shutdown).
    pub async fn deregister_worker(&self, id: &str) -> Result<()> {
        let keys = self.keys();
        redis::pipe()
            .atomic()
            .zrem(keys.workers(), id)
            .del(keys.worker(id))
            .query_async::<()>(&mut self.conn())
            .await?;
        Ok(())
    }

    /// The workers heard from within `ttl`.
    pub async fn workers(&self, ttl: Duration) -> Result<Vec<WorkerInfo>> {
        let keys = self.keys();
        let reply: Value = scripts::WORKERS
            .key(keys.workers())
            .arg(keys.prefix())
            .arg(millis(ttl))
            .invoke_async(&mut self.conn())
            .await?;
        let flat = decode::list(&reply)?;
        let mut out = Vec::with_capacity(flat.len() / 3);
        for entry in flat.chunks(3) {
            if let [_, seen, record] = entry {
                let mut info: WorkerInfo = serde_json::from_str(record)
                    .map_err(|e| QueueError::Corrupt(format!("worker record: {e}")))?;
                info.last_seen_ms = seen.parse().unwrap_or(info.last_seen_ms);
                out.push(info);
            }
        }
        Ok(out)
    }

    /// The events hub of this broker, started on first use: every task state change,
    /// delivered as it happens.
    pub async fn events(&self) -> Result<crate::events::EventHub> {
        self.inner
            .events
            .get_or_try_init(|| crate::events::EventHub::start(self.clone()))
            .await
            .cloned()
    }

    /// A consumer that claims from `queues` in the order of `policy`.
    pub async fn consumer(
        &self,
        config: crate::consumer::ConsumerConfig,
    ) -> Result<crate::consumer::Consumer> {
        crate::consumer::Consumer::new(self.clone(), config).await
    }
}

/// What [`AUTO_PARTITIONS`] stands for: see there. Only a cluster is asked (its topology is
/// read at connect anyway); a single server may be down when a broker is built.
async fn auto_partitions(conn: &Conn, config: &BrokerConfig) -> Result<u16> {
    if !config.target.cluster {
        return Ok(1);
    }
    let mut conn = conn.clone();
    let keys = Keys::new(&config.namespace);
    let recorded: Option<String> = redis::cmd("GET")
        .arg(keys.layout())
        .query_async(&mut conn)
        .await?;
    if let Some(r) = recorded {
        return r
            .parse::<u16>()
            .ok()
            .filter(|n| (1..=MAX_PARTITIONS).contains(n))
            .ok_or_else(|| QueueError::Corrupt(format!("recorded partition count {r:?}")));
    }
    let slots: Value = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(&mut conn)
        .await?;
    let masters = masters_of(&slots).len().max(1) as u16;
    Ok((masters * PARTITIONS_PER_MASTER).min(MAX_PARTITIONS))
}

/// The masters (`host:port`) a `CLUSTER SLOTS` reply names: each range is `[start, end,
/// [host, port, id…], replicas…]`.
fn masters_of(slots: &Value) -> BTreeSet<String> {
    let Value::Array(ranges) = slots else {
        return BTreeSet::new();
    };
    ranges
        .iter()
        .filter_map(|range| match range {
            Value::Array(parts) => match parts.get(2) {
                Some(Value::Array(node)) if node.len() >= 2 => Some(format!(
                    "{}:{}",
                    decode::scalar(&node[0]).ok()?,
                    decode::scalar(&node[1]).ok()?
                )),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// True for a Redis error that proves the command never ran: the server refused the
/// connection, or the cluster refused the slot or redirected the command (the client gives
/// up redirecting when the slot's master does not answer).
pub(crate) fn never_ran(e: &redis::RedisError) -> bool {
    e.is_connection_refusal()
        || matches!(
            e.code(),
            Some("CLUSTERDOWN" | "TRYAGAIN" | "MASTERDOWN" | "MOVED" | "ASK")
        )
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A payload in the forms the enqueue script stores: the payload, its brief and its summary.
struct StoredInput {
    json: String,
    brief: String,
    summary: crate::payload::InputSummary,
}

impl StoredInput {
    fn of(payload: &Payload) -> Result<StoredInput> {
        let encode = |p: &Payload| {
            p.to_json()
                .map_err(|e| QueueError::Corrupt(format!("payload does not serialize: {e}")))
        };
        let json = encode(payload)?;
        Ok(StoredInput {
            brief: encode(&payload.brief())?,
            summary: payload.summary(&json),
            json,
        })
    }
}

/// Turns a script's refusal code into the matching error.
fn refusal(id: &TaskId, reply: &[String]) -> QueueError {
    match reply.first().map(String::as_str) {
        Some("not_found") => QueueError::NotFound(id.to_string()),
        Some("lease_lost") => QueueError::LeaseLost(id.to_string()),
        _ => QueueError::Corrupt(format!("unexpected reply {reply:?} for task {id}")),
    }
}

/// Mean and percentiles of duration samples (nearest-rank).
fn summarize(samples: &[String]) -> DurationSummary {
    let mut values: Vec<f64> = samples.iter().filter_map(|s| s.parse().ok()).collect();
    if values.is_empty() {
        return DurationSummary::default();
    }
    values.sort_by(f64::total_cmp);
    let rank = |p: f64| {
        let i = ((p * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1;
        values[i]
    };
    DurationSummary {
        samples: values.len() as u64,
        mean_ms: values.iter().sum::<f64>() / values.len() as f64,
        p50_ms: rank(0.50),
        p95_ms: rank(0.95),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_uses_nearest_rank() {
        let samples: Vec<String> = (1..=100).map(|v| v.to_string()).collect();
        let s = summarize(&samples);
        assert_eq!(s.samples, 100);
        assert_eq!(s.p50_ms, 50.0);
        assert_eq!(s.p95_ms, 95.0);
        assert!((s.mean_ms - 50.5).abs() < 1e-9);
        assert_eq!(summarize(&[]), DurationSummary::default());
    }
}
