//! Every transition of the task state machine and its refusals, against a real Redis: once on
//! a single server and once on a 3-master cluster.

mod common;

use std::time::Duration;

use common::{ALL, Env, maintain_until};
use ragpool_queue::testing::sample_payload;
use ragpool_queue::{
    CancelOutcome, ClaimPolicy, FailOutcome, NewTask, Progress, QueueError, ReleaseOutcome, Retry,
    TaskError, TaskId, TaskKind, TaskState, TraceContext, WorkerInfo,
};
use serde_json::json;

const LEASE: Duration = Duration::from_secs(30);

fn new(kind: TaskKind, n: u32) -> NewTask {
    NewTask::new(sample_payload(kind, &format!("q{n}")))
}

async fn roundtrip(env: Env) {
    let b = &env.broker;
    let q = b.enqueue(new(TaskKind::AnalyzeImage, 1)).await.unwrap();
    assert!(q.created);
    assert_eq!(q.queue, "image_analysis");
    let t = b.get(&q.id).await.unwrap().unwrap();
    assert_eq!(t.state, TaskState::Queued);
    assert_eq!(t.attempts, 0);
    assert_eq!(t.max_attempts, 3);
    assert_eq!(t.timeout, Duration::from_secs(600));
    assert_eq!(t.result_ttl, Duration::from_secs(3600));
    assert_eq!(
        b.payload(&q.id).await.unwrap(),
        Some(sample_payload(TaskKind::AnalyzeImage, "q1"))
    );
    assert_eq!(t.kind(), TaskKind::AnalyzeImage);
    assert_eq!(b.position(&q.id, &q.queue).await.unwrap(), Some(0));

    let c = env.consumer("w1", &ALL, LEASE).await;
    let claimed = c.try_claim().await.unwrap().expect("a task");
    assert_eq!(claimed.task.id, q.id);
    assert_eq!(claimed.task.state, TaskState::Started);
    assert_eq!(claimed.task.attempts, 1);
    assert_eq!(claimed.task.worker.as_deref(), Some("w1"));
    assert_eq!(b.position(&q.id, &q.queue).await.unwrap(), None);

    let progress = Progress {
        percent: 40,
        message: "retrieving".into(),
    };
    let hb = b.heartbeat(&claimed.lease, Some(&progress)).await.unwrap();
    assert!(!hb.cancel_requested);
    assert_eq!(b.get(&q.id).await.unwrap().unwrap().progress, progress);

    b.complete(&claimed.lease, &json!({"answer": 42}))
        .await
        .unwrap();
    let t = b.get(&q.id).await.unwrap().unwrap();
    assert_eq!(t.state, TaskState::Finished);
    assert_eq!(t.result, Some(json!({"answer": 42})));
    assert_eq!(t.progress.percent, 100);
    assert!(t.finished_at_ms.unwrap() >= t.started_at_ms.unwrap());

    let ttl: i64 = redis::cmd("PTTL")
        .arg(b.keys().task(&q.id))
        .query_async(&mut redis_conn(&env).await)
        .await
        .unwrap();
    assert!(
        ttl > 3_500_000 && ttl <= 3_600_000,
        "result TTL is 1 h, got {ttl} ms"
    );

    let s = b.queue_stats("image_analysis").await.unwrap();
    assert_eq!((s.queued, s.started, s.finished), (0, 0, 1));
    assert_eq!((s.total_enqueued, s.total_finished), (1, 1));
    assert_eq!(s.processing.samples, 1);
    assert_eq!(s.wait.samples, 1);
}
on_both!(roundtrip_t, roundtrip);

async fn redis_conn(env: &Env) -> ragpool_queue::conn::Conn {
    ragpool_queue::conn::Conn::open(&env.broker.config().target, Some(Duration::from_secs(5)))
        .await
        .unwrap()
}

async fn idempotency(env: Env) {
    let b = &env.broker;
    let mut first = new(TaskKind::FullQuery, 1);
    first.idempotency_key = Some("k-1".into());
    let a = b.enqueue(first.clone()).await.unwrap();
    let again = b.enqueue(first).await.unwrap();
    assert!(a.created);
    assert!(!again.created);
    assert_eq!(a.id, again.id);
    let mut other = new(TaskKind::FullQuery, 2);
    other.idempotency_key = Some("k-2".into());
    let c = b.enqueue(other).await.unwrap();
    assert_ne!(c.id, a.id);
    assert_eq!(b.queue_stats("full_query").await.unwrap().queued, 2);
    // The key still names the task once it has ended, while the task is kept.
    let cons = env.consumer("w", &["full_query"], LEASE).await;
    let claimed = cons.try_claim().await.unwrap().unwrap();
    b.complete(&claimed.lease, &json!(1)).await.unwrap();
    let mut retry = new(TaskKind::FullQuery, 1);
    retry.idempotency_key = Some("k-1".into());
    assert_eq!(b.enqueue(retry).await.unwrap().id, a.id);
}
on_both!(idempotency_t, idempotency);

