//! `ragpool-bench cluster`: one Redis Cluster master against three, with the same partition
//! count, the same binary and the same workload, measured in one run.
//!
//! Two clusters run side by side on loopback: one master serving all 16384 slots, and three
//! masters splitting them evenly. Both hold the key prefix in `--partitions` partitions; on
//! the first every partition lives on the one master, on the second each master holds a
//! third of them. Each round, alternating between the two:
//!
//! - **enqueue**: `--clients` concurrent callers on one broker (one process serving that
//!   many requests at once) call `Broker::enqueue` for single tasks until `--tasks` are in;
//! - **drain**: `--consumers` concurrent loops claim up to `--claim` tasks at a time
//!   (`Consumer::try_claim_many`) and complete each one (`Broker::complete`, no work in
//!   between) until the queue is empty.
//!
//! Each throughput is the best of `--rounds`; the 3-master figure is divided by the 1-master
//! figure. Around each phase the CPU time of every `redis-server` and of this process is read
//! from `/proc/<pid>/stat`: on a machine with fewer cores than masters plus client, that
//! shows what bounds the gain. After the 3-master run each master's share of keys, of
//! `INFO commandstats` calls and of `used_memory` growth shows how evenly the partitions
//! spread the load. The 1-master run also gives the sizing figures: script calls per second
//! and per `redis-server` CPU-second, and memory per finished task kept for its result TTL.
//!
//! Every run checks what it measured: after the enqueue every task is queued, after the
//! drain every task is finished, and no task was claimed twice.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use futures::future::try_join_all;
use ragpool_queue::payload::FullQuery;
use ragpool_queue::testing::RedisCluster;
use ragpool_queue::{Broker, BrokerConfig, ConsumerConfig, MAX_CLAIM, NewTask, RedisTarget};
use redis::aio::MultiplexedConnection;
use serde_json::json;

use crate::report::{Row, print_table, render_columns};

/// The queue every task goes to (the kind of [`FullQuery`]).
const QUEUE: &str = "full_query";
/// Masters of the cluster compared against the single master.
const MASTERS: usize = 3;

/// Flags of `ragpool-bench cluster`.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// Partitions of the key prefix, the same on both clusters.
    #[arg(long, default_value_t = 6)]
    pub partitions: u16,
    /// Tasks enqueued, then drained, per run.
    #[arg(long, default_value_t = 20_000)]
    pub tasks: usize,
    /// Concurrent `enqueue` callers.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// Concurrent consumer loops in the drain (8 keep one master busy on two cores).
    #[arg(long, default_value_t = 8)]
    pub consumers: usize,
    /// Tasks per claim call in the drain (at most 32).
    #[arg(long, default_value_t = 8)]
    pub claim: usize,
    /// Runs of each cluster, alternating; the best of them is reported.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
}

