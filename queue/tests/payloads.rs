//! Where a task's payload lives and for how long, and the backlog limits on queued payload
//! bytes, against a real Redis: once on a single server and once on a 3-master cluster.

mod common;

use std::time::Duration;

use common::{ALL, Env, maintain_until};
use ragpool_queue::testing::sample_payload;
use ragpool_queue::{
    Broker, NewTask, PayloadLimit, PayloadLimits, QueueError, Retry, TaskError, TaskId, TaskKind,
    TaskState,
};
use serde_json::json;

const LEASE: Duration = Duration::from_secs(30);

fn image(n: u32) -> NewTask {
    NewTask::new(sample_payload(TaskKind::AnalyzeImage, &format!("q{n}")))
}

/// The remaining time to live of a task's payload key: -2 gone, -1 no expiry, else ms.
async fn payload_ttl(broker: &Broker, id: &TaskId) -> i64 {
    let key = broker.keys().of_task(id).payload(id.as_str());
    let mut conn = ragpool_queue::conn::Conn::open(&broker.config().target, None)
        .await
        .unwrap();
    redis::cmd("PTTL")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap()
}

async fn queued_bytes(broker: &Broker, queue: &str) -> u64 {
    broker
        .queue_stats(queue)
        .await
        .unwrap()
        .queued_payload_bytes
}

async fn payload_follows_the_task(env: Env) {
    let b = &env.broker;
    let c = env.consumer("w", &ALL, LEASE).await;
    let size = sample_payload(TaskKind::AnalyzeImage, "q1")
        .to_json()
        .unwrap()
        .len() as u64;

    // Finished: the payload goes in the step that ends the task; the summary and the brief
    // stay.
    let done = b.enqueue(image(1)).await.unwrap();
    assert_eq!(queued_bytes(b, "image_analysis").await, size);
    let claimed = c.try_claim().await.unwrap().unwrap();
    assert_eq!(
        claimed.payload,
        sample_payload(TaskKind::AnalyzeImage, "q1")
    );
    assert_eq!(queued_bytes(b, "image_analysis").await, 0);
    b.complete(&claimed.lease, &json!({"summary": "a dot"}))
        .await
        .unwrap();
    assert_eq!(payload_ttl(b, &done.id).await, -2);
    assert_eq!(b.payload(&done.id).await.unwrap(), None);
    let t = b.get(&done.id).await.unwrap().unwrap();
    assert_eq!(t.state, TaskState::Finished);
    assert_eq!(t.input.bytes, size);
    assert_eq!(t.input.image_type.as_deref(), Some("image/png"));
    assert_eq!(t.input.image_bytes, Some(67), "a 1×1 PNG");
    assert_eq!(t.input.sha256.len(), 64);
    let brief = b.brief(&done.id).await.unwrap().unwrap();
    assert_eq!(brief.image(), None);
    assert_eq!(brief, sample_payload(TaskKind::AnalyzeImage, "q1").brief());

    // Canceled while queued: gone at once, and no longer counted as queued.
    let canceled = b.enqueue(image(2)).await.unwrap();
    assert_eq!(queued_bytes(b, "image_analysis").await, size);
    b.cancel(&canceled.id).await.unwrap();
    assert_eq!(payload_ttl(b, &canceled.id).await, -2);
    assert_eq!(queued_bytes(b, "image_analysis").await, 0);

    // Canceled while running: gone when the worker reports.
    let running = b.enqueue(image(3)).await.unwrap();
    let claimed = c.try_claim().await.unwrap().unwrap();
    b.cancel(&running.id).await.unwrap();
    let stop = TaskError::new("canceled", "stopped");
    b.fail(&claimed.lease, &stop, Retry::Permanent)
        .await
        .unwrap();
    assert_eq!(
        b.get(&running.id).await.unwrap().unwrap().state,
        TaskState::Canceled
    );
    assert_eq!(payload_ttl(b, &running.id).await, -2);

    // Failed: kept while the task can be retried (its failure TTL), and retried with it.
    let failed = b.enqueue(image(4)).await.unwrap();
    let claimed = c.try_claim().await.unwrap().unwrap();
    let bad = TaskError::new("bad_input", "no");
    b.fail(&claimed.lease, &bad, Retry::Permanent)
        .await
        .unwrap();
    let ttl = payload_ttl(b, &failed.id).await;
    let failure_ttl = b.queue("image_analysis").unwrap().failure_ttl.as_millis() as i64;
    assert!(ttl > 0 && ttl <= failure_ttl, "payload TTL {ttl} ms");
    b.retry(&failed.id).await.unwrap();
    assert_eq!(
        payload_ttl(b, &failed.id).await,
        -1,
        "kept again while queued"
    );
    assert_eq!(queued_bytes(b, "image_analysis").await, size);
    let claimed = c.try_claim().await.unwrap().unwrap();
    assert_eq!(
        claimed.payload,
        sample_payload(TaskKind::AnalyzeImage, "q4")
    );

    // Once the failed task's payload is gone (its TTL ran out), a retry says so and
    // changes nothing; a bulk retry leaves it failed and counts it.
    b.fail(&claimed.lease, &bad, Retry::Permanent)
        .await
        .unwrap();
    let mut conn = ragpool_queue::conn::Conn::open(&b.config().target, None)
        .await
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg(b.keys().of_task(&failed.id).payload(failed.id.as_str()))
        .query_async(&mut conn)
        .await
        .unwrap();
    match b.retry(&failed.id).await {
        Err(QueueError::InputGone(id)) => assert_eq!(id, failed.id.to_string()),
        other => panic!("expected InputGone, got {other:?}"),
    }
    let t = b.get(&failed.id).await.unwrap().unwrap();
    assert_eq!(t.state, TaskState::Failed);
    let bulk = b.retry_failed("image_analysis", 100).await.unwrap();
    assert_eq!((bulk.done, bulk.input_gone, bulk.remaining), (0, 1, 0));
    assert_eq!(
        b.get(&failed.id).await.unwrap().unwrap().state,
        TaskState::Failed
    );
    assert_eq!(queued_bytes(b, "image_analysis").await, 0);
}
on_both!(payload_follows_t, payload_follows_the_task);

