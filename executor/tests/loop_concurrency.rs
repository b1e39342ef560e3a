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
