//! `--durability replicated`: a completion no replica acknowledged is retried, not dropped,
//! and confirmed once a replica is back, without calling the backend again or finishing the
//! task twice.

use std::sync::Arc;
use std::time::Duration;

use ragpool_queue::testing::{RedisServer, ServerOptions};
use ragpool_queue::{TaskState, payload::CompleteAnswer};
use serde_json::json;
use tokio::sync::Notify;

mod loop_support;
use loop_support::{
    Behaviour, Env, Events, ExecutorProcess, FakeRag, PATIENCE, http_executor_env, quick_queues,
};

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("harness thread")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_is_retried_until_a_replica_has_it() {
    let env = Env::start(quick_queues()).await;
    let primary = env.redis.port();
    let replica = blocking(move || {
        let replica = RedisServer::start_replica_of(primary, ServerOptions::default())
            .expect("replica starts");
        replica.wait_until_in_sync().expect("replica in sync");
        replica
    })
    .await;

    let answer = Arc::new(Notify::new());
    let gate = answer.clone();
    let rag = FakeRag::start(move |_, _| {
        Behaviour::AnswerWhen(gate.clone(), 200, json!({"answer": "kept"}))
    })
    .await;
    let url = env.url();
    let mut vars = http_executor_env(&url, &rag, "replicated-1");
    vars.extend([
        ("RAGPOOL_QUEUES", "answer_generation"),
        ("RAGPOOL_DURABILITY", "replicated"),
        ("RAGPOOL_REPLICATION_TIMEOUT_MS", "200"),
        ("RAGPOOL_LEASE_SECONDS", "30"),
    ]);
    let mut executor = ExecutorProcess::start(&vars).await;
    let mut events = Events::follow(&env.broker).await;

    let id = env
        .enqueue(CompleteAnswer {
            question: "durable?".into(),
            ..CompleteAnswer::default()
        })
        .await
        .id;
    rag.next_request().await;

    // The backend answers while no replica is there to acknowledge the completion.
    let mut replica = blocking(move || {
        let mut replica = replica;
        replica.stop().expect("replica stops");
        replica
    })
    .await;
    answer.notify_one();
    // The primary took the completion; the executor was told it is not replicated.
    events.until_state(&id, TaskState::Finished).await;
    let retrying = executor
        .wait_log("storing the outcome failed; retrying")
        .await;
    assert!(
        retrying["fields"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("no replica acknowledged")),
        "{retrying}"
    );

    let _replica = blocking(move || {
        replica.start_again().expect("replica starts again");
        replica.wait_until_in_sync().expect("replica in sync");
        replica
    })
    .await;

    // The retry confirms the first completion: reported `finished`, once.
    let expected = r#"ragpool_executor_tasks_total{kind="complete_answer",outcome="finished"} 1"#;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let metrics = loop {
        let body = reqwest::get(executor.metrics_url("/metrics"))
            .await
            .expect("metrics answer")
            .text()
            .await
            .expect("metrics body");
        if body.contains("ragpool_executor_in_flight 0") && body.contains("outcome=") {
            break body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the task never left the executor: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(metrics.contains(expected), "{metrics}");
    assert!(
        !executor.output().contains("could not store the outcome"),
        "{}",
        executor.output()
    );
    assert_eq!(rag.requests().len(), 1, "the backend ran once");
    let task = env.ended(&id).await;
    assert_eq!(task.state, TaskState::Finished);
    assert_eq!(task.result, Some(json!({"answer": "kept"})));
    assert_eq!(
        env.broker
            .queue_stats("answer_generation")
            .await
            .unwrap()
            .total_finished,
        1
    );
}
