//! What the operator sees of a pool's queues at one moment, and the [`Observer`] that looks.
//!
//! An [`Observation`] is built by [`Observation::from_stats`], a pure function over the
//! queue statistics and worker registry records that `ragpool_queue::Broker` returns. The
//! Redis-backed observer is therefore thin: resolve the pool's URL ([`crate::redis_url`]),
//! connect (once per URL), call `stats()` and `workers()`, and hand both to `from_stats`.
//! Tests use a fake [`Observer`].

use std::collections::BTreeSet;

use async_trait::async_trait;
use ragpool_queue::{LimitState, QueueStats, WorkerInfo};

use crate::crd::{BackendLimitsSpec, RagWorkerPool};

/// The counts and timings of a pool's queues, and the load of the executors serving them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Observation {
    /// Tasks waiting to be claimed, summed over the pool's queues.
    pub queued: u64,
    /// Tasks started (claimed and running), summed over the pool's queues: a pool-wide
    /// count, not one executor's `in_flight`.
    pub started: u64,
    /// Tasks waiting out a retry backoff; they come back, so they keep a pool from idling.
    pub delayed: u64,
    /// Age of the oldest queued task across the pool's queues, in milliseconds.
    pub oldest_queued_age_ms: u64,
    /// Tasks ever enqueued on the pool's queues; two observations give the arrival rate.
    pub total_enqueued: u64,
    /// Redis server time of the snapshot, milliseconds since the epoch. Every time the policy
    /// compares comes from this one clock.
    pub at_ms: u64,
    /// Mean claim-to-completion time over the recent window, in milliseconds, weighted by
    /// each queue's sample count; `None` before any task finished.
    pub mean_processing_ms: Option<f64>,
    /// Executors registered for any of the pool's queues, as their registry records.
    pub workers: Vec<WorkerInfo>,
    /// The pool-wide limits on backend calls, when the pool has any.
    pub backend: Option<BackendObservation>,
}

/// A pool's limits on backend calls as read from Redis.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BackendObservation {
    /// The limit key the pool's executors share.
    pub key: String,
    /// The concurrency limit in force: `maxConcurrent`, or the adaptive limit (kept between
    /// `min` and `maxConcurrent`) once the executors have computed one. `None` without a
    /// concurrency limit.
    pub limit: Option<u32>,
    /// Calls running now across every executor of the key.
    pub in_use: u32,
    /// How long calls are still paused for, in milliseconds.
    pub paused_ms: u64,
    /// `maxConcurrent` while an adaptive limit is still rising from its floor (slow start,
    /// never cut): the limit it will reach unless the server pushes back, which the replica
    /// ceiling uses so the pool does not hold back the search for the server's capacity.
    pub probing_up_to: Option<u32>,
}

impl BackendObservation {
    /// The observation of limit key `key` configured as `spec`, from its Redis state.
    pub fn new(key: &str, spec: &BackendLimitsSpec, state: &LimitState) -> Self {
        let limit = spec.max_concurrent().map(|max| match spec.adaptive_min() {
            Some(min) => state.adaptive_limit.map_or(min.min(max), |l| {
                (l.floor().max(0.0) as u32).clamp(min.min(max), max)
            }),
            None => max,
        });
        BackendObservation {
            key: key.to_owned(),
            limit,
            in_use: state.in_use,
            paused_ms: u64::try_from(state.paused_for.as_millis()).unwrap_or(u64::MAX),
            probing_up_to: spec
                .max_concurrent()
                .filter(|_| spec.adaptive_min().is_some() && state.probing),
        }
    }

    /// The most replicas the concurrency limit keeps busy with `concurrency` slots each:
    /// `ceil(limit / concurrency)` plus one pod of headroom (a pod starting or draining);
    /// the ceiling of an adaptive limit in slow start is that of `maxConcurrent`.
    pub fn replica_ceiling(&self, concurrency: i32) -> Option<i32> {
        let per_pod = u32::try_from(concurrency.max(1)).unwrap_or(1);
        self.probing_up_to
            .or(self.limit)
            .map(|l| i32::try_from(l.div_ceil(per_pod) + 1).unwrap_or(i32::MAX))
    }
}

/// A point on the enqueued-tasks counter, for measuring the arrival rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArrivalSample {
    /// Tasks ever enqueued.
    pub total_enqueued: u64,
    /// When the counter was read, milliseconds since the epoch.
    pub at_ms: u64,
}

