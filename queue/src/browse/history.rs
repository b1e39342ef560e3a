//! The dashboard's chart history: one sample per minute and queue in Redis, written by
//! whichever reader comes first.

use std::collections::BTreeMap;

use redis::Value;
use serde::Serialize;

use crate::broker::Broker;
use crate::decode;
use crate::error::Result;
use crate::scripts;

/// One minute's sample of a queue's running totals and wait times.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Default)]
pub struct HistorySample {
    /// The minute (since the epoch) the sample belongs to.
    pub minute: u64,
    /// When it was taken, milliseconds since the epoch (Redis server clock).
    pub at_ms: u64,
    pub enqueued: u64,
    pub finished: u64,
    pub failed: u64,
    pub wait_p50_ms: f64,
    pub wait_p95_ms: f64,
    pub processing_p50_ms: f64,
}

impl HistorySample {
    fn encode(&self) -> String {
        format!(
            "{} {} {} {} {} {} {}",
            self.at_ms,
            self.enqueued,
            self.finished,
            self.failed,
            self.wait_p50_ms,
            self.wait_p95_ms,
            self.processing_p50_ms
        )
    }

    fn decode(minute: &str, value: &str) -> Option<HistorySample> {
        let mut parts = value.split(' ');
        let mut next = || parts.next();
        Some(HistorySample {
            minute: minute.parse().ok()?,
            at_ms: next()?.parse().ok()?,
            enqueued: next()?.parse().ok()?,
            finished: next()?.parse().ok()?,
            failed: next()?.parse().ok()?,
            wait_p50_ms: next()?.parse().ok()?,
            wait_p95_ms: next()?.parse().ok()?,
            processing_p50_ms: next()?.parse().ok()?,
        })
    }
}

/// How many minutes of history are kept.
pub const HISTORY_MINUTES: u64 = 61;

impl Broker {
    /// Stores `sample` as its minute's entry unless another reader stored one first, drops
    /// entries older than [`HISTORY_MINUTES`], and returns what is kept, oldest first.
    pub async fn record_history(
        &self,
        queue: &str,
        sample: &HistorySample,
    ) -> Result<Vec<HistorySample>> {
        let reply: Value = scripts::HISTORY
            .key(history_key(self, queue))
            .arg(sample.minute)
            .arg(sample.encode())
            .arg(HISTORY_MINUTES)
            .invoke_async(&mut self.conn())
            .await?;
        let kept: BTreeMap<u64, HistorySample> = decode::pairs(&reply)?
            .iter()
            .filter_map(|(minute, value)| HistorySample::decode(minute, value))
            .map(|s| (s.minute, s))
            .collect();
        Ok(kept.into_values().collect())
    }

    /// The Redis server's clock, milliseconds since the epoch.
    pub async fn server_time_ms(&self) -> Result<u64> {
        let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut self.conn()).await?;
        Ok(secs * 1000 + micros / 1000)
    }
}

/// `{prefix}:q:<queue>:history`: HASH minute → sample (see `history.lua`).
fn history_key(broker: &Broker, queue: &str) -> String {
    broker.keys().history(queue)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_samples_round_trip() {
        let s = HistorySample {
            minute: 28_000_000,
            at_ms: 1_680_000_001_234,
            enqueued: 10,
            finished: 8,
            failed: 1,
            wait_p50_ms: 12.5,
            wait_p95_ms: 40.0,
            processing_p50_ms: 300.0,
        };
        assert_eq!(
            HistorySample::decode("28000000", &s.encode()),
            Some(s),
            "{}",
            s.encode()
        );
        assert_eq!(HistorySample::decode("1", "garbage"), None);
    }
}
