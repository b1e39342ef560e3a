//! `ragpool-bench chaos`: the whole system on loopback under a scripted schedule of failures,
//! then a count of what went wrong.
//!
//! It starts Redis (by `--topology`), `ragpool-api` and several `ragpool-executor` processes
//! (the binaries next to this one), the executors on the `http` backend against a counting
//! service inside the bench ([`backend`]). Tasks are pushed through the API (some with
//! idempotency keys, some replayed) while the schedule SIGKILLs and restarts executors,
//! SIGTERMs one, restarts the API and, by topology, SIGKILLs and restarts Redis (single) or
//! fails it over (Sentinel: `SENTINEL FAILOVER`, and a SIGKILLed primary that comes back as a
//! replica; cluster: `CLUSTER FAILOVER` and a SIGKILLed master whose replica is elected, each
//! time the next of the three masters). Then it waits for every acknowledged task to end and counts: acknowledged but
//! lost, wrong results, tasks ended twice (from the events stream), backend calls per task and
//! why each extra call happened, idempotent replays, the 503 windows the client saw, and for
//! each failover how long until the first 202 after it.
//!
//! The exit status follows what the deployment promises ([`Promise`]): non-zero when a result
//! was wrong, a task never ended, or an acknowledged task was lost or ended twice where the
//! setup promises it cannot be (a single server with `appendfsync always`, or `replicated`).
//! Under `local` with replicas (Sentinel, cluster), replication is asynchronous and a failover
//! may take the last writes with it: such losses are counted and tied to the failover they fell in, not failed;
//! one that no failover explains still fails the run.

mod backend;
mod client;
mod procs;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use futures::StreamExt;
use ragpool_queue::conn::Conn;
use ragpool_queue::{Broker, BrokerConfig, Durability, RedisTarget, TaskId, TaskState};
use redis::streams::StreamRangeReply;

use backend::{CountingBackend, expected_answer};
use client::{Owner, Submission, submit};
use procs::{Proc, Redis, Topology, binary, free_port};

/// Flags of `ragpool-bench chaos`.
#[derive(clap::Args)]
pub struct Args {
    /// About a minute (for CI): 2,000 tasks, one round of the schedule.
    #[arg(long)]
    short: bool,
    /// How Redis is deployed.
    #[arg(long, value_enum, default_value = "single")]
    topology: Topology,
    /// Passed to the API and the executors as `RAGPOOL_DURABILITY` when given (`local` or
    /// `replicated`; their default is `local`).
    #[arg(long)]
    durability: Option<Durability>,
    /// Tasks to submit (default: 2,000 with --short, else 10,000).
    #[arg(long)]
    tasks: Option<usize>,
    /// Executor processes.
    #[arg(long, default_value_t = 4)]
    executors: usize,
    /// Rounds of the failure schedule (default: 1 with --short, else 8).
    #[arg(long)]
    rounds: Option<usize>,
    /// Keep the run's directory (logs of every process, Redis's data) instead of deleting it.
    #[arg(long)]
    keep: bool,
    /// Partitions per queue, passed to every component as `RAGPOOL_PARTITIONS` (default: 6
    /// on the cluster topology, else 1).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=64))]
    partitions: Option<u16>,
}

/// The lease of the run's executors: short, so that kills are recovered quickly, and every
/// Redis outage of the schedule is longer than it.
const LEASE_SECONDS: u64 = 2;
/// One round of the schedule takes this long.
const ROUND: Duration = Duration::from_secs(30);

/// One step of the schedule.
#[derive(Debug, Clone, Copy)]
enum Action {
    KillExecutor(usize),
    TermExecutor(usize),
    /// SIGKILL Redis (with replicas: the primary, or a cluster master, which a replica
    /// replaces), start it again after this long (with replicas: as a replica of the new
    /// primary).
    KillRedis(Duration),
    /// `SENTINEL FAILOVER`, or `CLUSTER FAILOVER` on a cluster.
    Failover,
    RestartApi,
}

/// One round, as offsets from its start.
fn round(topology: Topology, executors: usize) -> Vec<(Duration, Action)> {
    let s = Duration::from_secs;
    let e = |i: usize| i % executors.max(1);
    if topology.has_replicas() {
        return vec![
            (s(2), Action::KillExecutor(e(0))),
            (s(4), Action::KillExecutor(e(1))),
            // The primary SIGKILLed: the sentinels promote the replica within about a second
            // and a half (a cluster elects it within a few seconds of its 2 s node timeout);
            // the killed server comes back as its replica after 2.5 leases.
            (
                s(6),
                Action::KillRedis(Duration::from_millis(LEASE_SECONDS * 2500)),
            ),
            (s(13), Action::Failover),
            (s(15), Action::KillExecutor(e(2))),
            (s(17), Action::TermExecutor(e(3))),
            (s(20), Action::RestartApi),
            (s(22), Action::KillExecutor(e(0))),
            (s(24), Action::Failover),
            (s(27), Action::KillExecutor(e(1))),
        ];
    }
    vec![
        (s(2), Action::KillExecutor(e(0))),
        (s(4), Action::KillExecutor(e(1))),
        // Two and a half leases: every lease runs out while Redis is away.
        (
            s(6),
            Action::KillRedis(Duration::from_millis(LEASE_SECONDS * 2500)),
        ),
        (s(14), Action::KillExecutor(e(2))),
        (s(16), Action::TermExecutor(e(3))),
        (s(19), Action::RestartApi),
        (s(22), Action::KillExecutor(e(0))),
        (s(24), Action::KillRedis(s(1))),
        (s(27), Action::KillExecutor(e(1))),
    ]
}