/// Runs the measurement and prints its tables.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let max = ragpool_queue::keys::MAX_PARTITIONS;
    ensure!(
        (1..=max).contains(&args.partitions),
        "--partitions must be between 1 and {max}"
    );
    ensure!(args.tasks > 0, "--tasks must be at least 1");
    ensure!(args.clients > 0, "--clients must be at least 1");
    ensure!(args.consumers > 0, "--consumers must be at least 1");
    ensure!(
        (1..=MAX_CLAIM).contains(&args.claim),
        "--claim must be between 1 and {MAX_CLAIM}"
    );
    ensure!(args.rounds > 0, "--rounds must be at least 1");
    let one = Topology::start(1, &args).await?;
    let three = Topology::start(MASTERS, &args).await?;
    let (mut runs_one, mut runs_three) = (Vec::new(), Vec::new());
    for round in 1..=args.rounds {
        for (topology, runs) in [(&one, &mut runs_one), (&three, &mut runs_three)] {
            let run = topology.run(&args).await?;
            println!(
                "round {round}, {} master(s): enqueue {:.0} tasks/s, drain {:.0} tasks/s",
                topology.masters(),
                run.enqueue.rate(args.tasks),
                run.drain.rate(args.tasks)
            );
            runs.push(run);
        }
    }
    let best = |runs: &[Run], phase: fn(&Run) -> &Phase| -> Phase {
        runs.iter()
            .map(phase)
            .min_by(|a, b| a.wall.cmp(&b.wall))
            .cloned()
            .unwrap_or_default()
    };
    let enqueue = [
        best(&runs_one, |r| &r.enqueue),
        best(&runs_three, |r| &r.enqueue),
    ];
    let drain = [
        best(&runs_one, |r| &r.drain),
        best(&runs_three, |r| &r.drain),
    ];

    println!(
        "\n{} tasks, {} partitions, {} enqueue callers, {} consumers claiming up to {}, best of {}:",
        args.tasks, args.partitions, args.clients, args.consumers, args.claim, args.rounds
    );
    print_table(&throughput_rows(&args, &enqueue, &drain));

    println!("\nWhere the CPU went in those runs (cores = CPU seconds / wall seconds):");
    print!("{}", cpu_table(&args, &enqueue, &drain));

    if let Some(last) = runs_three.last() {
        println!("\nEach master's share of the last 3-master run (enqueue and drain):");
        print!("{}", shares_table(&three, last));
    }
    if let Some(last) = runs_one.last() {
        println!("\nWhat one master carries (the 1-master run):");
        print_table(&capacity_rows(&args, &enqueue[0], &drain[0], last));
    }
    Ok(())
}

/// The headline: each throughput, the 3-master one against the 1-master one.
fn throughput_rows(args: &Args, enqueue: &[Phase; 2], drain: &[Phase; 2]) -> Vec<Row> {
    let n = args.tasks;
    let e = format!("enqueue, {} callers", args.clients);
    let d = format!(
        "claim {} + complete, {} consumers",
        args.claim, args.consumers
    );
    vec![
        Row::plain(format!("{e}, 1 master"), enqueue[0].rate(n), "tasks/s"),
        Row::ratio(
            format!("{e}, {MASTERS} masters"),
            enqueue[1].rate(n),
            "tasks/s",
            "1 master",
            enqueue[0].rate(n),
        ),
        Row::plain(format!("{d}, 1 master"), drain[0].rate(n), "tasks/s"),
        Row::ratio(
            format!("{d}, {MASTERS} masters"),
            drain[1].rate(n),
            "tasks/s",
            "1 master",
            drain[0].rate(n),
        ),
    ]
}

/// CPU of each `redis-server` and of this process during each phase.
fn cpu_table(args: &Args, enqueue: &[Phase; 2], drain: &[Phase; 2]) -> String {
    let mut rows = Vec::new();
    for (name, phases) in [("enqueue", enqueue), ("drain", drain)] {
        for phase in phases {
            let wall = phase.wall.as_secs_f64();
            let servers: Vec<f64> = phase.server_cpu.iter().map(|c| c / wall).collect();
            let client = phase.client_cpu / wall;
            let server_total: f64 = phase.server_cpu.iter().sum();
            let total = servers.iter().sum::<f64>() + client;
            let per_server_second = if server_total > 0.0 {
                format!("{:.0}", args.tasks as f64 / server_total)
            } else {
                "-".into()
            };
            rows.push(vec![
                name.to_string(),
                phase.server_cpu.len().to_string(),
                format!("{:.0}", phase.rate(args.tasks)),
                servers
                    .iter()
                    .map(|c| format!("{c:.2}"))
                    .collect::<Vec<_>>()
                    .join(" + "),
                format!("{client:.2}"),
                format!("{total:.2}"),
                per_server_second,
            ]);
        }
    }
    render_columns(
        &[
            "phase",
            "masters",
            "tasks/s",
            "redis-server cores, each",
            "client cores",
            "total cores",
            "tasks per redis-server CPU-second",
        ],
        &rows,
    )
}

