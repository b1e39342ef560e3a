//! `ragpool-bench submit-rate`: the API's submit rate (`POST /api/async/query` per second from
//! a fixed number of keep-alive connections) of one `ragpool` binary against another built
//! from the same source in another way, e.g. the release profile's opt-level 3 against
//! opt-level `"z"`.
//!
//! Each binary's API runs as a real process (`<binary> api`) against its own private
//! `redis-server`, flushed before each round. The two binaries are measured in alternation,
//! a fresh API process per round, so load from other processes on the machine falls on both
//! alike; each figure is the best round. A round is a short warm-up (connections opened, the
//! first requests answered) and then `--seconds` of requests, each connection sending its
//! next request as soon as it has the previous answer.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use ragpool_queue::testing::RedisServer;

use crate::report::{Row, print_table};

/// Flags of `ragpool-bench submit-rate`.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// The `ragpool` binary to compare against, e.g. one built with opt-level "z".
    #[arg(long)]
    pub baseline_binary: PathBuf,
    /// The `ragpool` binary measured, e.g. the release build.
    #[arg(long)]
    pub binary: PathBuf,
    /// Keep-alive connections sending submissions at once.
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// Seconds each round sends requests for (after its warm-up).
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Rounds of each binary, in alternation; the best is reported.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
}

/// One round's figures.
#[derive(Debug, Clone, Copy, Default)]
struct Round {
    per_second: f64,
    p99_ms: f64,
}

/// Runs the measurement and prints the table.
pub async fn run(args: Args) -> anyhow::Result<()> {
    for binary in [&args.baseline_binary, &args.binary] {
        ensure!(binary.is_file(), "{} is not a file", binary.display());
    }
    let servers = [
        tokio::task::spawn_blocking(RedisServer::start),
        tokio::task::spawn_blocking(RedisServer::start),
    ];
    let mut redis = Vec::new();
    for server in servers {
        redis.push(server.await?.context("starting redis-server")?);
    }
    let sides = [
        ("baseline", &args.baseline_binary, redis[0].url()),
        ("measured", &args.binary, redis[1].url()),
    ];
    let mut best = [Round::default(); 2];
    for round in 1..=args.rounds {
        for (i, (label, binary, url)) in sides.iter().enumerate() {
            flush(url).await?;
            let r = one_round(binary, url, &args).await?;
            println!(
                "round {round}, {label} ({}): {:.0} submissions/s, p99 {:.2} ms",
                binary.display(),
                r.per_second,
                r.p99_ms
            );
            if r.per_second > best[i].per_second {
                best[i] = r;
            }
        }
    }
    let name = |p: &Path| p.display().to_string();
    let figure = format!(
        "POST /api/async/query, {} connections: {}",
        args.connections,
        name(&args.binary)
    );
    let baseline = name(&args.baseline_binary);
    let rows = vec![
        Row::ratio(
            figure,
            best[1].per_second,
            "req/s",
            baseline.clone(),
            best[0].per_second,
        ),
        Row::ratio(
            "p99 of that round",
            best[1].p99_ms,
            "ms",
            baseline,
            best[0].p99_ms,
        ),
    ];
    println!(
        "\n{} connections, best of {} rounds of {} s each:",
        args.connections, args.rounds, args.seconds
    );
    print_table(&rows);
    Ok(())
}

/// Starts `binary`'s API against `url`, loads it, stops it.
async fn one_round(binary: &Path, url: &str, args: &Args) -> anyhow::Result<Round> {
    let addr = free_port()?;
    let mut api = Api::start(binary, url, addr)?;
    let base = format!("http://{addr}");
    wait_ready(&base, &mut api).await?;
    let until = Duration::from_secs(args.seconds);
    // Warm-up: each connection opened and a few submissions answered, not counted.
    load(&base, args.connections, Duration::from_millis(500)).await?;
    let (count, elapsed, mut latencies) = load(&base, args.connections, until).await?;
    drop(api);
    latencies.sort_unstable();
    let p99 = latencies
        .get((latencies.len() * 99 / 100).min(latencies.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default();
    Ok(Round {
        per_second: count as f64 / elapsed.as_secs_f64(),
        p99_ms: p99.as_secs_f64() * 1000.0,
    })
}

/// `connections` clients, each on one keep-alive connection, submitting back to back for
/// `duration`: how many were answered 202, in how long, and each one's latency.
async fn load(
    base: &str,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<(usize, Duration, Vec<Duration>)> {
    let start = Instant::now();
    let deadline = start + duration;
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .http1_only()
            .build()?;
        let url = format!("{base}/api/async/query");
        clients.push(tokio::spawn(async move {
            let body =
                r#"{"question":"When is the task of a dead worker re-delivered?","top_k":5}"#;
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let sent = Instant::now();
                let r = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await?;
                let status = r.status();
                r.bytes().await?;
                if status.as_u16() != 202 {
                    bail!("POST /api/async/query answered {status}");
                }
                latencies.push(sent.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut all = Vec::new();
    for client in clients {
        all.extend(client.await??);
    }
    Ok((all.len(), start.elapsed(), all))
}

/// Polls `/readyz` until the API answers 200.
async fn wait_ready(base: &str, api: &mut Api) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let give_up = Instant::now() + Duration::from_secs(20);
    while Instant::now() < give_up {
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        api.ensure_running()?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the API at {base} was not ready within 20 s")
}

/// A loopback address no one listens on now.
fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?)
}

/// An API process, killed and reaped when dropped.
struct Api(Child);

impl Api {
    fn start(binary: &Path, url: &str, addr: SocketAddr) -> anyhow::Result<Api> {
        let child = Command::new(binary)
            .arg("api")
            .args(["--listen", &addr.to_string()])
            .env("RAGPOOL_REDIS_URL", url)
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {} api", binary.display()))?;
        Ok(Api(child))
    }

    fn ensure_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.0.try_wait()? {
            bail!("the API exited ({status}) before it was ready");
        }
        Ok(())
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Empties the Redis at `url`. A round leaves tens of thousands of tasks, more than a
/// `FLUSHALL` clears within the client's default response timeout.
async fn flush(url: &str) -> anyhow::Result<()> {
    let client = redis::Client::open(url)?;
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    redis::cmd("FLUSHALL").query_async::<()>(&mut conn).await?;
    Ok(())
}
