//! `ragpool-bench latency`: how long a task waits between two parties that are both idle
//! and ready, one task at a time, so that only the hand-off is measured.
//!
//! One private `redis-server`, the API served in this process (`ragpool_api::serve`) and an
//! executor's job loop in this process (`ragpool_executor::run_with_backend`) over a backend
//! that does nothing but note the time and, for the second part, wait for a go-ahead:
//!
//! - **enqueue → claimed**: from the call of `Broker::enqueue` to the backend being called for
//!   that task (so the enqueue's round trip, the wake-up, the claim and the job loop's start
//!   of the task are all inside).
//! - **result → `?wait` answered** and **result → SSE terminal event**: a client holds
//!   `GET /api/async/task/{id}?wait=…` and another follows `GET …/events` while the task runs;
//!   the clock starts when the backend is let go and stops when each client has the answer
//!   (the whole `?wait` body; the `finished` event). The executor's `complete` is inside.
//!
//! Each figure is a p50 and a p99 over the tasks run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_trait::async_trait;
use futures::StreamExt;
use ragpool_executor::backend::{Backend, BackendError, TaskContext};
use ragpool_queue::payload::{AnalyzeImage, CompleteAnswer, FullQuery};
use ragpool_queue::testing::RedisServer;
use ragpool_queue::{Broker, NewTask, TaskId};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::report::{Row, print_table};

/// Flags of `ragpool-bench latency`.
#[derive(clap::Args, Clone)]
pub struct Args {
    /// Tasks per figure, one at a time.
    #[arg(long, default_value_t = 2_000)]
    pub tasks: usize,
    /// Milliseconds between sending the `?wait` request and letting the task finish, so the
    /// request is surely waiting (there is no signal for it).
    #[arg(long, default_value_t = 5)]
    pub settle_ms: u64,
}

impl Default for Args {
    fn default() -> Self {
        Args {
            tasks: 2_000,
            settle_ms: 5,
        }
    }
}

/// Runs the section and prints its table.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let rows = rows(&args).await?;
    println!();
    print_table(&rows);
    Ok(())
}

/// What the backend tells the bench when it is called: when, and how to let it return.
struct Called {
    at: Instant,
    go: Option<oneshot::Sender<()>>,
}

/// A backend that reports each call and, when gated, returns only on the bench's word.
struct Probe {
    calls: mpsc::UnboundedSender<Called>,
    gated: std::sync::atomic::AtomicBool,
}

impl Probe {
    async fn call(&self) -> Result<Value, BackendError> {
        let at = Instant::now();
        if self.gated.load(std::sync::atomic::Ordering::Relaxed) {
            let (tx, rx) = oneshot::channel();
            let _ = self.calls.send(Called { at, go: Some(tx) });
            let _ = rx.await;
        } else {
            let _ = self.calls.send(Called { at, go: None });
        }
        Ok(json!({ "ok": true }))
    }
}

#[async_trait]
impl Backend for Probe {
    async fn analyze_image(
        &self,
        _: &AnalyzeImage,
        _: &TaskContext,
    ) -> Result<Value, BackendError> {
        self.call().await
    }

    async fn complete_answer(
        &self,
        _: &CompleteAnswer,
        _: &TaskContext,
    ) -> Result<Value, BackendError> {
        self.call().await
    }

    async fn full_query(&self, _: &FullQuery, _: &TaskContext) -> Result<Value, BackendError> {
        self.call().await
    }
}

