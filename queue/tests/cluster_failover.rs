//! The `replicated` durability setting on a Redis Cluster of three masters with one replica
//! each: every acknowledged change is on the replica of the master that took it, so a
//! SIGKILLed master's replica takes over with every acknowledged task; a graceful
//! `CLUSTER FAILOVER` sends the next changes to the new master whole; and a master with no
//! replica acknowledges nothing until one is back.

mod common;

use std::time::Duration;

use ragpool_queue::testing::{RedisCluster, ServerOptions, sample_payload};
use ragpool_queue::{
    Broker, BrokerConfig, Durability, NewTask, QueueError, RedisTarget, TaskId, TaskKind,
};

/// Two partitions per master, as a new key prefix gets on a three-master cluster.
const PARTITIONS: u16 = 6;

async fn cluster() -> RedisCluster {
    tokio::task::spawn_blocking(|| RedisCluster::start_with_replicas(3, ServerOptions::default()))
        .await
        .unwrap()
        .expect("three masters with a replica each start")
}

/// Runs a harness call that blocks (killing, waiting for an election) off the runtime.
async fn blocking<T: Send + 'static>(
    cluster: RedisCluster,
    f: impl FnOnce(&mut RedisCluster) -> T + Send + 'static,
) -> (RedisCluster, T) {
    tokio::task::spawn_blocking(move || {
        let mut cluster = cluster;
        let out = f(&mut cluster);
        (cluster, out)
    })
    .await
    .unwrap()
}

async fn broker(cluster: &RedisCluster) -> Broker {
    let target = RedisTarget {
        urls: cluster.urls(),
        cluster: true,
        ca_cert: None,
        sentinel: None,
    };
    let mut config = BrokerConfig::new(target);
    config.queues = common::test_queues();
    config.partitions = PARTITIONS;
    config.durability = Durability::Replicated;
    // Long enough that a replica that is up acknowledges in time on a loaded machine.
    config.replication_timeout = Duration::from_secs(2);
    Broker::connect(config).await.expect("broker connects")
}

fn task(text: &str) -> NewTask {
    NewTask::new(sample_payload(TaskKind::FullQuery, text))
}

/// A task whose idempotency key puts it in partition `index`.
fn task_in(broker: &Broker, index: u16, text: &str) -> NewTask {
    let key = (0..)
        .map(|n| format!("{text}-{n}"))
        .find(|k| broker.keys().of_idempotency(k).index() == index)
        .expect("some key lands in every partition");
    let mut new = task(text);
    new.idempotency_key = Some(key);
    new
}

/// The master serving partition `index` now.
async fn master_of(cluster: RedisCluster, broker: &Broker, index: u16) -> (RedisCluster, usize) {
    let slot = broker.keys().partitions()[usize::from(index)].slot();
    let (cluster, master) = blocking(cluster, move |c| c.master_of(slot)).await;
    (cluster, master.expect("the slot has a master"))
}

/// The port of node `i`.
fn port(cluster: &RedisCluster, i: usize) -> u16 {
    let url = &cluster.urls()[i];
    url.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a port in the URL")
}

/// The state of a task as the node on `port` holds it, read there directly (`READONLY`
/// lets a replica answer for its master's slots).
async fn state_on(port: u16, broker: &Broker, id: &TaskId) -> Option<String> {
    let mut conn = redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("READONLY").query_async(&mut conn).await.unwrap();
    redis::cmd("HGET")
        .arg(broker.keys().task(id))
        .arg("state")
        .query_async(&mut conn)
        .await
        .unwrap()
}

