//! Fair share between owners (API keys) within a queue, against a real Redis: once on a
//! single server and once on a 3-master cluster, with the suite's partition count.

mod common;

use std::time::Duration;

use common::{ALL, Env, maintain_until};
use ragpool_queue::testing::sample_payload;
use ragpool_queue::{
    Claimed, FailOutcome, NewTask, OwnerShare, QueueError, Retry, TaskError, TaskKind,
};
use serde_json::json;

const LEASE: Duration = Duration::from_secs(30);

fn task(owner: Option<&str>, n: usize, share: OwnerShare) -> NewTask {
    let t = NewTask::new(sample_payload(TaskKind::FullQuery, &format!("q{n}")));
    match owner {
        Some(owner) => t.owned_by(owner, share),
        None => t,
    }
}

fn tasks(owner: &str, count: usize, share: OwnerShare) -> Vec<NewTask> {
    (0..count).map(|n| task(Some(owner), n, share)).collect()
}

fn owner_of(c: &Claimed) -> &str {
    c.task.owner.as_deref().unwrap_or("")
}

async fn a_late_owner_is_not_starved_by_a_backlog(env: Env) {
    let b = &env.broker;
    b.enqueue_many(tasks("alice", 5000, OwnerShare::default()))
        .await
        .unwrap();
    b.enqueue_many(tasks("bob", 10, OwnerShare::default()))
        .await
        .unwrap();
    let c = env.consumer("w", &ALL, LEASE).await;
    let mut bobs = 0;
    for _ in 0..20 {
        let claimed = c.try_claim().await.unwrap().expect("a task");
        if owner_of(&claimed) == "bob" {
            bobs += 1;
        }
    }
    assert_eq!(bobs, 10, "all of bob's tasks within the next 20 claims");
}
on_both!(late_owner, a_late_owner_is_not_starved_by_a_backlog);

async fn weights_set_the_shares(env: Env) {
    let b = &env.broker;
    let heavy = OwnerShare {
        weight: 3,
        ..OwnerShare::default()
    };
    b.enqueue_many(tasks("heavy", 400, heavy)).await.unwrap();
    b.enqueue_many(tasks("light", 400, OwnerShare::default()))
        .await
        .unwrap();
    let c = env.consumer("w", &ALL, LEASE).await;
    let mut heavy_claims = 0;
    for _ in 0..200 {
        let claimed = c.try_claim().await.unwrap().expect("a task");
        if owner_of(&claimed) == "heavy" {
            heavy_claims += 1;
        }
    }
    // 3:1 of 200 is 150; within 5 %.
    assert!(
        (143..=157).contains(&heavy_claims),
        "heavy got {heavy_claims} of 200"
    );
}
on_both!(weights, weights_set_the_shares);

async fn max_in_flight_holds_under_concurrent_consumers(env: Env) {
    let b = &env.broker;
    let capped = OwnerShare {
        max_in_flight: Some(2),
        ..OwnerShare::default()
    };
    b.enqueue_many(tasks("capped", 20, capped)).await.unwrap();
    b.enqueue_many(tasks("free", 20, OwnerShare::default()))
        .await
        .unwrap();
    let mut consumers = Vec::new();
    for i in 0..8 {
        consumers.push(env.consumer(&format!("w{i}"), &ALL, LEASE).await);
    }
    let mut held: Vec<Claimed> = Vec::new();
    let mut capped_done = 0;
    while capped_done < 20 {
        let round = futures::future::join_all(consumers.iter().map(|c| c.try_claim_many(2))).await;
        for claimed in round {
            held.extend(claimed.unwrap());
        }
        let capped_now = held.iter().filter(|c| owner_of(c) == "capped").count();
        assert!(
            capped_now <= 2,
            "{capped_now} of capped's tasks started at once"
        );
        let stats = b.owner_stats().await.unwrap();
        let capped_stats = stats.iter().find(|o| o.owner == "capped");
        assert!(capped_stats.is_none_or(|o| o.started <= 2 && o.max_in_flight == Some(2)));
        // The other owner is never held back by capped's limit.
        if capped_done == 0 {
            assert!(
                held.iter().filter(|c| owner_of(c) == "free").count() >= 8,
                "free's tasks take the other slots"
            );
        }
        // End every started task of capped's; the others keep running.
        let (mine, others): (Vec<Claimed>, Vec<Claimed>) =
            held.into_iter().partition(|c| owner_of(c) == "capped");
        assert!(
            !mine.is_empty(),
            "capped gets its slots back after each end"
        );
        for c in mine {
            b.complete(&c.lease, &json!({"answer": "ok"}))
                .await
                .unwrap();
            capped_done += 1;
        }
        held = others;
    }
}
on_both!(
    max_in_flight,
    max_in_flight_holds_under_concurrent_consumers
);