/// The section's rows: p50 and p99 of each hand-off.
pub async fn rows(args: &Args) -> anyhow::Result<Vec<Row>> {
    let redis = tokio::task::spawn_blocking(RedisServer::start)
        .await?
        .context("starting redis-server")?;
    let stop = CancellationToken::new();

    let crate::api::InProcessApi {
        broker,
        base,
        served: api,
    } = crate::api::start(redis.url(), &stop).await?;

    let (calls_tx, mut calls) = mpsc::unbounded_channel();
    let probe = Arc::new(Probe {
        calls: calls_tx,
        gated: std::sync::atomic::AtomicBool::new(false),
    });
    let executor = tokio::spawn(ragpool_executor::run_with_backend(
        crate::executor::settings(&redis.url(), 4)?,
        probe.clone(),
        stop.clone(),
    ));

    // Enqueue → claimed. Each task is run to its end before the next is enqueued, so the job
    // loop is idle (blocked waiting for work) each time.
    let mut claimed = Vec::with_capacity(args.tasks);
    for n in 0..args.tasks {
        // From the call, not its return: the executor can be woken and claim before this
        // task is scheduled again to note the return, which would make the figure too small.
        // So it holds the enqueue's own round trip too.
        let before_enqueue = Instant::now();
        let id = enqueue(&broker, n).await?;
        let called = recv(&mut calls).await?;
        claimed.push(called.at.saturating_duration_since(before_enqueue));
        ended(&broker, &id).await?;
    }

    // Result → ?wait answered, result → SSE terminal event.
    probe
        .gated
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let client = reqwest::Client::new();
    let (mut waited, mut streamed) = (Vec::new(), Vec::new());
    for n in 0..args.tasks {
        let id = enqueue(&broker, n).await?;
        let called = recv(&mut calls).await?;
        let go = called.go.context("the backend was not gated")?;
        // The held request goes first, so it has the stream's round trips as well as the
        // settle time below to reach its wait.
        let wait = {
            let request = client.get(format!("{base}/api/async/task/{id}?wait=10"));
            tokio::spawn(async move {
                let body = request.send().await?.error_for_status()?.bytes().await?;
                anyhow::Ok((Instant::now(), body))
            })
        };
        let mut events = client
            .get(format!("{base}/api/async/task/{id}/events"))
            .send()
            .await?
            .error_for_status()?
            .bytes_stream();
        // The first event is the state when the stream opened: from then on the stream is
        // subscribed and will see the end.
        let mut seen = String::new();
        while !seen.contains("\n\n") {
            let chunk = events.next().await.context("event stream ended early")??;
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
        // The held request has no signal for "waiting now"; give it ample time to get there.
        tokio::time::sleep(Duration::from_millis(args.settle_ms)).await;
        let released = Instant::now();
        let _ = go.send(());
        let sse_at = loop {
            let chunk = events.next().await.context("event stream ended early")??;
            seen.push_str(&String::from_utf8_lossy(&chunk));
            if seen.contains("event: finished") {
                break Instant::now();
            }
        };
        let (wait_at, body) = wait.await??;
        if !String::from_utf8_lossy(&body).contains("\"finished\"") {
            bail!(
                "?wait answered before the task finished: {}",
                String::from_utf8_lossy(&body)
            );
        }
        waited.push(wait_at.saturating_duration_since(released));
        streamed.push(sse_at.saturating_duration_since(released));
    }

    stop.cancel();
    executor.await??;
    api.await??;

    let mut rows = Vec::new();
    for (name, samples) in [
        ("enqueue call → backend called", &mut claimed),
        ("backend returns → ?wait answered", &mut waited),
        ("backend returns → SSE finished event", &mut streamed),
    ] {
        samples.sort();
        for (label, p) in [("p50", 0.50), ("p99", 0.99)] {
            rows.push(Row::plain(
                format!("{name}, {label}"),
                percentile(samples, p).as_secs_f64() * 1000.0,
                "ms",
            ));
        }
    }
    Ok(rows)
}

async fn enqueue(broker: &Broker, n: usize) -> anyhow::Result<TaskId> {
    Ok(broker
        .enqueue(NewTask::new(CompleteAnswer {
            question: format!("question {n}"),
            ..CompleteAnswer::default()
        }))
        .await?
        .id)
}

async fn recv(calls: &mut mpsc::UnboundedReceiver<Called>) -> anyhow::Result<Called> {
    tokio::time::timeout(Duration::from_secs(10), calls.recv())
        .await
        .context("the executor did not run the task within 10 s")?
        .context("the executor stopped")
}

async fn ended(broker: &Broker, id: &TaskId) -> anyhow::Result<()> {
    let task = broker.wait_for_end(id, Duration::from_secs(10)).await?;
    match task {
        Some(t) if t.state.is_terminal() => Ok(()),
        other => bail!("task {id} did not end: {other:?}"),
    }
}

/// Nearest-rank percentile of sorted samples.
pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[rank]
}
