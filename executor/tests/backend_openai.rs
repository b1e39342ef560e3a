//! The OpenAI-compatible backend against a fake chat-completions server.

use std::time::Duration;

use ragpool_executor::backend::{
    self, Backend, BackendConfig, OpenAiConfig, RetryPolicy, SecretString, TaskContext,
};
use ragpool_queue::payload::{AnalyzeImage, CompleteAnswer, FullQuery};
use serde_json::json;

mod backend_support;
use backend_support::{FakeServer, Reply, chat_response, dead_url, red_blue_png_base64};

fn fast_retries() -> RetryPolicy {
    RetryPolicy {
        max_retries: 2,
        backoff_ms: 0,
        max_wait_secs: 30,
    }
}

fn config(base: &str) -> OpenAiConfig {
    let mut c = OpenAiConfig::new(format!("{base}/v1/"), "answer-model");
    c.vision_model = Some("vision-model".into());
    c.retry = fast_retries();
    c
}

async fn build(c: OpenAiConfig) -> std::sync::Arc<dyn Backend> {
    backend::build(&BackendConfig::OpenAi(c)).await.unwrap()
}

fn ok(content: &str) -> Reply {
    Reply::json(200, chat_response("served-model", content))
}

#[tokio::test]
async fn analysis_sends_the_image_as_a_data_url_to_the_vision_model() {
    let server = FakeServer::start(vec![], ok("A red and a blue rectangle.")).await;
    let mut c = config(&server.url);
    c.api_key = Some(SecretString::new("sk-test"));
    c.max_tokens = Some(200);
    let backend = build(c).await;
    let image = red_blue_png_base64();
    let req = AnalyzeImage {
        image: Some(image.clone()),
        prompt: Some("What shapes are there?".into()),
        ..Default::default()
    };
    let result = backend
        .analyze_image(&req, &TaskContext::default())
        .await
        .unwrap();

    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/v1/chat/completions");
    assert_eq!(r.header("authorization"), Some("Bearer sk-test"));
    assert_eq!(r.body["model"], "vision-model");
    assert_eq!(r.body["max_tokens"], 200);
    assert_eq!(
        r.body["messages"],
        json!([{
            "role": "user",
            "content": [
                { "type": "text", "text": "What shapes are there?" },
                { "type": "image_url", "image_url": { "url": format!("data:image/png;base64,{image}") } },
            ],
        }])
    );

    assert_eq!(result["summary"], "A red and a blue rectangle.");
    assert_eq!(result["model"], "served-model");
    assert_eq!(result["usage"]["total_tokens"], 18);
}

#[tokio::test]
async fn answers_carry_retrieved_passages_and_context_in_the_prompt() {
    let docs = tempfile::tempdir().unwrap();
    std::fs::write(
        docs.path().join("lease.md"),
        "# Leases\n\nA claimed task holds a lease of fifteen seconds.\n",
    )
    .unwrap();
    std::fs::write(
        docs.path().join("other.md"),
        "# Charts\n\nHelm values live here.\n",
    )
    .unwrap();
    let server = FakeServer::start(vec![], ok("Fifteen seconds [1].")).await;
    let mut c = config(&server.url);
    c.docs = Some(docs.path().to_path_buf());
    let backend = build(c).await;
    let req = CompleteAnswer {
        question: "How long is a task's lease?".into(),
        context: Some("The user runs ragpool on Kubernetes.".into()),
        ..Default::default()
    };
    let result = backend
        .complete_answer(&req, &TaskContext::default())
        .await
        .unwrap();

    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!(
        r.header("authorization"),
        None,
        "no key configured, no header"
    );
    assert_eq!(r.body["model"], "answer-model");
    let messages = r.body["messages"].as_array().unwrap();
    assert_eq!(messages[0]["role"], "system");
    assert!(messages[0]["content"].as_str().unwrap().contains("[n]"));
    assert_eq!(messages[1]["role"], "user");
    let prompt = messages[1]["content"].as_str().unwrap();
    assert!(
        prompt.contains("Context:\nThe user runs ragpool on Kubernetes."),
        "{prompt}"
    );
    assert!(
        prompt
            .contains("[1] lease.md (passage 1)\nA claimed task holds a lease of fifteen seconds."),
        "{prompt}"
    );
    assert!(
        prompt.ends_with("Question: How long is a task's lease?"),
        "{prompt}"
    );

    assert_eq!(result["answer"], "Fifteen seconds [1].");
    assert_eq!(result["model"], "served-model");
    assert_eq!(result["citations"][0]["document"], "lease.md");
    assert_eq!(result["citations"][0]["passage"], 1);
}

