//! `ragpool-bench backend`: what pool-wide backend limits buy against a model server that
//! degrades under load, all three ways measured in the same run.
//!
//! A fake model server on loopback answers each request after `base` × max(1, n / knee)
//! milliseconds, `n` being the requests it runs at that moment (throughput stops growing
//! past the knee, like a GPU past its best batch size), and refuses with 429 and
//! `Retry-After: 1` beyond `refuse` requests at once. Several executors in this process
//! (`http` backend, the real job loop) drain the same pre-filled tasks three times:
//! without a limit, with `--backend-max-concurrent` at the knee, and with an adaptive limit
//! between a quarter of the knee and `--adaptive-max` (128: twice the refusal point, so the
//! limit has to find the server's capacity from its answers). Each run reports goodput
//! (tasks finished per second), the p95 time from enqueue to finished, the 429s the server
//! sent, and the tasks that failed.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::http::{HeaderValue, StatusCode};
use axum::response::IntoResponse;
use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use ragpool_executor::settings::ExecutorSettings;
use ragpool_queue::payload::CompleteAnswer;
use ragpool_queue::testing::RedisServer;
use ragpool_queue::{Broker, BrokerConfig, NewTask, TaskId};
use tokio_util::sync::CancellationToken;

use crate::report::{Row, print_table};

/// Flags of `ragpool-bench backend`.
#[derive(clap::Args, Clone)]
pub struct Args {
    /// Tasks per run.
    #[arg(long, default_value_t = 2_000)]
    pub tasks: usize,
    /// Executors, each with `--concurrency`.
    #[arg(long, default_value_t = 4)]
    pub executors: usize,
    #[arg(long, default_value_t = 32)]
    pub concurrency: u32,
    /// The server's latency with up to `knee` requests running, in milliseconds.
    #[arg(long, default_value_t = 20)]
    pub base_ms: u64,
    /// Requests the server runs at once before its latency grows.
    #[arg(long, default_value_t = 16)]
    pub knee: usize,
    /// Requests at once past which the server answers 429.
    #[arg(long, default_value_t = 64)]
    pub refuse: usize,
    /// The adaptive run's ceiling (`maxConcurrent` with `adaptive: true`).
    #[arg(long, default_value_t = 128)]
    pub adaptive_max: usize,
}

/// Runs the section and prints its table.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let rows = rows(&args).await?;
    println!();
    print_table(&rows);
    Ok(())
}

/// What one run measured.
struct Measured {
    goodput: f64,
    p95_ms: f64,
    refused: usize,
    most: usize,
    failed: usize,
}

pub async fn rows(args: &Args) -> anyhow::Result<Vec<Row>> {
    let server = tokio::task::spawn_blocking(RedisServer::start)
        .await?
        .context("starting redis-server")?;
    let url = server.url();
    let knee = args.knee.to_string();
    let adaptive_max = args.adaptive_max.to_string();
    let floor = (args.knee / 4).max(1).to_string();
    let runs: [(&str, Vec<&str>); 3] = [
        ("no limit", vec![]),
        (
            "maxConcurrent = knee",
            vec!["--backend-max-concurrent", &knee],
        ),
        (
            "adaptive",
            vec![
                "--backend-max-concurrent",
                &adaptive_max,
                "--backend-adaptive",
                "--backend-min-concurrent",
                &floor,
            ],
        ),
    ];
    let mut measured = Vec::new();
    for (name, flags) in &runs {
        let m = one_run(&url, args, flags).await?;
        eprintln!(
            "{name}: {:.0} tasks/s, p95 {:.0} ms, {} refused, at most {} at once, {} failed",
            m.goodput, m.p95_ms, m.refused, m.most, m.failed
        );
        measured.push((*name, m));
    }
    drop(server);
    let (base_name, base) = (&measured[0].0, &measured[0].1);
    let mut rows = Vec::new();
    for (name, m) in &measured {
        rows.push(Row::ratio(
            format!("goodput, {name}"),
            m.goodput,
            "tasks/s",
            format!("goodput, {base_name}"),
            base.goodput,
        ));
        rows.push(Row::ratio(
            format!("p95 enqueue→finished, {name}"),
            m.p95_ms,
            "ms",
            format!("p95, {base_name}"),
            base.p95_ms,
        ));
        rows.push(Row::plain(
            format!("429s sent, {name}"),
            m.refused as f64,
            "requests",
        ));
        rows.push(Row::plain(
            format!("most requests at once, {name}"),
            m.most as f64,
            "requests",
        ));
        rows.push(Row::plain(
            format!("tasks failed, {name}"),
            m.failed as f64,
            "tasks",
        ));
    }
    Ok(rows)
}