/// Each master's partitions and its share of keys, calls and memory growth.
fn shares_table(topology: &Topology, run: &Run) -> String {
    let total_keys: i64 = run.nodes.iter().map(|n| n.keys).sum();
    let total_scripts: u64 = run.nodes.iter().map(|n| n.script_calls).sum();
    let total_calls: u64 = run.nodes.iter().map(|n| n.calls).sum();
    let total_memory: i64 = run.nodes.iter().map(|n| n.memory_growth).sum();
    let share = |part: f64, whole: f64| {
        if whole > 0.0 {
            format!("{:.0} %", 100.0 * part / whole)
        } else {
            "-".into()
        }
    };
    let rows = run
        .nodes
        .iter()
        .zip(&topology.nodes)
        .enumerate()
        .map(|(i, (stats, node))| {
            vec![
                format!("{} (port {})", i + 1, node.port),
                node.partitions
                    .iter()
                    .map(|p| format!("p{p}"))
                    .collect::<Vec<_>>()
                    .join(" "),
                format!(
                    "{} = {}",
                    stats.keys,
                    share(stats.keys as f64, total_keys as f64)
                ),
                format!(
                    "{} = {}",
                    stats.script_calls,
                    share(stats.script_calls as f64, total_scripts as f64)
                ),
                format!(
                    "{} = {}",
                    stats.calls,
                    share(stats.calls as f64, total_calls as f64)
                ),
                format!(
                    "{:.1} MiB = {}",
                    stats.memory_growth as f64 / MIB,
                    share(stats.memory_growth as f64, total_memory as f64)
                ),
            ]
        })
        .collect::<Vec<_>>();
    render_columns(
        &[
            "master",
            "partitions",
            "keys",
            "script calls",
            "all calls",
            "used_memory growth",
        ],
        &rows,
    )
}

const MIB: f64 = 1024.0 * 1024.0;

/// Sizing figures from the 1-master run: calls per second, per CPU-second of the master, and
/// memory per finished task.
fn capacity_rows(args: &Args, enqueue: &Phase, drain: &Phase, last: &Run) -> Vec<Row> {
    let n = args.tasks as f64;
    let per_core = |phase: &Phase| {
        let cpu: f64 = phase.server_cpu.iter().sum();
        if cpu > 0.0 { n / cpu } else { 0.0 }
    };
    let node = last.nodes.first();
    let kept = node.map_or(0, |s| s.memory_growth) - last.events_bytes;
    vec![
        Row::plain(
            "enqueue script calls/s (one task each)",
            enqueue.scripts as f64 / enqueue.wall.as_secs_f64(),
            "calls/s",
        ),
        Row::plain(
            "enqueues per redis-server CPU-second",
            per_core(enqueue),
            "tasks",
        ),
        Row::plain(
            "claim + complete pairs/s",
            drain.rate(args.tasks),
            "tasks/s",
        ),
        Row::plain(
            "  script calls/s in the drain",
            drain.scripts as f64 / drain.wall.as_secs_f64(),
            "calls/s",
        ),
        Row::plain(
            "claim + complete pairs per redis-server CPU-second",
            per_core(drain),
            "tasks",
        ),
        Row::plain(
            "used_memory per finished task (kept for its result TTL)",
            kept as f64 / n,
            "bytes",
        ),
        Row::plain(
            format!(
                "events streams ({} partitions, ~10,000 entries each at most)",
                args.partitions
            ),
            last.events_bytes as f64 / MIB,
            "MiB",
        ),
    ]
}

/// One cluster, the broker that uses it and a direct connection to each master.
struct Topology {
    /// Held for its nodes: dropping it kills them.
    _cluster: RedisCluster,
    broker: Broker,
    nodes: Vec<Node>,
}

/// One master: where it listens, its process, and which partitions it holds.
struct Node {
    port: u16,
    pid: u32,
    conn: MultiplexedConnection,
    partitions: Vec<u16>,
}