#[tokio::test]
async fn full_query_describes_the_image_then_answers_with_it() {
    let server = FakeServer::start(
        vec![ok("Two coloured halves: red and blue.")],
        ok("The image is red and blue."),
    )
    .await;
    let backend = build(config(&server.url)).await;
    let (cx, progress) = TaskContext::new();
    let req = FullQuery {
        question: "Which colours appear?".into(),
        image: Some(red_blue_png_base64()),
        ..Default::default()
    };
    let result = backend.full_query(&req, &cx).await.unwrap();

    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].body["model"], "vision-model");
    let describe = requests[0].body["messages"][0]["content"][0]["text"]
        .as_str()
        .unwrap();
    assert!(describe.contains("Which colours appear?"), "{describe}");
    assert_eq!(requests[1].body["model"], "answer-model");
    let prompt = requests[1].body["messages"][1]["content"].as_str().unwrap();
    assert!(
        prompt.contains("Two coloured halves: red and blue."),
        "{prompt}"
    );

    assert_eq!(
        result["analysis"]["summary"],
        "Two coloured halves: red and blue."
    );
    assert_eq!(result["answer"], "The image is red and blue.");
    assert!(
        result.get("citations").is_none(),
        "no docs, no citations: {result}"
    );
    assert_eq!(progress.borrow().percent, 100);
}

#[tokio::test]
async fn a_429_is_retried_after_retry_after_then_succeeds() {
    let server = FakeServer::start(
        vec![
            Reply::json(429, json!({"error": {"message": "slow down"}}))
                .with_header("retry-after", "0"),
        ],
        ok("fine"),
    )
    .await;
    let backend = build(config(&server.url)).await;
    let req = CompleteAnswer {
        question: "Anything?".into(),
        ..Default::default()
    };
    let result = backend
        .complete_answer(&req, &TaskContext::default())
        .await
        .unwrap();
    assert_eq!(result["answer"], "fine");
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(
        requests[0].body, requests[1].body,
        "the same request is sent again"
    );
}

#[tokio::test]
async fn a_long_retry_after_is_handed_back_to_the_queue() {
    let server = FakeServer::start(
        vec![],
        Reply::json(429, json!({"error": {"message": "quota"}})).with_header("retry-after", "3600"),
    )
    .await;
    let backend = build(config(&server.url)).await;
    let req = CompleteAnswer {
        question: "Anything?".into(),
        ..Default::default()
    };
    let err = backend
        .complete_answer(&req, &TaskContext::default())
        .await
        .unwrap_err();
    assert!(err.is_retryable());
    assert_eq!(err.kind(), "rate_limited");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(3600)));
    assert!(err.message().contains("quota"), "{err}");
    assert_eq!(server.requests().len(), 1, "not waited out in-process");
}

#[tokio::test]
async fn server_errors_are_retried_a_bounded_number_of_times_then_retryable() {
    let server = FakeServer::start(vec![], Reply::text(503, "overloaded")).await;
    let backend = build(config(&server.url)).await;
    let req = CompleteAnswer {
        question: "Anything?".into(),
        ..Default::default()
    };
    let err = backend
        .complete_answer(&req, &TaskContext::default())
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert_eq!(err.kind(), "backend_unavailable");
    assert!(
        err.message().contains("503") && err.message().contains("overloaded"),
        "{err}"
    );
    assert_eq!(server.requests().len(), 3, "one request and two retries");
}