impl Observation {
    /// Sums the statistics of `queues` (a queue missing from `stats` has never been used and
    /// counts as empty) and keeps the workers that serve at least one of them.
    pub fn from_stats(stats: &[QueueStats], workers: &[WorkerInfo], queues: &[String]) -> Self {
        let mine: Vec<&QueueStats> = stats.iter().filter(|s| queues.contains(&s.queue)).collect();
        let samples: u64 = mine.iter().map(|s| s.processing.samples).sum();
        let mean_processing_ms = (samples > 0).then(|| {
            mine.iter()
                .map(|s| s.processing.mean_ms * s.processing.samples as f64)
                .sum::<f64>()
                / samples as f64
        });
        let workers = workers
            .iter()
            .filter(|w| w.queues.iter().any(|q| queues.contains(q)))
            .cloned()
            .collect();
        Self {
            queued: mine.iter().map(|s| s.queued).sum(),
            started: mine.iter().map(|s| s.started).sum(),
            delayed: mine.iter().map(|s| s.delayed).sum(),
            oldest_queued_age_ms: mine
                .iter()
                .map(|s| s.oldest_queued_age_ms)
                .max()
                .unwrap_or(0),
            total_enqueued: mine.iter().map(|s| s.total_enqueued).sum(),
            at_ms: mine.iter().map(|s| s.at_ms).max().unwrap_or(0),
            mean_processing_ms,
            workers,
            backend: None,
        }
    }

    /// Anything queued, delayed or running.
    pub fn has_work(&self) -> bool {
        self.queued > 0 || self.started > 0 || self.delayed > 0
    }

    /// The point on the enqueued-tasks counter this observation saw.
    pub fn arrival_sample(&self) -> ArrivalSample {
        ArrivalSample {
            total_enqueued: self.total_enqueued,
            at_ms: self.at_ms,
        }
    }

    /// Executors registered and not draining: the pods that have started and claim tasks.
    pub fn live_workers(&self) -> usize {
        self.workers.iter().filter(|w| !w.draining).count()
    }

    /// Pods whose executor runs at least one task.
    pub fn busy_pods(&self) -> BTreeSet<String> {
        self.workers
            .iter()
            .filter(|w| w.in_flight > 0)
            .filter_map(|w| w.pod.clone())
            .collect()
    }
}

/// Tasks per second arriving between two samples; `None` when the samples do not span time
/// or the counter went backwards (the queue's keys were reset).
pub fn arrival_rate(previous: ArrivalSample, current: ArrivalSample) -> Option<f64> {
    if current.at_ms <= previous.at_ms || current.total_enqueued < previous.total_enqueued {
        return None;
    }
    let tasks = (current.total_enqueued - previous.total_enqueued) as f64;
    Some(tasks * 1000.0 / (current.at_ms - previous.at_ms) as f64)
}

/// Why an observation could not be made. Either way the operator keeps the pool's replicas.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ObserveError {
    /// Redis did not answer (connection refused, timeout, auth failure).
    #[error("Redis unreachable: {0}")]
    Unreachable(String),
    /// The pool's Redis settings could not be turned into a connection (a missing Secret or
    /// key, a malformed URL).
    #[error("Redis settings unusable: {0}")]
    Config(String),
}

impl ObserveError {
    /// The condition/event reason for this error.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Unreachable(_) => "RedisUnreachable",
            Self::Config(_) => "RedisConfigInvalid",
        }
    }
}

/// Looks at a pool's queues. Implementations must be cheap to call every `pollSeconds`.
#[async_trait]
pub trait Observer: Send + Sync {
    /// Reads the pool's queue statistics and worker registry.
    async fn observe(&self, pool: &RagWorkerPool) -> Result<Observation, ObserveError>;
}

#[cfg(test)]
mod tests {
    use ragpool_queue::DurationSummary;

    use super::*;

    fn stats(queue: &str, queued: u64, started: u64) -> QueueStats {
        QueueStats {
            queue: queue.into(),
            queued,
            started,
            ..QueueStats::default()
        }
    }

    fn worker(id: &str, pod: Option<&str>, queues: &[&str], in_flight: u32) -> WorkerInfo {
        WorkerInfo {
            id: id.into(),
            host: "h".into(),
            pod: pod.map(Into::into),
            queues: queues.iter().map(|q| q.to_string()).collect(),
            concurrency: 4,
            in_flight,
            ..WorkerInfo::default()
        }
    }