async fn refusals(env: Env) {
    let b = &env.broker;
    let unknown = TaskId::new();
    assert!(matches!(
        b.cancel(&unknown).await,
        Err(QueueError::NotFound(_))
    ));
    assert!(matches!(
        b.retry(&unknown).await,
        Err(QueueError::NotFound(_))
    ));
    assert!(b.get(&unknown).await.unwrap().is_none());
    assert!(matches!(
        "not-an-id".parse::<TaskId>(),
        Err(QueueError::InvalidTaskId(_))
    ));

    let q = b.enqueue(new(TaskKind::CompleteAnswer, 1)).await.unwrap();
    let c = env.consumer("w1", &ALL, LEASE).await;
    let claimed = c.try_claim().await.unwrap().unwrap();

    let mut forged = claimed.lease.clone();
    forged.token = "not-the-token".into();
    assert!(matches!(
        b.complete(&forged, &json!(1)).await,
        Err(QueueError::LeaseLost(_))
    ));
    assert!(matches!(
        b.heartbeat(&forged, None).await,
        Err(QueueError::LeaseLost(_))
    ));
    assert!(matches!(
        b.fail(&forged, &TaskError::new("x", "y"), Retry::Permanent)
            .await,
        Err(QueueError::LeaseLost(_))
    ));
    assert!(matches!(
        b.release(&forged).await,
        Err(QueueError::LeaseLost(_))
    ));
    let mut missing = claimed.lease.clone();
    missing.task = TaskId::new();
    assert!(matches!(
        b.complete(&missing, &json!(1)).await,
        Err(QueueError::NotFound(_))
    ));
    assert!(matches!(
        b.retry(&q.id).await,
        Err(QueueError::WrongState { .. })
    ));

    b.complete(&claimed.lease, &json!("done")).await.unwrap();
    // Completing twice, or anything else on an ended task, is refused.
    assert!(matches!(
        b.complete(&claimed.lease, &json!(2)).await,
        Err(QueueError::LeaseLost(_))
    ));
    assert!(matches!(
        b.heartbeat(&claimed.lease, None).await,
        Err(QueueError::LeaseLost(_))
    ));
    assert!(matches!(
        b.cancel(&q.id).await,
        Err(QueueError::WrongState { .. })
    ));
    assert_eq!(
        b.get(&q.id).await.unwrap().unwrap().result,
        Some(json!("done")),
        "a refused transition changes nothing"
    );
}
on_both!(refusals_t, refusals);

async fn stale_lease_is_reaped(env: Env) {
    let b = &env.broker;
    let q = b.enqueue(new(TaskKind::AnalyzeImage, 1)).await.unwrap();
    let dead = env.consumer("dead", &ALL, Duration::from_millis(200)).await;
    let lost = dead.try_claim().await.unwrap().unwrap();
    // The dead worker never heartbeats; the reaper puts the task back.
    let m = maintain_until(b, |m| m.requeued == 1).await;
    assert_eq!(m.failed, 0);
    let t = b.get(&q.id).await.unwrap().unwrap();
    assert_eq!(t.state, TaskState::Queued);
    assert_eq!(
        t.error.as_ref().map(|e| e.kind.as_str()),
        Some("lease_expired")
    );

    let alive = env.consumer("alive", &ALL, LEASE).await;
    let again = alive.try_claim().await.unwrap().unwrap();
    assert_eq!(again.task.id, q.id);
    assert_eq!(again.task.attempts, 2, "the expired lease spent an attempt");
    assert!(matches!(
        b.complete(&lost.lease, &json!(1)).await,
        Err(QueueError::LeaseLost(_))
    ));
    b.complete(&again.lease, &json!(2)).await.unwrap();
    assert_eq!(
        b.queue_stats("image_analysis")
            .await
            .unwrap()
            .total_lease_expired,
        1
    );
    // Reaping again finds nothing: the pass is idempotent.
    assert_eq!(b.maintain().await.unwrap().requeued, 0);
}
on_both!(stale_lease_t, stale_lease_is_reaped);

/// After a time in which no executor's periodic script ran (Redis away, or everyone cut off),
/// every lease has run out; reaping waits a lease so that live holders can heartbeat first.
async fn reaping_waits_a_lease_after_nobody_was_there(env: Env) {
    let b = &env.broker;
    let lease = Duration::from_millis(300);
    let q = b.enqueue(new(TaskKind::AnalyzeImage, 1)).await.unwrap();
    let holder = env.consumer("holder", &ALL, lease).await;
    let claimed = holder.try_claim().await.unwrap().unwrap();
    let first = b.maintain_for(lease).await.unwrap();
    assert_eq!(first.held_until_ms, None, "a first stamp is no outage");

    // Nobody reaches Redis for longer than the lease: the holder's lease runs out.
    tokio::time::sleep(lease * 2).await;
    let after = b.maintain_for(lease).await.unwrap();
    assert_eq!(after.requeued, 0, "nothing reaped right after the outage");
    assert!(after.held_until_ms.is_some(), "{after:?}");
    assert_eq!(
        b.maintain().await.unwrap().requeued,
        0,
        "every reaper respects the hold"
    );

    // The holder's first heartbeat after the outage keeps its task.
    b.heartbeat(&claimed.lease, None).await.unwrap();
    let t = b.get(&q.id).await.unwrap().unwrap();
    assert_eq!((t.state, t.attempts), (TaskState::Started, 1));

    // A holder that never heartbeats again is reaped once the hold and its lease are over,
    // while reapers keep stamping the clock (no new gap).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = b.maintain_for(lease).await.unwrap();
        if m.requeued == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never reaped: {m:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        b.get(&q.id).await.unwrap().unwrap().state,
        TaskState::Queued
    );

    // The first contact after a gap may be a registry beat: with one partition it starts the
    // hold as well; with more, the clocks are the partitions' own and the next maintenance
    // pass finds the gap, as the beat leaves them alone.
    tokio::time::sleep(lease * 2).await;
    let info = WorkerInfo {
        id: "w".into(),
        host: "h".into(),
        pod: None,
        queues: vec!["image_analysis".into()],
        concurrency: 1,
        in_flight: 0,
        started_at_ms: 1,
        last_seen_ms: 0,
        draining: false,
    };
    b.beat_worker(&info, lease).await.unwrap();
    if b.keys().count() == 1 {
        assert!(b.maintain().await.unwrap().held_until_ms.is_some());
    } else {
        assert!(b.maintain_for(lease).await.unwrap().held_until_ms.is_some());
    }
}
on_both!(outage_hold_t, reaping_waits_a_lease_after_nobody_was_there);

