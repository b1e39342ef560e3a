//! Prometheus metrics of the operator: reconciles, errors, reconcile durations, and per pool
//! (labels `namespace`, `pool`) what the operator saw and chose: the queue figures, the
//! policy's raw recommendation, the desired and current replicas, and its decisions by the
//! step that settled them (label `reason`, the closed set [`Cause`]). `docs/operator.md`
//! lists them.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::policy::Cause;

/// Identifies a pool in metric labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub namespace: String,
    pub pool: String,
}

/// A pool and the kind of error a reconcile of it hit.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub namespace: String,
    pub pool: String,
    pub error: String,
}

/// A pool and the policy step that settled one of its decisions.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub namespace: String,
    pub pool: String,
    /// [`Cause::label`].
    pub reason: &'static str,
}

/// A gauge of fractional values (rates, seconds, recommendations).
pub type FloatGauge = Gauge<f64, AtomicU64>;

/// The operator's metrics and the registry that exports them.
pub struct Metrics {
    registry: Registry,
    pub reconciles: Family<PoolLabels, Counter>,
    pub errors: Family<ErrorLabels, Counter>,
    pub reconcile_seconds: Histogram,
    pub desired_replicas: Family<PoolLabels, Gauge>,
    pub queued: Family<PoolLabels, Gauge>,
    pub started: Family<PoolLabels, Gauge>,
    pub oldest_queued_age_seconds: Family<PoolLabels, FloatGauge>,
    pub scale_events: Family<PoolLabels, Counter>,
    pub current_replicas: Family<PoolLabels, Gauge>,
    pub raw_recommendation: Family<PoolLabels, FloatGauge>,
    pub arrival_rate: Family<PoolLabels, FloatGauge>,
    pub mean_processing_seconds: Family<PoolLabels, FloatGauge>,
    pub max_replicas: Family<PoolLabels, Gauge>,
    pub ready_replicas: Family<PoolLabels, Gauge>,
    pub redis_reachable: Family<PoolLabels, Gauge>,
    pub target_wait_seconds: Family<PoolLabels, FloatGauge>,
    pub decisions: Family<DecisionLabels, Counter>,
    pub backend_limit: Family<PoolLabels, Gauge>,
    pub backend_permits_in_use: Family<PoolLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ragpool_operator");
        let reconciles = Family::<PoolLabels, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let reconcile_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        let desired_replicas = Family::<PoolLabels, Gauge>::default();
        let queued = Family::<PoolLabels, Gauge>::default();
        let started = Family::<PoolLabels, Gauge>::default();
        let oldest = Family::<PoolLabels, FloatGauge>::default();
        let scale_events = Family::<PoolLabels, Counter>::default();
        let current_replicas = Family::<PoolLabels, Gauge>::default();
        let raw_recommendation = Family::<PoolLabels, FloatGauge>::default();
        let arrival_rate = Family::<PoolLabels, FloatGauge>::default();
        let mean_processing_seconds = Family::<PoolLabels, FloatGauge>::default();
        let max_replicas = Family::<PoolLabels, Gauge>::default();
        let ready_replicas = Family::<PoolLabels, Gauge>::default();
        let redis_reachable = Family::<PoolLabels, Gauge>::default();
        let target_wait_seconds = Family::<PoolLabels, FloatGauge>::default();
        let decisions = Family::<DecisionLabels, Counter>::default();
        let backend_limit = Family::<PoolLabels, Gauge>::default();
        let backend_permits_in_use = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "backend_limit",
            "The concurrency limit on a pool's backend calls in force (the adaptive limit under adaptive)",
            backend_limit.clone(),
        );
        registry.register(
            "backend_permits_in_use",
            "Backend calls running across a pool's limit key",
            backend_permits_in_use.clone(),
        );
        registry.register("reconciles", "Reconciles of a pool", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Failed reconciles of a pool, by error",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile took",
            reconcile_seconds.clone(),
        );
        registry.register(
            "desired_replicas",
            "Replicas the scaling policy wants for a pool",
            desired_replicas.clone(),
        );
        registry.register(
            "queue_depth",
            "Tasks queued in a pool's queues",
            queued.clone(),
        );
        registry.register(
            "started",
            "Tasks started (claimed and running) in a pool's queues",
            started.clone(),
        );
        registry.register(
            "oldest_queued_age_seconds",
            "Age of the oldest queued task of a pool",
            oldest.clone(),
        );
        registry.register(
            "scale_events",
            "Replica changes made for a pool",
            scale_events.clone(),
        );
        registry.register(
            "current_replicas",
            "Replicas of a pool's executor Deployment after the last pass",
            current_replicas.clone(),
        );
        registry.register(
            "raw_recommended_replicas",
            "Replicas' worth of work in a pool, before tolerance, bounds, windows and step limits",
            raw_recommendation.clone(),
        );
        registry.register(
            "arrival_rate",
            "Tasks per second arriving in a pool's queues (over the last 30 s)",
            arrival_rate.clone(),
        );
        registry.register(
            "mean_processing_seconds",
            "Mean claim-to-completion time of a pool's tasks",
            mean_processing_seconds.clone(),
        );
        registry.register("max_replicas", "A pool's maxReplicas", max_replicas.clone());
        registry.register(
            "ready_replicas",
            "Ready replicas of a pool's executor Deployment",
            ready_replicas.clone(),
        );
        registry.register(
            "redis_reachable",
            "1 when the last pass read a pool's queues from Redis, 0 when it could not",
            redis_reachable.clone(),
        );
        registry.register(
            "target_wait_seconds",
            "A pool's targetWaitSeconds: how long a task should wait at most",
            target_wait_seconds.clone(),
        );
        registry.register(
            "decisions",
            "Scaling decisions for a pool, by the policy step that settled the count",
            decisions.clone(),
        );
        Self {
            registry,
            backend_limit,
            backend_permits_in_use,
            current_replicas,
            raw_recommendation,
            arrival_rate,
            mean_processing_seconds,
            max_replicas,
            ready_replicas,
            redis_reachable,
            target_wait_seconds,
            decisions,
            reconciles,
            errors,
            reconcile_seconds,
            desired_replicas,
            queued,
            started,
            oldest_queued_age_seconds: oldest,
            scale_events,
        }
    }
}

