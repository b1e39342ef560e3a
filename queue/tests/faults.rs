//! Load and faults against a real Redis: many consumers racing for many tasks, and Redis
//! restarts at the two moments a task is most exposed.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{ALL, Env};
use futures::{StreamExt, TryStreamExt};
use ragpool_queue::testing::ServerOptions;
use ragpool_queue::testing::sample_payload;
use ragpool_queue::{Broker, NewTask, TaskKind, TaskState};
use serde_json::json;

const LEASE: Duration = Duration::from_secs(60);
const TASKS: usize = 10_000;
const CONSUMERS: usize = 8;

async fn many_consumers_each_task_once(env: Env) {
    let b = env.broker.clone();
    futures::stream::iter(0..TASKS)
        .map(|n| {
            let b = b.clone();
            let kind = TaskKind::ALL[n % 3];
            async move {
                b.enqueue(NewTask::new(sample_payload(kind, &format!("q{n}"))))
                    .await
            }
        })
        .buffer_unordered(64)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();

    // For every task: which workers claimed it and how many completions Redis accepted.
    let claims: Arc<Mutex<HashMap<String, Vec<String>>>> = Arc::default();
    let mut workers = Vec::new();
    for w in 0..CONSUMERS {
        let consumer = env.consumer(&format!("w{w}"), &ALL, LEASE).await;
        let (b, claims) = (b.clone(), claims.clone());
        workers.push(tokio::spawn(async move {
            let mut completed = 0usize;
            while let Some(c) = consumer.claim(Duration::from_millis(200)).await.unwrap() {
                claims
                    .lock()
                    .unwrap()
                    .entry(c.task.id.to_string())
                    .or_default()
                    .push(consumer.config().worker_id.clone());
                b.complete(&c.lease, &json!({ "by": consumer.config().worker_id }))
                    .await
                    .unwrap();
                completed += 1;
            }
            completed
        }));
    }
    let mut completed = 0;
    let mut busy_workers = 0;
    for w in workers {
        let n = w.await.unwrap();
        completed += n;
        busy_workers += usize::from(n > 0);
    }
    assert_eq!(completed, TASKS, "every task completed once");
    let claims = std::mem::take(&mut *claims.lock().unwrap());
    assert_eq!(claims.len(), TASKS, "no task lost");
    let doubled: Vec<_> = claims.iter().filter(|(_, w)| w.len() != 1).collect();
    assert!(
        doubled.is_empty(),
        "tasks claimed twice: {:?}",
        &doubled[..doubled.len().min(5)]
    );
    assert!(busy_workers > 1, "the load was shared");
    let stats = b.stats().await.unwrap();
    let finished: u64 = stats.iter().map(|s| s.total_finished).sum();
    let left: u64 = stats.iter().map(|s| s.queued + s.started + s.delayed).sum();
    assert_eq!((finished, left), (TASKS as u64, 0));
}
on_both!(load_t, many_consumers_each_task_once);