async fn last_attempt_lease_expiry_fails(env: Env) {
    let b = &env.broker;
    let q = b.enqueue(new(TaskKind::AnalyzeImage, 1)).await.unwrap();
    let c = env.consumer("w", &ALL, Duration::from_millis(150)).await;
    for attempt in 1..=3 {
        let claimed = c.try_claim().await.unwrap().expect("claimable");
        assert_eq!(claimed.task.attempts, attempt);
        maintain_until(b, |m| m.requeued + m.failed == 1).await;
    }
    let t = b.get(&q.id).await.unwrap().unwrap();
    assert_eq!(t.state, TaskState::Failed);
    assert_eq!(t.error.unwrap().kind, "lease_expired");
    let s = b.queue_stats("image_analysis").await.unwrap();
    assert_eq!((s.failed, s.total_failed, s.total_lease_expired), (1, 1, 3));
}
on_both!(last_attempt_t, last_attempt_lease_expiry_fails);

async fn retry_with_backoff_then_fail(env: Env) {
    let b = &env.broker;
    let q = b.enqueue(new(TaskKind::FullQuery, 1)).await.unwrap();
    let c = env.consumer("w", &ALL, LEASE).await;
    let err = TaskError::new("backend_unavailable", "model server returned 503");
    for attempt in 1..=2 {
        let claimed = c.try_claim().await.unwrap().unwrap();
        assert_eq!(claimed.task.attempts, attempt);
        let out = b
            .fail(&claimed.lease, &err, Retry::Retryable(None))
            .await
            .unwrap();
        assert!(matches!(out, FailOutcome::Delayed { .. }), "{out:?}");
        let t = b.get(&q.id).await.unwrap().unwrap();
        assert_eq!(t.state, TaskState::Delayed);
        assert!(t.retry_at_ms.is_some());
        assert_eq!(b.queue_stats("full_query").await.unwrap().delayed, 1);
        assert!(
            c.try_claim().await.unwrap().is_none(),
            "a delayed task is not claimable"
        );
        maintain_until(b, |m| m.promoted == 1).await;
    }
    let claimed = c.try_claim().await.unwrap().unwrap();
    assert_eq!(claimed.task.attempts, 3);
    let out = b
        .fail(&claimed.lease, &err, Retry::Retryable(None))
        .await
        .unwrap();
    assert_eq!(out, FailOutcome::Failed, "no attempts left");
    let t = b.get(&q.id).await.unwrap().unwrap();
    assert_eq!(t.state, TaskState::Failed);
    assert_eq!(t.error, Some(err));
    assert!(t.finished_at_ms.is_some());
}
on_both!(retry_backoff_t, retry_with_backoff_then_fail);

async fn retry_after_is_honoured(env: Env) {
    let b = &env.broker;
    b.enqueue(new(TaskKind::FullQuery, 1)).await.unwrap();
    let c = env.consumer("w", &ALL, LEASE).await;
    let claimed = c.try_claim().await.unwrap().unwrap();
    let before = b.queue_stats("full_query").await.unwrap().at_ms;
    let out = b
        .fail(
            &claimed.lease,
            &TaskError::new("rate_limited", "429"),
            Retry::Retryable(Some(Duration::from_secs(120))),
        )
        .await
        .unwrap();
    let FailOutcome::Delayed { retry_at_ms } = out else {
        panic!("{out:?}")
    };
    assert!(
        retry_at_ms >= before + 120_000,
        "Retry-After sets the minimum delay"
    );
}
on_both!(retry_after_t, retry_after_is_honoured);

/// A task keeps the trace context it was submitted with; the first attempt retried leaves
/// its span for the later ones; a task submitted without a context has none of it.
async fn trace_context_travels_with_the_task(env: Env) {
    let b = &env.broker;
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let traced = NewTask {
        trace: Some(TraceContext {
            traceparent: parent.into(),
            tracestate: "vendor=opaque".into(),
        }),
        ..new(TaskKind::FullQuery, 1)
    };
    let q = b.enqueue(traced).await.unwrap();
    let c = env.consumer("w", &ALL, LEASE).await;
    let err = TaskError::new("backend_unavailable", "503");

    let mut claimed = c.try_claim().await.unwrap().unwrap();
    assert_eq!(claimed.task.id, q.id);
    let trace = claimed.trace.clone().expect("the stored context");
    assert_eq!(
        (trace.traceparent.as_str(), trace.tracestate.as_str()),
        (parent, "vendor=opaque")
    );
    assert_eq!(claimed.first_attempt, None);
    let spans = [
        "00-4bf92f3577b34da6a3ce929d0e0e4736-1111111111111111-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-2222222222222222-01",
    ];
    for (attempt, span) in spans.into_iter().enumerate() {
        claimed.lease.span = Some(span.into());
        let out = b
            .fail(&claimed.lease, &err, Retry::Retryable(None))
            .await
            .unwrap();
        assert!(matches!(out, FailOutcome::Delayed { .. }), "{out:?}");
        maintain_until(b, |m| m.promoted == 1).await;
        claimed = c.try_claim().await.unwrap().unwrap();
        assert_eq!(claimed.task.attempts, attempt as u32 + 2);
        assert_eq!(claimed.trace, Some(trace.clone()), "kept over retries");
        assert_eq!(
            claimed.first_attempt.as_deref(),
            Some(spans[0]),
            "the first retried attempt's span is kept"
        );
    }
    b.complete(&claimed.lease, &json!("ok")).await.unwrap();

    b.enqueue(new(TaskKind::FullQuery, 2)).await.unwrap();
    let plain = c.try_claim().await.unwrap().unwrap();
    assert_eq!((plain.trace, plain.first_attempt), (None, None));
    let hash = task_hash(&env, &plain.task.id).await;
    assert!(
        !hash.contains_key("traceparent") && !hash.contains_key("tracestate"),
        "an untraced task stores no trace fields: {hash:?}"
    );
}
on_both!(trace_context_t, trace_context_travels_with_the_task);

