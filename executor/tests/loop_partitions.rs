//! The partition count at start-up: an executor configured with another count than the
//! key prefix's ends with the message that says how to fix it; the key prefix's own count runs
//! tasks; and with Redis down at start it starts anyway and reports the mismatch, whole, once
//! Redis is back.

use ragpool_queue::payload::CompleteAnswer;
use ragpool_queue::testing::{printed, run_isolated};
use ragpool_queue::{Broker, BrokerConfig, NewTask, TaskState};
use serde_json::json;

mod loop_support;
use loop_support::{
    Behaviour, Env, ExecutorProcess, FakeRag, PATIENCE, http_executor_env, quick_queues,
};

/// A broker over `url` with `partitions`, enqueueing with the test queues' settings.
async fn broker(url: &str, partitions: u16) -> Broker {
    let mut config = BrokerConfig::from_url(url).expect("redis url");
    config.queues = quick_queues();
    config.partitions = partitions;
    Broker::connect(config).await.expect("broker connects")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_count_than_the_recorded_one_ends_the_process_with_the_message() {
    let env = Env::start(quick_queues()).await;
    env.broker.check_layout().await.expect("recording 1");
    let url = env.url();
    let output = tokio::task::spawn_blocking(move || {
        run_isolated(
            env!("CARGO_BIN_EXE_ragpool-executor"),
            &[],
            &[
                ("RAGPOOL_REDIS_URL", url),
                ("RAGPOOL_PARTITIONS", "6".into()),
                ("RAGPOOL_METRICS_LISTEN", "127.0.0.1:0".into()),
            ],
        )
    })
    .await
    .expect("harness thread");
    let text = printed(&output);
    assert!(!output.status.success(), "{text}");
    assert!(
        text.contains("\"ragpool\" is laid out in 1 partition(s)")
            && text.contains("configured with 6")
            && text.contains("ragpool repartition --partitions 6"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recorded_count_runs_tasks() {
    let env = Env::start(quick_queues()).await;
    let url = env.url();
    let six = broker(&url, 6).await;
    let queued = six
        .enqueue(NewTask::new(CompleteAnswer {
            question: "six?".into(),
            ..CompleteAnswer::default()
        }))
        .await
        .expect("enqueue");
    let rag = FakeRag::start(|_, _| Behaviour::Answer(200, json!({"answer": "yes"}))).await;
    let mut vars = http_executor_env(&url, &rag, "executor-six");
    vars.push(("RAGPOOL_PARTITIONS", "6"));
    let executor = ExecutorProcess::start(&vars).await;

    let task = six
        .wait_for_end(&queued.id, PATIENCE)
        .await
        .expect("reading the task")
        .expect("the task exists");
    assert_eq!(task.state, TaskState::Finished, "{task:?}");
    assert_eq!(task.worker.as_deref(), Some("executor-six"));

    executor.sigterm();
    let (status, output) = executor.exit().await;
    assert!(status.success(), "{status}\n{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_at_start_the_mismatch_is_logged_whole_once_redis_is_back() {
    let mut env = Env::start_persistent(quick_queues()).await;
    env.broker.check_layout().await.expect("recording 1");
    env.kill_redis();

    let url = env.url();
    let rag = FakeRag::start(|_, _| Behaviour::Answer(200, json!({"answer": "no"}))).await;
    let mut vars = http_executor_env(&url, &rag, "executor-six");
    vars.push(("RAGPOOL_PARTITIONS", "6"));
    let mut executor = ExecutorProcess::start(&vars).await;
    // The start-up check found Redis away and left the count to the first claim.
    executor
        .wait_log("cannot check the key prefix's partition count now; checked again on first use")
        .await;

    env.restart_redis().await;
    let refused = executor
        .wait_log("claiming refused: wrong partition count; retrying")
        .await;
    assert_eq!(refused["level"], "ERROR", "{refused}");
    let error = refused["fields"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("\"ragpool\" is laid out in 1 partition(s)")
            && error.contains("configured with 6")
            && error.contains("ragpool repartition --partitions 6"),
        "{error}"
    );
    let ready = reqwest::get(executor.metrics_url("/readyz"))
        .await
        .expect("readyz");
    assert_eq!(
        ready.status(),
        503,
        "an executor that cannot claim is not ready"
    );

    executor.sigterm();
    let (status, output) = executor.exit().await;
    assert!(status.success(), "{status}\n{output}");
}
