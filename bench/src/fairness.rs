//! `ragpool-bench fairness`: what fair share between owners (API keys) costs the claim, and
//! what it buys a key that submits a few tasks behind another key's large batch. One private
//! `redis-server`, consumers in this process, everything measured in the same run.
//!
//! - **Claim throughput with 1, 10 and 1,000 owners**: `--tasks` tasks spread evenly over the
//!   owners (enqueued interleaved, so every owner stays active until the queue is nearly
//!   empty), drained by `--consumers` loops claiming one task per call, and again claiming up
//!   to 8. The baseline is the same drain of tasks without an owner: one FIFO owner, the way
//!   a deployment without keys runs. Claims only: no completion, so the ratio is the claim
//!   script's own cost. Beside the throughput, the claims per second of Redis CPU time
//!   (`INFO cpu`, the server's user + system time over the drain): the same cost seen from the
//!   server alone, which the consumers' share of the machine does not move.
//! - **A late owner's wait**: owner A submits a batch of 5,000 tasks; then owner B submits
//!   10, and in another run 50, one call at a time, while the consumers drain the queue
//!   (claim, then complete). B's wait is from the call of its enqueue to the claim's return.
//!   With fair share A and B are two owners; without it neither has one, so the queue is one
//!   FIFO line, as before fair share.
//!
//! Each owned drain runs next to a drain without owners, and a throughput row is the pair
//! whose ratio is the median of the `--rounds` pairs; waits are the lowest of the rounds'
//! figures.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use ragpool_queue::payload::FullQuery;
use ragpool_queue::testing::RedisServer;
use ragpool_queue::{Broker, BrokerConfig, ConsumerConfig, NewTask, OwnerShare, TaskId};
use serde_json::json;

use crate::latency::percentile;
use crate::queue::flush;
use crate::report::{Row, print_table, render_columns};

/// Flags of `ragpool-bench fairness`.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// Tasks per claim-throughput drain.
    #[arg(long, default_value_t = 6_000)]
    pub tasks: usize,
    /// Concurrent consumers, in both parts.
    #[arg(long, default_value_t = 4)]
    pub consumers: usize,
    /// Owner A's batch in the wait part.
    #[arg(long, default_value_t = 5_000)]
    pub batch: usize,
    /// Runs of each: throughputs report the median pair, waits the lowest.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
}

/// How many owners the tasks of a claim-throughput drain have; `None` for no owner.
const OWNER_COUNTS: [Option<usize>; 4] = [None, Some(1), Some(10), Some(1000)];
/// Tasks per claim call in the throughput part.
const CLAIM_SIZES: [usize; 2] = [1, 8];
/// Owner B's submissions in the wait part.
const LATE_TASKS: [usize; 2] = [10, 50];

const QUEUE: &str = "full_query";

/// Runs both parts and prints their tables.
pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.rounds >= 1, "--rounds must be at least 1");
    let server = tokio::task::spawn_blocking(RedisServer::start)
        .await?
        .context("starting redis-server")?;
    let url = server.url();
    let broker = Broker::connect(BrokerConfig::from_url(&url)?).await?;

    let mut rows = throughput_rows(&broker, &url, &args).await?;
    let (wait_rows, columns) = wait_rows(&broker, &url, &args).await?;
    rows.extend(wait_rows);
    println!(
        "\n{} tasks per drain, {} consumers; owner A's batch {}; {} rounds (throughputs: the median pair; waits: the lowest):",
        args.tasks, args.consumers, args.batch, args.rounds
    );
    print_table(&rows);
    println!(
        "\nowner B's tasks behind owner A's batch of {}:",
        args.batch
    );
    print!(
        "{}",
        render_columns(
            &[
                "B's tasks",
                "queue",
                "B's wait p50",
                "B's wait p99",
                "A's tasks claimed meanwhile"
            ],
            &columns
        )
    );
    Ok(())
}