async fn permanent_failure(env: Env) {
    let b = &env.broker;
    let q = b.enqueue(new(TaskKind::CompleteAnswer, 1)).await.unwrap();
    let c = env.consumer("w", &ALL, LEASE).await;
    let claimed = c.try_claim().await.unwrap().unwrap();
    let out = b
        .fail(
            &claimed.lease,
            &TaskError::new("bad_input", "not an image"),
            Retry::Permanent,
        )
        .await
        .unwrap();
    assert_eq!(out, FailOutcome::Failed);
    let t = b.get(&q.id).await.unwrap().unwrap();
    assert_eq!((t.state, t.attempts), (TaskState::Failed, 1));
    assert_eq!(t.error.unwrap().kind, "bad_input");

    // A failed task can be retried by hand: back on its queue with fresh attempts.
    b.retry(&q.id).await.unwrap();
    let t = b.get(&q.id).await.unwrap().unwrap();
    assert_eq!((t.state, t.attempts, t.error), (TaskState::Queued, 0, None));
    let claimed = c.try_claim().await.unwrap().unwrap();
    assert_eq!(claimed.task.id, q.id);
    b.complete(&claimed.lease, &json!("ok")).await.unwrap();
    assert_eq!(
        b.get(&q.id).await.unwrap().unwrap().state,
        TaskState::Finished
    );
}
on_both!(permanent_t, permanent_failure);

/// A task's hash as Redis holds it.
async fn task_hash(env: &Env, id: &TaskId) -> std::collections::HashMap<String, String> {
    redis::cmd("HGETALL")
        .arg(env.broker.keys().task(id))
        .query_async(&mut redis_conn(env).await)
        .await
        .unwrap()
}