/// Enqueues `new`, calling again while the cluster answers that it is unavailable (a
/// connection to a killed master, a slot without a master for a moment), as a client
/// retries a `503`. Returns the last answer.
async fn enqueue_retrying(broker: &Broker, new: NewTask) -> ragpool_queue::Result<TaskId> {
    let mut last = None;
    for _ in 0..50 {
        match broker.enqueue(new.clone()).await {
            Err(e) if e.is_unavailable() && !matches!(e, QueueError::NotReplicated { .. }) => {
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other.map(|e| e.id),
        }
    }
    Err(last.expect("at least one try"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_enqueues_survive_a_killed_master() {
    let cluster = cluster().await;
    let broker = broker(&cluster).await;
    let mut acknowledged = Vec::new();
    for n in 0..60 {
        acknowledged.push(broker.enqueue(task(&format!("task {n}"))).await.unwrap().id);
    }
    let (cluster, master) = master_of(cluster, &broker, 0).await;
    let (cluster, promoted) = blocking(cluster, move |c| c.kill_master(master)).await;
    let promoted = promoted.expect("the replica takes over after a SIGKILL");

    for id in &acknowledged {
        let task = broker.get(id).await.unwrap();
        assert!(
            task.is_some(),
            "acknowledged task {id} lost in the failover"
        );
    }
    // The promoted replica has no replica of its own: a change to its partitions is applied
    // but not acknowledged, while the other masters' partitions carry on.
    let err = enqueue_retrying(&broker, task_in(&broker, 0, "alone"))
        .await
        .unwrap_err();
    assert!(matches!(err, QueueError::NotReplicated { .. }), "{err}");
    let (cluster, other) = master_of(cluster, &broker, 2).await;
    assert_ne!(other, promoted, "partition 2 lives on another master");
    enqueue_retrying(&broker, task_in(&broker, 2, "elsewhere"))
        .await
        .expect("another master with its replica acknowledges");

    // The killed master comes back as the promoted one's replica: acknowledged again, and
    // the task is on it.
    let (cluster, restarted) = blocking(cluster, move |c| c.start_again(master)).await;
    restarted.expect("the former master rejoins as a replica");
    let again = task_in(&broker, 0, "alone");
    let id = enqueue_retrying(&broker, again).await.unwrap();
    assert_eq!(
        state_on(port(&cluster, master), &broker, &id)
            .await
            .as_deref(),
        Some("queued")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_failover_sends_changes_to_the_new_master() {
    let cluster = cluster().await;
    let broker = broker(&cluster).await;
    let before = broker.enqueue(task_in(&broker, 1, "before")).await.unwrap();
    let (cluster, master) = master_of(cluster, &broker, 1).await;
    let (cluster, promoted) = blocking(cluster, move |c| c.failover(master)).await;
    let promoted = promoted.expect("CLUSTER FAILOVER completes");

    // The broker's slot map still names the former master, now a replica: whether the unit
    // is redirected (MOVED) or the client falls back within the shard, script, probe and
    // WAIT run on the new master, and the WAIT counts the former master as the replica
    // that has the task.
    let after = broker.enqueue(task_in(&broker, 1, "after")).await.unwrap();
    assert!(after.created);
    let (cluster, serving) = master_of(cluster, &broker, 1).await;
    assert_eq!(serving, promoted);
    for id in [&before.id, &after.id] {
        assert_eq!(
            state_on(port(&cluster, master), &broker, id)
                .await
                .as_deref(),
            Some("queued"),
            "task {id} on the former master, now the replica"
        );
    }
    assert_eq!(broker.queue_stats("full_query").await.unwrap().queued, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_without_a_replica_acknowledges_nothing_until_one_is_back() {
    let cluster = cluster().await;
    let broker = broker(&cluster).await;
    let (cluster, master) = master_of(cluster, &broker, 3).await;
    let (cluster, replica) = blocking(cluster, move |c| {
        let replica = c.replica_of(master)?;
        c.nodes()[replica].stop().map(|()| replica)
    })
    .await;
    let replica = replica.expect("the replica stops");

    let lone = task_in(&broker, 3, "lone");
    for _ in 0..3 {
        let err = broker.enqueue(lone.clone()).await.unwrap_err();
        assert!(matches!(err, QueueError::NotReplicated { .. }), "{err}");
        assert!(err.is_unavailable(), "answered 503 by the API");
    }
    // The other masters still have their replicas.
    let (cluster, other) = master_of(cluster, &broker, 0).await;
    assert_ne!(other, master);
    broker
        .enqueue(task_in(&broker, 0, "elsewhere"))
        .await
        .expect("a master with its replica acknowledges");

    let (cluster, restarted) = blocking(cluster, move |c| c.start_again(replica)).await;
    restarted.expect("the replica comes back in sync");
    // The repeat finds the task the first call created, and now the replica has it.
    let again = broker.enqueue(lone).await.unwrap();
    assert!(!again.created);
    assert_eq!(
        state_on(port(&cluster, replica), &broker, &again.id)
            .await
            .as_deref(),
        Some("queued")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_slot_sends_the_whole_unit_to_its_new_master() {
    let cluster = cluster().await;
    let broker = broker(&cluster).await;
    let before = broker.enqueue(task_in(&broker, 4, "before")).await.unwrap();
    let (cluster, from) = master_of(cluster, &broker, 4).await;
    let (cluster, to) = master_of(cluster, &broker, 0).await;
    assert_ne!(from, to);
    let slot = broker.keys().partitions()[4].slot();
    let (cluster, moved) = blocking(cluster, move |c| c.move_slot(slot, to)).await;
    moved.expect("the slot moves with its keys");

    // The broker's slot map still names the former master, which is up and answers MOVED
    // to the script: the whole unit goes again to the new master, whose replica
    // acknowledges the change.
    let after = broker.enqueue(task_in(&broker, 4, "after")).await.unwrap();
    assert!(after.created);
    let (cluster, replica) = blocking(cluster, move |c| c.replica_of(to)).await;
    let replica = replica.expect("the new master has its replica");
    for id in [&before.id, &after.id] {
        assert_eq!(
            state_on(port(&cluster, replica), &broker, id)
                .await
                .as_deref(),
            Some("queued"),
            "task {id} on the new master's replica"
        );
    }
}
