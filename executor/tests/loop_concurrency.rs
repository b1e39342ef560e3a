//! `--concurrency`: one executor runs that many tasks at the same time.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ragpool_executor::backend::{Backend, BackendError, TaskContext};
use ragpool_queue::TaskState;
use ragpool_queue::payload::{AnalyzeImage, CompleteAnswer, FullQuery};
use serde_json::{Value, json};

mod loop_support;
use loop_support::{Env, InProcess, quick_queues, settings};

/// A backend whose every call takes one second, recording when each call began and ended.
#[derive(Default)]
struct SlowBackend {
    intervals: Mutex<Vec<(Instant, Instant)>>,
}

impl SlowBackend {
    async fn work(&self) -> Result<Value, BackendError> {
        let start = Instant::now();
        tokio::time::sleep(Duration::from_secs(1)).await;
        self.intervals
            .lock()
            .expect("lock")
            .push((start, Instant::now()));
        Ok(json!({"answer": "slowly"}))
    }
}

#[async_trait]
impl Backend for SlowBackend {
    async fn analyze_image(
        &self,
        _: &AnalyzeImage,
        _: &TaskContext,
    ) -> Result<Value, BackendError> {
        self.work().await
    }

    async fn complete_answer(
        &self,
        _: &CompleteAnswer,
        _: &TaskContext,
    ) -> Result<Value, BackendError> {
        self.work().await
    }

    async fn full_query(&self, _: &FullQuery, _: &TaskContext) -> Result<Value, BackendError> {
        self.work().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_tasks_run_at_once_with_concurrency_ten() {
    let env = Env::start(quick_queues()).await;
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(env.ask(&format!("question {i}")).await);
    }
    let backend = Arc::new(SlowBackend::default());
    let executor = InProcess::with_backend(
        settings(&env.url(), &["--concurrency", "10"]),
        backend.clone(),
    );

    for id in &ids {
        assert_eq!(env.ended(id).await.state, TaskState::Finished);
    }
    executor.shutdown().await;

    let intervals = backend.intervals.lock().expect("lock").clone();
    assert_eq!(intervals.len(), 10, "each task ran once");
    let last_start = intervals.iter().map(|(s, _)| *s).max().expect("ten");
    let first_end = intervals.iter().map(|(_, e)| *e).min().expect("ten");
    assert!(
        last_start < first_end,
        "every task started before any ended, so all ten overlapped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_one_runs_tasks_one_after_another() {
    let env = Env::start(quick_queues()).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(env.ask(&format!("question {i}")).await);
    }
    let backend = Arc::new(SlowBackend::default());
    let executor = InProcess::with_backend(
        settings(&env.url(), &["--concurrency", "1"]),
        backend.clone(),
    );

    for id in &ids {
        assert_eq!(env.ended(id).await.state, TaskState::Finished);
    }
    executor.shutdown().await;

    let mut intervals = backend.intervals.lock().expect("lock").clone();
    intervals.sort();
    assert_eq!(intervals.len(), 3);
    for pair in intervals.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "no two tasks overlapped: {pair:?}");
    }
}

/// A backend that reports each call by its question and then does what the question says:
/// `hold` waits for the test's go-ahead, `panic` panics, anything else answers at once.
struct Scripted {
    calls: tokio::sync::mpsc::UnboundedSender<String>,
    go: Arc<tokio::sync::Notify>,
}

impl Scripted {
    async fn answer(&self, question: &str) -> Result<Value, BackendError> {
        let _ = self.calls.send(question.to_string());
        match question {
            "hold" => self.go.notified().await,
            "panic" => panic!("the backend fell over"),
            _ => {}
        }
        Ok(json!({"answer": question}))
    }
}

#[async_trait]
impl Backend for Scripted {
    async fn analyze_image(
        &self,
        _: &AnalyzeImage,
        _: &TaskContext,
    ) -> Result<Value, BackendError> {
        self.answer("image").await
    }

    async fn complete_answer(
        &self,
        req: &CompleteAnswer,
        _: &TaskContext,
    ) -> Result<Value, BackendError> {
        self.answer(&req.question).await
    }

    async fn full_query(&self, _: &FullQuery, _: &TaskContext) -> Result<Value, BackendError> {
        self.answer("query").await
    }
}

fn scripted() -> (
    Arc<Scripted>,
    tokio::sync::mpsc::UnboundedReceiver<String>,
    Arc<tokio::sync::Notify>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let go = Arc::new(tokio::sync::Notify::new());
    let backend = Arc::new(Scripted {
        calls: tx,
        go: go.clone(),
    });
    (backend, rx, go)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_slot_claims_nothing_more_once_the_executor_stops() {
    let env = Env::start(quick_queues()).await;
    let held = env.ask("hold").await;
    let next = env.ask("next").await;
    let last = env.ask("last").await;
    let (backend, mut calls, go) = scripted();
    let stop = tokio_util::sync::CancellationToken::new();
    let executor = tokio::spawn(ragpool_executor::run_with_backend(
        settings(&env.url(), &["--concurrency", "1"]),
        backend,
        stop.clone(),
    ));
    assert_eq!(calls.recv().await.as_deref(), Some("hold"));
    // Stop while the only slot is busy; then let its task finish. A slot that went on
    // claiming would start "next" here.
    stop.cancel();
    go.notify_one();
    executor
        .await
        .expect("the executor task")
        .expect("the executor returns Ok");

    assert_eq!(env.ended(&held).await.state, TaskState::Finished);
    for id in [&next, &last] {
        let task = env.broker.get(id).await.expect("read").expect("exists");
        assert_eq!(task.state, TaskState::Queued, "{task:?}");
        assert_eq!(task.attempts, 0, "never claimed: {task:?}");
    }
    assert!(
        calls.try_recv().is_err(),
        "the backend ran only the first task"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_backend_fails_its_task_and_the_slot_goes_on() {
    let env = Env::start(quick_queues()).await;
    let crashed = env.ask("panic").await;
    let fine = env.ask("fine").await;
    let (backend, _calls, _go) = scripted();
    let executor = InProcess::with_backend(settings(&env.url(), &["--concurrency", "1"]), backend);

    let task = env.ended(&crashed).await;
    assert_eq!(task.state, TaskState::Failed, "{task:?}");
    let error = task.error.expect("an error");
    assert_eq!(error.kind, "internal");
    assert!(
        error.message.contains("the backend fell over"),
        "{}",
        error.message
    );
    let task = env.ended(&fine).await;
    assert_eq!(task.state, TaskState::Finished, "{task:?}");
    assert_eq!(task.result, Some(json!({"answer": "fine"})));
    executor.shutdown().await;
}
