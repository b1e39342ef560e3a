//! `ragpool-bench executor`: the executor's job loop against the queue library it is built on,
//! at the same concurrency, in the same run, on the same private `redis-server`.
//!
//! Both sides drain the same number of pre-filled tasks that do nothing, so what is measured
//! is the cost of running a task rather than of the task:
//!
//! - **library loops**: `concurrency` loops in this process, each with a consumer of its own,
//!   each doing `claim` → `complete` — the least any worker built on `ragpool-queue` does.
//! - **executor**: the real job loop ([`ragpool_executor::run_with_backend`]) with a backend
//!   that returns at once, started with `--concurrency` set to the same number. It keeps
//!   everything a production executor keeps: leases and heartbeats, the worker registry, the
//!   maintenance pass, metrics, timeouts, cancel and drain.
//!
//! The ratio executor/library is the figure: 1.0 means the job loop adds nothing to the
//! protocol's own cost. The same table carries the resident memory of the idle binaries
//! ([`crate::footprint`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use ragpool_executor::backend::{Backend, BackendError, TaskContext};
use ragpool_executor::settings::ExecutorSettings;
use ragpool_queue::payload::{AnalyzeImage, CompleteAnswer, FullQuery};
use ragpool_queue::testing::RedisServer;
use ragpool_queue::{Broker, BrokerConfig, ConsumerConfig, NewTask};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::queue::flush;
use crate::report::{Row, print_table};

/// The queues both sides claim from, in the executor's default order.
const QUEUES: [&str; 3] = ["image_analysis", "answer_generation", "full_query"];

/// Flags of `ragpool-bench executor`.
#[derive(clap::Args, Clone)]
pub struct Args {
    /// Pre-filled tasks per run.
    #[arg(long, default_value_t = 5_000)]
    pub tasks: usize,
    /// The high concurrency compared (the low one is always 1).
    #[arg(long, default_value_t = 50)]
    pub concurrency: u32,
    /// Runs of each; the best of them is reported.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Leave out the resident-memory rows (they need the release binaries built).
    #[arg(long)]
    pub no_footprint: bool,
}