/// One enqueue-then-drain run on one cluster.
#[derive(Debug, Clone)]
struct Run {
    enqueue: Phase,
    drain: Phase,
    /// Per master, in node order.
    nodes: Vec<NodeStats>,
    /// `MEMORY USAGE` of the events streams of every partition after the drain.
    events_bytes: i64,
}

/// What one phase took.
#[derive(Debug, Clone, Default)]
struct Phase {
    wall: Duration,
    /// CPU seconds of each master's `redis-server`, in node order.
    server_cpu: Vec<f64>,
    /// CPU seconds of this process (the broker, the callers, the consumers).
    client_cpu: f64,
    /// Script calls (`EVALSHA` and `EVAL`) the masters served, all together.
    scripts: u64,
}

impl Phase {
    fn rate(&self, tasks: usize) -> f64 {
        let secs = self.wall.as_secs_f64();
        if secs > 0.0 { tasks as f64 / secs } else { 0.0 }
    }
}

/// One master's figures after a run.
#[derive(Debug, Clone)]
struct NodeStats {
    keys: i64,
    script_calls: u64,
    calls: u64,
    memory_growth: i64,
}

/// The counters of this process and every master at one moment.
#[derive(Debug, Clone)]
struct Snapshot {
    /// CPU seconds of this process.
    client_cpu: f64,
    /// In node order.
    masters: Vec<MasterCounters>,
}

/// Counters read from one master.
#[derive(Debug, Clone, Copy)]
struct MasterCounters {
    cpu: f64,
    script_calls: u64,
    calls: u64,
    used_memory: i64,
}

impl Topology {
    async fn start(masters: usize, args: &Args) -> anyhow::Result<Topology> {
        let mut cluster = tokio::task::spawn_blocking(move || RedisCluster::start(masters))
            .await?
            .with_context(|| format!("starting a {masters}-master cluster"))?;
        let mut config = BrokerConfig::new(RedisTarget {
            urls: cluster.urls(),
            cluster: true,
            ca_cert: None,
            sentinel: None,
        });
        config.partitions = args.partitions;
        let broker = Broker::connect(config).await?;
        let mut nodes = Vec::new();
        for server in cluster.nodes().iter() {
            let port = server.port();
            let pid = server
                .pid()
                .with_context(|| format!("redis-server on port {port} has no process"))?;
            let conn = redis::Client::open(server.url())?
                .get_multiplexed_async_connection()
                .await
                .with_context(|| format!("connecting to redis-server on port {port}"))?;
            nodes.push(Node {
                port,
                pid,
                conn,
                partitions: Vec::new(),
            });
        }
        let first = nodes.first_mut().context("a cluster without nodes")?;
        let ranges = slot_ranges(&mut first.conn).await?;
        for partition in broker.keys().partitions() {
            let slot = ragpool_queue::keys::slot(hash_tag(partition.prefix()));
            let port = ranges
                .iter()
                .find(|(low, high, _)| (*low..=*high).contains(&slot))
                .map(|(_, _, port)| *port)
                .with_context(|| format!("no master serves slot {slot}"))?;
            if let Some(node) = nodes.iter_mut().find(|n| n.port == port) {
                node.partitions.push(partition.index());
            }
        }
        Ok(Topology {
            _cluster: cluster,
            broker,
            nodes,
        })
    }

    fn masters(&self) -> usize {
        self.nodes.len()
    }

