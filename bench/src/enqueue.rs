//! `ragpool-bench enqueue`: what submitting costs one client, as ratios measured in the same
//! run on one private `redis-server`.
//!
//! - `Broker::enqueue`, one call at a time, against a bare `LPUSH` of the same payload one
//!   call at a time: the price of the task hash, ready entry, wake-up token, counters and
//!   event over the cheapest possible write, both one round trip.
//! - `Broker::enqueue_many` in batches of 100 and of 1,000, against that single-call rate:
//!   what batching saves when round trips dominate.
//!
//! Each figure is the best of `--rounds` runs of `--tasks` tasks, Redis flushed before each.

use std::time::Instant;

use anyhow::Context;
use ragpool_queue::payload::FullQuery;
use ragpool_queue::testing::RedisServer;
use ragpool_queue::{Broker, BrokerConfig, NewTask, Payload};

use crate::queue::flush;
use crate::report::{Row, print_table};

/// Flags of `ragpool-bench enqueue`.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// Tasks per run of each way of enqueueing.
    #[arg(long, default_value_t = 10_000)]
    pub tasks: usize,
    /// Runs of each; the best of them is reported.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
}

/// Runs the measurement and prints the table.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let rows = rows(&args).await?;
    println!(
        "\n{} tasks from one client, best of {}:",
        args.tasks, args.rounds
    );
    print_table(&rows);
    Ok(())
}

/// The table's rows, for this command or another that reports them with its own.
pub async fn rows(args: &Args) -> anyhow::Result<Vec<Row>> {
    let server = tokio::task::spawn_blocking(RedisServer::start)
        .await?
        .context("starting redis-server")?;
    let url = server.url();
    let broker = Broker::connect(BrokerConfig::from_url(&url)?).await?;
    let payload = sample();
    let json = payload.to_json()?;
    let (mut lpush, mut single, mut b100, mut b1000) = (0f64, 0f64, 0f64, 0f64);
    for round in 0..args.rounds {
        flush(&url).await?;
        let r_lpush = bare_lpush(&url, &json, args.tasks).await?;
        flush(&url).await?;
        let r_single = one_at_a_time(&broker, &payload, args.tasks).await?;
        flush(&url).await?;
        let r_100 = batches(&broker, &payload, args.tasks, 100).await?;
        flush(&url).await?;
        let r_1000 = batches(&broker, &payload, args.tasks, 1000).await?;
        println!(
            "round {}: LPUSH {r_lpush:.0}/s, enqueue {r_single:.0}/s, batches of 100 {r_100:.0}/s, of 1000 {r_1000:.0}/s",
            round + 1
        );
        lpush = lpush.max(r_lpush);
        single = single.max(r_single);
        b100 = b100.max(r_100);
        b1000 = b1000.max(r_1000);
    }
    let one = "enqueue, one call at a time";
    Ok(vec![
        Row::ratio(one, single, "tasks/s", "LPUSH, one call at a time", lpush),
        Row::ratio("enqueue_many, batches of 100", b100, "tasks/s", one, single),
        Row::ratio(
            "enqueue_many, batches of 1000",
            b1000,
            "tasks/s",
            one,
            single,
        ),
    ])
}

/// A small full query, the typical text task.
fn sample() -> Payload {
    Payload::FullQuery(FullQuery {
        question: "When is the task of a dead worker re-delivered?".into(),
        top_k: Some(5),
        ..FullQuery::default()
    })
}

/// Items per second of `LPUSH`ing `json`, one call at a time.
async fn bare_lpush(url: &str, json: &str, tasks: usize) -> anyhow::Result<f64> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let start = Instant::now();
    for _ in 0..tasks {
        redis::cmd("LPUSH")
            .arg("bench:jobs")
            .arg(json)
            .query_async::<()>(&mut conn)
            .await?;
    }
    Ok(tasks as f64 / start.elapsed().as_secs_f64())
}

/// Tasks per second of `Broker::enqueue`, one call at a time.
async fn one_at_a_time(broker: &Broker, payload: &Payload, tasks: usize) -> anyhow::Result<f64> {
    let start = Instant::now();
    for _ in 0..tasks {
        broker.enqueue(NewTask::new(payload.clone())).await?;
    }
    Ok(tasks as f64 / start.elapsed().as_secs_f64())
}

/// Tasks per second of `Broker::enqueue_many` in batches of `size`.
async fn batches(
    broker: &Broker,
    payload: &Payload,
    tasks: usize,
    size: usize,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut left = tasks;
    while left > 0 {
        let n = left.min(size);
        let batch = (0..n).map(|_| NewTask::new(payload.clone())).collect();
        let done = broker.enqueue_many(batch).await?;
        anyhow::ensure!(
            done.len() == n,
            "enqueue_many answered {} of {n}",
            done.len()
        );
        left -= n;
    }
    Ok(tasks as f64 / start.elapsed().as_secs_f64())
}