fn describe(owners: Option<usize>) -> String {
    match owners {
        None => "no owner (one FIFO owner)".to_string(),
        Some(1) => "1 owner".to_string(),
        Some(n) => format!("{n} owners"),
    }
}

/// One drain's figures: tasks per second, and tasks per second of Redis CPU time.
#[derive(Clone, Copy, Debug)]
struct Drain {
    rate: f64,
    per_cpu: f64,
}

/// Queues `args.tasks` tasks of `owners` and drains them in claims of `size`.
async fn measure(
    broker: &Broker,
    url: &str,
    args: &Args,
    size: usize,
    owners: Option<usize>,
) -> anyhow::Result<Drain> {
    flush(url).await?;
    fill(broker, args.tasks, owners).await?;
    let cpu = redis_cpu_seconds(url).await?;
    let rate = drain_claims(broker, args.tasks, args.consumers, size).await?;
    let per_cpu = args.tasks as f64 / (redis_cpu_seconds(url).await? - cpu);
    Ok(Drain { rate, per_cpu })
}

/// Claim throughput per owner count and claim size, each against tasks without an owner.
/// Each owned drain runs next to a drain without owners (after it in one round, before it in
/// the next), so both see the machine in the same state; a row is the pair whose ratio is the
/// median of the rounds' (the upper one of two middle ratios).
async fn throughput_rows(broker: &Broker, url: &str, args: &Args) -> anyhow::Result<Vec<Row>> {
    // Per claim size and owner count (without the baseline's), one (owned, baseline) per round.
    let mut pairs =
        vec![vec![Vec::<(Drain, Drain)>::new(); OWNER_COUNTS.len() - 1]; CLAIM_SIZES.len()];
    for round in 0..args.rounds {
        let mut line = Vec::new();
        for (s, &size) in CLAIM_SIZES.iter().enumerate() {
            for (o, &owners) in OWNER_COUNTS.iter().enumerate().skip(1) {
                let pair = if round % 2 == 0 {
                    let base = measure(broker, url, args, size, None).await?;
                    (measure(broker, url, args, size, owners).await?, base)
                } else {
                    let owned = measure(broker, url, args, size, owners).await?;
                    (owned, measure(broker, url, args, size, None).await?)
                };
                line.push(format!(
                    "claim {size}, {}: {:.2} ({:.2} per Redis CPU s)",
                    describe(owners),
                    pair.0.rate / pair.1.rate,
                    pair.0.per_cpu / pair.1.per_cpu
                ));
                pairs[s][o - 1].push(pair);
            }
        }
        println!("round {}: {}", round + 1, line.join(", "));
    }
    let median = |mut all: Vec<(f64, f64)>| -> (f64, f64) {
        all.sort_by(|a, b| (a.0 / a.1).total_cmp(&(b.0 / b.1)));
        all[all.len() / 2]
    };
    let mut rows = Vec::new();
    for per_cpu in [false, true] {
        for (s, &size) in CLAIM_SIZES.iter().enumerate() {
            let baseline = format!("claim {size}, no owner");
            for (o, &owners) in OWNER_COUNTS.iter().enumerate().skip(1) {
                let figure = |d: &Drain| if per_cpu { d.per_cpu } else { d.rate };
                let (value, base) = median(
                    pairs[s][o - 1]
                        .iter()
                        .map(|(owned, b)| (figure(owned), figure(b)))
                        .collect(),
                );
                let (what, unit) = if per_cpu {
                    (", per Redis CPU second", "tasks")
                } else {
                    ("", "tasks/s")
                };
                rows.push(Row::ratio(
                    format!("claim {size}, {} active{what}", describe(owners)),
                    value,
                    unit,
                    &baseline,
                    base,
                ));
            }
        }
    }
    Ok(rows)
}

