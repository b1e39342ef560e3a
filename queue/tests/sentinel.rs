//! A primary and a replica watched by three sentinels, reached through a `redis+sentinel://`
//! URL: the protocol works, and after a failover (asked for, or a SIGKILLed primary) the same
//! broker and the same blocked consumer carry on against the new primary with no restart.

mod common;

use std::time::Duration;

use ragpool_queue::testing::{MASTER_NAME, RedisSentinel, sample_payload};
use ragpool_queue::{Broker, Consumer, NewTask, TaskKind, TaskState};
use serde_json::json;

async fn start() -> (RedisSentinel, Broker) {
    let redis = tokio::task::spawn_blocking(RedisSentinel::start)
        .await
        .unwrap()
        .expect("primary, replica and sentinels start");
    let broker = common::broker_for(redis.url().parse().unwrap(), common::test_queues()).await;
    (redis, broker)
}

async fn consumer(broker: &Broker) -> Consumer {
    broker
        .consumer(ragpool_queue::ConsumerConfig {
            worker_id: "w1".into(),
            queues: vec!["full_query".into()],
            policy: ragpool_queue::ClaimPolicy::Strict,
            lease: Duration::from_secs(30),
        })
        .await
        .expect("consumer")
}

async fn enqueue(broker: &Broker, text: &str) -> ragpool_queue::TaskId {
    broker
        .enqueue(NewTask::new(sample_payload(TaskKind::FullQuery, text)))
        .await
        .expect("enqueue")
        .id
}