async fn a_reaped_task_keeps_its_payload(env: Env) {
    let b = &env.broker;
    let q = b.enqueue(image(1)).await.unwrap();
    let c = env.consumer("dies", &ALL, Duration::from_millis(100)).await;
    let first = c.try_claim().await.unwrap().unwrap();
    maintain_until(b, |m| m.requeued == 1).await;
    assert_eq!(payload_ttl(b, &q.id).await, -1);
    assert_eq!(
        queued_bytes(b, "image_analysis").await,
        first.task.input.bytes
    );
    let again = env.consumer("lives", &ALL, LEASE).await;
    let second = again.try_claim().await.unwrap().unwrap();
    assert_eq!(second.task.id, q.id);
    assert_eq!(second.payload, first.payload);
    // Released by a draining worker: still there.
    b.release(&second.lease).await.unwrap();
    let third = again.try_claim().await.unwrap().unwrap();
    assert_eq!(third.payload, first.payload);
}
on_both!(reaped_keeps_t, a_reaped_task_keeps_its_payload);

async fn inputs_kept_for_inspection_when_asked(env: Env) {
    let mut config = env.broker.config().clone();
    for q in &mut config.queues {
        q.keep_payload = Duration::from_secs(60);
    }
    let b = Broker::connect(config).await.unwrap();
    let q = b.enqueue(image(1)).await.unwrap();
    let c = b
        .consumer(ragpool_queue::ConsumerConfig {
            worker_id: "w".into(),
            queues: ALL.iter().map(|q| q.to_string()).collect(),
            policy: ragpool_queue::ClaimPolicy::Strict,
            lease: LEASE,
        })
        .await
        .unwrap();
    let claimed = c.try_claim().await.unwrap().unwrap();
    b.complete(&claimed.lease, &json!("ok")).await.unwrap();
    let ttl = payload_ttl(&b, &q.id).await;
    assert!(ttl > 0 && ttl <= 60_000, "payload TTL {ttl} ms");
    assert_eq!(b.payload(&q.id).await.unwrap(), Some(claimed.payload));
}
on_both!(keep_payload_t, inputs_kept_for_inspection_when_asked);

/// A broker over the same Redis and partitions as `env`'s, with these limits.
async fn limited(env: &Env, limits: PayloadLimits) -> Broker {
    let mut config = env.broker.config().clone();
    config.payload_limits = limits;
    Broker::connect(config).await.unwrap()
}

fn answer(owner: Option<&str>) -> NewTask {
    let mut t = NewTask::new(sample_payload(TaskKind::CompleteAnswer, "x"));
    t.owner = owner.map(str::to_owned);
    t
}

fn answer_size() -> u64 {
    sample_payload(TaskKind::CompleteAnswer, "x")
        .to_json()
        .unwrap()
        .len() as u64
}

/// Enqueues until refused; returns how many were taken and the refusal.
async fn fill(b: &Broker, owner: Option<&str>) -> (u64, QueueError) {
    for n in 0..1000 {
        if let Err(e) = b.enqueue(answer(owner)).await {
            return (n, e);
        }
    }
    panic!("never refused");
}

async fn the_total_limit_refuses_exactly_at_it(env: Env) {
    let parts = u64::from(env.broker.keys().count());
    let size = answer_size();
    // Three tasks' worth per partition: each partition's share holds exactly three.
    let limit = 3 * parts * size;
    let b = limited(
        &env,
        PayloadLimits {
            total: limit,
            per_key: 0,
        },
    )
    .await;

    // A batch that does not fit anywhere writes nothing.
    let batch = (0..4).map(|_| answer(None)).collect();
    assert!(matches!(
        b.enqueue_many(batch).await,
        Err(QueueError::PayloadLimit { .. })
    ));
    assert_eq!(queued_bytes(&b, "answer_generation").await, 0);

    let (taken, refused) = fill(&b, None).await;
    assert_eq!(taken, 3 * parts);
    assert_eq!(queued_bytes(&b, "answer_generation").await, limit);
    match refused {
        QueueError::PayloadLimit {
            limit: PayloadLimit::Total(l),
            asked,
            ..
        } => assert_eq!((l, asked), (limit, size)),
        other => panic!("expected the key prefix limit, got {other:?}"),
    }
    assert!(
        refused.to_string().contains("--max-queued-payload-bytes"),
        "{refused}"
    );

    // A claim makes room for exactly one more.
    let c = env.consumer("w", &ALL, LEASE).await;
    c.try_claim().await.unwrap().unwrap();
    assert_eq!(queued_bytes(&b, "answer_generation").await, limit - size);
    let (taken, _) = fill(&b, None).await;
    assert_eq!(taken, 1);
}
on_both!(total_limit_t, the_total_limit_refuses_exactly_at_it);

