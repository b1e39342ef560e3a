//! How one key prefix's load spreads over the masters of a Redis Cluster.
//!
//! A realistic workload runs on the 3-master test cluster: all three task kinds, enqueued one
//! by one and in batches, some with idempotency keys, with payloads the size of real ones;
//! three executors claim and complete about two thirds, fail a few, and a maintenance pass
//! follows. Then every master is read directly, not through the cluster client: its key
//! count (`DBSIZE`), the commands it ran (`INFO commandstats`, reset before the workload) and
//! how much its memory grew (`used_memory`, read before the workload).
//!
//! With six partitions each master must carry some of each and none more than 1.5 times its
//! even share. With one partition a single master carries everything: that is what
//! partitions solve, and the second test keeps it on record.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{ALL, maintain_until, test_queues};
use ragpool_queue::keys::{Keys, slot};
use ragpool_queue::payload::{AnalyzeImage, CompleteAnswer, FullQuery};
use ragpool_queue::testing::RedisCluster;
use ragpool_queue::{
    Broker, BrokerConfig, ClaimPolicy, ConsumerConfig, NewTask, Payload, RedisTarget, Retry,
    TaskError, WorkerInfo,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis::aio::MultiplexedConnection;
use serde_json::json;

const MASTERS: usize = 3;
/// Tasks enqueued one call each, then in `enqueue_many` batches of [`BATCH`].
const SINGLES: usize = 600;
const BATCHES: usize = 24;
const BATCH: usize = 100;
const TASKS: usize = SINGLES + BATCHES * BATCH;
/// The executors claim two thirds of the tasks between them.
const EXECUTORS: usize = 3;
const CLAIMED: usize = TASKS * 2 / 3;
/// The most tasks one executor takes in one claim (its free slots).
const SLOTS: usize = 8;
/// One claimed task in this many fails for good, one more is retried after a backoff.
const FAIL_EVERY: u64 = 50;
/// One task enqueued alone in this many, and one batched in [`BATCH_KEY_EVERY`], carries an
/// idempotency key; the first [`REPLAYS`] keys are sent again.
const SINGLE_KEY_EVERY: usize = 5;
const BATCH_KEY_EVERY: usize = 10;
const REPLAYS: usize = 50;
const LEASE: Duration = Duration::from_secs(30);
/// No master may hold more than this many times its even share.
const MAX_SHARE_OF_EVEN: f64 = 1.5;
/// Commands that are not the workload's: the measurement's own, and what the cluster client
/// sends to every master whatever the key layout (topology reads, and `SCRIPT LOAD` of each
/// script on every master the first time a script call answers `NOSCRIPT`).
const NOT_WORKLOAD: [&str; 5] = ["info", "dbsize", "config", "cluster", "script"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_partitions_spread_keys_commands_and_memory_over_three_masters() {
    let mut run = Run::start(6).await;
    let spread = run.workload().await;
    spread.print("partitions = 6");

    // With the usual even split of slots, each master serves P / M partitions.
    for m in 0..MASTERS {
        let mine = run.owner.iter().filter(|&&o| o == m).count();
        assert_eq!(mine, 2, "master {m} serves {mine} of the 6 partitions");
    }
    spread.assert_even("keys", &spread.keys);
    spread.assert_even("commands", &spread.commands);
    spread.assert_even("memory growth", &spread.memory);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_partition_puts_everything_on_one_master() {
    let mut run = Run::start(1).await;
    let spread = run.workload().await;
    spread.print("partitions = 1");

    let home = run.owner[0];
    for m in (0..MASTERS).filter(|&m| m != home) {
        assert_eq!(
            spread.keys[m], 0,
            "master {m} holds keys:\n{}",
            spread.table
        );
        assert_eq!(
            spread.commands[m], 0,
            "master {m} ran workload commands:\n{}",
            spread.table
        );
        // Only connection buffers and allocator noise grow elsewhere.
        assert!(
            spread.memory[m] * 20 < spread.memory[home],
            "master {m} grew by more than 5% of the home master's growth:\n{}",
            spread.table
        );
    }
    assert!(spread.keys[home] as usize > TASKS, "{}", spread.table);
}

/// A cluster, the direct connections to its masters, and which master serves each partition.
struct Run {
    _cluster: RedisCluster,
    target: RedisTarget,
    partitions: u16,
    keys: Keys,
    masters: Vec<Master>,
    /// The master serving each partition, by partition index.
    owner: Vec<usize>,
}

/// One master, reached without the cluster client.
struct Master {
    port: String,
    conn: MultiplexedConnection,
}

/// What each master holds after the workload, by master.
struct Spread {
    keys: Vec<i64>,
    commands: Vec<i64>,
    /// `used_memory` growth in bytes.
    memory: Vec<i64>,
    table: String,
}

impl Run {
    async fn start(partitions: u16) -> Run {
        let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(MASTERS))
            .await
            .expect("cluster start does not panic")
            .expect("redis cluster starts");
        let mut masters = Vec::new();
        for url in cluster.urls() {
            let client = redis::Client::open(url.as_str()).expect("node URL");
            masters.push(Master {
                port: url.rsplit(':').next().unwrap_or_default().to_string(),
                conn: client
                    .get_multiplexed_async_connection()
                    .await
                    .expect("a direct connection to a master"),
            });
        }
        let keys = Keys::with_partitions("ragpool", partitions);
        let mut served = Vec::new();
        for master in &mut masters {
            served.push(own_slots(&mut master.conn).await);
        }
        let owner = keys
            .partitions()
            .iter()
            .map(|p| {
                let s = slot(tag(p.prefix()));
                served
                    .iter()
                    .position(|ranges| ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&s)))
                    .unwrap_or_else(|| panic!("no master serves slot {s}"))
            })
            .collect();
        Run {
            target: RedisTarget {
                urls: cluster.urls(),
                cluster: true,
                ca_cert: None,
                sentinel: None,
            },
            _cluster: cluster,
            partitions,
            keys,
            masters,
            owner,
        }
    }

    /// A broker as the API or an executor runs it, with the partition count set here rather
    /// than from the suite's environment.
    async fn broker(&self) -> Broker {
        let mut config = BrokerConfig::new(self.target.clone());
        config.queues = test_queues();
        config.partitions = self.partitions;
        Broker::connect(config).await.expect("broker connects")
    }

    /// Runs the workload and reads every master; see the module documentation.
    async fn workload(&mut self) -> Spread {
        let api = self.broker().await;
        let mut executors = Vec::new();
        for _ in 0..EXECUTORS {
            executors.push(self.broker().await);
        }
        let mut before = Vec::new();
        for master in &mut self.masters {
            before.push(used_memory(&mut master.conn).await);
            let () = redis::cmd("CONFIG")
                .arg("RESETSTAT")
                .query_async(&mut master.conn)
                .await
                .expect("CONFIG RESETSTAT");
        }

        enqueue_all(&api).await;
        let queued = self.ready_by_partition().await;
        let retried = claim_and_report(&executors).await;
        let left = self.ready_by_partition().await;
        for (p, (was, is)) in queued.iter().zip(&left).enumerate() {
            assert!(
                is < was,
                "partition {p} (master {}) was not drained: {was} ready before the executors, \
                 {is} after",
                self.owner[p]
            );
        }

        let mut promoted = 0;
        maintain_until(&api, |m| {
            promoted += m.promoted;
            promoted >= retried
        })
        .await;
        self.check_states(&api, retried).await;
        let spread = self.measure(before).await;
        self.check_partitions_hold_data().await;
        spread
    }

    /// Every partition ends with queued and finished tasks and events, read on the master
    /// serving it (after the measurement, so these reads do not count).
    async fn check_partitions_hold_data(&mut self) {
        for (p, part) in self.keys.partitions().iter().enumerate() {
            let conn = &mut self.masters[self.owner[p]].conn;
            let mut pipe = redis::pipe();
            pipe.xlen(part.events());
            for queue in ALL {
                let qk = part.queue(queue);
                pipe.zcard(qk.ready).zcard(qk.finished);
            }
            let counts: Vec<u64> = pipe.query_async(conn).await.expect("XLEN and ZCARD");
            let ready: u64 = counts[1..].iter().step_by(2).sum();
            let finished: u64 = counts[2..].iter().step_by(2).sum();
            assert!(
                counts[0] > 0 && ready > 0 && finished > 0,
                "partition {p}: {} events, {ready} ready, {finished} finished",
                counts[0]
            );
        }
    }

    /// Each partition's ready tasks over the three queues, read on the master serving it.
    /// These reads (and the statistics read) count among the workload's commands; they are a
    /// few dozen of tens of thousands, spread like the workload.
    async fn ready_by_partition(&mut self) -> Vec<u64> {
        let mut out = Vec::new();
        for (p, part) in self.keys.partitions().iter().enumerate() {
            let conn = &mut self.masters[self.owner[p]].conn;
            let mut pipe = redis::pipe();
            for queue in ALL {
                pipe.zcard(part.queue(queue).ready);
            }
            let counts: Vec<u64> = pipe.query_async(conn).await.expect("ZCARD ready");
            out.push(counts.iter().sum());
        }
        out
    }

    /// The queue statistics across partitions account for every task of the workload.
    async fn check_states(&self, api: &Broker, retried: u64) {
        let (mut queued, mut started, mut delayed, mut finished, mut failed) = (0, 0, 0, 0, 0);
        for queue in ALL {
            let s = api.queue_stats(queue).await.expect("stats");
            queued += s.queued;
            started += s.started;
            delayed += s.delayed;
            finished += s.finished;
            failed += s.failed;
        }
        let failed_for_good = CLAIMED as u64 / FAIL_EVERY;
        assert_eq!((started, delayed), (0, 0));
        assert_eq!(failed, failed_for_good);
        assert_eq!(finished, CLAIMED as u64 - failed_for_good - retried);
        assert_eq!(queued, (TASKS - CLAIMED) as u64 + retried);
    }

    /// Reads every master's keys, commands and memory growth since `before`.
    async fn measure(&mut self, before: Vec<i64>) -> Spread {
        let (mut keys, mut commands, mut memory) = (Vec::new(), Vec::new(), Vec::new());
        for (master, before) in self.masters.iter_mut().zip(before) {
            // Commands first, so the other reads do not count.
            commands.push(workload_commands(&mut master.conn).await);
            keys.push(
                redis::cmd("DBSIZE")
                    .query_async(&mut master.conn)
                    .await
                    .expect("DBSIZE"),
            );
            memory.push(used_memory(&mut master.conn).await - before);
        }
        let table = table(&self.masters, &self.owner, &keys, &commands, &memory);
        Spread {
            keys,
            commands,
            memory,
            table,
        }
    }
}