/// Runs a harness call that blocks (starting processes, polling sentinels) off the runtime.
async fn blocking<T: Send + 'static>(
    redis: RedisSentinel,
    f: impl FnOnce(&mut RedisSentinel) -> T + Send + 'static,
) -> (RedisSentinel, T) {
    tokio::task::spawn_blocking(move || {
        let mut redis = redis;
        let out = f(&mut redis);
        (redis, out)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_protocol_runs_through_the_sentinels() {
    let (_redis, broker) = start().await;
    let id = enqueue(&broker, "through sentinel").await;
    let consumer = consumer(&broker).await;
    let claimed = consumer
        .claim(Duration::from_secs(5))
        .await
        .unwrap()
        .expect("the task is claimed");
    assert_eq!(claimed.task.id, id);
    broker
        .complete(&claimed.lease, &json!({"answer": 42}))
        .await
        .unwrap();
    let task = broker.get(&id).await.unwrap().unwrap();
    assert_eq!(task.state, TaskState::Finished);
    assert_eq!(task.result, Some(json!({"answer": 42})));
}

/// Both ways a primary goes away; `fail` turns the harness's primary into a replica or kills
/// it, and returns the new primary's port.
async fn survives(fail: fn(&mut RedisSentinel) -> u16) {
    let (redis, broker) = start().await;
    let before = enqueue(&broker, "before").await;
    let consumer = consumer(&broker).await;
    let first = consumer.claim(Duration::from_secs(5)).await.unwrap();
    assert_eq!(first.expect("claimed").task.id, before);

    // A consumer blocked on the old primary while it goes away. Like the executor's claim
    // loop, it claims again after an error, pausing in between: while a killed primary is
    // not yet replaced there is no primary to claim from, and a command in flight on the
    // lost connection fails (whether it ran is unknown).
    let waiting = tokio::spawn(async move {
        let mut errors = Vec::new();
        loop {
            match consumer.claim(Duration::from_secs(60)).await {
                Err(e) if e.is_unavailable() && errors.len() < 100 => {
                    errors.push(e.to_string());
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                other => return (consumer, other),
            }
        }
    });
    let old_port = redis.announced_primary().unwrap();
    let (redis, new_port) = blocking(redis, fail).await;
    assert_ne!(new_port, old_port);

    let after = enqueue(&broker, "after").await;
    let (_consumer, claimed) = waiting.await.unwrap();
    let claimed = claimed
        .expect("the blocked consumer follows the failover")
        .expect("and wakes for the new task");
    assert_eq!(claimed.task.id, after);
    broker
        .complete(&claimed.lease, &json!("done"))
        .await
        .unwrap();
    assert_eq!(
        broker.get(&after).await.unwrap().unwrap().state,
        TaskState::Finished
    );

    // The writes went to the server the sentinels now announce, not to the old one.
    let mut primary = redis::Client::open(format!("redis://127.0.0.1:{new_port}"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let state: Option<String> = redis::cmd("HGET")
        .arg(broker.keys().task(&after))
        .arg("state")
        .query_async(&mut primary)
        .await
        .unwrap();
    assert_eq!(state.as_deref(), Some("finished"));
    drop(redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_asked_for_failover_is_followed_without_restart() {
    survives(|r| r.failover().expect("failover")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_is_replaced_without_restart() {
    survives(|r| r.kill_primary().expect("failover after SIGKILL")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_events_reader_follows_a_failover() {
    let (redis, broker) = start().await;
    let hub = broker.events().await.unwrap();
    let mut events = hub.subscribe();
    let (_redis, _) = blocking(redis, |r| r.failover().expect("failover")).await;
    let id = enqueue(&broker, "after").await;
    let event = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let ev = events.recv().await.expect("events keep flowing");
            if ev.task_id == id.as_str() {
                return ev;
            }
        }
    })
    .await
    .expect("the event of a task enqueued after the failover arrives");
    assert_eq!(event.state, TaskState::Queued);
}

/// The sentinels come to name another primary while the old one goes on answering as a
/// primary (as after `SENTINEL FAILOVER`, until their next `INFO` demotes it): the broker
/// must move its writes by asking the sentinels, since no reply tells it. Here the old
/// primary is never demoted at all (the sentinels are pointed at the promoted replica and
/// forget it), so a write that reaches the new primary can only have been sent there because
/// the sentinels were asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_follow_the_sentinels_before_the_old_primary_is_demoted() {
    let (mut redis, broker) = start().await;
    let first = enqueue(&broker, "before").await;
    let old = redis.announced_primary().unwrap();
    let new = redis.replica().unwrap().port();
    let open = |port: u16| async move {
        redis::Client::open(format!("redis://127.0.0.1:{port}"))
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    };
    let (mut old_conn, mut new_conn) = (open(old).await, open(new).await);
    let holds = |conn: &mut redis::aio::MultiplexedConnection, id: &ragpool_queue::TaskId| {
        let key = broker.keys().task(id);
        let mut conn = conn.clone();
        async move {
            redis::cmd("EXISTS")
                .arg(key)
                .query_async::<bool>(&mut conn)
                .await
                .unwrap()
        }
    };
    assert!(holds(&mut old_conn, &first).await);

    let _: () = redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query_async(&mut new_conn)
        .await
        .unwrap();
    for address in redis.addresses() {
        let mut sentinel = redis::Client::open(format!("redis://{address}"))
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let _: () = redis::cmd("SENTINEL")
            .arg("REMOVE")
            .arg(MASTER_NAME)
            .query_async(&mut sentinel)
            .await
            .unwrap();
        let _: () = redis::cmd("SENTINEL")
            .arg("MONITOR")
            .arg(MASTER_NAME)
            .arg("127.0.0.1")
            .arg(new)
            .arg(2)
            .query_async(&mut sentinel)
            .await
            .unwrap();
    }

    // Writes go on; within a few watch intervals one reaches the new primary.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let landed = loop {
        let id = enqueue(&broker, "after").await;
        if holds(&mut new_conn, &id).await {
            break id;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "writes still reach the old primary, which the sentinels no longer name"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!holds(&mut old_conn, &landed).await);
    // The old primary was not demoted: nothing but the sentinels' answer moved the writes.
    let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut old_conn).await.unwrap();
    assert_eq!(
        role.first(),
        Some(&redis::Value::BulkString(b"master".to_vec()))
    );
}

#[test]
fn sentinel_urls_parse_and_redact() {
    let target: ragpool_queue::RedisTarget =
        "redis+sentinel://:s3cret@10.0.0.1:26379,[::1]:26380/mymaster/2"
            .parse()
            .unwrap();
    let sentinel = target.sentinel.as_ref().unwrap();
    assert_eq!(
        sentinel.sentinels,
        [("10.0.0.1".to_string(), 26379), ("::1".to_string(), 26380)]
    );
    assert_eq!(sentinel.master_name, "mymaster");
    assert_eq!(sentinel.db, 2);
    assert!(!sentinel.tls);
    assert_eq!(sentinel.password.as_deref(), Some("s3cret"));
    // Without a query, the sentinels get the data nodes' credentials.
    assert_eq!(sentinel.sentinel_password.as_deref(), Some("s3cret"));
    let debug = format!("{target:?}");
    assert!(!debug.contains("s3cret"), "{debug}");

    let own: ragpool_queue::RedisTarget =
        "rediss+sentinel://app:p%40ss@s1:1/m?sentinel_password=other&sentinel_username=sen"
            .parse()
            .unwrap();
    let own = own.sentinel.unwrap();
    assert!(own.tls);
    assert_eq!(own.username.as_deref(), Some("app"));
    assert_eq!(own.password.as_deref(), Some("p@ss"));
    assert_eq!(own.sentinel_username.as_deref(), Some("sen"));
    assert_eq!(own.sentinel_password.as_deref(), Some("other"));
    let none: ragpool_queue::RedisTarget = "redis+sentinel://:pw@s1:1/m?sentinel_password="
        .parse()
        .unwrap();
    let none = none.sentinel.unwrap();
    assert_eq!(none.sentinel_password, None);
    assert_eq!(none.password.as_deref(), Some("pw"));

    for (bad, why) in [
        ("redis+sentinel://s1:1", "master name"),
        ("redis+sentinel://s1/m", "no port"),
        ("redis+sentinel://:pw@/m", "no sentinel"),
        ("redis+sentinel://s1:1/m/x", "not a number"),
        (
            "redis+sentinel://s1:1/m?password=x",
            "unknown query parameter",
        ),
    ] {
        let err = bad
            .parse::<ragpool_queue::RedisTarget>()
            .unwrap_err()
            .to_string();
        assert!(err.contains(why), "{bad}: {err}");
        assert!(!err.contains("pw@"), "{bad}: {err}");
    }
    assert_eq!(
        ragpool_queue::redact::redact("redis+sentinel://:s3cret@a:1,b:2/m/0?sentinel_password=x"),
        "redis+sentinel://***@a:1,b:2/m/0?***"
    );
}

/// Under `replicated`, every task whose enqueue was acknowledged is on the replica that a
/// SIGKILL of the primary promotes; once the killed server is back as a replica, changes are
/// acknowledged again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_enqueues_survive_a_killed_primary() {
    let redis = tokio::task::spawn_blocking(RedisSentinel::start)
        .await
        .unwrap()
        .expect("primary, replica and sentinels start");
    let mut config = ragpool_queue::BrokerConfig::from_url(&redis.url()).unwrap();
    config.queues = common::test_queues();
    config.durability = ragpool_queue::Durability::Replicated;
    config.replication_timeout = Duration::from_secs(2);
    let broker = Broker::connect(config).await.unwrap();
    let mut acknowledged = Vec::new();
    for n in 0..50 {
        acknowledged.push(enqueue(&broker, &format!("task {n}")).await);
    }

    let (redis, _) = blocking(redis, |r| r.kill_primary().expect("failover after SIGKILL")).await;
    // No replica now: a change is applied but not acknowledged.
    let mut not_replicated = None;
    for _ in 0..20 {
        match broker
            .enqueue(NewTask::new(sample_payload(TaskKind::FullQuery, "alone")))
            .await
        {
            Err(ragpool_queue::QueueError::NotReplicated { .. }) => {
                not_replicated = Some(());
                break;
            }
            Err(e) if e.is_unavailable() => tokio::time::sleep(Duration::from_millis(100)).await,
            other => panic!("expected not replicated, got {other:?}"),
        }
    }
    assert!(
        not_replicated.is_some(),
        "a lone primary acknowledges nothing"
    );
    for id in &acknowledged {
        let task = broker.get(id).await.unwrap();
        assert!(
            task.is_some(),
            "acknowledged task {id} lost in the failover"
        );
    }

    let (_redis, restarted) = blocking(redis, |r| r.restart_former_primary()).await;
    restarted.expect("the former primary rejoins as a replica");
    enqueue(&broker, "acknowledged again").await;
}