    #[test]
    fn sums_only_the_pools_queues() {
        let mut a = stats("image_analysis", 3, 2);
        a.delayed = 1;
        a.oldest_queued_age_ms = 900;
        a.total_enqueued = 100;
        a.at_ms = 5_000;
        a.processing = DurationSummary {
            samples: 10,
            mean_ms: 1000.0,
            ..DurationSummary::default()
        };
        let mut b = stats("answer_generation", 4, 1);
        b.oldest_queued_age_ms = 2_500;
        b.total_enqueued = 50;
        b.at_ms = 5_001;
        b.processing = DurationSummary {
            samples: 30,
            mean_ms: 3000.0,
            ..DurationSummary::default()
        };
        let other = stats("full_query", 1000, 1000);
        let queues = vec![
            "image_analysis".to_string(),
            "answer_generation".to_string(),
        ];
        let obs = Observation::from_stats(&[a, b, other], &[], &queues);
        assert_eq!(obs.queued, 7);
        assert_eq!(obs.started, 3);
        assert_eq!(obs.delayed, 1);
        assert_eq!(obs.oldest_queued_age_ms, 2_500);
        assert_eq!(obs.total_enqueued, 150);
        assert_eq!(obs.at_ms, 5_001);
        // (10 × 1000 + 30 × 3000) / 40
        assert_eq!(obs.mean_processing_ms, Some(2500.0));
        assert!(obs.has_work());
    }

    #[test]
    fn unused_queues_count_as_empty_and_no_samples_mean_unknown_processing_time() {
        let obs = Observation::from_stats(&[], &[], &["image_analysis".to_string()]);
        assert_eq!(obs, Observation::default());
        assert!(!obs.has_work());
        assert_eq!(obs.mean_processing_ms, None);
    }

    #[test]
    fn keeps_workers_serving_any_pool_queue_and_lists_busy_pods() {
        let workers = [
            worker("w1", Some("pool-a-1"), &["image_analysis"], 2),
            worker("w2", Some("pool-a-2"), &["image_analysis", "full_query"], 0),
            worker("w3", Some("other-1"), &["full_query"], 3),
            worker("w4", None, &["image_analysis"], 1),
        ];
        let obs = Observation::from_stats(&[], &workers, &["image_analysis".to_string()]);
        let ids: Vec<&str> = obs.workers.iter().map(|w| w.id.as_str()).collect();
        assert_eq!(ids, ["w1", "w2", "w4"]);
        assert_eq!(obs.workers[0].pod.as_deref(), Some("pool-a-1"));
        assert_eq!(obs.workers[0].in_flight, 2);
        assert_eq!(
            obs.busy_pods().into_iter().collect::<Vec<_>>(),
            ["pool-a-1"]
        );
    }

    #[test]
    fn arrival_rate_between_samples() {
        let at = |total_enqueued, at_ms| ArrivalSample {
            total_enqueued,
            at_ms,
        };
        assert_eq!(arrival_rate(at(10, 1_000), at(30, 3_000)), Some(10.0));
        assert_eq!(arrival_rate(at(10, 1_000), at(10, 3_000)), Some(0.0));
        assert_eq!(arrival_rate(at(10, 3_000), at(30, 3_000)), None);
        assert_eq!(arrival_rate(at(50, 1_000), at(30, 3_000)), None);
    }

    #[test]
    fn an_adaptive_limit_in_slow_start_caps_the_pool_at_its_ceiling() {
        let spec = crate::crd::BackendLimitsSpec {
            max_concurrent: Some(32),
            adaptive: true,
            min: Some(2),
            ..Default::default()
        };
        let state = |limit: Option<f64>, probing: bool| LimitState {
            adaptive_limit: limit,
            probing,
            ..LimitState::default()
        };
        // Nothing computed yet: the floor is in force, the pool may grow to what 32 keep busy.
        let fresh = BackendObservation::new("k", &spec, &state(None, true));
        assert_eq!((fresh.limit, fresh.replica_ceiling(4)), (Some(2), Some(9)));
        // Rising: the limit in force is shown, the ceiling is still the one of 32.
        let rising = BackendObservation::new("k", &spec, &state(Some(7.5), true));
        assert_eq!(
            (rising.limit, rising.replica_ceiling(4)),
            (Some(7), Some(9))
        );
        // Cut once: the limit found is the ceiling's.
        let found = BackendObservation::new("k", &spec, &state(Some(12.0), false));
        assert_eq!((found.limit, found.replica_ceiling(4)), (Some(12), Some(4)));
        // A fixed limit is never probing.
        let fixed = crate::crd::BackendLimitsSpec {
            max_concurrent: Some(16),
            ..Default::default()
        };
        let f = BackendObservation::new("k", &fixed, &state(None, true));
        assert_eq!((f.limit, f.replica_ceiling(4)), (Some(16), Some(5)));
    }
}