impl Default for Args {
    fn default() -> Self {
        Args {
            tasks: 5_000,
            concurrency: 50,
            rounds: 3,
            no_footprint: false,
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

/// The section's rows: executor/library at concurrency 1 and `args.concurrency`, then the
/// idle footprint.
pub async fn rows(args: &Args) -> anyhow::Result<Vec<Row>> {
    let server = tokio::task::spawn_blocking(RedisServer::start)
        .await?
        .context("starting redis-server")?;
    let url = server.url();
    let mut rows = Vec::new();
    for concurrency in [1, args.concurrency] {
        let (mut best_lib, mut best_exe) = (0.0_f64, 0.0_f64);
        for round in 0..args.rounds {
            let lib = library(&url, args.tasks, concurrency).await?;
            let exe = executor(&url, args.tasks, concurrency).await?;
            println!(
                "concurrency {concurrency}, round {}: library {lib:.0} tasks/s, executor {exe:.0} tasks/s",
                round + 1
            );
            best_lib = best_lib.max(lib);
            best_exe = best_exe.max(exe);
        }
        let baseline = if concurrency == 1 {
            "library loop, 1 at a time".to_string()
        } else {
            format!("library loops, {concurrency} at once")
        };
        rows.push(Row::ratio(
            format!("executor --concurrency {concurrency}"),
            best_exe,
            "tasks/s",
            baseline,
            best_lib,
        ));
    }
    drop(server);
    if !args.no_footprint {
        rows.extend(crate::footprint::rows().await?);
    }
    Ok(rows)
}

/// A fresh broker over an empty Redis holding `tasks` queued `complete_answer` tasks.
async fn prefilled(url: &str, tasks: usize) -> anyhow::Result<Broker> {
    flush(url).await?;
    let broker = Broker::connect(BrokerConfig::from_url(url)?).await?;
    futures::stream::iter(0..tasks)
        .map(|n| {
            let broker = broker.clone();
            async move {
                broker
                    .enqueue(NewTask::new(CompleteAnswer {
                        question: format!("question {n}"),
                        ..CompleteAnswer::default()
                    }))
                    .await
            }
        })
        .buffer_unordered(64)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(broker)
}

/// Tasks per second of `concurrency` library loops draining `tasks` pre-filled tasks.
async fn library(url: &str, tasks: usize, concurrency: u32) -> anyhow::Result<f64> {
    let broker = prefilled(url, tasks).await?;
    let mut consumers = Vec::new();
    for w in 0..concurrency {
        consumers.push(
            broker
                .consumer(ConsumerConfig {
                    worker_id: format!("bench-{w}"),
                    queues: QUEUES.iter().map(|q| q.to_string()).collect(),
                    policy: Default::default(),
                    lease: Duration::from_secs(15),
                })
                .await?,
        );
    }
    let done = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut loops = Vec::new();
    for consumer in consumers {
        let (broker, done) = (broker.clone(), done.clone());
        loops.push(tokio::spawn(async move {
            let mut last = None;
            while done.load(Ordering::Relaxed) < tasks {
                if let Some(c) = consumer.claim(Duration::from_millis(50)).await? {
                    broker.complete(&c.lease, &json!({ "ok": true })).await?;
                    if done.fetch_add(1, Ordering::Relaxed) + 1 == tasks {
                        last = Some(Instant::now());
                    }
                }
            }
            anyhow::Ok(last)
        }));
    }
    // The clock stops at the last completion, not when the other loops notice there is no
    // more work (they may be blocked waiting for some).
    let mut end = None;
    for l in loops {
        end = end.or(l.await??);
    }
    let took = end.context("no loop completed the last task")? - start;
    Ok(tasks as f64 / took.as_secs_f64())
}

/// Tasks per second of the real job loop with `--concurrency concurrency` draining `tasks`
/// pre-filled tasks, from its start to the last completion stored.
async fn executor(url: &str, tasks: usize, concurrency: u32) -> anyhow::Result<f64> {
    let broker = prefilled(url, tasks).await?;
    let backend = Arc::new(Noop::until(tasks));
    let settings = settings(url, concurrency)?;
    let stop = CancellationToken::new();
    let start = Instant::now();
    let job_loop = tokio::spawn(ragpool_executor::run_with_backend(
        settings,
        backend.clone(),
        stop.clone(),
    ));
    backend.reached.notified().await;
    // The last call has begun; its completion (and a few before it) may still be on the wire.
    while finished(&broker).await? < tasks as u64 {
        tokio::task::yield_now().await;
    }
    let rate = tasks as f64 / start.elapsed().as_secs_f64();
    stop.cancel();
    job_loop.await??;
    Ok(rate)
}

/// Tasks finished on every queue so far.
async fn finished(broker: &Broker) -> anyhow::Result<u64> {
    let mut total = 0;
    for q in QUEUES {
        total += broker.queue_stats(q).await?.total_finished;
    }
    Ok(total)
}

/// Executor settings as its flags would give them, with a free port for its metrics.
pub fn settings(url: &str, concurrency: u32) -> anyhow::Result<ExecutorSettings> {
    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        settings: ExecutorSettings,
    }
    let concurrency = concurrency.to_string();
    let flags = Flags::try_parse_from([
        "ragpool-executor",
        "--redis-url",
        url,
        "--concurrency",
        &concurrency,
        "--metrics-listen",
        "127.0.0.1:0",
        "--worker-id",
        "bench-executor",
    ])?;
    Ok(flags.settings)
}

/// A backend that returns at once, and tells when it has been called a given number of times.
pub struct Noop {
    calls: AtomicUsize,
    goal: usize,
    pub reached: Notify,
}

impl Noop {
    pub fn until(goal: usize) -> Self {
        Noop {
            calls: AtomicUsize::new(0),
            goal,
            reached: Notify::new(),
        }
    }

    fn call(&self) -> Result<Value, BackendError> {
        if self.calls.fetch_add(1, Ordering::Relaxed) + 1 == self.goal {
            self.reached.notify_one();
        }
        Ok(json!({ "ok": true }))
    }
}

#[async_trait]
impl Backend for Noop {
    async fn analyze_image(
        &self,
        _: &AnalyzeImage,
        _: &TaskContext,
    ) -> Result<Value, BackendError> {
        self.call()
    }

    async fn complete_answer(
        &self,
        _: &CompleteAnswer,
        _: &TaskContext,
    ) -> Result<Value, BackendError> {
        self.call()
    }

    async fn full_query(&self, _: &FullQuery, _: &TaskContext) -> Result<Value, BackendError> {
        self.call()
    }
}
