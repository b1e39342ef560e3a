//! A Redis Cluster of N masters without replicas, each node a [`RedisServer`].
//!
//! Three or more masters are joined by `redis-cli --cluster create`, as an operator would.
//! That tool refuses fewer than three, so one or two masters get their slots directly
//! (`CLUSTER ADDSLOTSRANGE`, then `CLUSTER MEET`): a one-master cluster is the baseline a
//! benchmark compares more masters against, with the same client code paths.

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
const SLOT_COUNT: usize = 16384;
/// `redis-cli --cluster create` needs this many masters; fewer get their slots directly.
const CREATE_MIN_MASTERS: usize = 3;

/// N master nodes on 127.0.0.1 that together serve all 16384 slots. Dropping it kills every
/// node.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `masters` (at least 1) nodes without persistence and joins them into a cluster
    /// whose slots are split evenly among them.
    pub fn start(masters: usize) -> Result<RedisCluster, HarnessError> {
        Self::start_with(masters, ServerOptions::default())
    }

    /// Like [`start`](Self::start), with `opts` for every node (`cluster` is always on).
    pub fn start_with(masters: usize, opts: ServerOptions) -> Result<RedisCluster, HarnessError> {
        if masters == 0 {
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
        if masters >= CREATE_MIN_MASTERS {
            cluster.create()?;
        } else {
            cluster.assign_slots()?;
        }
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

    /// Gives node `i` of `n` the slots `i·16384/n ..= (i+1)·16384/n − 1` and introduces every
    /// other node to the first; gossip does the rest, which [`wait_until_ok`](Self::wait_until_ok)
    /// waits for.
    fn assign_slots(&self) -> Result<(), HarnessError> {
        let count = self.nodes.len();
        let Some(first) = self.nodes.first() else {
            return Err(HarnessError::TooFewMasters(0));
        };
        for (i, node) in self.nodes.iter().enumerate() {
            let low = (i * SLOT_COUNT / count).to_string();
            let high = ((i + 1) * SLOT_COUNT / count - 1).to_string();
            ok(node.port(), &["CLUSTER", "ADDSLOTSRANGE", &low, &high])?;
        }
        let first_port = first.port().to_string();
        for node in &self.nodes[1..] {
            ok(node.port(), &["CLUSTER", "MEET", "127.0.0.1", &first_port])?;
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

/// Sends `command` to the node on `port` and expects `+OK`.
fn ok(port: u16, command: &[&str]) -> Result<(), HarnessError> {
    let reply = Conn::open(port)
        .and_then(|mut conn| conn.call(command))
        .map_err(HarnessError::io(format!(
            "sending {} to cluster node on port {port}",
            command.join(" ")
        )))?;
    match reply {
        Reply::Simple(s) if s == "OK" => Ok(()),
        other => Err(HarnessError::Protocol {
            port,
            reply: format!("{} answered {other}", command.join(" ")),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `CLUSTER SLOTS` as seen from the node on `port`: (first slot, last slot, port serving
    /// them), sorted by first slot.
    fn slot_ranges(port: u16) -> Vec<(i64, i64, i64)> {
        let reply = Conn::open(port)
            .and_then(|mut c| c.call(&["CLUSTER", "SLOTS"]))
            .expect("CLUSTER SLOTS answers");
        let Reply::Array(Some(ranges)) = reply else {
            panic!("CLUSTER SLOTS answered {reply}");
        };
        let mut out: Vec<(i64, i64, i64)> = ranges
            .iter()
            .map(|range| match range {
                Reply::Array(Some(items)) => match items.as_slice() {
                    [
                        Reply::Integer(low),
                        Reply::Integer(high),
                        Reply::Array(Some(master)),
                        ..,
                    ] => match master.get(1) {
                        Some(Reply::Integer(port)) => (*low, *high, *port),
                        other => panic!("no master port in {range}: {other:?}"),
                    },
                    _ => panic!("unexpected slot range {range}"),
                },
                other => panic!("unexpected slot range {other}"),
            })
            .collect();
        out.sort_unstable();
        out
    }

    #[test]
    fn one_and_two_masters_split_the_slots_evenly() {
        for masters in [1, 2] {
            let cluster = RedisCluster::start(masters).expect("cluster starts");
            let ports: Vec<i64> = cluster.nodes.iter().map(|n| i64::from(n.port())).collect();
            let expected: Vec<(i64, i64, i64)> = match masters {
                1 => vec![(0, 16383, ports[0])],
                _ => vec![(0, 8191, ports[0]), (8192, 16383, ports[1])],
            };
            for node in &cluster.nodes {
                assert_eq!(slot_ranges(node.port()), expected, "{masters} masters");
            }
        }
    }

    #[test]
    fn no_masters_is_refused() {
        assert!(matches!(
            RedisCluster::start(0),
            Err(HarnessError::TooFewMasters(0))
        ));
    }
}