    /// Empties the cluster, then enqueues and drains `args.tasks`, checking the counts.
    async fn run(&self, args: &Args) -> anyhow::Result<Run> {
        for node in &self.nodes {
            let mut conn = node.conn.clone();
            redis::cmd("FLUSHALL").query_async::<()>(&mut conn).await?;
            redis::cmd("CONFIG")
                .arg("RESETSTAT")
                .query_async::<()>(&mut conn)
                .await?;
        }
        let start = self.snapshot().await?;

        let (wall, after_enqueue) = self.timed(enqueue(&self.broker, args)).await?;
        let enqueue = phase(wall, &start, &after_enqueue);
        let stats = self.broker.queue_stats(QUEUE).await?;
        ensure!(
            stats.queued == args.tasks as u64,
            "{} masters: {} tasks queued after enqueueing {}",
            self.masters(),
            stats.queued,
            args.tasks
        );

        let (wall, after_drain) = self.timed(drain(&self.broker, args)).await?;
        let drain = phase(wall, &after_enqueue, &after_drain);
        let stats = self.broker.queue_stats(QUEUE).await?;
        ensure!(
            stats.finished == args.tasks as u64 && stats.queued == 0 && stats.started == 0,
            "{} masters: after draining {} tasks, {} finished, {} queued, {} started",
            self.masters(),
            args.tasks,
            stats.finished,
            stats.queued,
            stats.started
        );

        let mut nodes = Vec::with_capacity(self.nodes.len());
        let counters = self
            .nodes
            .iter()
            .zip(&start.masters)
            .zip(&after_drain.masters);
        for ((node, before), after) in counters {
            let mut conn = node.conn.clone();
            let keys: i64 = redis::cmd("DBSIZE").query_async(&mut conn).await?;
            nodes.push(NodeStats {
                keys,
                script_calls: after.script_calls - before.script_calls,
                calls: after.calls - before.calls,
                memory_growth: after.used_memory - before.used_memory,
            });
        }
        Ok(Run {
            enqueue,
            drain,
            nodes,
            events_bytes: self.events_bytes().await?,
        })
    }

    /// Runs `work`, returning its wall time and the counters right after it.
    async fn timed(
        &self,
        work: impl std::future::Future<Output = anyhow::Result<()>>,
    ) -> anyhow::Result<(Duration, Snapshot)> {
        let started = Instant::now();
        work.await?;
        let wall = started.elapsed();
        Ok((wall, self.snapshot().await?))
    }

    /// This process's CPU time and every master's counters, read one after the other.
    async fn snapshot(&self) -> anyhow::Result<Snapshot> {
        let client_cpu = cpu_seconds(std::process::id())?;
        let mut masters = Vec::with_capacity(self.nodes.len());
        for node in &self.nodes {
            let mut conn = node.conn.clone();
            let stats: String = redis::cmd("INFO")
                .arg("commandstats")
                .query_async(&mut conn)
                .await?;
            let memory: String = redis::cmd("INFO")
                .arg("memory")
                .query_async(&mut conn)
                .await?;
            let (script_calls, calls) = command_calls(&stats);
            masters.push(MasterCounters {
                cpu: cpu_seconds(node.pid)?,
                script_calls,
                calls,
                used_memory: info_field(&memory, "used_memory")
                    .and_then(|v| v.parse().ok())
                    .context("INFO memory without used_memory")?,
            });
        }
        Ok(Snapshot {
            client_cpu,
            masters,
        })
    }

    /// `MEMORY USAGE` of every partition's events stream, added up.
    async fn events_bytes(&self) -> anyhow::Result<i64> {
        let mut total = 0;
        for partition in self.broker.keys().partitions() {
            let slot = ragpool_queue::keys::slot(hash_tag(partition.prefix()));
            let Some(node) = self
                .nodes
                .iter()
                .find(|n| n.partitions.contains(&partition.index()))
            else {
                bail!(
                    "no master holds partition {} (slot {slot})",
                    partition.index()
                );
            };
            let mut conn = node.conn.clone();
            let bytes: Option<i64> = redis::cmd("MEMORY")
                .arg("USAGE")
                .arg(partition.events())
                .arg("SAMPLES")
                .arg(0)
                .query_async(&mut conn)
                .await?;
            total += bytes.unwrap_or(0);
        }
        Ok(total)
    }
}

