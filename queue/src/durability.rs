//! When a state change counts as done: once the primary applied it (`local`), or once a
//! replica has it too (`replicated`).
//!
//! Redis replicates asynchronously, so a primary that dies right after answering takes the
//! writes it had not yet sent to a replica with it, and the replica promoted in its place
//! never saw them: a task answered `202` vanishes, a completion is undone. Under
//! `replicated` every state-changing script is followed by `WAIT 1 <timeout>`, and a change
//! no replica acknowledged in time is reported as [`QueueError::NotReplicated`] (the API
//! answers `503`, the executor retries) instead of as done.
//!
//! Three details make the `WAIT` mean what it should:
//!
//! - **Same connection, same write.** `WAIT` waits for the replication offset of the last
//!   write *of the connection it runs on*. The script, a one-key write of our own and the
//!   `WAIT` go out as one pipeline, so they share a socket even if the multiplexed connection
//!   reconnects between two calls (a `WAIT` on a fresh connection would wait for nothing).
//!   Other callers' commands may interleave on a shared connection; that only makes the
//!   offset waited for later, never earlier.
//! - **The write of our own.** A script that changed nothing (an idempotent enqueue that found
//!   its task, a retried completion that finds it already stored) leaves the connection's
//!   offset where it was, possibly at zero. The probe write moves it to the primary's current
//!   offset, which covers every earlier write on that primary, including the one a retry is
//!   there to confirm.
//! - **Cluster.** The unit goes to the master serving the partition's slot, routed by the
//!   partition's hash tag, and the probe key carries that tag, so the script, the probe and
//!   the `WAIT` meet on one master over one socket. When a reply of the unit is a
//!   redirection (`MOVED` after a failover or a reshard, `ASK`, `TRYAGAIN`, `CLUSTERDOWN`),
//!   the cluster client sends the whole unit again, to the new master or after a pause, and
//!   hands back the replies of one complete unit: never a script answered by one node with a
//!   `WAIT` answered by another. Usually the script is what was redirected and never ran. In
//!   the rare case that the slot moved between the script and the probe, the script runs
//!   again on the new master, which is safe: a repeated lease transition answers as a repeat,
//!   an enqueue with an idempotency key finds its task, and one without writes the same task
//!   id again (its queue counters count it twice).
//!
//! `WAITAOF` (Redis 7.2) could also wait for the change to reach a replica's append-only
//! file. It is not used: the failure `replicated` guards against is a master lost and its
//! replica promoted, and what the replica holds in memory is what it serves once promoted;
//! a change in a replica's memory is lost only if that replica dies too before its own
//! `appendfsync` runs. Waiting for an fsync on the replica would add up to a second per change
//! under `appendfsync everysec`, and needs `appendonly` on every replica and Redis 7.2.

use std::str::FromStr;
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::cluster_routing::{Route, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::conn::Conn;
use crate::error::{QueueError, Result};
use crate::keys::Partition;

/// How sure a state change must be before it is reported done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Applied by the primary (and, with `appendfsync always`, on its disk): survives a Redis
    /// restart, not a failover to a replica that had not caught up.
    #[default]
    Local,
    /// Applied by the primary and acknowledged by at least one replica: survives a failover.
    Replicated,
}

impl Durability {
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Local => "local",
            Durability::Replicated => "replicated",
        }
    }
}

impl std::fmt::Display for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Durability {
    type Err = QueueError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "local" => Ok(Durability::Local),
            "replicated" => Ok(Durability::Replicated),
            other => Err(QueueError::Config(format!(
                "unknown durability {other:?}: expected local or replicated"
            ))),
        }
    }
}

/// Whether a change reached a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ack {
    /// `local`: nothing was asked.
    NotAsked,
    /// `replicated`: this many replicas acknowledged within the timeout.
    Replicas { acked: i64, timeout: Duration },
}

impl Ack {
    /// The change is done, or [`QueueError::NotReplicated`].
    pub(crate) fn require(self) -> Result<()> {
        match self {
            Ack::Replicas { acked, timeout } if acked < 1 => {
                Err(QueueError::NotReplicated { timeout })
            }
            _ => Ok(()),
        }
    }
}