/// One failover of the schedule, as the suite made it.
#[derive(Debug, Clone)]
struct Failover {
    graceful: bool,
    topology: Topology,
    /// When the kill or the `SENTINEL FAILOVER` was sent.
    began: Instant,
    /// When the replica answered as primary and every sentinel announced it (and, for a
    /// graceful one, the former primary answered as a replica).
    promoted: Instant,
}

impl Failover {
    fn kind(&self) -> String {
        let (primary, failover) = self.topology.words();
        if self.graceful {
            failover.to_string()
        } else {
            format!("{primary} SIGKILLed")
        }
    }

    /// Whether a write acknowledged at `at` may have been applied by the primary this failover
    /// replaced and not by the replica it promoted. A replica on loopback trails its primary
    /// by well under a second; until the promotion is complete the former primary may still
    /// take writes (a graceful failover demotes it only after promoting the replica).
    fn may_have_lost(&self, at: Instant) -> bool {
        at + Duration::from_secs(1) >= self.began && at <= self.promoted
    }
}

/// The running system.
struct System {
    dir: tempfile::TempDir,
    redis: Redis,
    topology: Topology,
    api_bin: std::path::PathBuf,
    executor_bin: std::path::PathBuf,
    api: Proc,
    api_env: Vec<(String, String)>,
    api_url: String,
    executors: Vec<Proc>,
    executor_env: Vec<(String, String)>,
    /// Incarnations started per executor slot, for worker ids and log names.
    incarnation: Vec<usize>,
    /// Worker ids that were SIGKILLed or SIGTERMed: their leases may legitimately run out.
    killed: HashSet<String>,
    drained: HashSet<String>,
    failovers: Vec<Failover>,
    /// The events follower's log, told to read again after each failover.
    events: Arc<Mutex<EventLog>>,
    log: Vec<String>,
    started: Instant,
}

impl System {
    fn worker_id(&self, slot: usize) -> String {
        format!("chaos-e{slot}-{}", self.incarnation[slot])
    }

    fn start_executor(&mut self, slot: usize) -> anyhow::Result<()> {
        self.incarnation[slot] += 1;
        let id = self.worker_id(slot);
        let mut env = self.executor_env.clone();
        env.push(("RAGPOOL_WORKER_ID".into(), id.clone()));
        let proc = Proc::spawn(&self.executor_bin, &id, &env, self.dir.path())?;
        if slot < self.executors.len() {
            self.executors[slot] = proc;
        } else {
            self.executors.push(proc);
        }
        Ok(())
    }

    fn resync_events(&self, began: Instant) {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .resync(began);
    }

    fn note(&mut self, what: String) {
        let at = self.started.elapsed().as_secs_f64();
        self.log.push(format!("{at:6.1}s  {what}"));
    }

    async fn act(&mut self, action: Action) -> anyhow::Result<()> {
        match action {
            Action::KillExecutor(slot) => {
                let id = self.worker_id(slot);
                self.executors[slot].kill().await?;
                self.killed.insert(id.clone());
                self.start_executor(slot)?;
                self.note(format!(
                    "SIGKILL executor {id}, started {}",
                    self.worker_id(slot)
                ));
            }
            Action::TermExecutor(slot) => {
                let id = self.worker_id(slot);
                self.executors[slot]
                    .terminate(Duration::from_secs(30))
                    .await?;
                self.drained.insert(id.clone());
                self.start_executor(slot)?;
                self.note(format!(
                    "SIGTERM executor {id} (drained), started {}",
                    self.worker_id(slot)
                ));
            }
            Action::KillRedis(down) if self.topology.has_replicas() => {
                let (primary, _) = self.topology.words();
                let began = Instant::now();
                tokio::task::block_in_place(|| self.redis.kill())?;
                let promoted = Instant::now();
                self.resync_events(began);
                self.failovers.push(Failover {
                    graceful: false,
                    topology: self.topology,
                    began,
                    promoted,
                });
                self.note(format!(
                    "SIGKILL redis {primary}, replica promoted after {:.1} s",
                    (promoted - began).as_secs_f64()
                ));
                tokio::time::sleep_until(tokio::time::Instant::from_std(began + down)).await;
                tokio::task::block_in_place(|| self.redis.start_again())?;
                self.note(format!(
                    "former {primary} started again as a replica, in sync"
                ));
            }
            Action::KillRedis(down) => {
                tokio::task::block_in_place(|| self.redis.kill())?;
                self.note(format!("SIGKILL redis, down for {down:?}"));
                tokio::time::sleep(down).await;
                tokio::task::block_in_place(|| self.redis.start_again())?;
                self.note("redis started again from its append-only file".into());
            }
            Action::Failover => {
                let began = Instant::now();
                tokio::task::block_in_place(|| self.redis.failover())?;
                let promoted = Instant::now();
                self.resync_events(began);
                self.failovers.push(Failover {
                    graceful: true,
                    topology: self.topology,
                    began,
                    promoted,
                });
                let (primary, failover) = self.topology.words();
                self.note(format!(
                    "{failover}, replica promoted and former {primary} demoted after {:.1} s",
                    (promoted - began).as_secs_f64()
                ));
            }
            Action::RestartApi => {
                self.api.terminate(Duration::from_secs(30)).await?;
                self.api = Proc::spawn(&self.api_bin, "api", &self.api_env, self.dir.path())?;
                self.note("SIGTERM api, started again".into());
            }
        }
        Ok(())
    }
}

