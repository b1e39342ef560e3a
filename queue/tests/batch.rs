//! `Broker::enqueue_many` against a real Redis: order of answers and of the ready sets,
//! idempotency keys within and across batches, wake-ups, events, the known-queues set, and
//! a Redis that is down. Once on a single server and once on a 3-master cluster.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{ALL, Env};
use ragpool_queue::testing::sample_payload;
use ragpool_queue::{MAX_ENQUEUE_BATCH, NewTask, QueueError, TaskKind, TaskState};

const LEASE: Duration = Duration::from_secs(30);

fn new(kind: TaskKind, n: usize) -> NewTask {
    NewTask::new(sample_payload(kind, &format!("q{n}")))
}

fn keyed(kind: TaskKind, n: usize, key: &str) -> NewTask {
    NewTask {
        idempotency_key: Some(key.into()),
        owner: Some("tenant".into()),
        ..new(kind, n)
    }
}

async fn answers_in_order_and_claims_by_priority_then_fifo(env: Env) {
    let b = &env.broker;
    let kinds = [
        TaskKind::FullQuery,
        TaskKind::AnalyzeImage,
        TaskKind::CompleteAnswer,
        TaskKind::AnalyzeImage,
        TaskKind::FullQuery,
        TaskKind::CompleteAnswer,
    ];
    let batch: Vec<NewTask> = kinds.iter().enumerate().map(|(n, &k)| new(k, n)).collect();
    let done = b.enqueue_many(batch).await.unwrap();
    assert_eq!(done.len(), kinds.len());
    for (n, (answer, kind)) in done.iter().zip(kinds).enumerate() {
        assert!(answer.created);
        assert_eq!(answer.queue, kind.queue());
        let t = b.get(&answer.id).await.unwrap().expect("stored");
        assert_eq!(t.state, TaskState::Queued);
        assert_eq!(
            b.payload(&answer.id).await.unwrap(),
            Some(sample_payload(kind, &format!("q{n}")))
        );
        assert_eq!(t.max_attempts, 3);
        assert_eq!(t.owner, None);
    }
    // Within a queue the batch keeps its order; across queues strict priority decides.
    let c = env.consumer("w", &ALL, LEASE).await;
    let mut order = Vec::new();
    while let Some(claimed) = c.try_claim().await.unwrap() {
        order.push(claimed.task.id);
    }
    let ids: Vec<_> = done.iter().map(|d| d.id.clone()).collect();
    assert_eq!(
        order,
        vec![
            ids[1].clone(),
            ids[3].clone(),
            ids[2].clone(),
            ids[5].clone(),
            ids[0].clone(),
            ids[4].clone()
        ]
    );
    for queue in ALL {
        let s = b.queue_stats(queue).await.unwrap();
        assert_eq!((s.total_enqueued, s.started), (2, 2), "{queue}");
    }
}
on_both!(order_t, answers_in_order_and_claims_by_priority_then_fifo);

async fn a_batch_follows_single_enqueues_in_fifo_order(env: Env) {
    let b = &env.broker;
    let first = b.enqueue(new(TaskKind::CompleteAnswer, 0)).await.unwrap();
    let batch = b
        .enqueue_many((1..4).map(|n| new(TaskKind::CompleteAnswer, n)).collect())
        .await
        .unwrap();
    let last = b.enqueue(new(TaskKind::CompleteAnswer, 4)).await.unwrap();
    let mut expected = vec![first.id];
    expected.extend(batch.into_iter().map(|e| e.id));
    expected.push(last.id);
    for (place, id) in expected.iter().enumerate() {
        assert_eq!(
            b.position(id, "answer_generation").await.unwrap(),
            Some(place as u64)
        );
    }
}
on_both!(fifo_t, a_batch_follows_single_enqueues_in_fifo_order);

async fn idempotency_keys_within_and_across_batches(env: Env) {
    let b = &env.broker;
    let first = b
        .enqueue_many(vec![
            keyed(TaskKind::FullQuery, 0, "a"),
            new(TaskKind::FullQuery, 1),
            keyed(TaskKind::FullQuery, 2, "a"),
            keyed(TaskKind::FullQuery, 3, "b"),
        ])
        .await
        .unwrap();
    let created: Vec<bool> = first.iter().map(|e| e.created).collect();
    assert_eq!(created, vec![true, true, false, true]);
    assert_eq!(first[2].id, first[0].id, "the same key in one batch");
    assert_ne!(first[3].id, first[0].id);
    let t = b.get(&first[0].id).await.unwrap().unwrap();
    assert_eq!(
        b.payload(&first[0].id).await.unwrap(),
        Some(sample_payload(TaskKind::FullQuery, "q0"))
    );
    assert_eq!(t.owner.as_deref(), Some("tenant"));

    // A later batch (and a single enqueue) replay the first tasks; a key of another kind
    // answers with the existing task's queue.
    let second = b
        .enqueue_many(vec![
            keyed(TaskKind::AnalyzeImage, 4, "b"),
            keyed(TaskKind::FullQuery, 5, "c"),
            keyed(TaskKind::FullQuery, 6, "a"),
        ])
        .await
        .unwrap();
    assert!(!second[0].created);
    assert_eq!(
        (&second[0].id, second[0].queue.as_str()),
        (&first[3].id, "full_query")
    );
    assert!(second[1].created);
    assert_eq!((second[2].created, &second[2].id), (false, &first[0].id));
    let single = b.enqueue(keyed(TaskKind::FullQuery, 7, "c")).await.unwrap();
    assert_eq!((single.created, &single.id), (false, &second[1].id));

    let s = b.queue_stats("full_query").await.unwrap();
    assert_eq!((s.queued, s.total_enqueued), (4, 4));
    assert_eq!(b.queue_stats("image_analysis").await.unwrap().queued, 0);
}
on_both!(idempotency_t, idempotency_keys_within_and_across_batches);