impl Spread {
    fn print(&self, title: &str) {
        eprintln!(
            "{title}: keys = DBSIZE, commands = calls in INFO commandstats since CONFIG \
             RESETSTAT, memory = growth of used_memory\n{}",
            self.table
        );
    }

    /// Every master holds some of `values` and none more than 1.5 times its even share.
    fn assert_even(&self, what: &str, values: &[i64]) {
        let total: i64 = values.iter().sum();
        assert!(total > 0, "no {what} at all:\n{}", self.table);
        for (m, &v) in values.iter().enumerate() {
            assert!(v > 0, "master {m} holds no {what}:\n{}", self.table);
            let share = v as f64 / total as f64;
            assert!(
                share <= MAX_SHARE_OF_EVEN / MASTERS as f64,
                "master {m} holds {:.1}% of the {what}, more than {MAX_SHARE_OF_EVEN} times \
                 its even share:\n{}",
                share * 100.0,
                self.table
            );
        }
    }
}

/// Enqueues [`TASKS`] tasks: [`SINGLES`] one call each, the rest in batches, some with
/// idempotency keys, and replays the first keys to check they find their task.
async fn enqueue_all(api: &Broker) {
    let mut rng = StdRng::seed_from_u64(7);
    let mut keyed = Vec::new();
    for n in 0..SINGLES {
        let key = (n % SINGLE_KEY_EVERY == 0).then(|| format!("single-{n}"));
        let done = api
            .enqueue(new_task(&mut rng, n, key.clone()))
            .await
            .expect("enqueue");
        assert!(done.created);
        if let Some(key) = key {
            keyed.push((key, done.id));
        }
    }
    for b in 0..BATCHES {
        let tasks: Vec<NewTask> = (0..BATCH)
            .map(|i| {
                let n = SINGLES + b * BATCH + i;
                let key = (i % BATCH_KEY_EVERY == 0).then(|| format!("batch-{n}"));
                new_task(&mut rng, n, key)
            })
            .collect();
        let sent: Vec<Option<String>> = tasks.iter().map(|t| t.idempotency_key.clone()).collect();
        let done = api.enqueue_many(tasks).await.expect("enqueue_many");
        assert_eq!(done.len(), BATCH);
        for (key, e) in sent.into_iter().zip(done) {
            assert!(e.created);
            if let Some(key) = key {
                keyed.push((key, e.id));
            }
        }
    }
    for (key, id) in keyed.into_iter().take(REPLAYS) {
        let n = TASKS;
        let again = api
            .enqueue(new_task(&mut rng, n, Some(key.clone())))
            .await
            .expect("replayed enqueue");
        assert!(!again.created, "{key} made a second task");
        assert_eq!(again.id, id, "{key} named another task");
    }
}

