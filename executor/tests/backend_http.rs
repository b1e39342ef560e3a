//! The HTTP forwarding backend against a fake RAG service.

use std::time::Duration;

use ragpool_executor::backend::{
    self, Backend, BackendConfig, HttpConfig, RetryPolicy, TaskContext,
};
use ragpool_queue::TaskId;
use ragpool_queue::payload::{AnalyzeImage, CompleteAnswer, FullQuery};
use serde_json::json;

mod backend_support;
use backend_support::{FakeServer, Reply, dead_url};

fn config(base: &str) -> HttpConfig {
    let mut c = HttpConfig::new(format!("{base}/rag/"));
    c.retry = RetryPolicy {
        max_retries: 2,
        backoff_ms: 0,
        max_wait_secs: 30,
    };
    c
}

async fn build(c: HttpConfig) -> std::sync::Arc<dyn Backend> {
    backend::build(&BackendConfig::Http(c)).await.unwrap()
}

fn question() -> CompleteAnswer {
    CompleteAnswer {
        question: "What is ragpool?".into(),
        context: Some("asked from the CLI".into()),
        top_k: Some(4),
        ..Default::default()
    }
}

#[tokio::test]
async fn each_kind_posts_its_payload_to_its_path_and_returns_the_body() {
    let server = FakeServer::start(
        vec![],
        Reply::json(200, json!({"answer": "a queue", "n": 1})),
    )
    .await;
    // Forwarding image URLs as they are, so every payload arrives unchanged.
    let mut c = config(&server.url);
    c.forward_image_urls = true;
    let backend = build(c).await;
    let task = TaskId::new();
    let (cx, _progress) = TaskContext::for_task(task.clone(), 2);

    let image = AnalyzeImage {
        image: Some("aGk=".into()),
        prompt: Some("describe".into()),
        ..Default::default()
    };
    let r1 = backend.analyze_image(&image, &cx).await.unwrap();
    let r2 = backend.complete_answer(&question(), &cx).await.unwrap();
    let query = FullQuery {
        question: "Why?".into(),
        image_url: Some("https://example.com/x.png".into()),
        ..Default::default()
    };
    let r3 = backend.full_query(&query, &cx).await.unwrap();

    for r in [&r1, &r2, &r3] {
        assert_eq!(*r, json!({"answer": "a queue", "n": 1}));
    }
    let requests = server.requests();
    let seen: Vec<(&str, &str)> = requests
        .iter()
        .map(|r| (r.method.as_str(), r.path.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            ("POST", "/rag/analyze-image"),
            ("POST", "/rag/complete-answer"),
            ("POST", "/rag/query"),
        ]
    );
    assert_eq!(
        requests[0].body,
        json!({"image": "aGk=", "prompt": "describe"})
    );
    assert_eq!(
        requests[1].body,
        json!({"question": "What is ragpool?", "context": "asked from the CLI", "top_k": 4})
    );
    assert_eq!(
        requests[2].body,
        json!({"question": "Why?", "image_url": "https://example.com/x.png"})
    );
    assert_eq!(requests[1].header("content-type"), Some("application/json"));
    for r in &requests {
        // So the service can tell a re-delivered task from a new one.
        assert_eq!(
            r.header("x-ragpool-task-id"),
            Some(task.as_str()),
            "{}",
            r.path
        );
        assert_eq!(r.header("x-ragpool-attempt"), Some("2"), "{}", r.path);
    }
    assert_eq!(cx.current().percent, 100);
}

#[tokio::test]
async fn image_urls_are_fetched_by_the_executor_not_forwarded() {
    let server = FakeServer::start(vec![], Reply::json(200, json!({"ok": true}))).await;
    let backend = build(config(&server.url)).await;
    let cx = TaskContext::default();
    // By default the executor fetches an image_url itself, under the checks every backend
    // applies, so an internal address is refused here and the service never sees it.
    let image = AnalyzeImage {
        image_url: Some("https://169.254.169.254/latest/meta-data/".into()),
        ..Default::default()
    };
    let err = backend.analyze_image(&image, &cx).await.unwrap_err();
    assert_eq!(err.kind(), "bad_input", "{err}");
    let query = FullQuery {
        question: "Why?".into(),
        image_url: Some("https://localhost/x.png".into()),
        ..Default::default()
    };
    let err = backend.full_query(&query, &cx).await.unwrap_err();
    assert_eq!(err.kind(), "bad_input", "{err}");
    assert!(server.requests().is_empty(), "{:?}", server.requests());

    // Inline images and payloads without one go through unchanged.
    let inline = AnalyzeImage {
        image: Some("aGk=".into()),
        ..Default::default()
    };
    backend.analyze_image(&inline, &cx).await.unwrap();
    assert_eq!(server.requests()[0].body, json!({"image": "aGk="}));

    // With forwarding on, the URL goes to the service as it is.
    let mut c = config(&server.url);
    c.forward_image_urls = true;
    let forwarding = build(c).await;
    forwarding.analyze_image(&image, &cx).await.unwrap();
    assert_eq!(
        server.requests()[1].body,
        json!({"image_url": "https://169.254.169.254/latest/meta-data/"})
    );
}

