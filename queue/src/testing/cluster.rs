//! A Redis Cluster of N masters without replicas, each node a [`RedisServer`].

use std::fs::File;
use std::io;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::resp::{self, Conn, Reply};
use super::server::{RedisServer, ServerOptions};
use super::{HarnessError, poll_until};

/// Slot assignment and gossip take a few node-timeouts at worst on a loaded machine.
const CREATE_TIMEOUT: Duration = Duration::from_secs(30);
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);
const CREATE_LOG: &str = "cluster-create.log";
const SLOTS: &str = "16384";

/// N master nodes on 127.0.0.1 that together serve all 16384 slots. Dropping it kills every
/// node.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `masters` (at least 3) nodes without persistence and joins them into a cluster.
    pub fn start(masters: usize) -> Result<RedisCluster, HarnessError> {
        Self::start_with(masters, ServerOptions::default())
    }

    /// Like [`start`](Self::start), with `opts` for every node (`cluster` is always on).
    pub fn start_with(masters: usize, opts: ServerOptions) -> Result<RedisCluster, HarnessError> {
        if masters < 3 {
            return Err(HarnessError::TooFewMasters(masters));
        }
        let opts = ServerOptions {
            cluster: true,
            ..opts
        };
        let nodes = (0..masters)
            .map(|_| RedisServer::start_with(opts))
            .collect::<Result<Vec<_>, _>>()?;
        let cluster = RedisCluster { nodes };
        cluster.create()?;
        cluster.wait_until_ok()?;
        Ok(cluster)
    }

    /// Seed URLs, one per node, for `redis::cluster::ClusterClient`.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The nodes, to stop, kill or restart one of them.
    pub fn nodes(&mut self) -> &mut [RedisServer] {
        &mut self.nodes
    }

    /// Waits until every node reports `cluster_state:ok`, all 16384 slots served and knows
    /// every other node; useful again after restarting a node.
    pub fn wait_until_ok(&self) -> Result<(), HarnessError> {
        let expected_nodes = self.nodes.len().to_string();
        for node in &self.nodes {
            let port = node.port();
            poll_until(
                CONVERGE_TIMEOUT,
                &format!("cluster node on port {port} to report cluster_state:ok"),
                || {
                    let Ok(Reply::Bulk(Some(info))) =
                        Conn::open(port).and_then(|mut conn| conn.call(&["CLUSTER", "INFO"]))
                    else {
                        return Ok(false);
                    };
                    let field = |name| resp::info_field(&info, name);
                    Ok(field("cluster_state") == Some("ok")
                        && field("cluster_slots_ok") == Some(SLOTS)
                        && field("cluster_known_nodes") == Some(expected_nodes.as_str()))
                },
            )?;
        }
        Ok(())
    }

    /// Assigns the slots evenly with `redis-cli --cluster create`. Its output goes to a file
    /// rather than a pipe, so a chatty run can never block on a full pipe.
    fn create(&self) -> Result<(), HarnessError> {
        let Some(first) = self.nodes.first() else {
            return Err(HarnessError::TooFewMasters(0));
        };
        let log_path = first.dir().join(CREATE_LOG);
        let log = File::create(&log_path)
            .map_err(HarnessError::io(format!("creating {}", log_path.display())))?;
        let log_err = log
            .try_clone()
            .map_err(HarnessError::io(format!("opening {}", log_path.display())))?;
        let mut child = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port())))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => HarnessError::RedisNotInstalled {
                    program: "redis-cli",
                },
                _ => HarnessError::Io {
                    context: "spawning redis-cli --cluster create".into(),
                    source: e,
                },
            })?;
        let mut status = None;
        let waited = poll_until(CREATE_TIMEOUT, "redis-cli --cluster create", || {
            status = child
                .try_wait()
                .map_err(HarnessError::io("waiting for redis-cli"))?;
            Ok(status.is_some())
        });
        let output = std::fs::read_to_string(&log_path)
            .unwrap_or_else(|e| format!("(output unreadable: {e})"));
        if let Err(e) = waited {
            // Errors mean it is already gone, which is the goal.
            let _ = child.kill();
            let _ = child.wait();
            return Err(match e {
                HarnessError::Timeout(what) => {
                    HarnessError::Timeout(format!("{what}; output:\n{output}"))
                }
                other => other,
            });
        }
        match status {
            Some(status) if status.success() => Ok(()),
            Some(status) => Err(HarnessError::ClusterCreate { status, output }),
            None => Err(HarnessError::Timeout(format!(
                "redis-cli --cluster create; output:\n{output}"
            ))),
        }
    }
}