/// Waits for the broker's connection to come back after a restart.
async fn until_reachable(b: &Broker) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while b.ping().await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "broker did not reconnect"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_between_enqueue_and_claim_loses_nothing() {
    let mut env = Env::single_with(ServerOptions {
        aof: true,
        cluster: false,
    })
    .await;
    let mut ids = Vec::new();
    for n in 0..50 {
        ids.push(
            env.broker
                .enqueue(NewTask::new(sample_payload(
                    TaskKind::FullQuery,
                    &format!("q{n}"),
                )))
                .await
                .unwrap()
                .id,
        );
    }
    env.server().restart().unwrap();
    until_reachable(&env.broker).await;
    let c = env.consumer("w", &ALL, LEASE).await;
    let mut claimed = Vec::new();
    while let Some(t) = c.claim(Duration::from_millis(200)).await.unwrap() {
        claimed.push(t.task.id.clone());
        env.broker.complete(&t.lease, &json!(1)).await.unwrap();
    }
    assert_eq!(claimed, ids, "all 50, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_between_claim_and_complete_loses_nothing() {
    let mut env = Env::single_with(ServerOptions {
        aof: true,
        cluster: false,
    })
    .await;
    let q = env
        .broker
        .enqueue(NewTask::new(sample_payload(TaskKind::AnalyzeImage, "q")))
        .await
        .unwrap();
    let c = env.consumer("w", &ALL, LEASE).await;
    let claimed = c.claim(Duration::from_secs(1)).await.unwrap().unwrap();
    // SIGKILL: with appendfsync always every acknowledged write is on disk.
    env.server().kill().unwrap();
    assert!(
        env.broker.heartbeat(&claimed.lease, None).await.is_err(),
        "Redis is down"
    );
    env.server().start_again().unwrap();
    until_reachable(&env.broker).await;
    let t = env.broker.get(&q.id).await.unwrap().unwrap();
    assert_eq!(
        (t.state, t.worker.as_deref()),
        (TaskState::Started, Some("w"))
    );
    // The lease survived: the worker carries on and completes.
    env.broker.heartbeat(&claimed.lease, None).await.unwrap();
    env.broker
        .complete(&claimed.lease, &json!("after restart"))
        .await
        .unwrap();
    let t = env.broker.get(&q.id).await.unwrap().unwrap();
    assert_eq!(t.state, TaskState::Finished);
    assert_eq!(t.result, Some(json!("after restart")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_consumer_survives_a_restart() {
    let mut env = Env::single_with(ServerOptions {
        aof: true,
        cluster: false,
    })
    .await;
    let c = env.consumer("w", &["image_analysis"], LEASE).await;
    // The consumer errors while Redis is down and works again once it is back.
    env.server().stop().unwrap();
    assert!(c.claim(Duration::from_millis(100)).await.is_err());
    env.server().start_again().unwrap();
    until_reachable(&env.broker).await;
    let q = env
        .broker
        .enqueue(NewTask::new(sample_payload(TaskKind::AnalyzeImage, "q")))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let claimed = loop {
        match c.claim(Duration::from_secs(1)).await {
            Ok(Some(t)) => break t,
            _ => assert!(
                tokio::time::Instant::now() < deadline,
                "consumer did not recover"
            ),
        }
    };
    assert_eq!(claimed.task.id, q.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_command_after_a_redis_restart_succeeds() {
    let mut env = Env::single().await;
    env.broker.ping().await.unwrap();
    env.server().kill().unwrap();
    env.server().start_again().unwrap();
    // The old socket is dead; the command must go out on a new one, not fail.
    env.broker
        .ping()
        .await
        .expect("the first command after Redis is back");
    let q = env
        .broker
        .enqueue(NewTask::new(sample_payload(TaskKind::AnalyzeImage, "q")))
        .await
        .unwrap();
    assert!(env.broker.get(&q.id).await.unwrap().is_some());
}

/// A cluster master away costs its partitions, not submissions (on a cluster that serves the
/// slots it still covers): tasks without an idempotency key go to a partition that is up; a
/// keyed task whose partition is away is refused (it must stay where a replay finds it), and
/// nothing is created twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_down_costs_its_partitions_not_submissions() {
    let (mut cluster, target) = common::three_masters().await;
    let mut config = ragpool_queue::BrokerConfig::new(target);
    config.partitions = 6;
    let b = Broker::connect(config).await.unwrap();
    b.check_layout().await.unwrap();
    // Which partitions the killed master serves: the ones whose slot it owns.
    let down_port = cluster.nodes()[1].port();
    let mut probe = redis::Client::open(cluster.nodes()[1].url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut down = Vec::new();
    for part in b.keys().partitions() {
        let slot = ragpool_queue::keys::slot(
            part.prefix()
                .trim_start_matches('{')
                .split('}')
                .next()
                .unwrap(),
        );
        let nodes: Vec<redis::Value> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut probe)
            .await
            .unwrap();
        for range in nodes {
            let redis::Value::Array(r) = range else {
                continue;
            };
            let (
                Some(redis::Value::Int(lo)),
                Some(redis::Value::Int(hi)),
                Some(redis::Value::Array(node)),
            ) = (r.first(), r.get(1), r.get(2))
            else {
                continue;
            };
            let port = match node.get(1) {
                Some(redis::Value::Int(p)) => *p as u16,
                _ => 0,
            };
            if (*lo..=*hi).contains(&i64::from(slot)) && port == down_port {
                down.push(part.prefix().to_string());
            }
        }
    }
    assert_eq!(
        down.len(),
        2,
        "the even split gives each master two partitions"
    );
    drop(probe);
    // The other masters keep serving their slots while one is away (by default a cluster
    // missing a master refuses every slot once it has declared the master failed).
    for url in cluster.urls() {
        let mut node = redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("cluster-require-full-coverage")
            .arg("no")
            .query_async(&mut node)
            .await
            .unwrap();
    }
    let _cluster = tokio::task::spawn_blocking(move || {
        cluster.nodes()[1].kill().unwrap();
        cluster
    })
    .await
    .unwrap();

    let mut made = Vec::new();
    for n in 0..12 {
        let e = b
            .enqueue(NewTask::new(sample_payload(
                TaskKind::FullQuery,
                &format!("q{n}"),
            )))
            .await
            .expect("a partition that is up takes it");
        let at = b.keys().of_task(&e.id).prefix().to_string();
        assert!(!down.contains(&at), "{at} is on the master that is down");
        made.push(e.id);
    }
    // Every task exists once, readable where its id says.
    for id in &made {
        assert_eq!(b.get(id).await.unwrap().unwrap().state, TaskState::Queued);
    }
    let stuck = (0..)
        .map(|i| format!("key-{i}"))
        .find(|k| down.contains(&b.keys().of_idempotency(k).prefix().to_string()))
        .unwrap();
    let mut keyed = NewTask::new(sample_payload(TaskKind::FullQuery, "keyed"));
    keyed.idempotency_key = Some(stuck);
    assert!(b.enqueue(keyed).await.unwrap_err().is_unavailable());
}
