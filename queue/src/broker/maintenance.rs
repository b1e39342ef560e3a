//! Maintenance: reaping expired leases, promoting delayed tasks, and the outage clock that
//! holds reaping after nobody could reach Redis.

use std::time::Duration;

use redis::Value;

use super::{Broker, millis};
use crate::decode;
use crate::error::{QueueError, Result};
use crate::keys::Partition;
use crate::scripts;

/// What one maintenance pass did across all queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Maintenance {
    /// Expired leases put back on their queue.
    pub requeued: u64,
    /// Expired leases on their last attempt, now failed.
    pub failed: u64,
    /// Delayed tasks moved back to their queue.
    pub promoted: u64,
    /// Set while reaping is held after an outage: no lease is reaped before this server time
    /// (milliseconds since the epoch).
    pub held_until_ms: Option<u64>,
}

/// How an executor's periodic calls keep the outage clock, from its lease length.
///
/// A live executor touches the clock at least every third of a lease (its registry beat), so
/// a gap of more than half a lease means nobody reached Redis; and a lease that was renewed
/// before such a gap can only have run out if the gap exceeded about two thirds of a lease.
/// After a gap, reaping waits a whole lease: every live executor reconnects and heartbeats
/// its tasks well within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutageClock {
    /// A pause longer than this between periodic calls counts as an outage.
    pub gap: Duration,
    /// After an outage, no lease is reaped for this long.
    pub hold: Duration,
}

impl OutageClock {
    /// Half a lease for the gap, a whole lease for the hold.
    pub fn for_lease(lease: Duration) -> Self {
        OutageClock {
            gap: lease / 2,
            hold: lease,
        }
    }
}

/// Leases and maintenance passes touch at most this many tasks per script call, so one call
/// never holds Redis for long.
const MAINTENANCE_BATCH: u32 = 500;

impl Broker {
    /// Reaps expired leases of one queue in every partition. Harmless to run from many
    /// processes at once. Respects a hold after an outage but does not look for one; see
    /// [`Broker::maintain_for`].
    pub async fn reap(&self, queue: &str) -> Result<(u64, u64)> {
        let mut total = (0, 0);
        for part in self.keys().partitions() {
            let (requeued, failed, _) = self.reap_in(part, queue, None).await?;
            total.0 += requeued;
            total.1 += failed;
        }
        Ok(total)
    }

    /// Reaps one queue of one partition; with `clock`, first observes that partition's
    /// outage clock. Returns the requeued and failed counts and, while reaping is held, the
    /// hold deadline.
    async fn reap_in(
        &self,
        keys: &Partition,
        queue: &str,
        clock: Option<&OutageClock>,
    ) -> Result<(u64, u64, Option<u64>)> {
        let qk = keys.queue(queue);
        let (gap, hold) = clock.map_or((0, 0), |c| (millis(c.gap).max(1), millis(c.hold)));
        let mut total = (0, 0);
        loop {
            let reply: Value = scripts::REAP
                .key(&qk.started)
                .key(&qk.ready)
                .key(&qk.signal)
                .key(&qk.finished)
                .key(&qk.failed)
                .key(&qk.canceled)
                .key(&qk.counters)
                .key(keys.events())
                .key(keys.clock())
                .key(keys.queued_bytes())
                .arg(keys.prefix())
                .arg(MAINTENANCE_BATCH)
                .arg(gap)
                .arg(hold)
                .invoke_async(&mut self.conn())
                .await?;
            let reply = decode::status(&reply)?;
            let (requeued, failed, held): (u64, u64, u64) = match reply.as_slice() {
                [r, f, h] => (
                    r.parse().unwrap_or(0),
                    f.parse().unwrap_or(0),
                    h.parse().unwrap_or(0),
                ),
                other => return Err(QueueError::Corrupt(format!("reap replied {other:?}"))),
            };
            total.0 += requeued;
            total.1 += failed;
            if requeued + failed < u64::from(MAINTENANCE_BATCH) {
                return Ok((total.0, total.1, (held > 0).then_some(held)));
            }
        }
    }

    /// Moves due delayed tasks of one queue back to it, in every partition. Harmless to run
    /// concurrently.
    pub async fn promote(&self, queue: &str) -> Result<u64> {
        let mut total = 0;
        for part in self.keys().partitions() {
            total += self.promote_in(part, queue).await?;
        }
        Ok(total)
    }

    async fn promote_in(&self, keys: &Partition, queue: &str) -> Result<u64> {
        let qk = keys.queue(queue);
        let mut total = 0;
        loop {
            let promoted: u64 = scripts::PROMOTE
                .key(&qk.delayed)
                .key(&qk.ready)
                .key(&qk.signal)
                .key(keys.seq())
                .key(keys.events())
                .key(keys.queued_bytes())
                .arg(keys.prefix())
                .arg(MAINTENANCE_BATCH)
                .invoke_async(&mut self.conn())
                .await?;
            total += promoted;
            if promoted < u64::from(MAINTENANCE_BATCH) {
                return Ok(total);
            }
        }
    }

    /// Reaps and promotes on every known queue, respecting a hold after an outage.
    pub async fn maintain(&self) -> Result<Maintenance> {
        self.maintain_observing(None).await
    }

    /// An executor's maintenance pass: [`Broker::maintain`], and the outage clock kept with
    /// the executor's lease length, so that a time when nobody could reach Redis holds
    /// reaping until every live executor has had a lease to heartbeat again.
    pub async fn maintain_for(&self, lease: Duration) -> Result<Maintenance> {
        self.maintain_observing(Some(&OutageClock::for_lease(lease)))
            .await
    }

    /// One pass over every queue; the partitions side by side (each keeps its own outage
    /// clock: in a cluster, one master's restart holds reaping on its partitions only).
    async fn maintain_observing(&self, clock: Option<&OutageClock>) -> Result<Maintenance> {
        self.check_layout().await?;
        let queues = self.queue_names().await?;
        let passes = self.keys().partitions().iter().map(|part| {
            let queues = &queues;
            async move {
                let mut out = Maintenance::default();
                for queue in queues {
                    let (requeued, failed, held) = self.reap_in(part, queue, clock).await?;
                    out.requeued += requeued;
                    out.failed += failed;
                    out.held_until_ms = out.held_until_ms.max(held);
                    out.promoted += self.promote_in(part, queue).await?;
                }
                Ok::<_, QueueError>(out)
            }
        });
        let mut out = Maintenance::default();
        for m in futures::future::try_join_all(passes).await? {
            out.requeued += m.requeued;
            out.failed += m.failed;
            out.promoted += m.promoted;
            out.held_until_ms = out.held_until_ms.max(m.held_until_ms);
        }
        Ok(out)
    }
}
