//! The processes of a chaos run: Redis (by topology), `ragpool-api` and the
//! `ragpool-executor`s, each logging to a file in the run's directory, and the signals the
//! schedule sends them.
//!
//! Redis comes from the queue's test harness ([`ragpool_queue::testing`]): the same servers,
//! sentinels and failovers the protocol tests use, so the suite and the tests cannot drift
//! apart on how a failover is made or when it counts as complete.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use ragpool_queue::testing::{RedisCluster, RedisSentinel, RedisServer, ServerOptions};
use tokio::process::{Child, Command};

/// How Redis is deployed for the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Topology {
    /// One `redis-server` with an append-only file (`appendfsync always`).
    Single,
    /// A primary and one replica, both with an append-only file (`appendfsync always`),
    /// watched by three `redis-server --sentinel`; components get a `redis+sentinel://` URL.
    Sentinel,
    /// A Redis Cluster of three masters with one replica each, every node with an
    /// append-only file (`appendfsync always`) and a 2 s `cluster-node-timeout`; components
    /// get the six node URLs and every queue is split into partitions (`--partitions`, 6 by
    /// default here) spread over the masters.
    Cluster,
}

impl Topology {
    /// Whether Redis fails over to a replica, rather than being restarted.
    pub fn has_replicas(self) -> bool {
        self != Topology::Single
    }

    /// What the primary is called, and the failover an operator asks for.
    pub fn words(self) -> (&'static str, &'static str) {
        match self {
            Topology::Cluster => ("master", "CLUSTER FAILOVER"),
            Topology::Single | Topology::Sentinel => ("primary", "SENTINEL FAILOVER"),
        }
    }
}

/// The Redis of a run. A topology adds a variant here and its own way to fail.
pub enum Redis {
    Single(RedisServer),
    Sentinel(RedisSentinel),
    Cluster(ClusterRun),
}

/// A cluster and where the schedule is in it: each kill or failover takes the next master in
/// turn, so every shard is failed over.
pub struct ClusterRun {
    cluster: RedisCluster,
    turn: usize,
    /// The killed master, until it is started again.
    down: Option<usize>,
}

/// One slot of each master's third of the slots (the cluster never reshards during a run): the
/// shard the schedule fails over next is the one serving `SHARDS[turn % 3]`.
const SHARDS: [u16; 3] = [0, 8_000, 16_000];

impl ClusterRun {
    /// The master the schedule takes next, and moves the turn on.
    fn next_master(&mut self) -> anyhow::Result<usize> {
        let slot = SHARDS[self.turn % SHARDS.len()];
        self.turn += 1;
        self.cluster
            .master_of(slot)
            .with_context(|| format!("finding the master of slot {slot}"))
    }
}

/// Every server persists every write before answering, so a restarted server has every
/// write it acknowledged: on a single server that makes a SIGKILL lossless, and with replicas
/// it leaves replication as the only way to lose a write, which is what the durability
/// setting is about.
const PERSISTENT: ServerOptions = ServerOptions {
    aof: true,
    cluster: false,
};

impl Redis {
    pub fn start(topology: Topology) -> anyhow::Result<Redis> {
        match topology {
            Topology::Single => Ok(Redis::Single(
                RedisServer::start_with(PERSISTENT).context("starting redis-server")?,
            )),
            Topology::Sentinel => Ok(Redis::Sentinel(
                RedisSentinel::start_with(PERSISTENT)
                    .context("starting a primary, a replica and three sentinels")?,
            )),
            Topology::Cluster => Ok(Redis::Cluster(ClusterRun {
                cluster: RedisCluster::start_with_replicas(3, PERSISTENT)
                    .context("starting a Redis Cluster of three masters and three replicas")?,
                turn: 0,
                down: None,
            })),
        }
    }

    /// The URL every component is given.
    pub fn url(&self) -> String {
        match self {
            Redis::Single(s) => s.url(),
            Redis::Sentinel(s) => s.url(),
            Redis::Cluster(c) => c.cluster.urls().join(","),
        }
    }

    /// SIGKILLs the server; on Sentinel, the primary, and returns once the sentinels have
    /// promoted the replica; on a cluster, the next master in turn, and returns once its
    /// replica has been elected and every node sees it serve the slots.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        match self {
            Redis::Single(s) => s.kill().context("killing redis-server"),
            Redis::Cluster(c) => {
                let master = c.next_master()?;
                c.cluster
                    .kill_master(master)
                    .context("killing a cluster master and waiting for its replica's election")?;
                c.down = Some(master);
                Ok(())
            }
            Redis::Sentinel(s) => s
                .kill_primary()
                .map(drop)
                .context("killing the primary and waiting for the sentinels to promote"),
        }
    }

    /// Starts what [`Redis::kill`] killed, on the same port and data; with replicas as a
    /// replica of the new primary (master), and returns once it is in sync.
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        match self {
            Redis::Single(s) => s.start_again().context("restarting redis-server"),
            Redis::Sentinel(s) => s
                .restart_former_primary()
                .context("restarting the former primary as a replica"),
            Redis::Cluster(c) => {
                let Some(node) = c.down.take() else {
                    bail!("no cluster master is down");
                };
                c.cluster
                    .start_again(node)
                    .context("restarting the former master as a replica")
            }
        }
    }

    /// `SENTINEL FAILOVER`, or `CLUSTER FAILOVER` to the next master's replica; returns once
    /// the replica answers as primary (master) and the former one as its replica.
    pub fn failover(&mut self) -> anyhow::Result<()> {
        match self {
            Redis::Single(_) => {
                bail!("a single server has no replica to fail over to")
            }
            Redis::Sentinel(s) => s.failover().map(drop).context("SENTINEL FAILOVER"),
            Redis::Cluster(c) => {
                let master = c.next_master()?;
                c.cluster
                    .failover(master)
                    .map(drop)
                    .context("CLUSTER FAILOVER")
            }
        }
    }
}

/// Where the workspace's binaries are: next to this one.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating ragpool-bench")?;
    let dir = exe.parent().context("ragpool-bench has no directory")?;
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "{name} is missing from {}: build the workspace's binaries first \
             (`cargo build --workspace --bins`, or with --release for a release bench)",
            dir.display()
        );
    }
    Ok(path)
}

/// One child process, logging to `<dir>/<name>.log`.
pub struct Proc {
    pub name: String,
    child: Child,
}

impl Proc {
    pub fn spawn(
        bin: &Path,
        name: &str,
        env: &[(String, String)],
        dir: &Path,
    ) -> anyhow::Result<Proc> {
        let log_path = dir.join(format!("{name}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let mut command = Command::new(bin);
        command
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(Proc {
            name: name.to_owned(),
            child,
        })
    }

    /// SIGKILL, and reap.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.child
            .kill()
            .await
            .with_context(|| format!("killing {}", self.name))
    }

    /// SIGTERM, then wait for the exit (SIGKILL after `grace`).
    pub async fn terminate(&mut self, grace: Duration) -> anyhow::Result<()> {
        if let Some(pid) = self.child.id() {
            let status = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await
                .context("running kill -TERM")?;
            if !status.success() {
                bail!("kill -TERM {pid} ({}) failed", self.name);
            }
        }
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => {
                status.with_context(|| format!("waiting for {}", self.name))?;
                Ok(())
            }
            Err(_) => self.kill().await,
        }
    }
}

/// A free loopback port (bound and released; the API binds it a moment later).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}
