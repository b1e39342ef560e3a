//! `ragpool-bench queue`: the cost of ragpool's reliable task protocol, as a ratio to the
//! simplest Redis work queue measured in the same run on the same `redis-server`.
//!
//! The baseline is what the seed's RQ-style design does at its core: `LPUSH` a job, a worker
//! `BRPOP`s it and `SET`s the result — no lease, no retry, no state machine, and a worker that
//! dies loses its job. ragpool does enqueue (task hash, ready set, token, event), claim (lease,
//! attempt, wait sample, event) and complete (result with TTL, counters, processing sample,
//! event): three atomic scripts per task. Both run the same number of tasks with the same
//! number of concurrent consumers over loopback; the report is tasks per second for each and
//! their ratio. Absolute numbers depend on the machine; the ratio is what to compare.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use ragpool_queue::payload::FullQuery;
use ragpool_queue::testing::RedisServer;
use ragpool_queue::{Broker, BrokerConfig, ConsumerConfig, NewTask};
use serde_json::json;

use crate::report::{Row, print_table};

/// Flags of `ragpool-bench queue`.
#[derive(clap::Args)]
pub struct Args {
    /// Tasks per run.
    #[arg(long, default_value_t = 20_000)]
    tasks: usize,
    /// Concurrent consumers.
    #[arg(long, default_value_t = 8)]
    consumers: usize,
    /// Runs of each; the best of them is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

/// Runs both queues `rounds` times on one private `redis-server` and prints the table.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let server = tokio::task::spawn_blocking(RedisServer::start)
        .await?
        .context("starting redis-server")?;
    let url = server.url();
    let mut best_base: f64 = 0.0;
    let mut best_ragpool: f64 = 0.0;
    for round in 0..args.rounds {
        flush(&url).await?;
        let base = baseline(&url, args.tasks, args.consumers).await?;
        flush(&url).await?;
        let ours = ragpool(&url, args.tasks, args.consumers).await?;
        println!(
            "round {}: baseline {:.0} tasks/s, ragpool {:.0} tasks/s",
            round + 1,
            base,
            ours
        );
        best_base = best_base.max(base);
        best_ragpool = best_ragpool.max(ours);
    }
    println!(
        "\n{} tasks, {} consumers, best of {}:",
        args.tasks, args.consumers, args.rounds
    );
    print_table(&[Row::ratio(
        "ragpool enqueue/claim/complete",
        best_ragpool,
        "tasks/s",
        "LPUSH/BRPOP/SET",
        best_base,
    )]);
    Ok(())
}

pub async fn flush(url: &str) -> anyhow::Result<()> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    redis::cmd("FLUSHALL").query_async::<()>(&mut conn).await?;
    Ok(())
}

/// Tasks per second from the first enqueue to the last result, for a bare list queue.
async fn baseline(url: &str, tasks: usize, consumers: usize) -> anyhow::Result<f64> {
    let client = redis::Client::open(url)?;
    let producer = client.get_multiplexed_async_connection().await?;
    let done = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..consumers {
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let done = done.clone();
        workers.push(tokio::spawn(async move {
            while done.load(Ordering::Relaxed) < tasks {
                let job: Option<(String, String)> = redis::cmd("BRPOP")
                    .arg("bench:jobs")
                    .arg(0.2)
                    .query_async(&mut conn)
                    .await?;
                if let Some((_, job)) = job {
                    redis::cmd("SET")
                        .arg(format!("bench:result:{job}"))
                        .arg("{\"ok\":true}")
                        .arg("EX")
                        .arg(3600)
                        .query_async::<()>(&mut conn)
                        .await?;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
            anyhow::Ok(())
        }));
    }
    futures::stream::iter(0..tasks)
        .map(|n| {
            let mut p = producer.clone();
            async move {
                redis::cmd("LPUSH")
                    .arg("bench:jobs")
                    .arg(json!({ "n": n }).to_string())
                    .query_async::<()>(&mut p)
                    .await
            }
        })
        .buffer_unordered(64)
        .try_collect::<Vec<_>>()
        .await?;
    for w in workers {
        w.await??;
    }
    Ok(tasks as f64 / start.elapsed().as_secs_f64())
}

/// Tasks per second from the first enqueue to the last completion, through ragpool.
async fn ragpool(url: &str, tasks: usize, consumers: usize) -> anyhow::Result<f64> {
    ragpool_with(BrokerConfig::from_url(url)?, tasks, consumers).await
}

/// [`ragpool`] with a broker configured by the caller (another durability, say).
pub async fn ragpool_with(
    config: BrokerConfig,
    tasks: usize,
    consumers: usize,
) -> anyhow::Result<f64> {
    let broker = Broker::connect(config).await?;
    let done = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut workers = Vec::new();
    for w in 0..consumers {
        let consumer = broker
            .consumer(ConsumerConfig {
                worker_id: format!("bench-{w}"),
                queues: vec!["full_query".into()],
                policy: Default::default(),
                lease: Duration::from_secs(60),
            })
            .await?;
        let (broker, done) = (broker.clone(), done.clone());
        workers.push(tokio::spawn(async move {
            while done.load(Ordering::Relaxed) < tasks {
                if let Some(c) = consumer.claim(Duration::from_millis(200)).await? {
                    broker.complete(&c.lease, &json!({ "ok": true })).await?;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
            anyhow::Ok(())
        }));
    }
    futures::stream::iter(0..tasks)
        .map(|n| {
            let broker = broker.clone();
            async move {
                broker
                    .enqueue(NewTask::new(FullQuery {
                        question: format!("question {n}"),
                        ..FullQuery::default()
                    }))
                    .await
            }
        })
        .buffer_unordered(64)
        .try_collect::<Vec<_>>()
        .await?;
    for w in workers {
        w.await??;
    }
    Ok(tasks as f64 / start.elapsed().as_secs_f64())
}