async fn max_queued_refuses_exactly_at_it(env: Env) {
    let b = &env.broker;
    let capped = OwnerShare {
        max_queued: Some(5),
        ..OwnerShare::default()
    };
    for n in 0..5 {
        b.enqueue(task(Some("capped"), n, capped)).await.unwrap();
    }
    let refused = b
        .enqueue(task(Some("capped"), 5, capped))
        .await
        .unwrap_err();
    assert!(
        matches!(
            refused,
            QueueError::OwnerQueued {
                max: 5,
                queued: 5,
                asked: 1
            }
        ),
        "{refused:?}"
    );
    // A batch that does not fit is refused whole.
    b.enqueue_many(tasks("capped", 2, capped))
        .await
        .unwrap_err();
    // Others are not held back.
    b.enqueue(task(Some("other"), 0, OwnerShare::default()))
        .await
        .unwrap();
    b.enqueue(task(None, 0, OwnerShare::default()))
        .await
        .unwrap();
    // A claim makes room for exactly one more.
    let c = env.consumer("w", &ALL, LEASE).await;
    loop {
        let claimed = c.try_claim().await.unwrap().expect("a task");
        if owner_of(&claimed) == "capped" {
            break;
        }
    }
    b.enqueue(task(Some("capped"), 6, capped)).await.unwrap();
    b.enqueue(task(Some("capped"), 7, capped))
        .await
        .unwrap_err();
    let stats = b.owner_stats().await.unwrap();
    let capped_stats = stats.iter().find(|o| o.owner == "capped").unwrap();
    assert_eq!((capped_stats.queued, capped_stats.started), (5, 1));
}
on_both!(max_queued, max_queued_refuses_exactly_at_it);

async fn one_owner_is_served_first_in_first_out(env: Env) {
    let b = &env.broker;
    let mut ids = Vec::new();
    for n in 0..30 {
        ids.push(
            b.enqueue(task(None, n, OwnerShare::default()))
                .await
                .unwrap()
                .id,
        );
    }
    // A batch goes to one partition in one call; its tasks stay in order after the others.
    for e in b
        .enqueue_many(
            (30..40)
                .map(|n| task(None, n, OwnerShare::default()))
                .collect(),
        )
        .await
        .unwrap()
    {
        ids.push(e.id);
    }
    let c = env.consumer("w", &ALL, LEASE).await;
    let mut order = Vec::new();
    while let Some(claimed) = c.try_claim().await.unwrap() {
        order.push(claimed.task.id);
    }
    assert_eq!(order, ids);
}
on_both!(fifo, one_owner_is_served_first_in_first_out);

async fn a_canceled_task_leaves_its_owners_turn(env: Env) {
    let b = &env.broker;
    let gone = b
        .enqueue(task(Some("alice"), 0, OwnerShare::default()))
        .await
        .unwrap();
    let kept = b
        .enqueue(task(Some("bob"), 0, OwnerShare::default()))
        .await
        .unwrap();
    b.cancel(&gone.id).await.unwrap();
    let c = env.consumer("w", &ALL, LEASE).await;
    let claimed = c.try_claim().await.unwrap().expect("bob's task");
    assert_eq!(claimed.task.id, kept.id);
    assert!(c.try_claim().await.unwrap().is_none());
}
on_both!(canceled, a_canceled_task_leaves_its_owners_turn);

/// The owner's (queued, started) tasks, as the stats show them; (0, 0) once it has none.
async fn counts(env: &Env, owner: &str) -> (u64, u64) {
    let stats = env.broker.owner_stats().await.unwrap();
    stats
        .iter()
        .find(|o| o.owner == owner)
        .map_or((0, 0), |o| (o.queued, o.started))
}

async fn an_owners_counts_follow_every_transition(env: Env) {
    let b = &env.broker;
    let mut ids = Vec::new();
    for e in b
        .enqueue_many(tasks("o", 6, OwnerShare::default()))
        .await
        .unwrap()
    {
        ids.push(e.id);
    }
    assert_eq!(counts(&env, "o").await, (6, 0));
    let c = env.consumer("w", &ALL, LEASE).await;
    let mut claimed = c.try_claim_many(4).await.unwrap();
    assert_eq!(counts(&env, "o").await, (2, 4));
    let done = claimed.pop().unwrap();
    b.complete(&done.lease, &json!(1)).await.unwrap();
    assert_eq!(counts(&env, "o").await, (2, 3));
    let failed = claimed.pop().unwrap();
    let err = TaskError::new("backend_unavailable", "503");
    let out = b
        .fail(&failed.lease, &err, Retry::Retryable(None))
        .await
        .unwrap();
    assert!(matches!(out, FailOutcome::Delayed { .. }), "{out:?}");
    assert_eq!(counts(&env, "o").await, (2, 2), "a delayed task is neither");
    let released = claimed.pop().unwrap();
    b.release(&released.lease).await.unwrap();
    assert_eq!(counts(&env, "o").await, (3, 1));
    let queued = ids
        .iter()
        .rev()
        .find(|id| **id != released.task.id)
        .unwrap();
    b.cancel(queued).await.unwrap();
    assert_eq!(counts(&env, "o").await, (2, 1));
    maintain_until(b, |m| m.promoted == 1).await;
    assert_eq!(counts(&env, "o").await, (3, 1), "the delayed task is back");
    // A dead worker's lease expires: its task goes back to the queue.
    let dead = env.consumer("dead", &ALL, Duration::from_millis(200)).await;
    let mut lost = dead.try_claim_many(3).await.unwrap();
    assert_eq!((lost.len(), counts(&env, "o").await), (3, (0, 4)));
    maintain_until(b, |m| m.requeued == 3).await;
    assert_eq!(counts(&env, "o").await, (3, 1));
    lost.clear();
    for task in c
        .try_claim_many(8)
        .await
        .unwrap()
        .into_iter()
        .chain(claimed)
    {
        b.complete(&task.lease, &json!(2)).await.unwrap();
    }
    assert_eq!(counts(&env, "o").await, (0, 0));
    assert!(b.owner_stats().await.unwrap().is_empty());
}
on_both!(owner_counts, an_owners_counts_follow_every_transition);