/// Runs the chaos suite and prints its table; an error when a guarantee was broken.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let tasks = args
        .tasks
        .unwrap_or(if args.short { 2_000 } else { 10_000 });
    let rounds = args.rounds.unwrap_or(if args.short { 1 } else { 8 }).max(1);
    let executors = args.executors.max(1);
    let api_bin = binary("ragpool-api")?;
    let executor_bin = binary("ragpool-executor")?;

    let dir = tempfile::Builder::new()
        .prefix("ragpool-chaos-")
        .tempdir()
        .context("creating the run's directory")?;
    let topology = args.topology;
    let promise = Promise::of(topology, args.durability.unwrap_or_default());
    let redis = tokio::task::spawn_blocking(move || Redis::start(topology)).await??;
    let redis_url = redis.url();
    let backend = CountingBackend::start().await?;

    let port = free_port()?;
    let api_url = format!("http://127.0.0.1:{port}");
    let partitions = args
        .partitions
        .unwrap_or(if topology == Topology::Cluster { 6 } else { 1 });
    let mut common = vec![
        ("RAGPOOL_REDIS_URL".to_string(), redis_url.clone()),
        ("RAGPOOL_LOG_FORMAT".to_string(), "json".to_string()),
        ("RAGPOOL_PARTITIONS".to_string(), partitions.to_string()),
    ];
    if let Some(d) = &args.durability {
        common.push(("RAGPOOL_DURABILITY".into(), d.to_string()));
    }
    let mut api_env = common.clone();
    api_env.extend([
        ("RAGPOOL_LISTEN".to_string(), format!("127.0.0.1:{port}")),
        ("RAGPOOL_MAX_ATTEMPTS".to_string(), "10".to_string()),
        ("RAGPOOL_API_KEYS".to_string(), Owner::key_list()),
        ("RUST_LOG".to_string(), "warn".to_string()),
    ]);
    let mut executor_env = common.clone();
    executor_env.extend([
        ("RAGPOOL_BACKEND".to_string(), "http".to_string()),
        ("RAGPOOL_HTTP_URL".to_string(), backend.url.clone()),
        (
            "RAGPOOL_LEASE_SECONDS".to_string(),
            LEASE_SECONDS.to_string(),
        ),
        ("RAGPOOL_MAINTENANCE_SECONDS".to_string(), "1".to_string()),
        ("RAGPOOL_CONCURRENCY".to_string(), "8".to_string()),
        ("RAGPOOL_DRAIN_SECONDS".to_string(), "3".to_string()),
        (
            "RAGPOOL_METRICS_LISTEN".to_string(),
            "127.0.0.1:0".to_string(),
        ),
        ("RAGPOOL_LOG".to_string(), "info".to_string()),
    ]);
    let api = Proc::spawn(&api_bin, "api", &api_env, dir.path())?;
    let events = Arc::new(Mutex::new(EventLog::default()));
    let mut system = System {
        dir,
        redis,
        topology,
        api_bin,
        executor_bin,
        api,
        api_env,
        api_url: api_url.clone(),
        executors: Vec::new(),
        executor_env,
        incarnation: vec![0; executors],
        killed: HashSet::new(),
        drained: HashSet::new(),
        failovers: Vec::new(),
        events: events.clone(),
        log: Vec::new(),
        started: Instant::now(),
    };
    for slot in 0..executors {
        system.start_executor(slot)?;
    }
    let http = reqwest::Client::new();
    wait_ready(&http, &system.api_url).await?;

    let mut broker_config = BrokerConfig::from_url(&redis_url)?;
    broker_config.response_timeout = Duration::from_secs(2);
    broker_config.partitions = partitions;
    let follower = tokio::spawn(follow_events(redis_url.clone(), partitions, events.clone()));

    // The load: evenly spread over the schedule, 64 submissions in flight at most.
    let seen: client::Shared = Arc::default();
    let span = ROUND * rounds as u32;
    println!(
        "chaos: {tasks} tasks over {span:?}, {executors} executors, topology {topology:?}, \
         {partitions} partition(s), durability {}, run directory {}",
        args.durability
            .map_or("(default)".to_string(), |d| d.to_string()),
        system.dir.path().display()
    );
    system.started = Instant::now();
    let load = {
        let (http, api_url, seen) = (http.clone(), api_url.clone(), seen.clone());
        let start = tokio::time::Instant::now();
        tokio::spawn(async move {
            futures::stream::iter(load_plan(tasks))
                .map(|(when, n)| {
                    let (http, api_url, seen) = (http.clone(), api_url.clone(), seen.clone());
                    let due = start + span.mul_f64(when);
                    async move {
                        tokio::time::sleep_until(due).await;
                        submit(&http, &api_url, &Submission::new(n), &seen).await;
                    }
                })
                .buffer_unordered(64)
                .collect::<()>()
                .await
        })
    };
    let mut schedule: Vec<(Duration, Action)> = (0..rounds)
        .flat_map(|r| {
            round(topology, executors)
                .into_iter()
                .map(move |(at, a)| (ROUND * r as u32 + at, a))
        })
        .collect();
    schedule.sort_by_key(|(at, _)| *at);
    for (at, action) in schedule {
        tokio::time::sleep_until(tokio::time::Instant::from_std(system.started + at)).await;
        system.act(action).await?;
    }
    load.await.context("the load")?;
    system.note("every submission answered".into());

    // Every acknowledged task must end.
    let acknowledged: HashMap<String, usize> = seen
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .acknowledged
        .clone();
    let ends = wait_for_ends(&broker_config, &acknowledged, Duration::from_secs(120)).await;
    system.note("every acknowledged task ended, or the deadline passed".into());
    // A last read of the stream, then stop following it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    follower.abort();

    let mut seen = std::mem::take(&mut *seen.lock().unwrap_or_else(|p| p.into_inner()));
    seen.unavailable.close();
    seen.unreachable.close();
    let events = std::mem::take(&mut *events.lock().unwrap_or_else(|p| p.into_inner()));
    seen.accepted.sort();
    let tally = Tally::count(
        tasks,
        &seen,
        &ends,
        &events,
        &backend.calls(),
        &system,
        promise,
    );

    println!("\nschedule:");
    for line in &system.log {
        println!("  {line}");
    }
    println!();
    print!(
        "{}",
        crate::report::render_columns(&["check", "count", "detail"], &tally.rows)
    );
    for e in &tally.errors {
        println!("  ! {e}");
    }

    for e in &mut system.executors {
        let _ = e.terminate(Duration::from_secs(10)).await;
    }
    let _ = system.api.terminate(Duration::from_secs(10)).await;
    if args.keep {
        let kept = system.dir.keep();
        println!("run directory kept: {}", kept.display());
    }
    if tally.broken() {
        anyhow::bail!(
            "chaos: a guarantee of {} was broken (see the table)",
            promise.describe()
        );
    }
    Ok(())
}