/// The Redis server's CPU time so far (user + system, `INFO cpu`), in seconds.
async fn redis_cpu_seconds(url: &str) -> anyhow::Result<f64> {
    let mut conn = redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?;
    let info: String = redis::cmd("INFO").arg("cpu").query_async(&mut conn).await?;
    let field = |name: &str| -> anyhow::Result<f64> {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .with_context(|| format!("INFO cpu has no {name}"))?
            .trim()
            .parse()
            .with_context(|| format!("INFO cpu's {name}"))
    };
    Ok(field("used_cpu_user")? + field("used_cpu_sys")?)
}

fn sample(n: usize) -> NewTask {
    NewTask::new(FullQuery {
        question: format!("question {n}"),
        ..FullQuery::default()
    })
}

/// Queues `tasks` tasks, owner by owner in turn (none when `owners` is `None`).
async fn fill(broker: &Broker, tasks: usize, owners: Option<usize>) -> anyhow::Result<()> {
    let all: Vec<NewTask> = (0..tasks)
        .map(|n| match owners {
            None => sample(n),
            Some(k) => sample(n).owned_by(format!("owner-{}", n % k), OwnerShare::default()),
        })
        .collect();
    let done = broker.enqueue_many(all).await?;
    anyhow::ensure!(done.len() == tasks, "enqueued {} of {tasks}", done.len());
    Ok(())
}

async fn consumer(broker: &Broker, name: String) -> anyhow::Result<ragpool_queue::Consumer> {
    Ok(broker
        .consumer(ConsumerConfig {
            worker_id: name,
            queues: vec![QUEUE.into()],
            policy: Default::default(),
            lease: Duration::from_secs(600),
        })
        .await?)
}