async fn stored_payloads_read_back_by_kind(env: Env) {
    let b = &env.broker;
    let q = b.enqueue(new(TaskKind::FullQuery, 1)).await.unwrap();
    let stored = task_hash(&env, &q.id).await;
    // The kind's name in the hash, the payload struct's JSON in a key of its own.
    assert_eq!(stored["kind"], "full_query");
    assert!(!stored.contains_key("payload"), "{stored:?}");
    let mut conn = redis_conn(&env).await;
    let own: String = redis::cmd("GET")
        .arg(b.keys().of_task(&q.id).payload(q.id.as_str()))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(own, r#"{"question":"q1"}"#);

    // A payload that is not its kind's (a foreign writer) is failed as bad input at claim,
    // and the claim moves on to the next task.
    let next = b.enqueue(new(TaskKind::FullQuery, 2)).await.unwrap();
    let _: () = redis::cmd("SET")
        .arg(b.keys().of_task(&q.id).payload(q.id.as_str()))
        .arg(r#"{"n":1}"#)
        .query_async(&mut conn)
        .await
        .unwrap();
    let c = env.consumer("w", &ALL, LEASE).await;
    let claimed = c.try_claim().await.unwrap().expect("the next task");
    assert_eq!(claimed.task.id, next.id);
    assert_eq!(claimed.payload, sample_payload(TaskKind::FullQuery, "q2"));
    let fields = task_hash(&env, &q.id).await;
    assert_eq!(fields["state"], "failed");
    assert_eq!(fields["error_kind"], "bad_input");
    assert!(
        fields["error_msg"].contains("not a valid full_query payload"),
        "{}",
        fields["error_msg"]
    );

    // A task stored the old way, its payload in its hash, is still claimed with it.
    let old = b.enqueue(new(TaskKind::FullQuery, 3)).await.unwrap();
    let pkey = b.keys().of_task(&old.id).payload(old.id.as_str());
    let _: () = redis::pipe()
        .hset(b.keys().task(&old.id), "payload", r#"{"question":"q3"}"#)
        .del(&pkey)
        .query_async(&mut conn)
        .await
        .unwrap();
    let claimed = c.try_claim().await.unwrap().expect("the old task");
    assert_eq!(claimed.task.id, old.id);
    assert_eq!(claimed.payload, sample_payload(TaskKind::FullQuery, "q3"));
}
on_both!(stored_payloads_t, stored_payloads_read_back_by_kind);

async fn release_keeps_attempts_and_place(env: Env) {
    let b = &env.broker;
    let first = b.enqueue(new(TaskKind::AnalyzeImage, 1)).await.unwrap();
    let second = b.enqueue(new(TaskKind::AnalyzeImage, 2)).await.unwrap();
    let c = env.consumer("w", &ALL, LEASE).await;
    let claimed = c.try_claim().await.unwrap().unwrap();
    assert_eq!(claimed.task.id, first.id);
    assert_eq!(
        b.release(&claimed.lease).await.unwrap(),
        ReleaseOutcome::Requeued
    );
    let t = b.get(&first.id).await.unwrap().unwrap();
    assert_eq!(
        (t.state, t.attempts, t.worker),
        (TaskState::Queued, 0, None)
    );
    assert_eq!(
        b.position(&first.id, "image_analysis").await.unwrap(),
        Some(0)
    );
    assert_eq!(
        b.position(&second.id, "image_analysis").await.unwrap(),
        Some(1)
    );
    let again = c.try_claim().await.unwrap().unwrap();
    assert_eq!((again.task.id, again.task.attempts), (first.id, 1));
}
on_both!(release_t, release_keeps_attempts_and_place);

async fn cancel_queued_and_running(env: Env) {
    let b = &env.broker;
    let waiting = b.enqueue(new(TaskKind::FullQuery, 1)).await.unwrap();
    assert_eq!(
        b.cancel(&waiting.id).await.unwrap(),
        CancelOutcome::Canceled
    );
    let t = b.get(&waiting.id).await.unwrap().unwrap();
    assert_eq!(t.state, TaskState::Canceled);
    assert_eq!(b.position(&waiting.id, "full_query").await.unwrap(), None);
    assert!(matches!(
        b.cancel(&waiting.id).await,
        Err(QueueError::WrongState { .. })
    ));

    let running = b.enqueue(new(TaskKind::FullQuery, 2)).await.unwrap();
    let c = env.consumer("w", &ALL, LEASE).await;
    let claimed = c.try_claim().await.unwrap().unwrap();
    assert_eq!(claimed.task.id, running.id);
    assert_eq!(
        b.cancel(&running.id).await.unwrap(),
        CancelOutcome::Requested
    );
    assert_eq!(
        b.get(&running.id).await.unwrap().unwrap().state,
        TaskState::Started
    );
    assert!(
        b.heartbeat(&claimed.lease, None)
            .await
            .unwrap()
            .cancel_requested
    );
    let out = b
        .fail(
            &claimed.lease,
            &TaskError::new("canceled", "stopped"),
            Retry::Retryable(None),
        )
        .await
        .unwrap();
    assert_eq!(out, FailOutcome::Canceled);
    let t = b.get(&running.id).await.unwrap().unwrap();
    assert_eq!(t.state, TaskState::Canceled);
    let s = b.queue_stats("full_query").await.unwrap();
    assert_eq!((s.canceled, s.queued, s.started), (2, 0, 0));
}
on_both!(cancel_t, cancel_queued_and_running);

async fn strict_priority(env: Env) {
    let b = &env.broker;
    let low = b.enqueue(new(TaskKind::FullQuery, 1)).await.unwrap();
    let mid = b.enqueue(new(TaskKind::CompleteAnswer, 2)).await.unwrap();
    let high = b.enqueue(new(TaskKind::AnalyzeImage, 3)).await.unwrap();
    let high2 = b.enqueue(new(TaskKind::AnalyzeImage, 4)).await.unwrap();
    let c = env.consumer("w", &ALL, LEASE).await;
    let mut order = Vec::new();
    while let Some(claimed) = c.try_claim().await.unwrap() {
        order.push(claimed.task.id);
    }
    assert_eq!(order, vec![high.id, high2.id, mid.id, low.id]);
}
on_both!(strict_t, strict_priority);

async fn weighted_priority_serves_every_queue(env: Env) {
    let b = &env.broker;
    for n in 0..60 {
        for kind in TaskKind::ALL {
            b.enqueue(new(kind, n)).await.unwrap();
        }
    }
    let c = env
        .consumer_with("w", &ALL, LEASE, ClaimPolicy::Weighted)
        .await;
    let mut served = std::collections::HashMap::<String, u32>::new();
    for _ in 0..100 {
        let claimed = c.try_claim().await.unwrap().unwrap();
        *served.entry(claimed.task.queue).or_default() += 1;
    }
    // Weights 6/3/1 over a flood of every kind: exact shares, nobody starved.
    assert_eq!(served["image_analysis"], 60);
    assert_eq!(served["answer_generation"], 30);
    assert_eq!(served["full_query"], 10);
    // Once the high queue is empty its turns fall through to the others.
    let mut rest = 0;
    while c.try_claim().await.unwrap().is_some() {
        rest += 1;
    }
    assert_eq!(rest, 180 - 100);
}
on_both!(weighted_t, weighted_priority_serves_every_queue);

async fn claim_of_k_follows_strict_priority_and_leases_each(env: Env) {
    let b = &env.broker;
    let low = b.enqueue(new(TaskKind::FullQuery, 1)).await.unwrap();
    let low2 = b.enqueue(new(TaskKind::FullQuery, 2)).await.unwrap();
    let mid = b.enqueue(new(TaskKind::CompleteAnswer, 3)).await.unwrap();
    let high = b.enqueue(new(TaskKind::AnalyzeImage, 4)).await.unwrap();
    let high2 = b.enqueue(new(TaskKind::AnalyzeImage, 5)).await.unwrap();
    let c = env.consumer("w", &ALL, LEASE).await;
    let claimed = c.try_claim_many(4).await.unwrap();
    let ids: Vec<_> = claimed.iter().map(|c| c.task.id.clone()).collect();
    assert_eq!(ids, vec![high.id, high2.id, mid.id, low.id]);
    let tokens: std::collections::HashSet<_> =
        claimed.iter().map(|c| c.lease.token.clone()).collect();
    assert_eq!(tokens.len(), 4, "every task has a lease of its own");
    for c in &claimed {
        assert_eq!(c.task.state, TaskState::Started);
        assert_eq!(c.task.attempts, 1);
        assert_eq!(c.task.worker.as_deref(), Some("w"));
        // Each lease is the one stored on its task: it heartbeats and completes.
        assert!(!b.heartbeat(&c.lease, None).await.unwrap().cancel_requested);
    }
    let mut started = 0;
    for q in ALL {
        started += b.queue_stats(q).await.unwrap().started;
    }
    assert_eq!(started, 4);
    for c in &claimed {
        b.complete(&c.lease, &json!({"n": 1})).await.unwrap();
        // A lease of one task does not work on another.
        let mut forged = c.lease.clone();
        forged.task = low2.id.clone();
        assert!(matches!(
            b.heartbeat(&forged, None).await,
            Err(QueueError::LeaseLost(_))
        ));
    }
    let rest = c.try_claim_many(4).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].task.id, low2.id);
}
on_both!(
    claim_of_k_strict_t,
    claim_of_k_follows_strict_priority_and_leases_each
);

/// The wake-up tokens of a queue, over every partition.
async fn wake_up_tokens(
    conn: &mut impl redis::aio::ConnectionLike,
    b: &ragpool_queue::Broker,
    queue: &str,
) -> u64 {
    let mut total = 0;
    for part in b.keys().partitions() {
        let n: u64 = redis::cmd("LLEN")
            .arg(part.queue(queue).signal)
            .query_async(conn)
            .await
            .unwrap();
        total += n;
    }
    total
}

async fn claim_of_k_with_fewer_ready_returns_what_there_is(env: Env) {
    let b = &env.broker;
    for n in 0..3 {
        b.enqueue(new(TaskKind::CompleteAnswer, n)).await.unwrap();
    }
    let c = env.consumer("w", &ALL, LEASE).await;
    assert_eq!(c.try_claim_many(10).await.unwrap().len(), 3);
    assert!(c.try_claim_many(10).await.unwrap().is_empty());
    // The wake-up tokens follow the ready set: none left, so a waiting consumer sleeps.
    let mut conn = redis_conn(&env).await;
    let tokens = wake_up_tokens(&mut conn, b, "answer_generation").await;
    assert_eq!(tokens, 0);
    // A claim of more than the most one call takes returns that many.
    for n in 0..40 {
        b.enqueue(new(TaskKind::CompleteAnswer, n)).await.unwrap();
    }
    let many = c.try_claim_many(1000).await.unwrap();
    assert_eq!(many.len(), ragpool_queue::MAX_CLAIM);
    let tokens = wake_up_tokens(&mut conn, b, "answer_generation").await;
    assert_eq!(tokens, 40 - ragpool_queue::MAX_CLAIM as u64);
    let blocking = c.claim_many(100, Duration::from_millis(200)).await.unwrap();
    assert_eq!(blocking.len(), 40 - ragpool_queue::MAX_CLAIM);
}
on_both!(
    claim_of_k_fewer_t,
    claim_of_k_with_fewer_ready_returns_what_there_is
);

async fn weighted_claims_of_k_keep_the_shares(env: Env) {
    let b = &env.broker;
    for n in 0..60 {
        for kind in TaskKind::ALL {
            b.enqueue(new(kind, n)).await.unwrap();
        }
    }
    let c = env
        .consumer_with("w", &ALL, LEASE, ClaimPolicy::Weighted)
        .await;
    // 100 claims in calls of 7 (the last of 2): the same 60/30/10 as 100 claims of one.
    let mut served = std::collections::HashMap::<String, u32>::new();
    let mut taken = 0;
    while taken < 100 {
        let claimed = c.try_claim_many(7.min(100 - taken)).await.unwrap();
        assert!(!claimed.is_empty());
        taken += claimed.len();
        for t in claimed {
            *served.entry(t.task.queue).or_default() += 1;
        }
    }
    assert_eq!(served["image_analysis"], 60);
    assert_eq!(served["answer_generation"], 30);
    assert_eq!(served["full_query"], 10);
    // The high queue is empty now: its turns fall through, heaviest queue first.
    let next = c.try_claim_many(5).await.unwrap();
    assert_eq!(next.len(), 5);
    assert!(next.iter().all(|t| t.task.queue != "image_analysis"));
    assert_eq!(next[0].task.queue, "answer_generation");
}
on_both!(weighted_claim_of_k_t, weighted_claims_of_k_keep_the_shares);

async fn blocking_claim_wakes_on_enqueue(env: Env) {
    let b = env.broker.clone();
    let c = env.consumer("w", &["answer_generation"], LEASE).await;
    let waiter = tokio::spawn(async move { c.claim(Duration::from_secs(30)).await });
    // No ordering is needed: a token pushed before the waiter blocks wakes it all the same.
    let q = b.enqueue(new(TaskKind::CompleteAnswer, 1)).await.unwrap();
    let claimed = waiter
        .await
        .unwrap()
        .unwrap()
        .expect("woken by the enqueue");
    assert_eq!(claimed.task.id, q.id);
    let c2 = env.consumer("w2", &["answer_generation"], LEASE).await;
    assert!(
        c2.claim(Duration::from_millis(200))
            .await
            .unwrap()
            .is_none()
    );
}
on_both!(blocking_t, blocking_claim_wakes_on_enqueue);

async fn events_and_wait(env: Env) {
    let b = env.broker.clone();
    let hub = b.events().await.unwrap();
    let mut rx = hub.subscribe();
    let q = b.enqueue(new(TaskKind::AnalyzeImage, 1)).await.unwrap();
    let id = q.id.clone();
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move { b.wait_for_end(&id, Duration::from_secs(30)).await })
    };
    let c = env.consumer("w", &ALL, LEASE).await;
    let claimed = c.try_claim().await.unwrap().unwrap();
    b.heartbeat(
        &claimed.lease,
        Some(&Progress {
            percent: 50,
            message: "half".into(),
        }),
    )
    .await
    .unwrap();
    b.complete(&claimed.lease, &json!({"ok": true}))
        .await
        .unwrap();
    let ended = waiter.await.unwrap().unwrap().unwrap();
    assert_eq!(ended.state, TaskState::Finished);

    let mut seen = Vec::new();
    while seen.last() != Some(&TaskState::Finished) {
        let ev = rx.recv().await.unwrap();
        assert_eq!(ev.task_id, q.id.as_str());
        if ev.details.get("progress").map(String::as_str) == Some("50") {
            assert_eq!(ev.details["message"], "half");
        }
        seen.push(ev.state);
    }
    assert_eq!(
        seen,
        vec![
            TaskState::Queued,
            TaskState::Started,
            TaskState::Started,
            TaskState::Finished
        ]
    );
}
on_both!(events_t, events_and_wait);

