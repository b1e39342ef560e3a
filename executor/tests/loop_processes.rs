//! `ragpool-executor` processes that die or are told to stop with tasks in flight: no task is
//! lost, and a clean stop spends no attempt.

use std::sync::Arc;
use std::time::Duration;

use ragpool_queue::{TaskId, TaskState};
use serde_json::json;
use tokio::sync::Notify;

mod loop_support;
use loop_support::{
    Behaviour, Env, Events, ExecutorProcess, FakeRag, details_of, error_kinds, http_executor_env,
    quick_queues, states,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_of_a_killed_executor_are_finished_by_another() {
    let env = Env::start(quick_queues()).await;
    let url = env.url();
    // First delivery of each question: hold it forever (the executor dies holding it);
    // second delivery: answer.
    let rag = FakeRag::start(|request, earlier| {
        if earlier == 0 {
            Behaviour::Hang
        } else {
            Behaviour::Answer(
                200,
                json!({"answer": format!("re: {}", request.question())}),
            )
        }
    })
    .await;

    let mut env_a = http_executor_env(&url, &rag, "executor-a");
    env_a.extend([("RAGPOOL_LEASE_SECONDS", "1"), ("RAGPOOL_CONCURRENCY", "3")]);
    let a = ExecutorProcess::start(&env_a).await;
    let mut ids: Vec<TaskId> = Vec::new();
    for q in ["first?", "second?", "third?"] {
        ids.push(env.ask(q).await);
    }
    for _ in 0..3 {
        rag.next_request().await;
    }
    for id in &ids {
        let task = env.broker.get(id).await.expect("read").expect("exists");
        assert_eq!(task.worker.as_deref(), Some("executor-a"));
    }
    a.sigkill().await;

    let mut env_b = http_executor_env(&url, &rag, "executor-b");
    env_b.push(("RAGPOOL_LEASE_SECONDS", "1"));
    let b = ExecutorProcess::start(&env_b).await;
    for (id, q) in ids.iter().zip(["first?", "second?", "third?"]) {
        let task = env.ended(id).await;
        assert_eq!(task.state, TaskState::Finished, "{task:?}");
        assert_eq!(task.result, Some(json!({"answer": format!("re: {q}")})));
        assert_eq!(task.attempts, 2, "the dead executor's attempt counts");
        assert_eq!(task.worker.as_deref(), Some("executor-b"));
    }
    let stats = env
        .broker
        .queue_stats("answer_generation")
        .await
        .expect("stats");
    assert_eq!(stats.total_lease_expired, 3);
    assert_eq!(stats.total_finished, 3);
    assert_eq!(rag.requests().len(), 6, "each question was sent twice");

    b.sigterm();
    let (status, output) = b.exit().await;
    assert!(status.success(), "{status}\n{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_short_tasks_and_releases_long_ones_without_spending_attempts() {
    let env = Env::start(quick_queues()).await;
    let url = env.url();
    let short_done = Arc::new(Notify::new());
    let rag = {
        let short_done = short_done.clone();
        FakeRag::start(
            move |request, earlier| match (request.question(), earlier) {
                ("short", _) => {
                    Behaviour::AnswerWhen(short_done.clone(), 200, json!({"answer": "short"}))
                }
                ("long", 0) => Behaviour::Hang,
                _ => Behaviour::Answer(200, json!({"answer": "long"})),
            },
        )
        .await
    };
    let mut events = Events::follow(&env.broker).await;

    let mut env_a = http_executor_env(&url, &rag, "executor-a");
    env_a.extend([
        ("RAGPOOL_CONCURRENCY", "2"),
        ("RAGPOOL_DRAIN_SECONDS", "3"),
        ("RAGPOOL_LEASE_SECONDS", "1"),
    ]);
    let mut a = ExecutorProcess::start(&env_a).await;
    let short = env.ask("short").await;
    let long = env.ask("long").await;
    rag.next_request().await;
    rag.next_request().await;
    // The second executor starts only now, so both tasks are surely the first one's.
    let b = ExecutorProcess::start(&http_executor_env(&url, &rag, "executor-b")).await;
    let listed =
        |workers: &[ragpool_queue::WorkerInfo], id: &str| workers.iter().any(|w| w.id == id);
    let workers = env
        .broker
        .workers(Duration::from_secs(60))
        .await
        .expect("workers");
    assert!(listed(&workers, "executor-a"), "{workers:?}");

    a.sigterm();
    a.wait_log("stopped claiming; draining").await;
    // The short task completes inside the drain window.
    short_done.notify_one();

    let (status, output) = a.exit().await;
    assert!(
        status.success(),
        "a drained executor exits 0: {status}\n{output}"
    );
    let workers = env
        .broker
        .workers(Duration::from_secs(60))
        .await
        .expect("workers");
    assert!(
        !listed(&workers, "executor-a"),
        "a stopped executor deregisters: {workers:?}"
    );
    assert!(listed(&workers, "executor-b"), "{workers:?}");

    let short_task = env.ended(&short).await;
    assert_eq!(short_task.state, TaskState::Finished, "{short_task:?}");
    assert_eq!(short_task.result, Some(json!({"answer": "short"})));
    assert_eq!(short_task.worker.as_deref(), Some("executor-a"));
    assert_eq!(short_task.attempts, 1);

    let long_task = env.ended(&long).await;
    assert_eq!(long_task.state, TaskState::Finished, "{long_task:?}");
    assert_eq!(long_task.result, Some(json!({"answer": "long"})));
    assert_eq!(long_task.worker.as_deref(), Some("executor-b"));
    assert_eq!(long_task.attempts, 1, "the released attempt was given back");

    let short_history = events.until_end(&short).await;
    assert_eq!(states(&short_history), ["queued", "started", "finished"]);
    let long_history = events.until_end(&long).await;
    assert_eq!(
        states(&long_history),
        ["queued", "started", "queued", "started", "finished"]
    );
    let released: Vec<_> = long_history
        .iter()
        .filter(|e| e.details.get("released").map(String::as_str) == Some("1"))
        .collect();
    assert_eq!(released.len(), 1, "{long_history:?}");
    assert!(
        error_kinds(&short_history).is_empty() && error_kinds(&long_history).is_empty(),
        "no error was recorded: {short_history:?} {long_history:?}"
    );
    let claims: Vec<_> = long_history
        .iter()
        .filter_map(|e| e.details.get("worker"))
        .collect();
    assert_eq!(claims, ["executor-a", "executor-b"]);
    assert!(details_of(&long_history, "delayed").is_none());
    let stats = env
        .broker
        .queue_stats("answer_generation")
        .await
        .expect("stats");
    assert_eq!((stats.total_failed, stats.total_lease_expired), (0, 0));

    b.sigterm();
    let (status, output) = b.exit().await;
    assert!(status.success(), "{status}\n{output}");
}
