//! `ragpool-bench dashboard`: how fast the dashboard's data calls answer with 1,000,000
//! finished tasks in Redis.
//!
//! Fills a private `redis-server` with finished tasks the way `complete.lua` leaves them (the
//! task hash with its result, the `finished` index scored by expiry, the counters and
//! duration samples), written by a Lua script in chunks so the fill takes seconds. Then runs
//! `ragpool-api` in-process on a loopback port and times, over many sequential requests, the
//! main page's calls (the snapshot and the workers list) and task-list pages at the newest end
//! and in the middle of the million. Each figure is shown against `/healthz` measured the same
//! way: the cost of an HTTP round trip that touches nothing.

use std::time::{Duration, Instant};

use anyhow::Context;
use ragpool_queue::testing::RedisServer;
use ragpool_queue::{Broker, BrokerConfig, WorkerInfo};

use crate::report::{Row, print_table};

/// Flags of `ragpool-bench dashboard`.
#[derive(clap::Args)]
pub struct Args {
    /// Finished tasks to fill Redis with.
    #[arg(long, default_value_t = 1_000_000)]
    tasks: u64,
    /// Timed requests per endpoint (after 10 untimed ones).
    #[arg(long, default_value_t = 300)]
    requests: usize,
}

/// Tasks written per fill script call: well inside the client's 500 ms response timeout.
const FILL_CHUNK: u64 = 2_000;

/// Writes tasks `ARGV[2]`..`ARGV[3]` (exclusive) of the `full_query` queue as finished tasks,
/// with finish times spread over the last hour.
const FILL: &str = r#"
local prefix, from, to, total = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000
local ttl = 86400000
for i = from, to - 1 do
  local id = string.format('00000000-0000-4000-8000-%012x', i)
  local finished = now - math.floor((total - i) * 3600000 / total)
  redis.call('HSET', prefix .. 'task:' .. id,
    'id', id, 'kind', 'full_query', 'queue', 'full_query',
    'payload', '{"question":"what does the manual say about task ' .. i .. '?","top_k":5}',
    'state', 'finished', 'attempts', 1, 'max_attempts', 3, 'timeout_ms', 300000,
    'result_ttl_ms', ttl, 'failure_ttl_ms', ttl, 'backoff_base_ms', 1000,
    'backoff_max_ms', 60000, 'enqueued_at', finished - 900, 'queued_at', finished - 900,
    'seq', i, 'progress', 100, 'cancel', 0, 'worker', 'bench-worker',
    'started_at', finished - 700, 'finished_at', finished,
    'result', '{"answer":"see section ' .. (i % 97) .. '","sources":["manual.md"]}')
  redis.call('PEXPIRE', prefix .. 'task:' .. id, ttl)
  redis.call('ZADD', prefix .. 'q:full_query:finished', finished + ttl, id)
end
redis.call('HINCRBY', prefix .. 'q:full_query:counters', 'enqueued', to - from)
redis.call('HINCRBY', prefix .. 'q:full_query:counters', 'finished', to - from)
redis.call('SADD', prefix .. 'queues', 'full_query')
return to - from
"#;

