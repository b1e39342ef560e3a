//! The chart's alerts (`charts/ragpool/files/alerts.yaml`) and Grafana dashboard
//! (`charts/ragpool/files/grafana-dashboard.json`) use only metrics the components export:
//! the API's from a real `/metrics` scrape, the executor's and the operator's from the
//! registries their `/metrics` endpoints serve.

mod support;

use std::collections::BTreeSet;
use std::path::Path;

use support::Stack;

/// Every sample name an exposition can hold, from its `# TYPE` lines: a counter's `_total`, a
/// histogram's `_bucket`, `_sum` and `_count`.
fn exported(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        match kind {
            "counter" => {
                names.insert(format!("{name}_total"));
            }
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            _ => {
                names.insert(name.to_string());
            }
        }
    }
    names
}

/// The `ragpool_…` metric names a rules file or dashboard mentions.
fn used(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("ragpool_") {
        let word: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        // Runbook anchors and dashboard ids are not metric names.
        let before = rest[..at].chars().last();
        if !matches!(before, Some('#' | '-' | '/')) {
            names.insert(word.trim_end_matches('_').to_string());
        }
        rest = &rest[at + word.len().max(1)..];
    }
    names
}

fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_and_dashboard_use_only_exported_metrics() {
    // A series appears once it has a value: a submission, then two scrapes.
    let stack = Stack::start(None, false).await;
    let client = reqwest::Client::new();
    let submitted = client
        .post(format!("{}/api/async/query", stack.url))
        .json(&serde_json::json!({"question": "q"}))
        .send()
        .await
        .expect("submission");
    assert_eq!(submitted.status(), 202);
    let mut api = String::new();
    for _ in 0..2 {
        api = reqwest::get(format!("{}/metrics", stack.url))
            .await
            .expect("scrape")
            .text()
            .await
            .expect("body");
    }
    stack.shutdown().await;
    let mut names = exported(&api);

    let executor = ragpool_executor::metrics::Metrics::new();
    executor.record(
        ragpool_queue::TaskKind::FullQuery,
        "finished",
        std::time::Duration::from_millis(5),
    );
    names.extend(exported(&executor.render()));

    let operator = ragpool_operator::metrics::Metrics::default();
    let pool = ragpool_operator::metrics::PoolLabels {
        namespace: "rag".into(),
        pool: "default".into(),
    };
    operator.reconciles.get_or_create(&pool).inc();
    operator
        .errors
        .get_or_create(&ragpool_operator::metrics::ErrorLabels {
            namespace: "rag".into(),
            pool: "default".into(),
            error: "kube".into(),
        })
        .inc();
    operator.reconcile_seconds.observe(0.01);
    for gauge in [
        &operator.desired_replicas,
        &operator.queued,
        &operator.started,
        &operator.current_replicas,
        &operator.max_replicas,
        &operator.ready_replicas,
        &operator.redis_reachable,
    ] {
        gauge.get_or_create(&pool).set(1);
    }
    for gauge in [
        &operator.oldest_queued_age_seconds,
        &operator.raw_recommendation,
        &operator.arrival_rate,
        &operator.mean_processing_seconds,
        &operator.target_wait_seconds,
    ] {
        gauge.get_or_create(&pool).set(1.0);
    }
    operator.scale_events.get_or_create(&pool).inc();
    operator.count_decision(&pool, ragpool_operator::policy::Cause::Load);
    names.extend(exported(
        &operator.encode().expect("operator metrics encode"),
    ));
    for must in [
        "ragpool_api_http_requests_total",
        "ragpool_api_redis_up",
        "ragpool_executor_tasks_total",
        "ragpool_operator_queue_depth",
    ] {
        assert!(names.contains(must), "{must} not exported: {names:?}");
    }

    for file in [
        "charts/ragpool/files/alerts.yaml",
        "charts/ragpool/files/grafana-dashboard.json",
    ] {
        let wanted = used(&read(file));
        assert!(wanted.len() >= 8, "{file} names only {wanted:?}");
        let missing: Vec<&String> = wanted.difference(&names).collect();
        assert!(
            missing.is_empty(),
            "{file} uses metrics nobody exports: {missing:?}"
        );
    }
}

#[test]
fn a_misspelled_metric_is_caught() {
    let names = exported("# TYPE ragpool_api_http_requests counter\n");
    let wanted = used("rate(ragpool_api_http_request_total[5m])");
    assert!(!wanted.is_subset(&names), "{wanted:?} vs {names:?}");
}