#[tokio::test]
async fn client_errors_are_permanent_with_the_servers_message() {
    let server = FakeServer::start(
        vec![],
        Reply::json(
            404,
            json!({"error": {"message": "model `answer-model` not found"}}),
        ),
    )
    .await;
    let backend = build(config(&server.url)).await;
    let req = CompleteAnswer {
        question: "Anything?".into(),
        ..Default::default()
    };
    let err = backend
        .complete_answer(&req, &TaskContext::default())
        .await
        .unwrap_err();
    assert!(!err.is_retryable());
    assert_eq!(err.kind(), "model_error");
    assert!(
        err.message().contains("model `answer-model` not found"),
        "{err}"
    );
    assert_eq!(server.requests().len(), 1);

    let server = FakeServer::start(
        vec![],
        Reply::json(400, json!({"error": "image too small"})),
    )
    .await;
    let backend = build(config(&server.url)).await;
    let req = AnalyzeImage {
        image: Some(red_blue_png_base64()),
        ..Default::default()
    };
    let err = backend
        .analyze_image(&req, &TaskContext::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "bad_input");
    assert!(!err.is_retryable());
    assert!(err.message().contains("image too small"), "{err}");
}

#[tokio::test]
async fn a_response_without_content_is_a_model_error() {
    let server = FakeServer::start(vec![], Reply::json(200, json!({"choices": []}))).await;
    let backend = build(config(&server.url)).await;
    let req = CompleteAnswer {
        question: "Anything?".into(),
        ..Default::default()
    };
    let err = backend
        .complete_answer(&req, &TaskContext::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "model_error");
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn an_unreachable_server_is_retryable() {
    let mut c = config(&dead_url().await);
    c.retry.max_retries = 1;
    let backend = build(c).await;
    let req = CompleteAnswer {
        question: "Anything?".into(),
        ..Default::default()
    };
    let err = backend
        .complete_answer(&req, &TaskContext::default())
        .await
        .unwrap_err();
    assert!(err.is_retryable());
    assert_eq!(err.kind(), "backend_unavailable");
}

#[tokio::test]
async fn bad_image_input_fails_before_any_request() {
    let server = FakeServer::start(vec![], ok("never")).await;
    let backend = build(config(&server.url)).await;
    for image in ["***", &backend_support::base64(b"plain text, not an image")] {
        let req = AnalyzeImage {
            image: Some(image.to_owned()),
            ..Default::default()
        };
        let err = backend
            .analyze_image(&req, &TaskContext::default())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), "bad_input", "{err}");
    }
    assert!(server.requests().is_empty());
}

#[tokio::test]
async fn the_api_key_can_come_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, "sk-from-file\n").unwrap();
    let server = FakeServer::start(vec![], ok("yes")).await;
    let mut c = config(&server.url);
    c.api_key_file = Some(key_file);
    let backend = build(c).await;
    let req = CompleteAnswer {
        question: "Anything?".into(),
        ..Default::default()
    };
    backend
        .complete_answer(&req, &TaskContext::default())
        .await
        .unwrap();
    assert_eq!(
        server.requests()[0].header("authorization"),
        Some("Bearer sk-from-file")
    );

    let mut c = config(&server.url);
    c.api_key_file = Some(dir.path().join("missing"));
    assert!(backend::build(&BackendConfig::OpenAi(c)).await.is_err());
}

#[test]
fn the_api_key_stays_out_of_debug_output() {
    let mut c = OpenAiConfig::new("http://127.0.0.1:1/v1", "m");
    c.api_key = Some(SecretString::new("sk-very-secret"));
    assert!(!format!("{c:?}").contains("sk-very-secret"));
}