/// Fills Redis, serves the API and prints the table.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let server = tokio::task::spawn_blocking(RedisServer::start)
        .await?
        .context("starting redis-server")?;
    let broker = Broker::connect(BrokerConfig::from_url(&server.url())?).await?;
    let client = redis::Client::open(server.url())?;
    let mut conn = client.get_multiplexed_async_connection().await?;

    let started = Instant::now();
    let fill = redis::Script::new(FILL);
    let mut from = 0;
    while from < args.tasks {
        let to = (from + FILL_CHUNK).min(args.tasks);
        let _: u64 = fill
            .arg(broker.keys().prefix())
            .arg(from)
            .arg(to)
            .arg(args.tasks)
            .invoke_async(&mut conn)
            .await
            .context("filling redis")?;
        from = to;
    }
    // Recent duration samples, as complete.lua and claim.lua keep them.
    let samples: Vec<u64> = (0..1000).map(|i| 100 + (i * 37) % 900).collect();
    redis::pipe()
        .rpush("{ragpool}:q:full_query:processing_ms", &samples)
        .rpush("{ragpool}:q:full_query:wait_ms", &samples)
        .query_async::<()>(&mut conn)
        .await?;
    let fill_secs = started.elapsed().as_secs_f64();
    for i in 0..8 {
        let info = WorkerInfo {
            id: format!("bench-worker-{i}"),
            host: "bench".into(),
            queues: vec!["full_query".into()],
            concurrency: 8,
            in_flight: (i % 8) as u32,
            ..WorkerInfo::default()
        };
        broker
            .register_worker(&info, Duration::from_secs(600))
            .await?;
    }
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut conn)
        .await?;
    let used_mib = info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0)
        / (1024.0 * 1024.0);
    println!(
        "filled {} finished tasks in {fill_secs:.1} s ({used_mib:.0} MiB in Redis)",
        args.tasks
    );

    // A cursor in the middle of the finished index.
    let middle: Vec<(String, String)> = redis::cmd("ZREVRANGE")
        .arg("{ragpool}:q:full_query:finished")
        .arg(args.tasks / 2)
        .arg(args.tasks / 2)
        .arg("WITHSCORES")
        .query_async(&mut conn)
        .await?;
    let (mid_id, mid_score) = middle
        .into_iter()
        .next()
        .context("the finished index is empty")?;

    let config = ragpool_api::ApiConfig {
        redis_url: server.url(),
        ..ragpool_api::ApiConfig::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let api = tokio::spawn(ragpool_api::serve(
        config,
        broker.clone(),
        listener,
        async move {
            let _ = stopped.await;
        },
    ));
    let http = reqwest::Client::new();

    let healthz = time(&http, &format!("{base}/healthz"), args.requests).await?;
    let cases = [
        (
            "main page: GET /api/dashboard/snapshot",
            "/api/dashboard/snapshot".to_string(),
        ),
        (
            "main page: GET /api/workers (8 workers)",
            "/api/workers".to_string(),
        ),
        (
            "task list, newest 50 finished",
            "/api/queue/full_query/tasks?state=finished&limit=50".to_string(),
        ),
        (
            "task list, 50 finished from the middle (cursor)",
            format!(
                "/api/queue/full_query/tasks?state=finished&limit=50&cursor={mid_score}:{mid_id}"
            ),
        ),
        (
            "task list, 200 finished (largest page)",
            "/api/queue/full_query/tasks?state=finished&limit=200".to_string(),
        ),
    ];
    let mut rows = vec![Row::plain(
        format!("fill {} finished tasks", args.tasks),
        fill_secs,
        "s",
    )];
    rows.push(Row::plain(
        "redis used memory after the fill",
        used_mib,
        "MiB",
    ));
    for (name, path) in cases {
        let t = time(&http, &format!("{base}{path}"), args.requests).await?;
        rows.push(Row::ratio(
            format!("{name} p50"),
            t.0,
            "ms",
            "/healthz p50",
            healthz.0,
        ));
        rows.push(Row::ratio(
            format!("{name} p99"),
            t.1,
            "ms",
            "/healthz p99",
            healthz.1,
        ));
    }
    let _ = stop.send(());
    api.await??;
    println!();
    print_table(&rows);
    Ok(())
}

/// p50 and p99 latency in milliseconds of `n` sequential GETs (after 10 untimed ones), each
/// checked to answer 200.
async fn time(http: &reqwest::Client, url: &str, n: usize) -> anyhow::Result<(f64, f64)> {
    let mut took = Vec::with_capacity(n);
    for i in 0..n + 10 {
        let start = Instant::now();
        let r = http.get(url).send().await?;
        let status = r.status();
        let body = r.bytes().await?;
        anyhow::ensure!(
            status.is_success(),
            "{url}: {status} {}",
            String::from_utf8_lossy(&body)
        );
        if i >= 10 {
            took.push(start.elapsed().as_secs_f64() * 1000.0);
        }
    }
    took.sort_by(f64::total_cmp);
    let at = |p: f64| took[((p * took.len() as f64).ceil() as usize).clamp(1, took.len()) - 1];
    Ok((at(0.50), at(0.99)))
}