impl Metrics {
    /// Counts one decision for `pool`, settled by `cause`. Every reason of the pool exists
    /// from its first decision on, so a rate over any of them starts at zero, not at absent.
    pub fn count_decision(&self, pool: &PoolLabels, cause: Cause) {
        for c in Cause::ALL {
            let counter = self.decisions.get_or_create(&DecisionLabels {
                namespace: pool.namespace.clone(),
                pool: pool.pool.clone(),
                reason: c.label(),
            });
            if c == cause {
                counter.inc();
            }
        }
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_per_pool_series() {
        let m = Metrics::default();
        let pool = PoolLabels {
            namespace: "ns".into(),
            pool: "p".into(),
        };
        m.reconciles.get_or_create(&pool).inc();
        m.desired_replicas.get_or_create(&pool).set(4);
        m.queued.get_or_create(&pool).set(17);
        let text = m.encode().unwrap_or_default();
        assert!(
            text.contains(r#"ragpool_operator_reconciles_total{namespace="ns",pool="p"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"ragpool_operator_desired_replicas{namespace="ns",pool="p"} 4"#),
            "{text}"
        );
        assert!(
            text.contains(r#"ragpool_operator_queue_depth{namespace="ns",pool="p"} 17"#),
            "{text}"
        );
        assert!(
            text.contains("ragpool_operator_reconcile_duration_seconds_bucket"),
            "{text}"
        );
        m.count_decision(&pool, Cause::ScaleDownWindow);
        let text = m.encode().unwrap_or_default();
        assert!(
            text.contains(r#"ragpool_operator_decisions_total{namespace="ns",pool="p",reason="scale_down_window"} 1"#),
            "{text}"
        );
        let zeros = text
            .lines()
            .filter(|l| l.starts_with("ragpool_operator_decisions_total{") && l.ends_with("} 0"))
            .count();
        assert_eq!(zeros, Cause::ALL.len() - 1, "{text}");
    }
}
