//! The `replicated` durability setting against a real primary and replica: a change counts
//! as done only once the replica has it, a change the replica missed is reported
//! `NotReplicated`, and repeating it confirms it without applying it twice.

mod common;

use std::time::Duration;

use ragpool_queue::testing::{RedisServer, ServerOptions, sample_payload};
use ragpool_queue::{
    Broker, BrokerConfig, ClaimPolicy, ConsumerConfig, Durability, NewTask, QueueError, TaskKind,
    TaskState,
};
use serde_json::json;

struct Pair {
    primary: RedisServer,
    replica: RedisServer,
}

async fn pair() -> Pair {
    tokio::task::spawn_blocking(|| {
        let primary = RedisServer::start().expect("primary starts");
        let replica = RedisServer::start_replica_of(primary.port(), ServerOptions::default())
            .expect("replica starts");
        replica.wait_until_in_sync().expect("replica in sync");
        Pair { primary, replica }
    })
    .await
    .unwrap()
}

async fn broker(url: &str, durability: Durability) -> Broker {
    let mut config = BrokerConfig::from_url(url).unwrap();
    config.queues = common::test_queues();
    config.durability = durability;
    // Long enough that a replica that is up acknowledges in time on a loaded machine; a
    // replica that is down costs this much per change.
    config.replication_timeout = Duration::from_secs(2);
    Broker::connect(config).await.expect("broker")
}

fn consumer_config() -> ConsumerConfig {
    ConsumerConfig {
        worker_id: "w".into(),
        queues: vec!["full_query".into()],
        policy: ClaimPolicy::Strict,
        lease: Duration::from_secs(30),
    }
}

fn payload(text: &str) -> NewTask {
    NewTask::new(sample_payload(TaskKind::FullQuery, text))
}

/// Stops the replica (so nothing acknowledges) and hands the pair back.
async fn stop_replica(mut pair: Pair) -> Pair {
    tokio::task::spawn_blocking(move || {
        pair.replica.stop().expect("replica stops");
        pair
    })
    .await
    .unwrap()
}

async fn start_replica(mut pair: Pair) -> Pair {
    tokio::task::spawn_blocking(move || {
        pair.replica.start_again().expect("replica starts again");
        pair.replica.wait_until_in_sync().expect("replica in sync");
        pair
    })
    .await
    .unwrap()
}

/// What the replica itself holds for a task, read there directly.
async fn on_replica(pair: &Pair, broker: &Broker, id: &ragpool_queue::TaskId) -> Option<String> {
    let mut conn = redis::Client::open(pair.replica.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    redis::cmd("HGET")
        .arg(broker.keys().task(id))
        .arg("state")
        .query_async(&mut conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_change_is_on_the_replica() {
    let pair = pair().await;
    let broker = broker(&pair.primary.url(), Durability::Replicated).await;
    let queued = broker.enqueue(payload("q")).await.unwrap();
    // Acknowledged means the replica has it now, with no waiting on this side.
    assert_eq!(
        on_replica(&pair, &broker, &queued.id).await.as_deref(),
        Some("queued")
    );
    let consumer = broker.consumer(consumer_config()).await.unwrap();
    let claimed = consumer.try_claim().await.unwrap().expect("claimed");
    broker.complete(&claimed.lease, &json!(1)).await.unwrap();
    assert_eq!(
        on_replica(&pair, &broker, &queued.id).await.as_deref(),
        Some("finished")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_replica_means_not_replicated_and_a_repeat_confirms() {
    let pair = stop_replica(pair().await).await;
    let broker = broker(&pair.primary.url(), Durability::Replicated).await;
    let mut new = payload("q");
    new.idempotency_key = Some("k1".into());
    let err = broker.enqueue(new.clone()).await.unwrap_err();
    assert!(matches!(err, QueueError::NotReplicated { .. }), "{err}");
    assert!(err.is_unavailable());

    let pair = start_replica(pair).await;
    // The repeat finds the task the first call created, and now a replica has it.
    let again = broker.enqueue(new).await.unwrap();
    assert!(!again.created);
    assert_eq!(
        on_replica(&pair, &broker, &again.id).await.as_deref(),
        Some("queued")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_completion_confirms_without_finishing_twice() {
    let pair = pair().await;
    let broker = broker(&pair.primary.url(), Durability::Replicated).await;
    let queued = broker.enqueue(payload("q")).await.unwrap();
    let consumer = broker.consumer(consumer_config()).await.unwrap();
    let claimed = consumer.try_claim().await.unwrap().expect("claimed");

    let pair = stop_replica(pair).await;
    let err = broker
        .complete(&claimed.lease, &json!("first"))
        .await
        .unwrap_err();
    assert!(matches!(err, QueueError::NotReplicated { .. }), "{err}");
    // Still unconfirmed: the repeat says so again rather than lease_lost.
    let err = broker
        .complete(&claimed.lease, &json!("first"))
        .await
        .unwrap_err();
    assert!(matches!(err, QueueError::NotReplicated { .. }), "{err}");

    let pair = start_replica(pair).await;
    broker
        .complete(&claimed.lease, &json!("second"))
        .await
        .unwrap();
    let task = broker.get(&queued.id).await.unwrap().unwrap();
    assert_eq!(task.state, TaskState::Finished);
    assert_eq!(task.result, Some(json!("first")), "the first report stands");
    let stats = broker.queue_stats("full_query").await.unwrap();
    assert_eq!(stats.total_finished, 1);
    assert_eq!(
        on_replica(&pair, &broker, &queued.id).await.as_deref(),
        Some("finished")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_durability_does_not_wait_for_replicas() {
    let pair = stop_replica(pair().await).await;
    let broker = broker(&pair.primary.url(), Durability::Local).await;
    let queued = broker.enqueue(payload("q")).await.unwrap();
    assert!(queued.created);
}

#[tokio::test]
async fn replicated_is_refused_with_a_timeout_as_long_as_the_response_timeout() {
    let mut config = BrokerConfig::from_url("redis://127.0.0.1:1").unwrap();
    config.durability = Durability::Replicated;
    config.replication_timeout = config.response_timeout;
    let err = Broker::connect(config).await.err().expect("refused");
    assert!(
        err.to_string()
            .contains("shorter than the response timeout"),
        "{err}"
    );
}