/// A connection that sends each command as `[command, SET probe, WAIT 1 timeout]` and keeps
/// the `WAIT`'s answer; see the module documentation.
pub(crate) struct Acknowledged<'a> {
    conn: &'a mut Conn,
    partition: &'a Partition,
    timeout: Duration,
    acked: i64,
}

impl<'a> Acknowledged<'a> {
    /// Acknowledged changes to `partition`'s keys; its probe key and, on a cluster, its slot
    /// are used.
    pub(crate) fn new(conn: &'a mut Conn, partition: &'a Partition, timeout: Duration) -> Self {
        Acknowledged {
            conn,
            partition,
            timeout,
            acked: 0,
        }
    }

    /// What the last command's `WAIT` answered.
    pub(crate) fn ack(&self) -> Ack {
        Ack::Replicas {
            acked: self.acked,
            timeout: self.timeout,
        }
    }

    /// `[command, SET probe 1, WAIT 1 timeout]`.
    fn unit(&self, cmd: &Cmd) -> Pipeline {
        let mut pipe = Pipeline::new();
        pipe.add_command(cmd.clone())
            .cmd("SET")
            .arg(self.partition.replication_probe())
            .arg(1)
            .cmd("WAIT")
            .arg(1)
            .arg(crate::broker::millis(self.timeout).max(1));
        pipe
    }
}

/// The three replies of a unit: the command's, the probe's and the `WAIT`'s.
fn split(values: Vec<Value>) -> redis::RedisResult<[Value; 3]> {
    values.try_into().map_err(|_| {
        redis::RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "a pipeline of three commands did not answer three replies",
        ))
    })
}

impl ConnectionLike for Acknowledged<'_> {
    fn req_packed_command<'b>(&'b mut self, cmd: &'b Cmd) -> RedisFuture<'b, Value> {
        Box::pin(async move {
            let unit = self.unit(cmd);
            let replies = match &mut *self.conn {
                // To the slot's master, whatever the client would pick for the pipeline; it
                // sends the whole unit again on a redirection.
                Conn::Cluster(conn) => {
                    let route = Route::new(self.partition.slot(), SlotAddr::Master);
                    conn.route_pipeline(unit, 0, 3, SingleNodeRoutingInfo::SpecificNode(route))
                        .await?
                }
                conn => conn.req_packed_commands(&unit, 0, 3).await?,
            };
            let [reply, probed, wait] = split(replies)?;
            // An error in place of the probe's `OK` or the `WAIT`'s count (a server that
            // refuses the write or `WAIT`, as a replica does) counts as no replica.
            self.acked = match (probed, wait) {
                (Value::Okay, Value::Int(n)) => n,
                _ => 0,
            };
            Ok(reply)
        })
    }

    fn req_packed_commands<'b>(
        &'b mut self,
        cmd: &'b Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'b, Vec<Value>> {
        // Scripts are sent one command at a time; a pipeline passes through unacknowledged.
        self.conn.req_packed_commands(cmd, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.conn.get_db()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durability_reads_back_what_it_writes() {
        for d in [Durability::Local, Durability::Replicated] {
            assert_eq!(d.as_str().parse::<Durability>().unwrap(), d);
        }
        let err = "quorum".parse::<Durability>().unwrap_err().to_string();
        assert!(err.contains("local or replicated"), "{err}");
        assert_eq!(Durability::default(), Durability::Local);
    }

    #[test]
    fn only_an_unacknowledged_change_is_refused() {
        let timeout = Duration::from_millis(250);
        assert!(Ack::NotAsked.require().is_ok());
        assert!(Ack::Replicas { acked: 2, timeout }.require().is_ok());
        let err = Ack::Replicas { acked: 0, timeout }.require().unwrap_err();
        assert!(matches!(err, QueueError::NotReplicated { .. }), "{err}");
        assert!(err.is_unavailable());
    }
}