async fn the_per_key_limit_bounds_one_key_only(env: Env) {
    let parts = u64::from(env.broker.keys().count());
    let size = answer_size();
    let b = limited(
        &env,
        PayloadLimits {
            total: 0,
            per_key: 2 * parts * size,
        },
    )
    .await;
    let (taken, refused) = fill(&b, Some("alice")).await;
    assert_eq!(taken, 2 * parts);
    assert!(
        matches!(
            refused,
            QueueError::PayloadLimit {
                limit: PayloadLimit::PerKey(_),
                ..
            }
        ),
        "{refused:?}"
    );
    // Another key, and tasks without an owner, are not held back by alice's backlog.
    b.enqueue(answer(Some("bob"))).await.unwrap();
    b.enqueue(answer(None)).await.unwrap();

    // Claims of alice's tasks make room for her again; a cancel does too.
    let c = env.consumer("w", &ALL, LEASE).await;
    let mut freed = 0;
    while freed < 2 {
        let claimed = c.try_claim().await.unwrap().unwrap();
        if claimed.task.owner.as_deref() == Some("alice") {
            freed += 1;
        }
    }
    let (taken, _) = fill(&b, Some("alice")).await;
    assert_eq!(taken, 2, "room for the two claimed");
}
on_both!(per_key_limit_t, the_per_key_limit_bounds_one_key_only);

/// An image payload of about `len` bytes: over the size an enqueue call carries inline.
fn large_image(len: usize) -> NewTask {
    let mut p = sample_payload(TaskKind::AnalyzeImage, "large");
    if let ragpool_queue::Payload::AnalyzeImage(a) = &mut p {
        let image = a.image.get_or_insert_default();
        image.push_str(&"ABCD".repeat(len / 4));
    }
    NewTask::new(p)
}

/// The staging keys left in a single server (a cluster's keys are spread over its masters).
async fn staging_keys(b: &Broker) -> Option<Vec<String>> {
    if b.config().target.cluster {
        return None;
    }
    let mut conn = ragpool_queue::conn::Conn::open(&b.config().target, None)
        .await
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*staging:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    Some(keys)
}

async fn a_large_payload_is_staged_and_renamed_into_place(env: Env) {
    let b = &env.broker;
    let mut big = large_image(3 * 1024 * 1024);
    big.idempotency_key = Some("big".into());
    let expected = big.payload.clone();
    let first = b.enqueue(big.clone()).await.unwrap();
    assert!(first.created);
    assert_eq!(payload_ttl(b, &first.id).await, -1, "no staging TTL left");
    assert_eq!(b.payload(&first.id).await.unwrap(), Some(expected.clone()));
    let json = expected.to_json().unwrap();
    let t = b.get(&first.id).await.unwrap().unwrap();
    assert_eq!(t.input, expected.summary(&json));
    assert_eq!(queued_bytes(b, "image_analysis").await, json.len() as u64);

    // A replay stages its payload too, and the script drops it.
    let again = b.enqueue(big).await.unwrap();
    assert_eq!((again.id, again.created), (first.id.clone(), false));
    // A batch of several, with one small task among them.
    let batch = vec![large_image(100_000), image(1), large_image(200_000)];
    let done = b.enqueue_many(batch.clone()).await.unwrap();
    for (task, new) in done.iter().zip(&batch) {
        assert!(task.created);
        assert_eq!(
            b.payload(&task.id).await.unwrap(),
            Some(new.payload.clone())
        );
    }
    if let Some(left) = staging_keys(b).await {
        assert_eq!(left, Vec::<String>::new());
    }

    // Refused by a limit: nothing written, nothing staged left behind.
    let tight = limited(
        &env,
        PayloadLimits {
            total: 1024 * 1024,
            per_key: 0,
        },
    )
    .await;
    assert!(matches!(
        tight.enqueue(large_image(2 * 1024 * 1024)).await,
        Err(QueueError::PayloadLimit { .. })
    ));
    if let Some(left) = staging_keys(b).await {
        assert_eq!(left, Vec::<String>::new());
    }

    // Claimed whole.
    let c = env.consumer("w", &ALL, LEASE).await;
    let claimed = c.try_claim().await.unwrap().unwrap();
    assert_eq!((claimed.task.id, claimed.payload), (first.id, expected));
}
on_both!(
    staged_payload_t,
    a_large_payload_is_staged_and_renamed_into_place
);
