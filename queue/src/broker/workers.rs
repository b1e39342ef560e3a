//! The worker registry: executors announce themselves, beat, and leave.

use std::time::Duration;

use redis::Value;

use super::{Broker, OutageClock, millis};
use crate::decode;
use crate::error::{QueueError, Result};
use crate::scripts;
use crate::stats::WorkerInfo;

impl Broker {
    /// Registers a worker or refreshes its record; it drops out of [`Broker::workers`] when
    /// not refreshed within `ttl`. Returns the server time.
    pub async fn register_worker(&self, info: &WorkerInfo, ttl: Duration) -> Result<u64> {
        self.worker_beat(info, ttl, None).await
    }

    /// A running executor's registry beat: its entry is kept for two leases, and the outage
    /// clock is observed with its lease length (see [`Broker::maintain_for`]). Returns the
    /// server time.
    pub async fn beat_worker(&self, info: &WorkerInfo, lease: Duration) -> Result<u64> {
        self.worker_beat(info, lease * 2, Some(&OutageClock::for_lease(lease)))
            .await
    }

    async fn worker_beat(
        &self,
        info: &WorkerInfo,
        ttl: Duration,
        clock: Option<&OutageClock>,
    ) -> Result<u64> {
        let keys = self.keys();
        let record = serde_json::to_string(info)
            .map_err(|e| QueueError::Corrupt(format!("worker record: {e}")))?;
        // With one partition the beat also keeps that partition's outage clock (after a gap
        // the beat may arrive before any maintenance pass). With more, the clocks live in
        // other slots and the maintenance passes keep them.
        let clock = clock.filter(|_| keys.count() == 1);
        let (gap, hold) = clock.map_or((0, 0), |c| (millis(c.gap).max(1), millis(c.hold)));
        let now: u64 = scripts::WORKER_BEAT
            .key(keys.workers())
            .key(keys.worker(&info.id))
            .key(keys.clock())
            .arg(&info.id)
            .arg(record)
            .arg(millis(ttl))
            .arg(gap)
            .arg(hold)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(now)
    }

    /// Removes a worker from the registry at once (a clean shutdown).
    pub async fn deregister_worker(&self, id: &str) -> Result<()> {
        let keys = self.keys();
        redis::pipe()
            .atomic()
            .zrem(keys.workers(), id)
            .del(keys.worker(id))
            .query_async::<()>(&mut self.conn())
            .await?;
        Ok(())
    }

    /// The workers heard from within `ttl`.
    pub async fn workers(&self, ttl: Duration) -> Result<Vec<WorkerInfo>> {
        let keys = self.keys();
        let reply: Value = scripts::WORKERS
            .key(keys.workers())
            .arg(keys.prefix())
            .arg(millis(ttl))
            .invoke_async(&mut self.conn())
            .await?;
        let flat = decode::list(&reply)?;
        let mut out = Vec::with_capacity(flat.len() / 3);
        for entry in flat.chunks(3) {
            if let [_, seen, record] = entry {
                let mut info: WorkerInfo = serde_json::from_str(record)
                    .map_err(|e| QueueError::Corrupt(format!("worker record: {e}")))?;
                info.last_seen_ms = seen.parse().unwrap_or(info.last_seen_ms);
                out.push(info);
            }
        }
        Ok(out)
    }
}