/// A row per API key: its acknowledged tasks and how long they waited from queued to their
/// first claim (the first `queued` and `started` events' stream ids, Redis's clock).
fn owner_rows(seen: &client::Seen, events: &EventLog) -> Vec<Vec<String>> {
    let mut queued: HashMap<&str, u64> = HashMap::new();
    let mut started: HashMap<&str, u64> = HashMap::new();
    for ((ms, _, _), (task, event)) in &events.entries {
        let first = match event.state.as_str() {
            "queued" => &mut queued,
            "started" => &mut started,
            _ => continue,
        };
        first.entry(task.as_str()).or_insert(*ms);
    }
    Owner::ALL
        .iter()
        .map(|owner| {
            let mut waits: Vec<u64> = seen
                .acknowledged
                .iter()
                .filter(|(_, n)| Submission::new(**n).owner == *owner)
                .filter_map(|(id, _)| {
                    let q = queued.get(id.as_str())?;
                    Some(started.get(id.as_str())?.saturating_sub(*q))
                })
                .collect();
            waits.sort_unstable();
            let at = |p: f64| {
                let rank = ((p * waits.len() as f64).ceil() as usize).clamp(1, waits.len().max(1));
                waits.get(rank - 1).map_or(0.0, |ms| *ms as f64 / 1000.0)
            };
            let acknowledged = seen
                .acknowledged
                .values()
                .filter(|n| Submission::new(**n).owner == *owner)
                .count();
            vec![
                format!("  key {} ({})", owner.name(), owner.options()),
                acknowledged.to_string(),
                format!(
                    "queued to first claim: p50 {:.2} s, p99 {:.2} s",
                    at(0.5),
                    at(0.99)
                ),
            ]
        })
        .collect()
}

/// Part of the run by which the batch key has submitted all its tasks.
const BATCH_PART: f64 = 0.6;

/// When each submission is due, as a part of the run, earliest first: the live key's at an
/// even rate over the whole run, the batch key's faster, over its first [`BATCH_PART`], so
/// that a backlog of the batch key's builds up and the live key's tasks arrive behind it.
fn load_plan(tasks: usize) -> Vec<(f64, usize)> {
    let batch = (0..tasks)
        .filter(|n| Submission::new(*n).owner == Owner::Batch)
        .count()
        .max(1);
    let mut batch_seen = 0;
    let mut plan: Vec<(f64, usize)> = (0..tasks)
        .map(|n| match Submission::new(n).owner {
            Owner::Live => (n as f64 / tasks as f64, n),
            Owner::Batch => {
                batch_seen += 1;
                (BATCH_PART * (batch_seen - 1) as f64 / batch as f64, n)
            }
        })
        .collect();
    plan.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    plan
}