/// Task `n` of the mix: four in ten image analyses, three answers from a context, three full
/// queries (one in three of those with an image).
fn new_task(rng: &mut StdRng, n: usize, idempotency_key: Option<String>) -> NewTask {
    let question = text(rng, 80..400);
    let payload: Payload = match n % 10 {
        0..=3 => AnalyzeImage {
            image: Some(image(rng)),
            prompt: Some(text(rng, 40..200)),
            ..AnalyzeImage::default()
        }
        .into(),
        4..=6 => CompleteAnswer {
            question,
            context: Some(text(rng, 1_000..6_000)),
            top_k: Some(5),
            ..CompleteAnswer::default()
        }
        .into(),
        _ => FullQuery {
            question,
            image: n.is_multiple_of(3).then(|| image(rng)),
            top_k: Some(8),
            ..FullQuery::default()
        }
        .into(),
    };
    NewTask {
        payload,
        idempotency_key,
        owner: Some(format!("tenant-{}", n % 7)),
        share: Default::default(),
        trace: None,
    }
}

/// A downscaled photo as clients send it: 6 to 16 KB of base64.
fn image(rng: &mut StdRng) -> String {
    const BASE64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let len = rng.random_range(1_500..4_000) * 4;
    (0..len)
        .map(|_| char::from(BASE64[rng.random_range(0..BASE64.len())]))
        .collect()
}

