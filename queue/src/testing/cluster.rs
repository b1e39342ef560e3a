//! A Redis Cluster of N masters, without replicas or with one replica each, each node a
//! [`RedisServer`].
//!
//! Three or more masters are joined by `redis-cli --cluster create`, as an operator would.
//! That tool refuses fewer than three, so one or two masters get their slots directly
//! (`CLUSTER ADDSLOTSRANGE`, then `CLUSTER MEET`): a one-master cluster is the baseline a
//! benchmark compares more masters against, with the same client code paths.
//!
//! With replicas a master can fail over: asked for (`CLUSTER FAILOVER` sent to its replica)
//! or after a SIGKILL, when the other masters mark it failed and elect its replica. A killed
//! master started again rejoins as a replica of the node that took its slots.

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
/// `cluster-node-timeout` of a cluster with replicas: a killed master is marked failed and
/// its replica elected after about this long, instead of after the 5 s a node otherwise
/// waits. Long enough that a busy test machine does not fail over a master that is up.
const FAILOVER_NODE_TIMEOUT_MS: &str = "2000";
/// A failover takes the node timeout, an election and a round of gossip; a loaded machine
/// stretches all three.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(30);

/// N master nodes on 127.0.0.1 that together serve all 16384 slots, each with a replica or
/// none. Dropping it kills every node.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    /// Whether every master was created with one replica.
    replicated: bool,
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
        let cluster = RedisCluster {
            nodes,
            replicated: false,
        };
        if masters >= CREATE_MIN_MASTERS {
            cluster.create()?;
        } else {
            cluster.assign_slots()?;
        }
        cluster.wait_until_ok()?;
        Ok(cluster)
    }

    /// Starts `masters` (at least 3) masters with one replica each (`2 × masters` nodes) and
    /// `opts` for every node, with a short `cluster-node-timeout` so that a killed master's
    /// replica takes over within a few seconds. Returns once every slot is served and every
    /// replica is in sync.
    pub fn start_with_replicas(
        masters: usize,
        opts: ServerOptions,
    ) -> Result<RedisCluster, HarnessError> {
        if masters < CREATE_MIN_MASTERS {
            return Err(HarnessError::TooFewMasters(masters));
        }
        let opts = ServerOptions {
            cluster: true,
            ..opts
        };
        let nodes = (0..2 * masters)
            .map(|_| RedisServer::start_with(opts))
            .collect::<Result<Vec<_>, _>>()?;
        let cluster = RedisCluster {
            nodes,
            replicated: true,
        };
        for node in &cluster.nodes {
            set_failover_timeout(node.port())?;
        }
        cluster.create()?;
        cluster.wait_until_ok()?;
        poll_until(
            CONVERGE_TIMEOUT,
            &format!("every node to see {masters} masters with a replica each"),
            || {
                for node in &cluster.nodes {
                    let Ok(view) = nodes_seen_by(node.port()) else {
                        return Ok(false);
                    };
                    let masters_with_slots: Vec<&NodeRow> = view
                        .iter()
                        .filter(|row| row.is_master() && !row.slots.is_empty())
                        .collect();
                    let replicated = masters_with_slots.iter().all(|m| {
                        view.iter()
                            .any(|row| row.master_id == m.id && !row.failed())
                    });
                    if masters_with_slots.len() != masters || !replicated {
                        return Ok(false);
                    }
                }
                Ok(true)
            },
        )?;
        cluster.wait_until_replicas_in_sync()?;
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

    /// Waits until every running node reports `cluster_state:ok`, all 16384 slots served and
    /// knows every other node; useful again after restarting a node.
    pub fn wait_until_ok(&self) -> Result<(), HarnessError> {
        let expected_nodes = self.nodes.len().to_string();
        for node in self.nodes.iter().filter(|n| n.pid().is_some()) {
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

    /// The node (an index into [`nodes`](Self::nodes)) that serves `slot` now, as the
    /// running nodes see it.
    pub fn master_of(&self, slot: u16) -> Result<usize, HarnessError> {
        let view = self.view()?;
        let row = view
            .iter()
            .find(|row| row.is_master() && row.serves(slot))
            .ok_or_else(|| HarnessError::Timeout(format!("no master serves slot {slot}")))?;
        self.index_of(row.port)
    }

    /// The replica of the master `master` (an index into [`nodes`](Self::nodes)).
    pub fn replica_of(&self, master: usize) -> Result<usize, HarnessError> {
        let view = self.view()?;
        let port = self.nodes[master].port();
        let id = view
            .iter()
            .find(|row| row.port == port)
            .map(|row| row.id.clone())
            .ok_or_else(|| HarnessError::Timeout(format!("no node on port {port}")))?;
        let row = view
            .iter()
            .find(|row| row.master_id == id && !row.failed())
            .ok_or_else(|| {
                HarnessError::Timeout(format!("the master on port {port} has no replica"))
            })?;
        self.index_of(row.port)
    }

    /// Sends `CLUSTER FAILOVER` to the replica of `master` and waits until the replica serves
    /// the slots and `master` answers as its replica: the graceful failover an operator asks
    /// for (the replica catches up before it takes over). Returns the new master's index.
    pub fn failover(&mut self, master: usize) -> Result<usize, HarnessError> {
        let replica = self.replica_of(master)?;
        ok(self.nodes[replica].port(), &["CLUSTER", "FAILOVER"])?;
        self.wait_for_takeover(master, replica)?;
        let (old, new) = (self.nodes[master].port(), self.nodes[replica].port());
        poll_until(
            FAILOVER_TIMEOUT,
            &format!("the former master on port {old} to follow port {new}"),
            || Ok(follows(old) == Some(new)),
        )?;
        Ok(replica)
    }

    /// SIGKILLs the master `master` and waits until its replica has been elected in its place
    /// and the cluster serves every slot again. The killed node stays down;
    /// [`start_again`](Self::start_again) brings it back. Returns the new master's index.
    pub fn kill_master(&mut self, master: usize) -> Result<usize, HarnessError> {
        let replica = self.replica_of(master)?;
        self.nodes[master].kill()?;
        self.wait_for_takeover(master, replica)?;
        Ok(replica)
    }

    /// Starts the stopped or killed node `node` again on its port and data. A former master
    /// whose slots were taken over comes back as a replica of the node that took them. Waits
    /// until the cluster is whole again and, on a cluster with replicas, every replica is in
    /// sync.
    pub fn start_again(&mut self, node: usize) -> Result<(), HarnessError> {
        self.nodes[node].start_again()?;
        if self.replicated {
            set_failover_timeout(self.nodes[node].port())?;
        }
        self.wait_until_ok()?;
        if self.replicated {
            self.wait_until_replicas_in_sync()?;
        }
        Ok(())
    }

    /// Moves `slot` and its keys from the master serving it to the master `to`, as a reshard
    /// does (`CLUSTER SETSLOT … IMPORTING/MIGRATING`, `MIGRATE`, `CLUSTER SETSLOT … NODE`).
    /// Afterwards the former master answers `MOVED` for the slot's keys, while a client's slot
    /// map still names it.
    pub fn move_slot(&mut self, slot: u16, to: usize) -> Result<(), HarnessError> {
        let from = self.master_of(slot)?;
        let view = self.view()?;
        let id_of = |i: usize| -> Result<String, HarnessError> {
            let port = self.nodes[i].port();
            view.iter()
                .find(|row| row.port == port)
                .map(|row| row.id.clone())
                .ok_or_else(|| HarnessError::Protocol {
                    port,
                    reply: "not listed in CLUSTER NODES".into(),
                })
        };
        let (from_id, to_id) = (id_of(from)?, id_of(to)?);
        let (from_port, to_port) = (self.nodes[from].port(), self.nodes[to].port());
        let slot = slot.to_string();
        ok(
            to_port,
            &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id],
        )?;
        ok(
            from_port,
            &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id],
        )?;
        loop {
            let reply = Conn::open(from_port)
                .and_then(|mut c| c.call(&["CLUSTER", "GETKEYSINSLOT", &slot, "100"]))
                .map_err(HarnessError::io(format!("listing the keys of slot {slot}")))?;
            let Reply::Array(Some(keys)) = reply else {
                return Err(HarnessError::Protocol {
                    port: from_port,
                    reply: format!("CLUSTER GETKEYSINSLOT answered {reply}"),
                });
            };
            if keys.is_empty() {
                break;
            }
            let to_port = to_port.to_string();
            let mut migrate = vec!["MIGRATE", "127.0.0.1", &to_port, "", "0", "5000", "KEYS"];
            migrate.extend(keys.iter().filter_map(Reply::text));
            ok(from_port, &migrate)?;
        }
        for node in self.nodes.iter().filter(|n| n.pid().is_some()) {
            if role(node.port()).as_deref() == Some("master") {
                ok(node.port(), &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id])?;
            }
        }
        self.wait_until_ok()
    }

    /// Waits until every running replica's link to its master is up and its master lists it
    /// online, so that `WAIT` counts it.
    pub fn wait_until_replicas_in_sync(&self) -> Result<(), HarnessError> {
        for node in self.nodes.iter().filter(|n| n.pid().is_some()) {
            if role(node.port()).as_deref() == Some("slave") {
                node.wait_until_in_sync()?;
            }
        }
        Ok(())
    }

    /// Waits until `replica` answers as a master and every running node but `old` sees it
    /// serve the slots with the whole cluster `ok`.
    fn wait_for_takeover(&self, old: usize, replica: usize) -> Result<(), HarnessError> {
        let port = self.nodes[replica].port();
        poll_until(
            FAILOVER_TIMEOUT,
            &format!("the replica on port {port} to take over as master"),
            || Ok(role(port).as_deref() == Some("master")),
        )
        .map_err(|e| self.with_log(replica, e))?;
        let old_port = self.nodes[old].port();
        poll_until(
            FAILOVER_TIMEOUT,
            &format!("every node to see port {port} serve the slots of port {old_port}"),
            || {
                for node in self.nodes.iter().filter(|n| n.pid().is_some()) {
                    let Some(info) = cluster_info(node.port()) else {
                        return Ok(false);
                    };
                    if resp::info_field(&info, "cluster_state") != Some("ok")
                        || resp::info_field(&info, "cluster_slots_ok") != Some(SLOTS)
                    {
                        return Ok(false);
                    }
                    let Ok(view) = nodes_seen_by(node.port()) else {
                        return Ok(false);
                    };
                    let serves = |p: u16| {
                        view.iter()
                            .any(|row| row.port == p && row.is_master() && !row.slots.is_empty())
                    };
                    if !serves(port) || serves(old_port) {
                        return Ok(false);
                    }
                }
                Ok(true)
            },
        )
        .map_err(|e| self.with_log(replica, e))
    }

    fn with_log(&self, node: usize, e: HarnessError) -> HarnessError {
        match e {
            HarnessError::Timeout(what) => HarnessError::Timeout(format!(
                "{what}; log tail of port {}:\n{}",
                self.nodes[node].port(),
                self.nodes[node].log_tail()
            )),
            other => other,
        }
    }

    /// `CLUSTER NODES` as the first running node that answers sees it.
    fn view(&self) -> Result<Vec<NodeRow>, HarnessError> {
        let mut last = None;
        for node in self.nodes.iter().filter(|n| n.pid().is_some()) {
            match nodes_seen_by(node.port()) {
                Ok(view) => return Ok(view),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(HarnessError::TooFewMasters(0)))
    }

    fn index_of(&self, port: u16) -> Result<usize, HarnessError> {
        self.nodes
            .iter()
            .position(|n| n.port() == port)
            .ok_or_else(|| HarnessError::Protocol {
                port,
                reply: "a node this cluster did not start".into(),
            })
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
            .args([
                "--cluster-replicas",
                if self.replicated { "1" } else { "0" },
                "--cluster-yes",
            ])
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

/// One line of `CLUSTER NODES`.
#[derive(Debug)]
struct NodeRow {
    id: String,
    port: u16,
    flags: String,
    /// The id of the master of a replica, `-` for a master.
    master_id: String,
    /// Served slot ranges, inclusive.
    slots: Vec<(u16, u16)>,
}

impl NodeRow {
    fn parse(line: &str) -> Option<NodeRow> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [id, address, flags, master_id, _, _, _, _, slots @ ..] = fields.as_slice() else {
            return None;
        };
        // `ip:port@cport[,hostname]`.
        let port = address
            .split('@')
            .next()?
            .rsplit_once(':')?
            .1
            .parse()
            .ok()?;
        let slots = slots
            .iter()
            // Slots being migrated are listed as `[slot->-id]`; they are not served yet.
            .filter(|s| !s.starts_with('['))
            .filter_map(|s| match s.split_once('-') {
                Some((lo, hi)) => Some((lo.parse().ok()?, hi.parse().ok()?)),
                None => s.parse().ok().map(|one| (one, one)),
            })
            .collect();
        Some(NodeRow {
            id: id.to_string(),
            port,
            flags: flags.to_string(),
            master_id: master_id.to_string(),
            slots,
        })
    }

    fn is_master(&self) -> bool {
        self.flags.split(',').any(|f| f == "master") && !self.failed()
    }

    fn failed(&self) -> bool {
        self.flags.split(',').any(|f| f == "fail" || f == "fail?")
    }

    fn serves(&self, slot: u16) -> bool {
        self.slots
            .iter()
            .any(|(lo, hi)| (*lo..=*hi).contains(&slot))
    }
}

/// `CLUSTER NODES` as the node on `port` sees it.
fn nodes_seen_by(port: u16) -> Result<Vec<NodeRow>, HarnessError> {
    let reply = Conn::open(port)
        .and_then(|mut conn| conn.call(&["CLUSTER", "NODES"]))
        .map_err(HarnessError::io(format!(
            "sending CLUSTER NODES to port {port}"
        )))?;
    match reply {
        Reply::Bulk(Some(text)) => Ok(text.lines().filter_map(NodeRow::parse).collect()),
        other => Err(HarnessError::Protocol {
            port,
            reply: format!("CLUSTER NODES answered {other}"),
        }),
    }
}

fn cluster_info(port: u16) -> Option<String> {
    match Conn::open(port).and_then(|mut c| c.call(&["CLUSTER", "INFO"])) {
        Ok(Reply::Bulk(Some(info))) => Some(info),
        _ => None,
    }
}

/// What the node on `port` says it is (`master`, `slave`), `None` when it does not answer.
fn role(port: u16) -> Option<String> {
    let Ok(Reply::Bulk(Some(info))) =
        Conn::open(port).and_then(|mut c| c.call(&["INFO", "replication"]))
    else {
        return None;
    };
    resp::info_field(&info, "role").map(str::to_owned)
}

/// The port of the master the node on `port` replicates, with its link up.
fn follows(port: u16) -> Option<u16> {
    let Ok(Reply::Bulk(Some(info))) =
        Conn::open(port).and_then(|mut c| c.call(&["INFO", "replication"]))
    else {
        return None;
    };
    if resp::info_field(&info, "master_link_status") != Some("up") {
        return None;
    }
    resp::info_field(&info, "master_port")?.parse().ok()
}

fn set_failover_timeout(port: u16) -> Result<(), HarnessError> {
    ok(
        port,
        &[
            "CONFIG",
            "SET",
            "cluster-node-timeout",
            FAILOVER_NODE_TIMEOUT_MS,
        ],
    )
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