async fn wait_ready(http: &reqwest::Client, api: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(format!("{api}/readyz")).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!("ragpool-api at {api} was not ready within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A task's state and result as read back; `None` when the task no longer exists.
type Read = Option<(TaskState, Option<serde_json::Value>)>;

/// How each acknowledged task ended, as read back from Redis.
#[derive(Default)]
struct Ends {
    tasks: HashMap<String, Read>,
    /// Tasks no read answered for by the deadline, and the last error a read gave.
    unread: usize,
    last_error: Option<String>,
}

/// Reads every acknowledged task back until each has ended or `patience` has passed. The
/// reads use connections made for them, not ones that sat idle through the schedule's
/// Redis kills, and a pass where a read failed is followed by fresh connections: what is
/// tested is whether the tasks are there, not how a client library heals an idle
/// connection. A task that no read reached is counted apart from a task that is gone.
async fn wait_for_ends(
    config: &BrokerConfig,
    acknowledged: &HashMap<String, usize>,
    patience: Duration,
) -> Ends {
    let deadline = Instant::now() + patience;
    let mut ends = Ends::default();
    let mut pending: Vec<String> = acknowledged.keys().cloned().collect();
    let mut broker: Option<Broker> = None;
    while !pending.is_empty() {
        let reader = match &broker {
            Some(b) => b.clone(),
            None => match Broker::connect(config.clone()).await {
                Ok(b) => {
                    broker = Some(b.clone());
                    b
                }
                Err(e) => {
                    ends.last_error = Some(format!("connecting: {e:#}"));
                    if Instant::now() > deadline {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    continue;
                }
            },
        };
        let reads: Vec<(String, Result<Read, String>)> = futures::stream::iter(pending.clone())
            .map(|id| {
                let reader = reader.clone();
                async move {
                    let read = match id.parse::<TaskId>() {
                        Ok(task_id) => reader
                            .get(&task_id)
                            .await
                            .map(|t| t.map(|t| (t.state, t.result)))
                            .map_err(|e| format!("{e:#}")),
                        Err(_) => Ok(None),
                    };
                    (id, read)
                }
            })
            .buffer_unordered(32)
            .collect()
            .await;
        pending.clear();
        let mut failed = false;
        for (id, read) in reads {
            match read {
                Ok(Some((state, result))) if state.is_terminal() => {
                    ends.tasks.insert(id, Some((state, result)));
                }
                Ok(None) => {
                    ends.tasks.insert(id, None);
                }
                Ok(Some((state, result))) => {
                    ends.tasks.insert(id.clone(), Some((state, result)));
                    pending.push(id);
                }
                Err(e) => {
                    failed = true;
                    ends.last_error = Some(e);
                    pending.push(id);
                }
            }
        }
        if failed {
            broker = None;
        }
        if pending.is_empty() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    ends.unread = pending
        .iter()
        .filter(|id| !ends.tasks.contains_key(*id))
        .count();
    ends
}

/// Every event of the run, in stream order, as the Redis that kept them has them.
///
/// A reader of the primary sees a change before any replica has it, and a failover may undo
/// it (under `local`; under `replicated` too, for a change that was never acknowledged: an
/// executor repeats such a report on the new primary, which then emits its event again).
/// Counting what was merely seen would call those tasks ended twice, so after each failover
/// the follower drops what it read since shortly before the failover began and reads that
/// part again from the new primary. What it dropped and did not find again is counted.
#[derive(Default)]
struct EventLog {
    /// Stream id → (task id, event).
    entries: BTreeMap<StreamId, (String, Event)>,
    read: usize,
    /// Set after a failover: read again from this stream id (milliseconds since the epoch,
    /// Redis's clock, which is this machine's).
    resync_from: Option<u64>,
    /// Entries dropped by a re-read, to compare with what the re-read found.
    dropped: Vec<(StreamId, String)>,
}

/// A stream entry id (milliseconds and sequence number) and the partition whose stream it is
/// in: entries of different partitions may share an id.
type StreamId = (u64, u64, u16);

fn parse_stream_id(id: &str, partition: u16) -> Option<StreamId> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?, partition))
}

impl EventLog {
    /// Every task's events, in order.
    fn per_task(&self) -> HashMap<String, Vec<Event>> {
        let mut per_task: HashMap<String, Vec<Event>> = HashMap::new();
        for (task, event) in self.entries.values() {
            per_task
                .entry(task.clone())
                .or_default()
                .push(event.clone());
        }
        per_task
    }

    /// Events read from a primary that a failover then undid.
    fn undone(&self) -> usize {
        self.dropped
            .iter()
            .filter(|(id, task)| self.entries.get(id).is_none_or(|(t, _)| t != task))
            .count()
    }

    /// Asks the follower to read the stream again from `began` less ten seconds: a replica
    /// trails its primary by far less, but on a machine loaded with other work (a CI runner
    /// building while the suite runs) replication can fall seconds behind, and an event read
    /// from the primary then undone by the failover must not be taken for a second end.
    fn resync(&mut self, began: Instant) {
        let began = SystemTime::now() - began.elapsed();
        let ms = began
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
            .saturating_sub(10_000);
        self.resync_from = Some(self.resync_from.map_or(ms, |earlier| earlier.min(ms)));
    }
}

#[derive(Debug, Clone)]
struct Event {
    state: String,
    worker: Option<String>,
    error_kind: Option<String>,
    released: bool,
}

/// Reads every partition's events stream from its start as it grows; Redis outages only
/// pause it.
async fn follow_events(url: String, partitions: u16, log: Arc<Mutex<EventLog>>) {
    let streams: Vec<String> = ragpool_queue::keys::Keys::with_partitions("ragpool", partitions)
        .partitions()
        .iter()
        .map(|p| p.events())
        .collect();
    let mut lasts = vec!["0-0".to_string(); streams.len()];
    // The queue's own connection type: on Sentinel it follows the primary through failovers,
    // on a cluster a new one reads the slot map again and so finds the new masters.
    let Ok(target) = url.parse::<RedisTarget>() else {
        return;
    };
    let mut conn = None;
    loop {
        let resync = log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .resync_from
            .take();
        if let Some(ms) = resync {
            let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
            let dropped = log.entries.split_off(&(ms, 0, 0));
            log.dropped
                .extend(dropped.into_iter().map(|(id, (task, _))| (id, task)));
            lasts.fill(format!("{}-{}", ms.saturating_sub(1), u64::MAX));
            // A new connection asks the sentinels for the primary (on a cluster, the nodes for
            // the masters); the old one may be on the demoted server, which serves its stale
            // data while it resynchronises.
            conn = None;
        }
        if conn.is_none() {
            conn = Conn::open(&target, Some(Duration::from_secs(2))).await.ok();
        }
        let mut full = false;
        for (partition, (key, last)) in streams.iter().zip(lasts.iter_mut()).enumerate() {
            let Some(c) = conn.as_mut() else { break };
            let reply: redis::RedisResult<StreamRangeReply> = redis::cmd("XRANGE")
                .arg(key)
                .arg(format!("({last}"))
                .arg("+")
                .arg("COUNT")
                .arg(5000)
                .query_async(c)
                .await;
            match reply {
                Ok(reply) => {
                    let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
                    for entry in &reply.ids {
                        *last = entry.id.clone();
                        log.read += 1;
                        let field = |name: &str| entry.get::<String>(name);
                        let at = parse_stream_id(&entry.id, partition as u16);
                        let (Some(id), Some(at)) = (field("id"), at) else {
                            continue;
                        };
                        let event = Event {
                            state: field("state").unwrap_or_default(),
                            worker: field("worker"),
                            error_kind: field("error_kind"),
                            released: field("released").is_some(),
                        };
                        log.entries.insert(at, (id, event));
                    }
                    full |= reply.ids.len() == 5000;
                }
                // A single server's connection reconnects by itself, a Sentinel one asks the
                // sentinels again; a new one is opened only to be sure.
                Err(_) => conn = None,
            }
        }
        if !full {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// What the deployment under test promises about acknowledged changes, which decides whether
/// a loss fails the run.
#[derive(Debug, Clone, Copy)]
struct Promise {
    topology: Topology,
    durability: Durability,
}

impl Promise {
    fn of(topology: Topology, durability: Durability) -> Promise {
        Promise {
            topology,
            durability,
        }
    }

    /// Whether every acknowledged change survives what the schedule does to Redis: a single
    /// server writes each change to its append-only file (`appendfsync always`) before
    /// answering, and `replicated` waits for a replica; under `local` with replicas, a
    /// failover may promote a replica that had not received the last changes.
    fn survives_failovers(self) -> bool {
        !self.topology.has_replicas() || self.durability == Durability::Replicated
    }

    fn describe(self) -> String {
        format!(
            "{} Redis with durability {}",
            match self.topology {
                Topology::Single => "single",
                Topology::Sentinel => "Sentinel",
                Topology::Cluster => "cluster",
            },
            self.durability
        )
    }
}

/// The counts of a run and the table rows they make.
struct Tally {
    rows: Vec<Vec<String>>,
    errors: Vec<String>,
    promise: Promise,
    lost: usize,
    /// Lost tasks acknowledged inside a failover (see [`Failover::may_have_lost`]).
    lost_in_failover: usize,
    not_ended: usize,
    /// Tasks no read reached by the deadline: neither shown to be there nor to be gone.
    unread: usize,
    wrong: usize,
    twice: usize,
}

impl Tally {
    /// Whether the run broke something its [`Promise`] covers. Under `local` with replicas a
    /// lost task is expected from a failover, so only those no failover explains count. A
    /// task ended twice always counts: the events are read back as the surviving primary
    /// has them (see [`EventLog`]), where even a failover under `local` cannot leave two ends.
    fn broken(&self) -> bool {
        let lost = if self.promise.survives_failovers() {
            self.lost
        } else {
            self.lost - self.lost_in_failover
        };
        lost + self.not_ended + self.unread + self.wrong + self.twice > 0
    }

    fn count(
        submitted: usize,
        seen: &client::Seen,
        ends: &Ends,
        events: &EventLog,
        calls: &backend::Calls,
        system: &System,
        promise: Promise,
    ) -> Tally {
        let failovers = &system.failovers;
        let (primary, failover) = system.topology.words();
        // Whether a failover may have undone what a backend call at `a` led to and had begun
        // by `b`: the call came before the failover completed, and at most two seconds (the
        // call's own time, its report, a replica's lag) before it began.
        let failover_between = |a: Instant, b: Instant| {
            failovers
                .iter()
                .any(|f| a <= f.promoted && a + Duration::from_secs(2) >= f.began && f.began <= b)
        };
        let per_task = events.per_task();
        let mut errors = Vec::new();
        let mut lost = 0;
        let mut lost_in_failover = 0;
        let mut lost_in_graceful = 0;
        let mut not_ended = 0;
        let mut wrong = 0;
        let mut finished = 0;
        let mut failed = 0;
        for (id, n) in &seen.acknowledged {
            let question = Submission::new(*n).question;
            match ends.tasks.get(id) {
                None => {
                    errors.push(format!("task {id} (submission {n}) was never read back"));
                }
                Some(None) => {
                    lost += 1;
                    let at = seen.acknowledged_at.get(id);
                    let during = at.and_then(|at| failovers.iter().find(|f| f.may_have_lost(*at)));
                    if let Some(f) = during {
                        lost_in_failover += 1;
                        if f.graceful {
                            lost_in_graceful += 1;
                        }
                        errors.push(format!(
                            "acknowledged task {id} (submission {n}) is gone: acknowledged at \
                             {:.2} s, inside the {} that began at {:.2} s and completed at {:.2} s",
                            secs(system, at.copied()),
                            f.kind(),
                            secs(system, Some(f.began)),
                            secs(system, Some(f.promoted)),
                        ));
                    } else {
                        errors.push(format!(
                            "acknowledged task {id} (submission {n}) is gone, acknowledged at \
                             {:.2} s, outside every failover",
                            secs(system, at.copied())
                        ));
                    }
                }
                Some(Some((state, result))) => match state {
                    TaskState::Finished => {
                        finished += 1;
                        if result.as_ref() != Some(&expected_answer(&question)) {
                            wrong += 1;
                            errors.push(format!(
                                "task {id}: result {result:?} is not the answer to {question:?}"
                            ));
                        }
                    }
                    s if s.is_terminal() => {
                        failed += 1;
                        errors.push(format!("task {id} ended {s}"));
                    }
                    s => {
                        not_ended += 1;
                        errors.push(format!("task {id} still {s} at the deadline"));
                    }
                },
            }
        }

        // Ended twice: more than one terminal event for one task.
        let mut twice = 0;
        for (id, evs) in &per_task {
            let terminal = evs
                .iter()
                .filter(|e| matches!(e.state.as_str(), "finished" | "failed" | "canceled"))
                .count();
            if terminal > 1 {
                twice += 1;
                errors.push(format!("task {id} ended {terminal} times"));
            }
        }
        let without_end_event = seen
            .acknowledged
            .keys()
            .filter(|id| {
                !per_task.get(*id).is_some_and(|evs| {
                    evs.iter()
                        .any(|e| matches!(e.state.as_str(), "finished" | "failed" | "canceled"))
                })
            })
            .count();

        // Backend calls per acknowledged task, and why each extra call happened: every
        // re-delivery in the events is explained by what happened to the holder it left.
        let mut max_calls = 0;
        let mut more_than_once = 0;
        let mut reasons: HashMap<&'static str, usize> = HashMap::new();
        for id in seen.acknowledged.keys() {
            let n = calls.get(id).map_or(0, Vec::len);
            max_calls = max_calls.max(n);
            if n <= 1 {
                continue;
            }
            more_than_once += 1;
            let evs = per_task.get(id).cloned().unwrap_or_default();
            let mut holder: Option<String> = None;
            let mut explained = 0;
            for e in &evs {
                match e.state.as_str() {
                    "started" if e.worker.is_some() => holder = e.worker.clone(),
                    "queued" if e.error_kind.as_deref() == Some("lease_expired") => {
                        let h = holder.clone().unwrap_or_default();
                        let why = if system.killed.contains(&h) {
                            "holder SIGKILLed mid-task, lease expired"
                        } else if system.drained.contains(&h) {
                            "holder SIGTERMed, lease expired"
                        } else {
                            "lease expired with the holder alive"
                        };
                        *reasons.entry(why).or_default() += 1;
                        explained += 1;
                    }
                    "queued" if e.released => {
                        *reasons
                            .entry("released by a draining executor")
                            .or_default() += 1;
                        explained += 1;
                    }
                    "delayed" => {
                        *reasons.entry("retried after a failed attempt").or_default() += 1;
                        explained += 1;
                    }
                    _ => {}
                }
            }
            if explained + 1 < n {
                // The event of a re-delivery lives in Redis like the change it reports: a
                // failover that undid a completion (or a claim) undid its event too.
                let times: Vec<Instant> = calls
                    .get(id)
                    .map(|c| c.iter().map(|(_, at)| *at).collect())
                    .unwrap_or_default();
                let across = times.windows(2).any(|w| failover_between(w[0], w[1]));
                if across {
                    *reasons
                        .entry("a failover between two calls, no re-delivery event")
                        .or_default() += n - 1 - explained;
                } else {
                    *reasons
                        .entry("unexplained (no re-delivery event)")
                        .or_default() += n - 1 - explained;
                }
                errors.push(format!("task {id}: {n} backend calls, events {evs:?}"));
            }
        }
        let mut reasons: Vec<_> = reasons.into_iter().collect();
        reasons.sort();

        let ms = |d: Duration| format!("{:.1} s", d.as_secs_f64());
        let mut rows: Vec<Vec<String>> = vec![
            vec!["submitted".into(), submitted.to_string(), String::new()],
            vec![
                "acknowledged (202)".into(),
                seen.acknowledged.len().to_string(),
                format!(
                    "{} keyed",
                    seen.acknowledged
                        .values()
                        .filter(|n| n.is_multiple_of(2))
                        .count()
                ),
            ],
        ];
        rows.extend(owner_rows(seen, events));
        rows.extend([
            vec!["finished".into(), finished.to_string(), String::new()],
            vec![
                "failed or canceled".into(),
                failed.to_string(),
                String::new(),
            ],
            vec![
                "acknowledged but lost".into(),
                lost.to_string(),
                if promise.survives_failovers() {
                    "must be 0".into()
                } else {
                    format!(
                        "{lost_in_failover} acknowledged inside a failover ({lost_in_graceful} \
                         {failover}, {} {primary} SIGKILLed; local replicates \
                         asynchronously), {} outside (must be 0)",
                        lost_in_failover - lost_in_graceful,
                        lost - lost_in_failover
                    )
                },
            ],
            vec![
                "not ended by the deadline".into(),
                not_ended.to_string(),
                "must be 0".into(),
            ],
            vec![
                "not read back".into(),
                ends.unread.to_string(),
                match &ends.last_error {
                    Some(e) if ends.unread > 0 => format!("must be 0; last read error: {e}"),
                    _ => "must be 0".into(),
                },
            ],
            vec![
                "wrong results".into(),
                wrong.to_string(),
                "must be 0".into(),
            ],
            vec![
                "tasks ended twice".into(),
                twice.to_string(),
                format!(
                    "must be 0; {} events read, {without_end_event} tasks without an end event",
                    events.read
                ),
            ],
            vec![
                "backend calls per task, max".into(),
                max_calls.to_string(),
                String::new(),
            ],
            vec![
                "tasks called more than once".into(),
                more_than_once.to_string(),
                String::new(),
            ],
        ]);
        for (why, n) in &reasons {
            rows.push(vec![
                format!("  re-run: {why}"),
                n.to_string(),
                String::new(),
            ]);
        }
        rows.extend([
            vec![
                "idempotent replays correct".into(),
                format!("{} of {}", seen.replays_correct, seen.replays),
                String::new(),
            ],
            vec![
                "503 windows (client view)".into(),
                seen.unavailable.count.to_string(),
                format!(
                    "longest {}, {} answers, {} without Retry-After",
                    ms(seen.unavailable.longest),
                    seen.unavailable.hits,
                    seen.without_retry_after
                ),
            ],
            vec![
                "API unreachable windows".into(),
                seen.unreachable.count.to_string(),
                format!("longest {} (API restarts)", ms(seen.unreachable.longest)),
            ],
            vec![
                "submissions unanswered in 10 s".into(),
                seen.timed_out.to_string(),
                "retried with the same key".into(),
            ],
            vec![
                "unexpected answers".into(),
                seen.unexpected.len().to_string(),
                seen.unexpected
                    .first()
                    .map(|(n, s, b)| format!("first: submission {n} got {s} {b}"))
                    .unwrap_or_default(),
            ],
            vec![
                "chaos: executors SIGKILLed / SIGTERMed".into(),
                format!("{} / {}", system.killed.len(), system.drained.len()),
                String::new(),
            ],
            vec![
                "chaos: Redis SIGKILLed / API restarted".into(),
                format!(
                    "{} / {}",
                    system
                        .log
                        .iter()
                        .filter(|l| l.contains("SIGKILL redis"))
                        .count(),
                    system
                        .log
                        .iter()
                        .filter(|l| l.contains("SIGTERM api"))
                        .count()
                ),
                String::new(),
            ],
        ]);
        if system.topology.has_replicas() {
            rows.extend([
                vec![
                    "events seen, then undone by a failover".into(),
                    events.undone().to_string(),
                    "read from a primary before a replica had them".into(),
                ],
                vec![
                    format!("chaos: failovers ({failover} / {primary} SIGKILLed)"),
                    format!(
                        "{} / {}",
                        failovers.iter().filter(|f| f.graceful).count(),
                        failovers.iter().filter(|f| !f.graceful).count()
                    ),
                    String::new(),
                ],
            ]);
        }
        for f in failovers {
            rows.push(failover_row(system, f, &seen.accepted));
        }
        errors.extend(seen.replay_failures.iter().cloned());
        errors.truncate(20);
        Tally {
            rows,
            errors,
            promise,
            lost,
            lost_in_failover,
            not_ended,
            unread: ends.unread,
            wrong,
            twice,
        }
    }
}

/// Seconds since the schedule started, for the table and the errors.
fn secs(system: &System, at: Option<Instant>) -> f64 {
    at.map_or(f64::NAN, |at| {
        at.saturating_duration_since(system.started).as_secs_f64()
    })
}

/// One failover's row: when it began, how long until the first 202 after it, and the
/// longest time without any 202 from its start until five seconds after the promotion
/// (what a client felt; a graceful failover under `local` keeps answering 202 from the
/// former primary until it is demoted, so its first 202 comes at once).
fn failover_row(system: &System, f: &Failover, accepted: &[Instant]) -> Vec<String> {
    let first = accepted.iter().find(|at| **at > f.began);
    let until = f.promoted + Duration::from_secs(5);
    let mut previous = f.began;
    let mut longest = Duration::ZERO;
    for at in accepted.iter().filter(|at| **at > f.began && **at <= until) {
        longest = longest.max(*at - previous);
        previous = *at;
    }
    vec![
        format!(
            "  failover at {:.1} s ({})",
            secs(system, Some(f.began)),
            f.kind()
        ),
        first.map_or("no 202 after it".into(), |at| {
            format!("first 202 after {:.2} s", (*at - f.began).as_secs_f64())
        }),
        format!(
            "promoted after {:.2} s, longest time without a 202 {:.2} s",
            (f.promoted - f.began).as_secs_f64(),
            longest.as_secs_f64()
        ),
    ]
}