/// The fake model server's counters.
#[derive(Default)]
struct Load {
    running: AtomicUsize,
    most: AtomicUsize,
    refused: AtomicUsize,
}

/// Starts the fake model server; returns its URL.
async fn model_server(args: &Args, load: Arc<Load>) -> anyhow::Result<String> {
    let (base, knee, refuse) = (args.base_ms, args.knee.max(1), args.refuse);
    let app = Router::new().fallback(move || {
        let load = load.clone();
        async move {
            let n = load.running.fetch_add(1, Ordering::SeqCst) + 1;
            load.most.fetch_max(n, Ordering::SeqCst);
            let response = if n > refuse {
                load.refused.fetch_add(1, Ordering::SeqCst);
                let mut r = (StatusCode::TOO_MANY_REQUESTS, "overloaded").into_response();
                r.headers_mut()
                    .insert("retry-after", HeaderValue::from_static("1"));
                r
            } else {
                let factor = (n as f64 / knee as f64).max(1.0);
                tokio::time::sleep(Duration::from_micros(
                    (base as f64 * 1000.0 * factor) as u64,
                ))
                .await;
                axum::Json(serde_json::json!({"answer": "ok"})).into_response()
            };
            load.running.fetch_sub(1, Ordering::SeqCst);
            response
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

/// One run: a fresh Redis keyspace, `tasks` queued, the executors started with `flags`, until
/// every task ended.
async fn one_run(url: &str, args: &Args, flags: &[&str]) -> anyhow::Result<Measured> {
    crate::queue::flush(url).await?;
    let load = Arc::new(Load::default());
    let model = model_server(args, load.clone()).await?;
    let broker = Broker::connect(BrokerConfig::from_url(url)?).await?;
    let ids: Vec<TaskId> = futures::stream::iter(0..args.tasks)
        .map(|n| {
            let broker = broker.clone();
            async move {
                broker
                    .enqueue(NewTask::new(CompleteAnswer {
                        question: format!("question {n}"),
                        ..CompleteAnswer::default()
                    }))
                    .await
                    .map(|e| e.id)
            }
        })
        .buffer_unordered(64)
        .try_collect()
        .await?;
    let stop = CancellationToken::new();
    let start = Instant::now();
    let mut executors = Vec::new();
    for e in 0..args.executors {
        let settings = settings(url, &model, args.concurrency, e, flags)?;
        executors.push(tokio::spawn(ragpool_executor::run(settings, stop.clone())));
    }
    loop {
        let stats = broker.queue_stats("answer_generation").await?;
        if stats.total_finished + stats.total_failed >= args.tasks as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = start.elapsed();
    stop.cancel();
    for e in executors {
        e.await??;
    }
    let mut waits = Vec::with_capacity(ids.len());
    let (mut finished, mut failed) = (0usize, 0usize);
    for id in &ids {
        let task = broker.get(id).await?.context("a task vanished")?;
        if let Some(end) = task.finished_at_ms
            && task.state == ragpool_queue::TaskState::Finished
        {
            finished += 1;
            waits.push(end.saturating_sub(task.enqueued_at_ms) as f64);
        }
        if task.state == ragpool_queue::TaskState::Failed {
            failed += 1;
        }
    }
    waits.sort_by(f64::total_cmp);
    let p95_ms = waits
        .get((waits.len() * 95 / 100).min(waits.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0.0);
    Ok(Measured {
        goodput: finished as f64 / took.as_secs_f64(),
        p95_ms,
        refused: load.refused.load(Ordering::SeqCst),
        most: load.most.load(Ordering::SeqCst),
        failed,
    })
}

/// Settings of executor `n` against `model`, with the limit flags of the run.
fn settings(
    url: &str,
    model: &str,
    concurrency: u32,
    n: usize,
    flags: &[&str],
) -> anyhow::Result<ExecutorSettings> {
    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        settings: ExecutorSettings,
    }
    let concurrency = concurrency.to_string();
    let worker = format!("bench-backend-{n}");
    let mut argv = vec![
        "ragpool-executor",
        "--redis-url",
        url,
        "--concurrency",
        &concurrency,
        "--metrics-listen",
        "127.0.0.1:0",
        "--worker-id",
        &worker,
        "--backend",
        "http",
        "--http-url",
        model,
        "--backend-limit-key",
        "bench",
    ];
    argv.extend_from_slice(flags);
    Ok(Flags::try_parse_from(argv)?.settings)
}