async fn streamed_text_and_its_events(env: Env) {
    let b = &env.broker;
    let mut rx = b.events().await.unwrap().subscribe();
    let q = b.enqueue(new(TaskKind::CompleteAnswer, 1)).await.unwrap();
    let c = env.consumer("w", &ALL, LEASE).await;
    let first = c.try_claim().await.unwrap().unwrap();
    assert_eq!(b.streamed_text(&q.id).await.unwrap(), None, "nothing yet");
    let acks = [
        b.publish_delta(&first.lease, "Hel").await.unwrap(),
        b.publish_delta(&first.lease, "lo").await.unwrap(),
    ];
    assert_eq!(
        acks.map(|a| (a.run, a.attempt, a.seq, a.cancel_requested)),
        [(1, 1, 1, false), (1, 1, 2, false)]
    );
    let so_far = b.streamed_text(&q.id).await.unwrap().unwrap();
    assert_eq!(
        (so_far.attempt, so_far.seq, so_far.text.as_str()),
        (1, 2, "Hello")
    );

    // The pieces are events of the running task, in order.
    let mut pieces = Vec::new();
    while pieces.len() < 2 {
        let ev = rx.recv().await.unwrap();
        assert_eq!(ev.task_id, q.id.as_str());
        if let Some(delta) = ev.delta {
            assert_eq!(ev.state, TaskState::Started);
            assert!(!ev.details.contains_key("delta"), "{:?}", ev.details);
            pieces.push((delta.attempt, delta.seq, delta.text));
        }
    }
    assert_eq!(pieces, [(1, 1, "Hel".into()), (1, 2, "lo".into())]);

    // A failed attempt's text is not the task's text so far; the next attempt starts again.
    let err = TaskError::new("backend_unavailable", "cut off");
    b.fail(&first.lease, &err, Retry::Retryable(None))
        .await
        .unwrap();
    assert_eq!(b.streamed_text(&q.id).await.unwrap(), None, "delayed");
    maintain_until(b, |m| m.promoted == 1).await;
    let second = c.try_claim().await.unwrap().unwrap();
    assert_eq!(
        b.streamed_text(&q.id).await.unwrap(),
        None,
        "new run, no text yet"
    );
    assert!(matches!(
        b.publish_delta(&first.lease, "stale").await,
        Err(QueueError::LeaseLost(_))
    ));
    let ack = b.publish_delta(&second.lease, "New").await.unwrap();
    assert_eq!((ack.attempt, ack.seq), (2, 1));
    let so_far = b.streamed_text(&q.id).await.unwrap().unwrap();
    assert_eq!(
        (so_far.attempt, so_far.seq, so_far.text.as_str()),
        (2, 1, "New")
    );

    // A cancel is reported to the publisher, as to a heartbeat.
    b.cancel(&q.id).await.unwrap();
    let ack = b.publish_delta(&second.lease, " text").await.unwrap();
    assert!(ack.cancel_requested);
    b.complete(&second.lease, &json!({"answer": "New text"}))
        .await
        .unwrap();
    assert_eq!(b.streamed_text(&q.id).await.unwrap(), None, "ended");
}