#[tokio::test]
async fn per_kind_urls_override_the_base() {
    let server = FakeServer::start(vec![], Reply::json(200, json!({"ok": true}))).await;
    let mut c = config("http://127.0.0.1:9");
    c.complete_answer_url = Some(format!("{}/v2/answer", server.url));
    let backend = build(c).await;
    backend
        .complete_answer(&question(), &TaskContext::default())
        .await
        .unwrap();
    assert_eq!(server.requests()[0].path, "/v2/answer");
}

#[tokio::test]
async fn a_429_then_200_succeeds_after_one_retry() {
    let server = FakeServer::start(
        vec![Reply::text(429, "busy").with_header("retry-after", "0")],
        Reply::json(200, json!({"answer": "ok"})),
    )
    .await;
    let backend = build(config(&server.url)).await;
    let result = backend
        .complete_answer(&question(), &TaskContext::default())
        .await
        .unwrap();
    assert_eq!(result["answer"], "ok");
    assert_eq!(server.requests().len(), 2);
}

#[tokio::test]
async fn server_errors_become_retryable_carrying_retry_after() {
    let server = FakeServer::start(
        vec![],
        Reply::json(503, json!({"detail": "index rebuilding"})).with_header("retry-after", "120"),
    )
    .await;
    let backend = build(config(&server.url)).await;
    let err = backend
        .complete_answer(&question(), &TaskContext::default())
        .await
        .unwrap_err();
    assert!(err.is_retryable());
    assert_eq!(err.kind(), "backend_unavailable");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(120)));
    assert!(err.message().contains("index rebuilding"), "{err}");
    assert_eq!(server.requests().len(), 1, "120 s is past max_wait_secs");

    let server = FakeServer::start(vec![], Reply::text(500, "boom")).await;
    let backend = build(config(&server.url)).await;
    let err = backend
        .complete_answer(&question(), &TaskContext::default())
        .await
        .unwrap_err();
    assert!(err.is_retryable());
    assert_eq!(err.retry_after(), None);
    assert_eq!(server.requests().len(), 3);
}

#[tokio::test]
async fn client_errors_are_permanent_with_the_bodys_message() {
    let server = FakeServer::start(
        vec![],
        Reply::json(400, json!({"message": "question too long"})),
    )
    .await;
    let backend = build(config(&server.url)).await;
    let err = backend
        .complete_answer(&question(), &TaskContext::default())
        .await
        .unwrap_err();
    assert!(!err.is_retryable());
    assert_eq!(err.kind(), "bad_input");
    assert!(err.message().contains("question too long"), "{err}");
    assert_eq!(server.requests().len(), 1);

    let server = FakeServer::start(vec![], Reply::text(404, "no such route")).await;
    let backend = build(config(&server.url)).await;
    let err = backend
        .complete_answer(&question(), &TaskContext::default())
        .await
        .unwrap_err();
    assert!(!err.is_retryable());
    assert!(
        err.message().contains("404") && err.message().contains("no such route"),
        "{err}"
    );
}

#[tokio::test]
async fn a_non_json_success_is_permanent() {
    let server = FakeServer::start(vec![], Reply::text(200, "<html>login</html>")).await;
    let backend = build(config(&server.url)).await;
    let err = backend
        .complete_answer(&question(), &TaskContext::default())
        .await
        .unwrap_err();
    assert!(!err.is_retryable());
    assert_eq!(err.kind(), "model_error");
}

#[tokio::test]
async fn an_unreachable_service_is_retryable() {
    let backend = build(config(&dead_url().await)).await;
    let err = backend
        .complete_answer(&question(), &TaskContext::default())
        .await
        .unwrap_err();
    assert!(err.is_retryable());
    assert_eq!(err.kind(), "backend_unavailable");
}

