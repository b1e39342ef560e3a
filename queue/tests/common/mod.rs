//! Shared setup of the protocol tests: a broker over a fresh real Redis, single node or
//! cluster.

#![allow(dead_code)]

use std::time::Duration;

use ragpool_queue::testing::{RedisCluster, RedisServer, ServerOptions};
use ragpool_queue::{
    Broker, BrokerConfig, ClaimPolicy, Consumer, ConsumerConfig, QueueConfig, RedisTarget,
};

/// The Redis behind a test; dropping it stops the processes.
pub enum Backing {
    Single(RedisServer),
    Cluster(RedisCluster),
}

pub struct Env {
    pub redis: Backing,
    pub broker: Broker,
}

/// Fast queues for tests: short backoffs, the seed's names and weights.
pub fn test_queues() -> Vec<QueueConfig> {
    ragpool_queue::default_queues()
        .into_iter()
        .map(|mut q| {
            q.backoff_base = Duration::from_millis(20);
            q.backoff_max = Duration::from_millis(40);
            q
        })
        .collect()
}

/// The partition count the suite runs with: `RAGPOOL_TEST_PARTITIONS`, 1 when unset
/// (`scripts/test.sh` runs the suite with 1 and with 6).
pub fn test_partitions() -> u16 {
    match std::env::var("RAGPOOL_TEST_PARTITIONS") {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("RAGPOOL_TEST_PARTITIONS={v:?} is not a number")),
        Err(_) => 1,
    }
}

pub async fn broker_for(target: RedisTarget, queues: Vec<QueueConfig>) -> Broker {
    let mut config = BrokerConfig::new(target);
    config.queues = queues;
    config.partitions = test_partitions();
    Broker::connect(config).await.expect("broker connects")
}

impl Env {
    pub async fn single() -> Env {
        Self::single_with(ServerOptions::default()).await
    }

    pub async fn single_with(opts: ServerOptions) -> Env {
        let server = tokio::task::spawn_blocking(move || RedisServer::start_with(opts))
            .await
            .unwrap()
            .expect("redis-server starts");
        let broker = broker_for(server.url().parse().unwrap(), test_queues()).await;
        Env {
            redis: Backing::Single(server),
            broker,
        }
    }

    pub async fn cluster() -> Env {
        let (cluster, target) = three_masters().await;
        let broker = broker_for(target, test_queues()).await;
        Env {
            redis: Backing::Cluster(cluster),
            broker,
        }
    }

    pub fn server(&mut self) -> &mut RedisServer {
        match &mut self.redis {
            Backing::Single(s) => s,
            Backing::Cluster(_) => panic!("not a single server"),
        }
    }

    pub async fn consumer(&self, worker: &str, queues: &[&str], lease: Duration) -> Consumer {
        self.consumer_with(worker, queues, lease, ClaimPolicy::Strict)
            .await
    }

    pub async fn consumer_with(
        &self,
        worker: &str,
        queues: &[&str],
        lease: Duration,
        policy: ClaimPolicy,
    ) -> Consumer {
        self.broker
            .consumer(ConsumerConfig {
                worker_id: worker.into(),
                queues: queues.iter().map(|q| q.to_string()).collect(),
                policy,
                lease,
            })
            .await
            .expect("consumer")
    }
}

pub const ALL: [&str; 3] = ["image_analysis", "answer_generation", "full_query"];

/// Runs the maintenance pass until `done` says so, for conditions that only time brings
/// (a lease or a backoff running out). Fails after 10 s.
pub async fn maintain_until(
    broker: &Broker,
    mut done: impl FnMut(&ragpool_queue::Maintenance) -> bool,
) -> ragpool_queue::Maintenance {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = broker.maintain().await.expect("maintenance");
        if done(&m) {
            return m;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not reached in 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Declares a test that runs `body` against a single server and against a 3-master cluster.
#[macro_export]
macro_rules! on_both {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn single() {
                let env = common::Env::single().await;
                ($body)(env).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn cluster() {
                let env = common::Env::cluster().await;
                ($body)(env).await;
            }
        }
    };
}

/// A fresh cluster of three masters and the target that names it.
pub async fn three_masters() -> (RedisCluster, RedisTarget) {
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3))
        .await
        .unwrap()
        .expect("redis cluster starts");
    let target = RedisTarget {
        urls: cluster.urls(),
        cluster: true,
        ca_cert: None,
        sentinel: None,
    };
    (cluster, target)
}
