//! The executor's settings as flags: defaults, queue lists with weights, and the backend
//! configuration they turn into.

use std::time::Duration;

use ragpool_executor::backend::BackendConfig;
use ragpool_queue::ClaimPolicy;

mod loop_support;
use loop_support::settings;

#[test]
fn defaults_match_the_documented_ones() {
    let s = settings("redis://127.0.0.1:6379", &[]);
    assert_eq!(s.key_prefix.resolve(), "ragpool");
    assert_eq!(s.concurrency, 4);
    assert_eq!(s.lease(), Duration::from_secs(15));
    assert_eq!(s.drain(), Duration::from_secs(30));
    assert_eq!(s.maintenance_interval(), Duration::from_secs(1));
    assert_eq!(s.priority, ClaimPolicy::Strict);
    let names: Vec<String> = s
        .queue_configs()
        .expect("default queues")
        .into_iter()
        .map(|q| q.name)
        .collect();
    assert_eq!(names, ["image_analysis", "answer_generation", "full_query"]);
    assert!(matches!(
        s.backend.to_config(),
        Ok(BackendConfig::Builtin(_))
    ));
}

#[test]
fn queue_weights_are_read_with_a_colon_or_an_equals_sign() {
    // The operator writes `name=weight`; people tend to write `name:weight`.
    for list in [
        "image_analysis:6,answer_generation:3,extra:2",
        "image_analysis=6,answer_generation=3,extra=2",
    ] {
        let s = settings(
            "redis://127.0.0.1:6379",
            &["--queues", list, "--priority", "weighted"],
        );
        let queues = s.queue_configs().expect(list);
        let got: Vec<(&str, u32)> = queues.iter().map(|q| (q.name.as_str(), q.weight)).collect();
        assert_eq!(
            got,
            [
                ("image_analysis", 6),
                ("answer_generation", 3),
                ("extra", 2)
            ],
            "{list}"
        );
        assert_eq!(s.priority, ClaimPolicy::Weighted);
        // A known queue keeps its settings; an unknown one gets the defaults.
        assert_eq!(queues[0].timeout, Duration::from_secs(600));
        assert_eq!(queues[2].max_attempts, 3);
    }
}

#[test]
fn bad_queue_lists_are_refused_with_the_reason() {
    for (list, reason) in [
        ("a,a", "listed twice"),
        ("a:0", "positive integer"),
        ("a=x", "positive integer"),
        ("bad name", "name must be"),
        (" , ", "at least one queue"),
    ] {
        let s = settings("redis://127.0.0.1:6379", &["--queues", list]);
        let err = s.queue_configs().expect_err(list);
        assert!(err.contains(reason), "{list}: {err}");
    }
}

#[test]
fn remote_backends_name_their_missing_settings() {
    let http = settings("redis://x:1", &["--backend", "http"]);
    let err = http.backend.to_config().expect_err("no url");
    assert!(err.contains("RAGPOOL_HTTP_URL"), "{err}");

    let http = settings(
        "redis://x:1",
        &[
            "--backend",
            "http",
            "--http-url",
            "http://rag:8000",
            "--http-query-url",
            "http://rag:8000/v2/query",
            "--request-timeout-seconds",
            "60",
        ],
    );
    let Ok(BackendConfig::Http(c)) = http.backend.to_config() else {
        panic!("an http config");
    };
    assert_eq!(c.base_url, "http://rag:8000");
    assert_eq!(c.query_url.as_deref(), Some("http://rag:8000/v2/query"));
    assert_eq!(c.timeout_secs, 60);

    let openai = settings(
        "redis://x:1",
        &["--backend", "openai", "--openai-base-url", "http://vllm/v1"],
    );
    let err = openai.backend.to_config().expect_err("no model");
    assert!(err.contains("RAGPOOL_OPENAI_MODEL"), "{err}");
}