/// The phase between two snapshots.
fn phase(wall: Duration, before: &Snapshot, after: &Snapshot) -> Phase {
    let masters = || before.masters.iter().zip(&after.masters);
    Phase {
        wall,
        server_cpu: masters().map(|(b, a)| a.cpu - b.cpu).collect(),
        client_cpu: after.client_cpu - before.client_cpu,
        scripts: masters()
            .map(|(b, a)| a.script_calls - b.script_calls)
            .sum(),
    }
}

/// `clients` concurrent callers enqueue `tasks` single tasks between them.
async fn enqueue(broker: &Broker, args: &Args) -> anyhow::Result<()> {
    let next = Arc::new(AtomicUsize::new(0));
    let callers = (0..args.clients).map(|_| {
        let (broker, next) = (broker.clone(), next.clone());
        let tasks = args.tasks;
        tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= tasks {
                    return anyhow::Ok(());
                }
                broker
                    .enqueue(NewTask::new(FullQuery {
                        question: format!("question {n}"),
                        ..FullQuery::default()
                    }))
                    .await?;
            }
        })
    });
    for caller in try_join_all(callers).await? {
        caller?;
    }
    Ok(())
}

/// `consumers` loops claim and complete until the queue is empty; fails on a task claimed
/// twice or a count that does not add up.
async fn drain(broker: &Broker, args: &Args) -> anyhow::Result<()> {
    let seen = Arc::new(Mutex::new(HashSet::with_capacity(args.tasks)));
    let mut loops = Vec::with_capacity(args.consumers);
    for c in 0..args.consumers {
        let consumer = broker
            .consumer(ConsumerConfig {
                worker_id: format!("bench-{c}"),
                queues: vec![QUEUE.into()],
                policy: Default::default(),
                lease: Duration::from_secs(60),
            })
            .await?;
        let (broker, seen, claim) = (broker.clone(), seen.clone(), args.claim);
        loops.push(tokio::spawn(async move {
            loop {
                let claimed = consumer.try_claim_many(claim).await?;
                if claimed.is_empty() {
                    return anyhow::Ok(());
                }
                {
                    let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
                    for c in &claimed {
                        ensure!(
                            seen.insert(c.task.id.to_string()),
                            "task {} was claimed twice",
                            c.task.id
                        );
                    }
                }
                let result = json!({ "ok": true });
                try_join_all(claimed.iter().map(|c| broker.complete(&c.lease, &result))).await?;
            }
        }));
    }
    for result in try_join_all(loops).await? {
        result?;
    }
    let seen = seen.lock().unwrap_or_else(|p| p.into_inner()).len();
    ensure!(
        seen == args.tasks,
        "the drain claimed {seen} distinct tasks of {}",
        args.tasks
    );
    Ok(())
}

/// The hash tag of a key: what is between the first `{` and the next `}`, when not empty;
/// else the whole key (Redis Cluster's rule).
fn hash_tag(key: &str) -> &str {
    key.find('{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.find('}')
                .filter(|&close| close > 0)
                .map(|close| &rest[..close])
        })
        .unwrap_or(key)
}

/// `CLUSTER SLOTS`: (first slot, last slot, port of the master serving them).
async fn slot_ranges(conn: &mut MultiplexedConnection) -> anyhow::Result<Vec<(u16, u16, u16)>> {
    let reply: redis::Value = redis::cmd("CLUSTER").arg("SLOTS").query_async(conn).await?;
    let redis::Value::Array(ranges) = reply else {
        bail!("CLUSTER SLOTS answered {reply:?}");
    };
    ranges
        .iter()
        .map(|range| match range {
            redis::Value::Array(items) => match items.as_slice() {
                [
                    redis::Value::Int(low),
                    redis::Value::Int(high),
                    redis::Value::Array(master),
                    ..,
                ] => match master.get(1) {
                    Some(redis::Value::Int(port)) => Ok((
                        u16::try_from(*low)?,
                        u16::try_from(*high)?,
                        u16::try_from(*port)?,
                    )),
                    other => bail!("no master port in a CLUSTER SLOTS range: {other:?}"),
                },
                _ => bail!("unexpected CLUSTER SLOTS range {range:?}"),
            },
            other => bail!("unexpected CLUSTER SLOTS range {other:?}"),
        })
        .collect()
}