/// Tasks per second of `consumers` loops claiming up to `size` per call until the queue is
/// empty; nothing is completed.
async fn drain_claims(
    broker: &Broker,
    tasks: usize,
    consumers: usize,
    size: usize,
) -> anyhow::Result<f64> {
    let claimed = Arc::new(AtomicUsize::new(0));
    let mut loops = Vec::new();
    for w in 0..consumers {
        loops.push(consumer(broker, format!("bench-{w}")).await?);
    }
    let start = Instant::now();
    let workers: Vec<_> = loops
        .into_iter()
        .map(|c| {
            let claimed = claimed.clone();
            tokio::spawn(async move {
                loop {
                    let got = c.try_claim_many(size).await?;
                    if got.is_empty() {
                        return anyhow::Ok(());
                    }
                    claimed.fetch_add(got.len(), Ordering::Relaxed);
                }
            })
        })
        .collect();
    for w in workers {
        w.await??;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let claimed = claimed.load(Ordering::Relaxed);
    anyhow::ensure!(claimed == tasks, "claimed {claimed} of {tasks}");
    Ok(tasks as f64 / elapsed)
}

/// What one run of the wait part measured.
struct Waits {
    p50: Duration,
    p99: Duration,
    /// A's tasks claimed after B's first submission and before B's last claim.
    ahead: usize,
}

/// B's waits behind A's batch, with and without fair share; rows for the ratio table and
/// the rows of the plain table.
async fn wait_rows(
    broker: &Broker,
    url: &str,
    args: &Args,
) -> anyhow::Result<(Vec<Row>, Vec<Vec<String>>)> {
    let mut best: Vec<[Option<Waits>; 2]> = LATE_TASKS.iter().map(|_| [None, None]).collect();
    for round in 0..args.rounds {
        let mut order = vec![(0, true), (0, false), (1, true), (1, false)];
        if round % 2 == 1 {
            order.reverse();
        }
        let mut line = Vec::new();
        for (l, fair) in order {
            flush(url).await?;
            let w = late_owner(broker, args, LATE_TASKS[l], fair).await?;
            line.push(format!(
                "B {} {}: p99 {:.1} ms",
                LATE_TASKS[l],
                if fair { "fair" } else { "FIFO" },
                ms(w.p99)
            ));
            let slot = &mut best[l][usize::from(!fair)];
            if slot.as_ref().is_none_or(|b| w.p99 < b.p99) {
                *slot = Some(w);
            }
        }
        println!("round {}: {}", round + 1, line.join(", "));
    }
    let mut rows = Vec::new();
    let mut columns = Vec::new();
    for (l, [fair, fifo]) in best.iter().enumerate() {
        let (Some(fair), Some(fifo)) = (fair, fifo) else {
            continue;
        };
        let n = LATE_TASKS[l];
        rows.push(Row::ratio(
            format!("owner B's wait p99, {n} tasks behind A's batch, without fair share"),
            ms(fifo.p99),
            "ms",
            "with fair share",
            ms(fair.p99),
        ));
        for (name, w) in [("fair share (A, B)", fair), ("FIFO (no owners)", fifo)] {
            columns.push(vec![
                n.to_string(),
                name.to_string(),
                format!("{:.1} ms", ms(w.p50)),
                format!("{:.1} ms", ms(w.p99)),
                w.ahead.to_string(),
            ]);
        }
    }
    Ok((rows, columns))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One run: consumers draining (claim, complete) while A's batch goes in and then B's
/// `late` tasks, one call at a time.
async fn late_owner(
    broker: &Broker,
    args: &Args,
    late: usize,
    fair: bool,
) -> anyhow::Result<Waits> {
    let owned = |task: NewTask, owner: &str| {
        if fair {
            task.owned_by(owner, OwnerShare::default())
        } else {
            task
        }
    };
    let total = args.batch + late;
    let done = Arc::new(AtomicUsize::new(0));
    let order = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for w in 0..args.consumers {
        let c = consumer(broker, format!("bench-{w}")).await?;
        let (broker, done, order) = (broker.clone(), done.clone(), order.clone());
        workers.push(tokio::spawn(async move {
            // (task, when its claim returned, its place in the claim order)
            let mut seen: Vec<(TaskId, Instant, usize)> = Vec::new();
            while done.load(Ordering::Relaxed) < total {
                if let Some(claimed) = c.claim(Duration::from_millis(100)).await? {
                    let at = Instant::now();
                    seen.push((
                        claimed.task.id.clone(),
                        at,
                        order.fetch_add(1, Ordering::Relaxed),
                    ));
                    broker
                        .complete(&claimed.lease, &json!({ "ok": true }))
                        .await?;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
            anyhow::Ok(seen)
        }));
    }
    let batch: Vec<NewTask> = (0..args.batch).map(|n| owned(sample(n), "a")).collect();
    broker.enqueue_many(batch).await?;
    let mut submitted: Vec<(TaskId, Instant)> = Vec::with_capacity(late);
    for n in 0..late {
        let at = Instant::now();
        let e = broker.enqueue(owned(sample(n), "b")).await?;
        submitted.push((e.id, at));
    }
    let mut claims: std::collections::HashMap<TaskId, (Instant, usize)> = Default::default();
    for w in workers {
        for (id, at, place) in w.await?? {
            claims.insert(id, (at, place));
        }
    }
    let mut waits = Vec::with_capacity(late);
    let mut last_place = 0;
    for (id, at) in &submitted {
        let (claimed_at, place) = claims
            .get(id)
            .with_context(|| format!("B's task {id} was not claimed"))?;
        waits.push(claimed_at.saturating_duration_since(*at));
        last_place = last_place.max(*place);
    }
    waits.sort();
    // A's tasks claimed from B's first submission until B's last claim: the ones B waited for.
    let first = submitted
        .first()
        .map(|(_, at)| *at)
        .context("no task of B's")?;
    let mine: std::collections::HashSet<&TaskId> = submitted.iter().map(|(id, _)| id).collect();
    let ahead = claims
        .iter()
        .filter(|(id, (at, place))| !mine.contains(id) && *at >= first && *place < last_place)
        .count();
    Ok(Waits {
        p50: percentile(&waits, 0.5),
        p99: percentile(&waits, 0.99),
        ahead,
    })
}