/// Prose-like text of a length in `len`.
fn text(rng: &mut StdRng, len: std::ops::Range<usize>) -> String {
    const WORDS: [&str; 12] = [
        "retrieval",
        "the",
        "invoice",
        "pump",
        "of",
        "maintenance",
        "warranty",
        "a",
        "manual",
        "pressure",
        "and",
        "valve",
    ];
    let len = rng.random_range(len);
    let mut out = String::with_capacity(len + 12);
    while out.len() < len {
        out.push_str(WORDS[rng.random_range(0..WORDS.len())]);
        out.push(' ');
    }
    out
}

/// Runs the executors until they have claimed [`CLAIMED`] tasks between them, each task
/// completed, failed for good or failed retryably; returns how many were retried.
async fn claim_and_report(executors: &[Broker]) -> u64 {
    let seen = Arc::new(AtomicU64::new(0));
    let retried = Arc::new(AtomicU64::new(0));
    let runs = executors.iter().enumerate().map(|(e, broker)| {
        let quota = CLAIMED / EXECUTORS + usize::from(e < CLAIMED % EXECUTORS);
        execute(broker.clone(), e, quota, seen.clone(), retried.clone())
    });
    futures::future::join_all(runs).await;
    assert_eq!(seen.load(Ordering::Relaxed), CLAIMED as u64);
    retried.load(Ordering::Relaxed)
}

/// One executor: registers, claims up to [`SLOTS`] at a time from all three queues until it
/// has taken `quota` tasks, and reports on each as its backend would.
async fn execute(
    broker: Broker,
    e: usize,
    quota: usize,
    seen: Arc<AtomicU64>,
    retried: Arc<AtomicU64>,
) {
    let worker = format!("executor-{e}");
    let info = WorkerInfo {
        id: worker.clone(),
        host: format!("node-{e}"),
        queues: ALL.iter().map(|q| q.to_string()).collect(),
        concurrency: SLOTS as u32,
        ..WorkerInfo::default()
    };
    broker.beat_worker(&info, LEASE).await.expect("worker beat");
    let consumer = broker
        .consumer(ConsumerConfig {
            worker_id: worker,
            queues: ALL.iter().map(|q| q.to_string()).collect(),
            policy: ClaimPolicy::Weighted,
            lease: LEASE,
        })
        .await
        .expect("consumer");
    let mut rng = StdRng::seed_from_u64(100 + e as u64);
    let mut left = quota;
    while left > 0 {
        let claimed = consumer
            .try_claim_many(left.min(SLOTS))
            .await
            .expect("claim");
        assert!(!claimed.is_empty(), "ran out of tasks with {left} to claim");
        left -= claimed.len();
        for c in claimed {
            let n = seen.fetch_add(1, Ordering::Relaxed);
            if n.is_multiple_of(3) {
                let progress = ragpool_queue::Progress {
                    percent: 50,
                    message: "retrieving passages".into(),
                };
                broker
                    .heartbeat(&c.lease, Some(&progress))
                    .await
                    .expect("heartbeat");
            }
            match n % FAIL_EVERY {
                0 => {
                    let error = TaskError::new("bad_input", "the image does not decode");
                    broker
                        .fail(&c.lease, &error, Retry::Permanent)
                        .await
                        .expect("fail");
                }
                1 => {
                    let error = TaskError::new("backend_unavailable", "the model answered 503");
                    broker
                        .fail(&c.lease, &error, Retry::Retryable(None))
                        .await
                        .expect("fail");
                    retried.fetch_add(1, Ordering::Relaxed);
                }
                _ => {
                    let result = json!({
                        "answer": text(&mut rng, 500..2_500),
                        "sources": (0..5).map(|i| json!({
                            "document": format!("manual-{i}.pdf"),
                            "score": 0.9 - f64::from(i) / 10.0,
                        })).collect::<Vec<_>>(),
                    });
                    broker.complete(&c.lease, &result).await.expect("complete");
                }
            }
        }
        broker.beat_worker(&info, LEASE).await.expect("worker beat");
    }
}