/// (script calls, all calls) from `INFO commandstats`. Commands a script runs count as
/// calls of their own, so "all calls" is the work inside the scripts too.
fn command_calls(stats: &str) -> (u64, u64) {
    let (mut scripts, mut all) = (0, 0);
    for line in stats.lines() {
        let Some((name, fields)) = line.split_once(':') else {
            continue;
        };
        let Some(command) = name.strip_prefix("cmdstat_") else {
            continue;
        };
        let calls = fields
            .split(',')
            .find_map(|f| f.strip_prefix("calls="))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        all += calls;
        if matches!(
            command,
            "evalsha" | "eval" | "evalsha_ro" | "eval_ro" | "fcall"
        ) {
            scripts += calls;
        }
    }
    (scripts, all)
}

/// The value of `field` in an `INFO` reply.
fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        (name == field).then(|| value.trim())
    })
}

/// User plus system CPU time of process `pid`, in seconds, from `/proc/<pid>/stat`.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) is in parentheses and may contain spaces: count from the
    // closing one. utime and stime are fields 14 and 15, the 12th and 13th after it.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("{path}: no field {}", i + 3))
    };
    let total = ticks(11)? + ticks(12)?;
    Ok(total as f64 / rustix::param::clock_ticks_per_second() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_tag_follows_redis_cluster() {
        assert_eq!(hash_tag("{ns:p1of6:42}:task:x"), "ns:p1of6:42");
        assert_eq!(hash_tag("plain"), "plain");
        assert_eq!(hash_tag("{}:x"), "{}:x");
    }

    #[test]
    fn command_calls_count_scripts_apart() {
        let stats = "# Commandstats\r\n\
            cmdstat_evalsha:calls=10,usec=100,usec_per_call=10.00\r\n\
            cmdstat_hset:calls=30,usec=30,usec_per_call=1.00\r\n\
            cmdstat_eval:calls=2,usec=4,usec_per_call=2.00\r\n";
        assert_eq!(command_calls(stats), (12, 42));
    }

    /// A short run on each cluster: the run's own checks (every task queued, then finished,
    /// none claimed twice) pass, and on three masters each holds two of six partitions and
    /// a share of the keys and calls.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_short_run_accounts_for_every_task_on_one_and_three_masters() {
        let args = Args {
            partitions: 6,
            tasks: 300,
            clients: 4,
            consumers: 2,
            claim: 4,
            rounds: 1,
        };
        for masters in [1, MASTERS] {
            let topology = Topology::start(masters, &args).await.expect("cluster");
            assert_eq!(topology.masters(), masters);
            let held: usize = topology.nodes.iter().map(|n| n.partitions.len()).sum();
            assert_eq!(held, 6, "every partition is on some master");
            let run = topology.run(&args).await.expect("run");
            assert_eq!(run.drain.server_cpu.len(), masters);
            for (node, stats) in topology.nodes.iter().zip(&run.nodes) {
                assert_eq!(node.partitions.len(), 6 / masters, "port {}", node.port);
                assert!(
                    stats.keys > 0 && stats.script_calls > 0,
                    "port {}",
                    node.port
                );
            }
            let tasks: i64 = run.nodes.iter().map(|n| n.keys).sum();
            assert!(tasks >= 300, "{tasks} keys for 300 finished tasks");
            assert!(run.events_bytes > 0);
        }
    }

    #[test]
    fn cpu_seconds_reads_a_live_process_and_refuses_a_missing_one() {
        let cpu = cpu_seconds(std::process::id()).expect("own /proc stat");
        assert!(cpu.is_finite() && cpu >= 0.0, "{cpu}");
        assert!(cpu_seconds(u32::MAX).is_err());
    }
}
