//! The observer that reads a pool's queues and worker registry from Redis, through the same
//! protocol crate the API and executors use.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use kube::{Client, ResourceExt};
use ragpool_queue::{Broker, BrokerConfig, QueueError};
use tokio::sync::Mutex;

use crate::crd::RagWorkerPool;
use crate::observe::{BackendObservation, Observation, ObserveError, Observer};
use crate::redis_url;

/// Workers not heard from within this long are left out (their registry records expire on
/// their own after two lease lengths).
const WORKER_SILENCE: Duration = Duration::from_secs(60);

/// Reads observations from the Redis each pool names, keeping one connection per URL,
/// partition count and key prefix.
pub struct RedisObserver {
    client: Client,
    brokers: Mutex<HashMap<(String, u16, String), Broker>>,
}

impl RedisObserver {
    pub fn new(client: Client) -> Self {
        RedisObserver {
            client,
            brokers: Mutex::new(HashMap::new()),
        }
    }

    async fn broker(
        &self,
        url: &str,
        partitions: u16,
        key_prefix: &str,
    ) -> Result<Broker, ObserveError> {
        let mut brokers = self.brokers.lock().await;
        let key = (url.to_string(), partitions, key_prefix.to_string());
        if let Some(b) = brokers.get(&key) {
            return Ok(b.clone());
        }
        let mut config =
            BrokerConfig::from_url(url).map_err(|e| ObserveError::Config(e.to_string()))?;
        config.partitions = partitions;
        config.key_prefix = key_prefix.to_string();
        let broker = Broker::connect(config).await.map_err(unreachable)?;
        brokers.insert(key, broker.clone());
        Ok(broker)
    }
}

#[async_trait]
impl Observer for RedisObserver {
    /// Observes with the pool's partition count and key prefix; the controller has filled in
    /// the operator's `--partitions` for a pool that leaves it unset.
    async fn observe(&self, pool: &RagWorkerPool) -> Result<Observation, ObserveError> {
        let url = redis_url::resolve(&self.client, pool).await?;
        let redis = &pool.spec.redis;
        let partitions = redis.partition_count(ragpool_queue::AUTO_PARTITIONS);
        let broker = self.broker(&url, partitions, redis.key_prefix()).await?;
        let mut observation = observe_queues(&broker, &pool.spec.queue_names()).await?;
        observation.backend = observe_backend(&broker, pool).await?;
        Ok(observation)
    }
}

/// One observation of `queues` and the workers serving them.
pub async fn observe_queues(
    broker: &Broker,
    queues: &[String],
) -> Result<Observation, ObserveError> {
    let mut stats = Vec::with_capacity(queues.len());
    for queue in queues {
        stats.push(broker.queue_stats(queue).await.map_err(unreachable)?);
    }
    let workers = broker.workers(WORKER_SILENCE).await.map_err(unreachable)?;
    Ok(Observation::from_stats(&stats, &workers, queues))
}

/// The pool's limits on backend calls as its executors share them in Redis; `None` when the
/// pool sets none.
pub async fn observe_backend(
    broker: &Broker,
    pool: &RagWorkerPool,
) -> Result<Option<BackendObservation>, ObserveError> {
    let Some(limits) = &pool.spec.executor.backend.limits else {
        return Ok(None);
    };
    let name = pool.name_any();
    let key = limits.key_for(&name);
    let state = broker.backend_limit_state(key).await.map_err(unreachable)?;
    Ok(Some(BackendObservation::new(key, limits, &state)))
}

fn unreachable(e: QueueError) -> ObserveError {
    match e {
        QueueError::Config(m) => ObserveError::Config(m),
        // A partition count other than the key prefix's is a setting to fix, not an outage.
        e @ QueueError::Layout { .. } => ObserveError::Config(e.to_string()),
        other => ObserveError::Unreachable(other.to_string()),
    }
}
