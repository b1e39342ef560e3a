//! Queue statistics: the known queues, their counts and their duration summaries.

use std::collections::BTreeSet;

use redis::Value;

use super::Broker;
use crate::decode;
use crate::error::{QueueError, Result};
use crate::keys::Partition;
use crate::scripts;
use crate::stats::{DurationSummary, OwnerStats, QueueStats};

impl Broker {
    /// Configured queues first (in configuration order), then any other queue that has seen
    /// tasks in this key prefix (in any partition).
    pub async fn queue_names(&self) -> Result<Vec<String>> {
        let reads = self.keys().partitions().iter().map(|part| async move {
            redis::cmd("SMEMBERS")
                .arg(part.queues())
                .query_async::<BTreeSet<String>>(&mut self.conn())
                .await
        });
        let known: BTreeSet<String> = futures::future::try_join_all(reads)
            .await?
            .into_iter()
            .flatten()
            .collect();
        let mut names: Vec<String> = self
            .inner
            .config
            .queues
            .iter()
            .map(|q| q.name.clone())
            .collect();
        names.extend(
            known
                .into_iter()
                .filter(|k| !self.inner.queues.contains_key(k)),
        );
        Ok(names)
    }

    /// Each owner's (API key's) queued and started tasks over every queue and partition,
    /// by owner name; owners with neither are left out. Tasks without an owner are not
    /// counted here.
    pub async fn owner_stats(&self) -> Result<Vec<OwnerStats>> {
        self.check_layout().await?;
        let reads = self.keys().partitions().iter().map(|part| async move {
            scripts::OWNERS
                .key(part.owners())
                .arg(part.prefix())
                .invoke_async::<Vec<(String, u64, u64, u64)>>(&mut self.conn())
                .await
        });
        let mut by_owner: std::collections::BTreeMap<String, OwnerStats> = Default::default();
        for (owner, queued, started, max) in futures::future::try_join_all(reads)
            .await?
            .into_iter()
            .flatten()
        {
            let entry = by_owner.entry(owner.clone()).or_insert_with(|| OwnerStats {
                owner,
                ..OwnerStats::default()
            });
            entry.queued += queued;
            entry.started += started;
            if max > 0 {
                entry.max_in_flight = Some(max);
            }
        }
        Ok(by_owner
            .into_values()
            .filter(|o| o.queued > 0 || o.started > 0)
            .collect())
    }

    /// One queue's statistics: one atomic snapshot per partition, the partitions read side
    /// by side and added up (durations from the samples of all of them).
    pub async fn queue_stats(&self, queue: &str) -> Result<QueueStats> {
        self.check_layout().await?;
        let reads = self
            .keys()
            .partitions()
            .iter()
            .map(|part| self.stats_in(part, queue));
        let mut out = QueueStats {
            queue: queue.to_string(),
            ..QueueStats::default()
        };
        let (mut processing, mut wait) = (Vec::new(), Vec::new());
        for (s, p, w) in futures::future::try_join_all(reads).await? {
            out.queued += s.queued;
            out.started += s.started;
            out.delayed += s.delayed;
            out.finished += s.finished;
            out.failed += s.failed;
            out.canceled += s.canceled;
            out.total_enqueued += s.total_enqueued;
            out.total_finished += s.total_finished;
            out.total_failed += s.total_failed;
            out.total_lease_expired += s.total_lease_expired;
            out.oldest_queued_age_ms = out.oldest_queued_age_ms.max(s.oldest_queued_age_ms);
            out.queued_payload_bytes += s.queued_payload_bytes;
            out.at_ms = out.at_ms.max(s.at_ms);
            processing.extend(p);
            wait.extend(w);
        }
        out.processing = summarize(&processing);
        out.wait = summarize(&wait);
        Ok(out)
    }

    /// One partition's snapshot of a queue: its counts, and its duration samples unsummarized.
    async fn stats_in(
        &self,
        keys: &Partition,
        queue: &str,
    ) -> Result<(QueueStats, Vec<String>, Vec<String>)> {
        let qk = keys.queue(queue);
        let reply: Value = scripts::STATS
            .key(&qk.ready)
            .key(&qk.started)
            .key(&qk.delayed)
            .key(&qk.finished)
            .key(&qk.failed)
            .key(&qk.canceled)
            .key(&qk.counters)
            .key(&qk.processing)
            .key(&qk.wait)
            .key(keys.queued_bytes())
            .arg(keys.prefix())
            .arg(queue)
            .invoke_async(&mut self.conn())
            .await?;
        let Value::Array(parts) = reply else {
            return Err(QueueError::Corrupt(format!("stats replied {reply:?}")));
        };
        let [
            now,
            queued,
            started,
            delayed,
            finished,
            failed,
            canceled,
            counters,
            processing,
            wait,
            oldest,
            queued_payload_bytes,
        ] = parts.as_slice()
        else {
            return Err(QueueError::Corrupt(
                "stats reply has the wrong length".into(),
            ));
        };
        let counters = decode::pairs(counters)?;
        let counter = |name: &str| counters.get(name).and_then(|v| v.parse().ok()).unwrap_or(0);
        let now = decode::int(now)?.max(0) as u64;
        let oldest = decode::int(oldest)?;
        let stats = QueueStats {
            queue: queue.to_string(),
            queued: decode::int(queued)?.max(0) as u64,
            started: decode::int(started)?.max(0) as u64,
            delayed: decode::int(delayed)?.max(0) as u64,
            finished: decode::int(finished)?.max(0) as u64,
            failed: decode::int(failed)?.max(0) as u64,
            canceled: decode::int(canceled)?.max(0) as u64,
            total_enqueued: counter("enqueued"),
            total_finished: counter("finished"),
            total_failed: counter("failed"),
            total_lease_expired: counter("lease_expired"),
            processing: DurationSummary::default(),
            wait: DurationSummary::default(),
            oldest_queued_age_ms: if oldest < 0 {
                0
            } else {
                now.saturating_sub(oldest as u64)
            },
            at_ms: now,
            queued_payload_bytes: decode::int(queued_payload_bytes)?.max(0) as u64,
        };
        Ok((stats, decode::list(processing)?, decode::list(wait)?))
    }

    /// Statistics of every known queue.
    pub async fn stats(&self) -> Result<Vec<QueueStats>> {
        let names = self.queue_names().await?;
        futures::future::try_join_all(names.iter().map(|queue| self.queue_stats(queue))).await
    }
}

/// Mean and percentiles of duration samples (nearest-rank).
fn summarize(samples: &[String]) -> DurationSummary {
    let mut values: Vec<f64> = samples.iter().filter_map(|s| s.parse().ok()).collect();
    if values.is_empty() {
        return DurationSummary::default();
    }
    values.sort_by(f64::total_cmp);
    let rank = |p: f64| {
        let i = ((p * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1;
        values[i]
    };
    DurationSummary {
        samples: values.len() as u64,
        mean_ms: values.iter().sum::<f64>() / values.len() as f64,
        p50_ms: rank(0.50),
        p95_ms: rank(0.95),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_uses_nearest_rank() {
        let samples: Vec<String> = (1..=100).map(|v| v.to_string()).collect();
        let s = summarize(&samples);
        assert_eq!(s.samples, 100);
        assert_eq!(s.p50_ms, 50.0);
        assert_eq!(s.p95_ms, 95.0);
        assert!((s.mean_ms - 50.5).abs() < 1e-9);
        assert_eq!(summarize(&[]), DurationSummary::default());
    }
}
