//! The executor's /healthz, /readyz and /metrics, served by a `ragpool-executor` process.

use std::time::Duration;

use ragpool_queue::TaskState;
use serde_json::json;

mod loop_support;
use loop_support::{
    Behaviour, Env, ExecutorProcess, FakeRag, PATIENCE, http_executor_env, quick_queues,
};

/// GETs `url`: its status and body (status 0 when nothing answered).
async fn get(url: &str) -> (u16, String) {
    match reqwest::get(url).await {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.text().await.unwrap_or_default())
        }
        Err(_) => (0, String::new()),
    }
}

/// Re-reads `url` until `until` holds for its answer. The endpoints have no push channel, so
/// this polls, with a deadline.
async fn poll(url: &str, until: impl Fn(u16, &str) -> bool) -> (u16, String) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (status, body) = get(url).await;
        if until(status, &body) {
            return (status, body);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{url} never reached the expected answer; last: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_task_metrics() {
    // One attempt per task, so a retryable error ends the task `failed` at once.
    let queues = quick_queues()
        .into_iter()
        .map(|mut q| {
            q.max_attempts = 1;
            q
        })
        .collect();
    let mut env = Env::start(queues).await;
    let url = env.url();
    let rag = FakeRag::start(|request, _| match request.question() {
        "good?" => Behaviour::Answer(200, json!({"answer": "yes"})),
        "slow?" => Behaviour::Hang,
        "down?" => Behaviour::Answer(503, json!({"detail": "overloaded"})),
        _ => Behaviour::Answer(400, json!({"detail": "malformed"})),
    })
    .await;
    let mut vars = http_executor_env(&url, &rag, "executor-m");
    vars.push(("RAGPOOL_LEASE_SECONDS", "1"));
    let executor = ExecutorProcess::start(&vars).await;

    let (status, _) = get(&executor.metrics_url("/healthz")).await;
    assert_eq!(status, 200);
    poll(&executor.metrics_url("/readyz"), |s, _| s == 200).await;

    let good = env.ask("good?").await;
    let bad = env.ask("bad").await;
    assert_eq!(env.ended(&good).await.state, TaskState::Finished);
    assert_eq!(env.ended(&bad).await.state, TaskState::Failed);
    let down = env.ask("down?").await;
    let down = env.ended(&down).await;
    assert_eq!(down.state, TaskState::Failed);
    assert_eq!(down.error.expect("an error").kind, "backend_unavailable");
    let slow = env.ask("slow?").await;
    // good, bad, three tries of down (the backend retries twice in-process), then slow.
    for _ in 0..6 {
        rag.next_request().await;
    }
    env.broker.cancel(&slow).await.expect("cancel");
    assert_eq!(env.ended(&slow).await.state, TaskState::Canceled);

    let expected = [
        r#"ragpool_executor_tasks_total{kind="complete_answer",outcome="finished"} 1"#,
        r#"ragpool_executor_tasks_total{kind="complete_answer",outcome="failed"} 2"#,
        r#"ragpool_executor_tasks_total{kind="complete_answer",outcome="canceled"} 1"#,
    ];
    let (_, metrics) = poll(&executor.metrics_url("/metrics"), |s, body| {
        s == 200 && expected.iter().all(|line| body.contains(line))
    })
    .await;
    assert!(
        !metrics.contains(r#"outcome="retried""#),
        "a retryable error on the last attempt is a failure: {metrics}"
    );
    assert!(
        metrics.contains("ragpool_executor_in_flight 0"),
        "{metrics}"
    );
    assert!(
        metrics
            .contains(r#"ragpool_executor_task_duration_seconds_count{kind="complete_answer"} 4"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("ragpool_executor_claim_latency_seconds_count 4"),
        "{metrics}"
    );

    env.kill_redis();
    poll(&executor.metrics_url("/readyz"), |s, _| s == 503).await;
    let (status, _) = get(&executor.metrics_url("/healthz")).await;
    assert_eq!(status, 200, "the process itself is fine");

    // Redis back on the same port: the executor is ready again and runs new tasks.
    env.restart_redis().await;
    poll(&executor.metrics_url("/readyz"), |s, _| s == 200).await;
    let again = env.ask("good?").await;
    assert_eq!(env.ended(&again).await.state, TaskState::Finished);
}