/// The hash tag inside a `{tag}:` prefix.
fn tag(prefix: &str) -> &str {
    prefix
        .trim_start_matches('{')
        .split('}')
        .next()
        .unwrap_or(prefix)
}

/// The slot ranges the node behind `conn` serves, from its own line of `CLUSTER NODES`.
async fn own_slots(conn: &mut MultiplexedConnection) -> Vec<(u16, u16)> {
    let nodes: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(conn)
        .await
        .expect("CLUSTER NODES");
    let myself = nodes
        .lines()
        .find(|line| line.split(' ').nth(2).is_some_and(|f| f.contains("myself")))
        .expect("CLUSTER NODES has a line for the node itself");
    myself
        .split(' ')
        .skip(8)
        .map(|range| {
            let (lo, hi) = range.split_once('-').unwrap_or((range, range));
            (
                lo.parse().expect("slot number"),
                hi.parse().expect("slot number"),
            )
        })
        .collect()
}

async fn used_memory(conn: &mut MultiplexedConnection) -> i64 {
    let info = info(conn, "memory").await;
    info.get("used_memory")
        .and_then(|v| v.parse().ok())
        .expect("INFO memory has used_memory")
}

/// The sum of `calls` over `INFO commandstats`, less the [`NOT_WORKLOAD`] commands.
async fn workload_commands(conn: &mut MultiplexedConnection) -> i64 {
    let stats = info(conn, "commandstats").await;
    stats
        .iter()
        .filter_map(|(name, value)| {
            let command = name.strip_prefix("cmdstat_")?;
            let family = command.split('|').next().unwrap_or(command);
            if NOT_WORKLOAD.contains(&family) {
                return None;
            }
            let calls = value.split(',').find_map(|f| f.strip_prefix("calls="))?;
            calls.parse::<i64>().ok()
        })
        .sum()
}

/// One section of `INFO` as field → value.
async fn info(conn: &mut MultiplexedConnection, section: &str) -> BTreeMap<String, String> {
    let text: String = redis::cmd("INFO")
        .arg(section)
        .query_async(conn)
        .await
        .expect("INFO");
    text.lines()
        .filter_map(|line| line.trim_end().split_once(':'))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The per-master table the tests print: each measure and its share of the total.
fn table(
    masters: &[Master],
    owner: &[usize],
    keys: &[i64],
    commands: &[i64],
    memory: &[i64],
) -> String {
    let share = |values: &[i64], m: usize| {
        let total: i64 = values.iter().sum();
        if total == 0 {
            0.0
        } else {
            values[m] as f64 * 100.0 / total as f64
        }
    };
    let mut out = format!(
        "{:<7} {:>6} {:>10} {:>8} {:>16} {:>9} {:>12} {:>8}  partitions\n",
        "master", "port", "keys", "share", "commands", "share", "memory KiB", "share"
    );
    for (m, master) in masters.iter().enumerate() {
        let parts: Vec<String> = (0..owner.len())
            .filter(|&p| owner[p] == m)
            .map(|p| p.to_string())
            .collect();
        out.push_str(&format!(
            "{m:<7} {:>6} {:>10} {:>7.1}% {:>16} {:>8.1}% {:>12} {:>7.1}%  {}\n",
            master.port,
            keys[m],
            share(keys, m),
            commands[m],
            share(commands, m),
            memory[m] / 1024,
            share(memory, m),
            parts.join(",")
        ));
    }
    out
}
