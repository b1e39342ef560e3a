//! Prometheus metrics of the API: requests by route, method and status, a latency histogram
//! by route, and accepted submissions by queue; with `--metrics-per-owner`, each key's queued
//! and started tasks. Served as OpenMetrics text on `/metrics`.
//!
//! Every label comes from a closed set, so no client can add series (each series lives as
//! long as the process): routes are labelled by their template (`/api/async/task/{task_id}`)
//! or `unmatched`, never by the raw path; methods are the seven this API could answer, any
//! other spelling is `other`; statuses are numbers; owners are the names in the key list.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::state::AppState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OwnerLabels {
    owner: String,
}

/// Each key's queued and started tasks (`--metrics-per-owner`).
struct OwnerGauges {
    queued: Family<OwnerLabels, Gauge>,
    started: Family<OwnerLabels, Gauge>,
}

type HistogramFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

/// The API's metrics and the registry that encodes them.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    redis_up: Gauge,
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: HistogramFamily,
    submissions: Family<QueueLabels, Counter>,
    submission_reserved_bytes: Gauge,
    queued_payload_bytes: Family<QueueLabels, Gauge>,
    owners: Option<OwnerGauges>,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms to ~16 s: a submit takes about a millisecond, a `?wait` up to a minute.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::build(false)
    }

    /// The metrics with the per-owner gauges as well (`--metrics-per-owner`).
    pub fn with_owner_gauges() -> Metrics {
        Metrics::build(true)
    }

    fn build(per_owner: bool) -> Metrics {
        let mut registry = Registry::with_prefix("ragpool_api");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency: HistogramFamily = Family::new_with_constructor(latency_histogram);
        let submissions = Family::<QueueLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by method, route template and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request (to the response head for streams)",
            latency.clone(),
        );
        registry.register(
            "submissions",
            "Tasks created through the API, by queue (idempotent replays not counted)",
            submissions.clone(),
        );
        let submission_reserved_bytes = Gauge::default();
        registry.register(
            "submission_reserved_bytes",
            "Bytes reserved now from the submission budget (twice each body being handled)",
            submission_reserved_bytes.clone(),
        );
        let queued_payload_bytes = Family::<QueueLabels, Gauge>::default();
        registry.register(
            "queued_payload_bytes",
            "Payload bytes of the queued tasks in Redis, by queue (read from Redis at each scrape)",
            queued_payload_bytes.clone(),
        );
        let redis_up = Gauge::default();
        registry.register(
            "redis_up",
            "1 when the last scrape read the queues from Redis, 0 when it could not",
            redis_up.clone(),
        );
        let owners = per_owner.then(|| {
            let gauges = OwnerGauges {
                queued: Family::default(),
                started: Family::default(),
            };
            registry.register(
                "owner_queued",
                "Queued tasks of each API key, by key name, over every queue (read from Redis at each scrape)",
                gauges.queued.clone(),
            );
            registry.register(
                "owner_started",
                "Started tasks of each API key, by key name, over every queue (read from Redis at each scrape)",
                gauges.started.clone(),
            );
            gauges
        });
        Metrics {
            inner: Arc::new(Inner {
                queued_payload_bytes,
                redis_up,
                registry,
                requests,
                latency,
                submissions,
                submission_reserved_bytes,
                owners,
            }),
        }
    }

    /// Records whether the last scrape could read Redis.
    pub fn redis_up(&self, up: bool) {
        self.inner.redis_up.set(i64::from(up));
    }

    /// True when the per-owner gauges are on.
    pub fn per_owner(&self) -> bool {
        self.inner.owners.is_some()
    }

    /// Records an owner's queued and started tasks as read from Redis. The caller passes
    /// only configured key names, so the series are bounded by the key list.
    pub fn owner_tasks(&self, owner: &str, queued: u64, started: u64) {
        let Some(gauges) = &self.inner.owners else {
            return;
        };
        let labels = OwnerLabels {
            owner: owner.to_string(),
        };
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        gauges.queued.get_or_create(&labels).set(n(queued));
        gauges.started.get_or_create(&labels).set(n(started));
    }

    /// The gauge of bytes reserved from the submission budget.
    pub fn submission_reserved_bytes(&self) -> Gauge {
        self.inner.submission_reserved_bytes.clone()
    }

    /// Records a queue's queued payload bytes as read from Redis.
    pub fn queued_payload_bytes(&self, queue: &str, bytes: u64) {
        self.inner
            .queued_payload_bytes
            .get_or_create(&QueueLabels {
                queue: queue.to_string(),
            })
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// Counts a task created on `queue`.
    pub fn submitted(&self, queue: &str) {
        self.inner
            .submissions
            .get_or_create(&QueueLabels {
                queue: queue.to_string(),
            })
            .inc();
    }

    fn observe(&self, method: &'static str, route: &str, status: u16, seconds: f64) {
        self.inner
            .requests
            .get_or_create(&RequestLabels {
                method: method.to_string(),
                route: route.to_string(),
                status: status.to_string(),
            })
            .inc();
        self.inner
            .latency
            .get_or_create(&RouteLabels {
                method: method.to_string(),
                route: route.to_string(),
            })
            .observe(seconds);
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.inner.registry)?;
        Ok(out)
    }
}

/// Route-level middleware: hands the matched route template out to [`track`], which runs
/// before routing and so cannot see it on the request.
pub async fn tag_route(request: Request, next: Next) -> Response {
    let matched = request.extensions().get::<MatchedPath>().cloned();
    let mut response = next.run(request).await;
    if let Some(matched) = matched {
        response.extensions_mut().insert(matched);
    }
    response
}

/// The method as a label: one of the standard methods a client could mean, else `other`.
/// HTTP lets a client invent any token as a method, so the raw one must never be a label.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Outer middleware recording every request, including unmatched ones.
pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let method = method_label(request.method());
    let started = Instant::now();
    let response = next.run(request).await;
    let route = response
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    state.metrics().observe(
        method,
        &route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_counters_and_histograms() {
        let m = Metrics::new();
        m.submitted("full_query");
        m.observe("POST", "/api/async/query", 202, 0.001);
        let text = m.encode().unwrap();
        assert!(
            text.contains("ragpool_api_submissions_total{queue=\"full_query\"} 1"),
            "{text}"
        );
        assert!(text.contains(
            "ragpool_api_http_requests_total{method=\"POST\",route=\"/api/async/query\",status=\"202\"} 1"
        ));
        assert!(text.contains("ragpool_api_http_request_duration_seconds_bucket"));
    }

    #[test]
    fn owner_gauges_only_when_asked_for() {
        let off = Metrics::new();
        off.owner_tasks("alice", 3, 1);
        assert!(!off.encode().unwrap().contains("owner"));
        let on = Metrics::with_owner_gauges();
        on.owner_tasks("alice", 3, 1);
        let text = on.encode().unwrap();
        assert!(
            text.contains("ragpool_api_owner_queued{owner=\"alice\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("ragpool_api_owner_started{owner=\"alice\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn invented_methods_share_one_label() {
        for (raw, label) in [
            ("GET", "GET"),
            ("OPTIONS", "OPTIONS"),
            ("get", "other"),
            ("CONNECT", "other"),
            ("TRACE", "other"),
            ("M00001XXXXXXXX", "other"),
        ] {
            let method = Method::from_bytes(raw.as_bytes()).unwrap();
            assert_eq!(method_label(&method), label, "{raw}");
        }
    }
}