async fn an_empty_batch_writes_nothing(env: Env) {
    let b = &env.broker;
    assert!(b.enqueue_many(Vec::new()).await.unwrap().is_empty());
    for s in b.stats().await.unwrap() {
        assert_eq!((s.queued, s.total_enqueued), (0, 0), "{}", s.queue);
    }
}
on_both!(empty_t, an_empty_batch_writes_nothing);

async fn a_blocked_consumer_wakes_for_each_task(env: Env) {
    let b = env.broker.clone();
    let mut waiters = Vec::new();
    for w in 0..3 {
        let c = env
            .consumer(&format!("w{w}"), &["image_analysis"], LEASE)
            .await;
        waiters.push(tokio::spawn(async move {
            c.claim(Duration::from_secs(30)).await
        }));
    }
    let done = b
        .enqueue_many((0..3).map(|n| new(TaskKind::AnalyzeImage, n)).collect())
        .await
        .unwrap();
    let mut claimed = BTreeSet::new();
    for w in waiters {
        let task = w.await.unwrap().unwrap().expect("woken by the batch");
        claimed.insert(task.task.id);
    }
    let ids: BTreeSet<_> = done.into_iter().map(|e| e.id).collect();
    assert_eq!(claimed, ids);
}
on_both!(wake_t, a_blocked_consumer_wakes_for_each_task);

async fn one_queued_event_per_created_task(env: Env) {
    let b = &env.broker;
    let hub = b.events().await.unwrap();
    let mut rx = hub.subscribe();
    let done = b
        .enqueue_many(vec![
            keyed(TaskKind::CompleteAnswer, 0, "k"),
            new(TaskKind::AnalyzeImage, 1),
            keyed(TaskKind::CompleteAnswer, 2, "k"),
            new(TaskKind::FullQuery, 3),
        ])
        .await
        .unwrap();
    // The replay adds no event; a marker task after the batch in every partition (each has
    // its own stream) shows none is pending.
    let mut markers = std::collections::BTreeSet::new();
    for part in b.keys().partitions() {
        let key = (0..)
            .map(|i| format!("marker-{i}"))
            .find(|k| b.keys().of_idempotency(k) == part)
            .unwrap();
        let marker = b
            .enqueue(keyed(TaskKind::FullQuery, 4, &key))
            .await
            .unwrap();
        markers.insert(marker.id.to_string());
    }
    let mut seen = Vec::new();
    while !markers.is_empty() {
        let ev = rx.recv().await.unwrap();
        assert_eq!(ev.state, TaskState::Queued);
        if !markers.remove(&ev.task_id) {
            seen.push((ev.task_id, ev.queue));
        }
    }
    let mut expected: Vec<_> = [0, 1, 3]
        .into_iter()
        .map(|i| (done[i].id.to_string(), done[i].queue.clone()))
        .collect();
    if b.keys().count() > 1 {
        // Streams of different partitions are read side by side: no order between them.
        seen.sort();
        expected.sort();
    }
    assert_eq!(seen, expected);
}
on_both!(events_t, one_queued_event_per_created_task);

async fn a_batch_larger_than_one_call_is_split_in_order(env: Env) {
    let b = &env.broker;
    let n = MAX_ENQUEUE_BATCH + 7;
    let done = b
        .enqueue_many((0..n).map(|i| new(TaskKind::CompleteAnswer, i)).collect())
        .await
        .unwrap();
    assert_eq!(done.len(), n);
    let s = b.queue_stats("answer_generation").await.unwrap();
    assert_eq!((s.queued, s.total_enqueued), (n as u64, n as u64));
    for i in [0, MAX_ENQUEUE_BATCH - 1, MAX_ENQUEUE_BATCH, n - 1] {
        assert_eq!(
            b.position(&done[i].id, "answer_generation").await.unwrap(),
            Some(i as u64)
        );
    }
}
on_both!(split_t, a_batch_larger_than_one_call_is_split_in_order);

async fn known_queues(env: &Env) -> BTreeSet<String> {
    let mut conn =
        ragpool_queue::conn::Conn::open(&env.broker.config().target, Some(Duration::from_secs(5)))
            .await
            .unwrap();
    let mut known = BTreeSet::new();
    for part in env.broker.keys().partitions() {
        let names: BTreeSet<String> = redis::cmd("SMEMBERS")
            .arg(part.queues())
            .query_async(&mut conn)
            .await
            .unwrap();
        known.extend(names);
    }
    known
}

async fn known_queues_are_recorded_on_first_use(env: Env) {
    let b = &env.broker;
    assert!(known_queues(&env).await.is_empty());
    b.enqueue(new(TaskKind::FullQuery, 0)).await.unwrap();
    b.enqueue_many(vec![
        new(TaskKind::AnalyzeImage, 1),
        new(TaskKind::FullQuery, 2),
    ])
    .await
    .unwrap();
    assert_eq!(
        known_queues(&env).await,
        BTreeSet::from(["full_query".to_string(), "image_analysis".to_string()])
    );
}
on_both!(known_t, known_queues_are_recorded_on_first_use);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_is_an_error() {
    let mut env = Env::single().await;
    env.broker.ping().await.unwrap();
    env.server().kill().unwrap();
    let err = env
        .broker
        .enqueue_many(vec![
            new(TaskKind::AnalyzeImage, 0),
            new(TaskKind::FullQuery, 1),
        ])
        .await
        .expect_err("Redis is down");
    assert!(matches!(err, QueueError::Redis(_)), "{err:?}");
}
