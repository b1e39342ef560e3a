//! Prometheus metrics of the operator: reconciles, errors, reconcile durations, and per pool
//! the desired replicas and queue depth.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

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

/// The operator's metrics and the registry that exports them.
pub struct Metrics {
    registry: Registry,
    pub reconciles: Family<PoolLabels, Counter>,
    pub errors: Family<ErrorLabels, Counter>,
    pub reconcile_seconds: Histogram,
    pub desired_replicas: Family<PoolLabels, Gauge>,
    pub queued: Family<PoolLabels, Gauge>,
    pub in_flight: Family<PoolLabels, Gauge>,
    pub oldest_queued_age_seconds: Family<PoolLabels, Gauge<f64, AtomicU64>>,
    pub scale_events: Family<PoolLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ragpool_operator");
        let reconciles = Family::<PoolLabels, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let reconcile_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        let desired_replicas = Family::<PoolLabels, Gauge>::default();
        let queued = Family::<PoolLabels, Gauge>::default();
        let in_flight = Family::<PoolLabels, Gauge>::default();
        let oldest = Family::<PoolLabels, Gauge<f64, AtomicU64>>::default();
        let scale_events = Family::<PoolLabels, Counter>::default();
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
            "in_flight",
            "Tasks running in a pool's executors",
            in_flight.clone(),
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
        Self {
            registry,
            reconciles,
            errors,
            reconcile_seconds,
            desired_replicas,
            queued,
            in_flight,
            oldest_queued_age_seconds: oldest,
            scale_events,
        }
    }
}

impl Metrics {
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
    }
}