#[tokio::test]
async fn a_bad_base_url_is_a_config_error() {
    for url in ["not a url", "ftp://example.com"] {
        let err = backend::build(&BackendConfig::Http(HttpConfig::new(url)))
            .await
            .err()
            .unwrap();
        assert!(
            matches!(err, backend::BuildError::Config(_)),
            "{url}: {err}"
        );
    }
}

/// A reply of `content_type` with `body`.
fn streamed(content_type: &str, body: &str) -> Reply {
    Reply {
        status: 200,
        headers: vec![("content-type", content_type.into())],
        body: body.into(),
    }
}

/// The answer text that reached the task: what its executor would publish.
fn text_of(cx: &TaskContext) -> String {
    cx.answer_text()
        .pending()
        .map(|(t, _)| t)
        .unwrap_or_default()
}

#[tokio::test]
async fn a_streamed_answer_passes_its_text_on_and_stores_its_result() {
    let sse = "data: {\"delta\": \" Leases last \"}\n\n\
               data: {\"delta\": \"fifteen seconds.\"}\n\n\
               data: {\"result\": {\"answer\": \"Leases last fifteen seconds.\", \"citations\": [\"leases.md\"]}}\n\n\
               data: [DONE]\n\n";
    let ndjson = "{\"delta\": \"One \"}\n{\"delta\": \"two \"}\n\n{\"delta\": \"three\"}\n";
    let server = FakeServer::start(
        vec![
            streamed("text/event-stream; charset=utf-8", sse),
            streamed("application/x-ndjson", ndjson),
        ],
        Reply::json(200, json!({"answer": "plain"})),
    )
    .await;
    let backend = build(config(&server.url)).await;

    let cx = TaskContext::default();
    let result = backend.complete_answer(&question(), &cx).await.unwrap();
    assert_eq!(
        result,
        json!({"answer": "Leases last fifteen seconds.", "citations": ["leases.md"]}),
        "a result event is the result"
    );
    assert_eq!(text_of(&cx), "Leases last fifteen seconds.");

    let cx = TaskContext::default();
    let query = FullQuery {
        question: "Count".into(),
        ..Default::default()
    };
    let result = backend.full_query(&query, &cx).await.unwrap();
    assert_eq!(
        result,
        json!({"answer": "One two three"}),
        "without a result event the deltas joined are the answer"
    );
    assert_eq!(text_of(&cx), "One two three");

    // A plain JSON answer is the result, as before; no text is streamed.
    let cx = TaskContext::default();
    let result = backend.complete_answer(&question(), &cx).await.unwrap();
    assert_eq!(result, json!({"answer": "plain"}));
    assert_eq!(text_of(&cx), "");

    let requests = server.requests();
    assert!(
        requests.iter().all(|r| r
            .header("accept")
            .is_some_and(|a| a.starts_with("text/event-stream"))),
        "answers accept a stream"
    );
    let image = AnalyzeImage {
        image: Some("aGk=".into()),
        ..Default::default()
    };
    backend.analyze_image(&image, &cx).await.unwrap();
    assert_eq!(
        server.requests()[3].header("accept"),
        Some("*/*"),
        "an image analysis is not streamed"
    );
}

#[tokio::test]
async fn a_stream_that_fails_midway_is_not_retried_within_the_attempt() {
    let broken = "data: {\"delta\": \"Half an \"}\n\ndata: {\"error\": \"the model crashed\"}\n\n";
    let server = FakeServer::start(
        vec![streamed("text/event-stream", broken)],
        Reply::json(200, json!({"answer": "whole"})),
    )
    .await;
    let backend = build(config(&server.url)).await;
    let cx = TaskContext::default();
    let err = backend.complete_answer(&question(), &cx).await.unwrap_err();
    assert_eq!(err.kind(), "backend_unavailable", "{err}");
    assert!(err.message().contains("the model crashed"), "{err}");
    assert!(err.is_retryable(), "{err}");
    assert_eq!(
        server.requests().len(),
        1,
        "part of the answer went out: the queue's next attempt starts over"
    );
    assert_eq!(text_of(&cx), "Half an");

    // Garbage in a stream is the service's fault, not worth a retry.
    let server = FakeServer::start(
        vec![],
        streamed("application/x-ndjson", "{\"delta\": \"ok\"}\nnot json\n"),
    )
    .await;
    let backend = build(config(&server.url)).await;
    let err = backend
        .complete_answer(&question(), &TaskContext::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "model_error", "{err}");
    assert!(!err.is_retryable(), "{err}");
}
