//! The key prefix's layout: its partition count, recorded once, checked by every process,
//! and changed by a repartition.

use std::collections::BTreeSet;

use redis::Value;

use super::{Broker, BrokerConfig, PARTITIONS_PER_MASTER};
use crate::conn::Conn;
use crate::decode;
use crate::error::{QueueError, Result};
use crate::keys::{Keys, MAX_PARTITIONS};

impl Broker {
    /// Checks this process's partition count against the one recorded for the key prefix,
    /// recording it when the key prefix has none yet; once per process. Writers (enqueue,
    /// claim) and readers of every partition (stats, maintenance) check before their first
    /// call, so a process with the wrong count fails with [`QueueError::Layout`] instead of
    /// looking for tasks where they are not.
    pub async fn check_layout(&self) -> Result<()> {
        self.inner
            .layout
            .get_or_try_init(|| async {
                let keys = self.keys();
                let count = keys.count();
                let mut conn = self.conn();
                let recorded: Option<String> = redis::cmd("GET")
                    .arg(keys.layout())
                    .query_async(&mut conn)
                    .await?;
                let recorded = match recorded {
                    Some(r) => r,
                    None => {
                        // A key prefix used before its count was recorded has the one-partition
                        // layout; its sequence key exists from the first task on.
                        let used: bool = redis::cmd("EXISTS")
                            .arg(keys.partitions()[0].seq())
                            .query_async(&mut conn)
                            .await?;
                        let used = used && count > 1;
                        let old: Option<String> = redis::cmd("SET")
                            .arg(keys.layout())
                            .arg(if used { 1 } else { count })
                            .arg("NX")
                            .arg("GET")
                            .query_async(&mut conn)
                            .await?;
                        old.unwrap_or_else(|| if used { "1".into() } else { count.to_string() })
                    }
                };
                if recorded == count.to_string() {
                    Ok(())
                } else {
                    Err(QueueError::Layout {
                        key_prefix: keys.key_prefix().to_string(),
                        recorded,
                        configured: count,
                    })
                }
            })
            .await
            .map(|_| ())
    }

    /// Changes the key prefix's recorded partition count to `count`, when no task of any
    /// queue waits, runs or waits out a backoff under the recorded one. Ended tasks stay
    /// readable by id until their TTL (an id names its own partition); they leave the state
    /// counts. Stop every process of the key prefix first: a running one keeps its count.
    pub async fn repartition(&self, count: u16) -> Result<u16> {
        if count == 0 || count > MAX_PARTITIONS {
            return Err(QueueError::Config(format!(
                "partitions must be between 1 and {MAX_PARTITIONS}, got {count}"
            )));
        }
        let keys = self.keys();
        let mut conn = self.conn();
        let recorded: Option<String> = redis::cmd("GET")
            .arg(keys.layout())
            .query_async(&mut conn)
            .await?;
        let old: u16 = match recorded {
            Some(r) => r
                .parse()
                .map_err(|_| QueueError::Corrupt(format!("recorded partition count {r:?}")))?,
            None => 1,
        };
        let old_keys = Keys::with_partitions(keys.key_prefix(), old);
        let mut busy = Vec::new();
        for part in old_keys.partitions() {
            let names: Vec<String> = redis::cmd("SMEMBERS")
                .arg(part.queues())
                .query_async(&mut conn)
                .await?;
            for name in names {
                let qk = part.queue(&name);
                let (ready, started, delayed): (u64, u64, u64) = redis::pipe()
                    .zcard(&qk.ready)
                    .zcard(&qk.started)
                    .zcard(&qk.delayed)
                    .query_async(&mut conn)
                    .await?;
                if ready + started + delayed > 0 {
                    busy.push(format!(
                        "{name} (partition {}: {ready} queued, {started} started, {delayed} \
                         delayed)",
                        part.index()
                    ));
                }
            }
        }
        if !busy.is_empty() {
            return Err(QueueError::Config(format!(
                "cannot change the partition count of key prefix {:?} from {old} to {count} \
                 while tasks wait or run: {}; let the executors drain them first",
                keys.key_prefix(),
                busy.join(", ")
            )));
        }
        let _: () = redis::cmd("SET")
            .arg(keys.layout())
            .arg(count)
            .query_async(&mut conn)
            .await?;
        Ok(old)
    }
}

/// What [`AUTO_PARTITIONS`](super::AUTO_PARTITIONS) stands for: see there. Only a cluster is asked (its topology is
/// read at connect anyway); a single server may be down when a broker is built.
pub(super) async fn auto_partitions(conn: &Conn, config: &BrokerConfig) -> Result<u16> {
    if !config.target.cluster {
        return Ok(1);
    }
    let mut conn = conn.clone();
    let keys = Keys::new(&config.key_prefix);
    let recorded: Option<String> = redis::cmd("GET")
        .arg(keys.layout())
        .query_async(&mut conn)
        .await?;
    if let Some(r) = recorded {
        return r
            .parse::<u16>()
            .ok()
            .filter(|n| (1..=MAX_PARTITIONS).contains(n))
            .ok_or_else(|| QueueError::Corrupt(format!("recorded partition count {r:?}")));
    }
    let slots: Value = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(&mut conn)
        .await?;
    let masters = masters_of(&slots).len().max(1) as u16;
    Ok((masters * PARTITIONS_PER_MASTER).min(MAX_PARTITIONS))
}

/// The masters (`host:port`) a `CLUSTER SLOTS` reply names: each range is `[start, end,
/// [host, port, id…], replicas…]`.
fn masters_of(slots: &Value) -> BTreeSet<String> {
    let Value::Array(ranges) = slots else {
        return BTreeSet::new();
    };
    ranges
        .iter()
        .filter_map(|range| match range {
            Value::Array(parts) => match parts.get(2) {
                Some(Value::Array(node)) if node.len() >= 2 => Some(format!(
                    "{}:{}",
                    decode::scalar(&node[0]).ok()?,
                    decode::scalar(&node[1]).ok()?
                )),
                _ => None,
            },
            _ => None,
        })
        .collect()
}
