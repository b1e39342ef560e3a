//! Prometheus metrics of the job loop.
//!
//! Every label comes from a closed set written in the code (task kinds, outcome names), so
//! nothing a task carries can add series.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use ragpool_queue::TaskKind;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    kind: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kind {
    kind: String,
}

/// The executor's metrics and the registry that renders them.
pub struct Metrics {
    registry: Registry,
    tasks: Family<Outcome, Counter>,
    durations: Family<Kind, Histogram>,
    pub(crate) in_flight: Gauge,
    pub(crate) claim_latency: Histogram,
    backend_permit_wait: Histogram,
    backend_limit: Gauge,
    backend_permits_in_use: Gauge,
    backend_pauses: Counter,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ragpool_executor");
        let tasks = Family::<Outcome, Counter>::default();
        let durations = Family::<Kind, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.01, 2.0, 18))
        });
        let in_flight = Gauge::default();
        let claim_latency = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        registry.register(
            "tasks",
            "Tasks run, by kind and outcome (finished, failed, retried, timeout, canceled, released, lease_lost, unreported)",
            tasks.clone(),
        );
        registry.register(
            "task_duration_seconds",
            "Time from claim to outcome, by kind",
            durations.clone(),
        );
        registry.register("in_flight", "Tasks running now", in_flight.clone());
        registry.register(
            "claim_latency_seconds",
            "Round trip of the claim call that took each task (one sample per task claimed)",
            claim_latency.clone(),
        );
        let backend_permit_wait = Histogram::new(exponential_buckets(0.001, 2.0, 18));
        let backend_limit = Gauge::default();
        let backend_permits_in_use = Gauge::default();
        let backend_pauses = Counter::default();
        registry.register(
            "backend_permit_wait_seconds",
            "Time a call to the backend's server waited for a pool-wide permit",
            backend_permit_wait.clone(),
        );
        registry.register(
            "backend_limit",
            "The pool-wide concurrency limit on calls to the backend's server, as last seen (0: none)",
            backend_limit.clone(),
        );
        registry.register(
            "backend_permits_in_use",
            "Calls to the backend's server running across the pool, as last seen",
            backend_permits_in_use.clone(),
        );
        registry.register(
            "backend_pauses",
            "Times this executor paused the pool's calls on the server's Retry-After",
            backend_pauses.clone(),
        );
        Metrics {
            registry,
            tasks,
            durations,
            in_flight,
            claim_latency,
            backend_permit_wait,
            backend_limit,
            backend_permits_in_use,
            backend_pauses,
        }
    }

    /// A permit granted after `waited`, under `limit` with `in_use` held.
    pub(crate) fn backend_granted(&self, waited: Duration, limit: u32, in_use: u32) {
        self.backend_permit_wait.observe(waited.as_secs_f64());
        self.backend_limit.set(i64::from(limit));
        self.backend_permits_in_use.set(i64::from(in_use));
    }

    /// A permit given back; `paused` when the call paused the pool.
    pub(crate) fn backend_released(&self, limit: u32, in_use: u32, paused: bool) {
        self.backend_limit.set(i64::from(limit));
        self.backend_permits_in_use.set(i64::from(in_use));
        if paused {
            self.backend_pauses.inc();
        }
    }

    /// Counts a task of `kind` that ended with `outcome` after `took` since its claim.
    pub fn record(&self, kind: TaskKind, outcome: &'static str, took: Duration) {
        self.tasks
            .get_or_create(&Outcome {
                kind: kind.as_str().into(),
                outcome: outcome.into(),
            })
            .inc();
        self.durations
            .get_or_create(&Kind {
                kind: kind.as_str().into(),
            })
            .observe(took.as_secs_f64());
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