async fn runs_are_numbered_across_retries_by_hand(env: Env) {
    let b = &env.broker;
    let q = b.enqueue(new(TaskKind::CompleteAnswer, 1)).await.unwrap();
    let c = env.consumer("w", &ALL, LEASE).await;
    let first = c.try_claim().await.unwrap().unwrap();
    b.publish_delta(&first.lease, "one").await.unwrap();
    let err = TaskError::new("bad_input", "no");
    b.fail(&first.lease, &err, Retry::Permanent).await.unwrap();
    b.retry(&q.id).await.unwrap();
    let again = c.try_claim().await.unwrap().unwrap();
    assert_eq!(
        again.task.attempts, 1,
        "a retry by hand starts the attempts over"
    );
    let ack = b.publish_delta(&again.lease, "two").await.unwrap();
    assert_eq!(
        (ack.run, ack.attempt, ack.seq),
        (2, 1, 1),
        "but not the runs"
    );
}
on_both!(runs_t, runs_are_numbered_across_retries_by_hand);
on_both!(streamed_t, streamed_text_and_its_events);

async fn worker_registry(env: Env) {
    let b = &env.broker;
    let info = |id: &str, in_flight| WorkerInfo {
        id: id.into(),
        host: "h".into(),
        pod: Some(format!("pod-{id}")),
        queues: vec!["image_analysis".into()],
        concurrency: 4,
        in_flight,
        started_at_ms: 1,
        last_seen_ms: 0,
        draining: false,
    };
    b.register_worker(&info("a", 1), Duration::from_secs(30))
        .await
        .unwrap();
    b.register_worker(&info("b", 0), Duration::from_secs(30))
        .await
        .unwrap();
    b.register_worker(&info("short", 0), Duration::from_millis(50))
        .await
        .unwrap();
    let mut ids: Vec<String> = b
        .workers(Duration::from_secs(30))
        .await
        .unwrap()
        .into_iter()
        .map(|w| w.id)
        .collect();
    ids.sort();
    assert_eq!(ids, vec!["a", "b", "short"]);
    let a = b
        .workers(Duration::from_secs(30))
        .await
        .unwrap()
        .into_iter()
        .find(|w| w.id == "a")
        .unwrap();
    assert_eq!((a.in_flight, a.pod.as_deref()), (1, Some("pod-a")));
    assert!(a.last_seen_ms > 0);
    b.deregister_worker("b").await.unwrap();
    // "short" stops heartbeating: its record expires and it drops out.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ids: Vec<String> = b
            .workers(Duration::from_secs(30))
            .await
            .unwrap()
            .into_iter()
            .map(|w| w.id)
            .collect();
        if ids == vec!["a"] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still listed: {ids:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
on_both!(workers_t, worker_registry);

async fn stats_counts_every_state(env: Env) {
    let b = &env.broker;
    let c = env.consumer("w", &["answer_generation"], LEASE).await;
    for n in 0..5 {
        b.enqueue(new(TaskKind::CompleteAnswer, n)).await.unwrap();
    }
    let done = c.try_claim().await.unwrap().unwrap();
    b.complete(&done.lease, &json!(1)).await.unwrap();
    let failed = c.try_claim().await.unwrap().unwrap();
    b.fail(
        &failed.lease,
        &TaskError::new("bad_input", "x"),
        Retry::Permanent,
    )
    .await
    .unwrap();
    let delayed = c.try_claim().await.unwrap().unwrap();
    b.fail(
        &delayed.lease,
        &TaskError::new("backend_unavailable", "x"),
        Retry::Retryable(Some(Duration::from_secs(60))),
    )
    .await
    .unwrap();
    let _running = c.try_claim().await.unwrap().unwrap();
    let s = b.queue_stats("answer_generation").await.unwrap();
    assert_eq!(
        (
            s.queued, s.started, s.delayed, s.finished, s.failed, s.canceled
        ),
        (1, 1, 1, 1, 1, 0)
    );
    assert_eq!(
        (s.total_enqueued, s.total_finished, s.total_failed),
        (5, 1, 1)
    );
    assert_eq!(s.wait.samples, 4);
    assert_eq!(s.processing.samples, 1);
    assert!(s.oldest_queued_age_ms < 60_000);
    let all = b.stats().await.unwrap();
    let names: Vec<&str> = all.iter().map(|s| s.queue.as_str()).collect();
    assert_eq!(names, ALL.to_vec());
}
on_both!(stats_t, stats_counts_every_state);

async fn concurrent_reapers_handle_each_lease_once(env: Env) {
    let b = &env.broker;
    for n in 0..20 {
        b.enqueue(new(TaskKind::AnalyzeImage, n)).await.unwrap();
    }
    let dead = env.consumer("dead", &ALL, Duration::from_millis(150)).await;
    while dead.try_claim().await.unwrap().is_some() {}
    // Eight reapers race over the same expired leases until all twenty are back.
    let requeued = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut reapers = Vec::new();
    for _ in 0..8 {
        let (b, requeued) = (b.clone(), requeued.clone());
        reapers.push(tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while requeued.load(std::sync::atomic::Ordering::SeqCst) < 20 {
                let m = b.maintain().await.unwrap();
                requeued.fetch_add(m.requeued, std::sync::atomic::Ordering::SeqCst);
                assert!(tokio::time::Instant::now() < deadline, "leases not reaped");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    for r in reapers {
        r.await.unwrap();
    }
    assert_eq!(
        requeued.load(std::sync::atomic::Ordering::SeqCst),
        20,
        "each lease reaped once"
    );
    let s = b.queue_stats("image_analysis").await.unwrap();
    assert_eq!((s.queued, s.started, s.total_lease_expired), (20, 0, 20));
    let alive = env.consumer("alive", &ALL, LEASE).await;
    let mut seen = std::collections::HashSet::new();
    while let Some(c) = alive.try_claim().await.unwrap() {
        assert_eq!(c.task.attempts, 2);
        assert!(seen.insert(c.task.id), "a task was queued twice");
    }
    assert_eq!(seen.len(), 20);
}
on_both!(
    concurrent_reapers_t,
    concurrent_reapers_handle_each_lease_once
);

/// Changing the partition count: refused while tasks wait, then recorded; processes with the
/// other count are refused; ended tasks stay readable by id, and a task that failed under the
/// old count is not retried into a queue nobody reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_partition_count_changes_only_over_empty_queues() {
    let env = Env::single().await;
    let with = |count: u16| {
        let mut config = env.broker.config().clone();
        config.partitions = count;
        async move { ragpool_queue::Broker::connect(config).await.unwrap() }
    };
    let (old, new_count) = if env.broker.keys().count() == 1 {
        (env.broker.clone(), 6)
    } else {
        (env.broker.clone(), 1)
    };
    let waiting = old.enqueue(new(TaskKind::FullQuery, 1)).await.unwrap();
    let done = old.enqueue(new(TaskKind::FullQuery, 2)).await.unwrap();
    let c = env.consumer("w", &ALL, LEASE).await;
    let claimed = c.try_claim_many(2).await.unwrap();
    assert_eq!(claimed.len(), 2);
    let (first, second) = (&claimed[0], &claimed[1]);
    old.fail(
        &first.lease,
        &TaskError::new("bad_input", "no"),
        Retry::Permanent,
    )
    .await
    .unwrap();
    old.release(&second.lease).await.unwrap();

    let err = old.repartition(new_count).await.unwrap_err().to_string();
    assert!(
        err.contains("full_query") && err.contains("1 queued"),
        "{err}"
    );
    let again = c.try_claim().await.unwrap().unwrap();
    old.complete(&again.lease, &json!("ok")).await.unwrap();
    assert_eq!(
        old.repartition(new_count).await.unwrap(),
        old.keys().count()
    );

    let other = with(new_count).await;
    other.check_layout().await.unwrap();
    // The process with the count that was recorded before now refuses.
    let stale = with(old.keys().count()).await;
    assert!(matches!(
        stale.check_layout().await,
        Err(QueueError::Layout { .. })
    ));
    for id in [&waiting.id, &done.id] {
        assert!(other.get(id).await.unwrap().unwrap().state.is_terminal());
    }
    let failed = if first.task.id == waiting.id {
        &waiting.id
    } else {
        &done.id
    };
    let err = other.retry(failed).await.unwrap_err().to_string();
    assert!(err.contains("earlier partition layout"), "{err}");
}
