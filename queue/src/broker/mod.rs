//! [`Broker`]: the typed face of the Redis protocol. One method per transition, each one
//! script call.
//!
//! This file holds the broker's configuration, its connection and the helpers every family
//! shares; the methods live in one file per family: [`enqueue`] (submitting tasks),
//! [`read`] (one task's record), [`lease`] (a claimed task's transitions), [`admin`] (cancel
//! and retry), [`maintenance`] (reaping and promoting), [`stats`] (queue statistics),
//! [`workers`] (the worker registry) and [`layout`] (the partition count). Claiming is the
//! [`crate::Consumer`]'s, task events are [`crate::events`]' and listing many tasks is
//! [`crate::browse`]'s.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use rand::Rng;
use redis::Value;

use crate::config::{QueueConfig, default_queues};
use crate::conn::{Conn, RedisTarget};
use crate::durability::{Ack, Acknowledged, Durability};
use crate::error::{QueueError, Result};
use crate::keys::{Keys, MAX_PARTITIONS, Partition};
use crate::task::TaskId;

mod admin;
mod enqueue;
mod layout;
mod lease;
mod maintenance;
mod read;
mod stats;
mod workers;

use layout::auto_partitions;

pub use admin::CancelOutcome;
pub use enqueue::{Enqueued, MAX_ENQUEUE_BATCH, NewTask, OwnerShare};
pub use lease::{FailOutcome, Heartbeat, Lease, ReleaseOutcome, Retry};
pub use maintenance::{Maintenance, OutageClock};

/// A replica on the same network acknowledges in about a millisecond; one second leaves room
/// for a busy replica and still answers a client well inside its patience.
pub const DEFAULT_REPLICATION_TIMEOUT: Duration = Duration::from_secs(1);

/// [`BrokerConfig::partitions`] meaning "choose for me": the key prefix's recorded count, and
/// for a new key prefix 1 on a single server or Sentinel, [`PARTITIONS_PER_MASTER`] per master
/// on a cluster (counted when the broker connects).
pub const AUTO_PARTITIONS: u16 = 0;

/// Partitions per master of a new key prefix on a cluster under [`AUTO_PARTITIONS`]: two, so
/// each master holds more than one (a reshard can move one whole) while claims and stats
/// read few.
pub const PARTITIONS_PER_MASTER: u16 = 2;

/// How to reach Redis and which queues exist.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub target: RedisTarget,
    /// Prefix (and part of every hash tag) of every key; several deployments can share one Redis
    /// under different key prefixes.
    pub key_prefix: String,
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
    /// Every process of a key prefix must use the same count; the first records it.
    /// [`AUTO_PARTITIONS`] (the default) takes the key prefix's recorded count, and for a new
    /// key prefix 1 on a single server or Sentinel, [`PARTITIONS_PER_MASTER`] per master on a
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
    /// All queued tasks of the key prefix.
    pub total: u64,
    /// The queued tasks of one owner (an API key's name); tasks without an owner count
    /// against the key prefix limit only.
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
    /// The seed's three queues under key prefix `ragpool`.
    pub fn new(target: RedisTarget) -> Self {
        BrokerConfig {
            target,
            key_prefix: crate::DEFAULT_KEY_PREFIX.into(),
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
        if config.key_prefix.is_empty() || config.key_prefix.contains(['{', '}']) {
            return Err(QueueError::Config(
                "the key prefix must be non-empty and free of braces".into(),
            ));
        }
        if config.partitions > MAX_PARTITIONS {
            return Err(QueueError::Config(format!(
                "partitions must be between 1 and {MAX_PARTITIONS} (or auto), got {}",
                config.partitions
            )));
        }
        if config.durability == Durability::Replicated
            && (config.replication_timeout.is_zero()
                || config.replication_timeout >= config.response_timeout)
        {
            return Err(QueueError::Config(format!(
                "the replication timeout ({:?}) must be positive and shorter than the \
                 response timeout ({:?})",
                config.replication_timeout, config.response_timeout
            )));
        }
        let conn = Conn::open(&config.target, Some(config.response_timeout)).await?;
        if config.partitions == AUTO_PARTITIONS {
            config.partitions = auto_partitions(&conn, &config).await?;
        }
        Ok(Broker {
            inner: Arc::new(Inner {
                conn,
                keys: Keys::with_partitions(&config.key_prefix, config.partitions),
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

    /// Runs a state-changing script on the keys of `partition`. Under `replicated` it is
    /// followed by `WAIT` on the same connection to the same server (see
    /// [`crate::durability`]); the caller calls [`Ack::require`] once the reply says something
    /// changed (a refusal changed nothing and needs no replica).
    pub(crate) async fn change(
        &self,
        partition: &Partition,
        script: &redis::ScriptInvocation<'_>,
    ) -> Result<(Value, Ack)> {
        let mut conn = self.conn();
        match self.inner.config.durability {
            Durability::Local => Ok((script.invoke_async(&mut conn).await?, Ack::NotAsked)),
            Durability::Replicated => {
                let mut acknowledged =
                    Acknowledged::new(&mut conn, partition, self.inner.config.replication_timeout);
                let reply = script.invoke_async(&mut acknowledged).await?;
                Ok((reply, acknowledged.ack()))
            }
        }
    }

    /// Checks that Redis answers.
    pub async fn ping(&self) -> Result<()> {
        let _: String = redis::cmd("PING").query_async(&mut self.conn()).await?;
        Ok(())
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

/// Turns a script's refusal code into the matching error.
pub(crate) fn refusal(id: &TaskId, reply: &[String]) -> QueueError {
    match reply.first().map(String::as_str) {
        Some("not_found") => QueueError::NotFound(id.to_string()),
        Some("lease_lost") => QueueError::LeaseLost(id.to_string()),
        _ => QueueError::Corrupt(format!("unexpected reply {reply:?} for task {id}")),
    }
}
