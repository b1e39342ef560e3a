//! A `ragpool-executor` process with the `openai` backend, against a fake OpenAI-compatible
//! server on loopback: with a corpus it indexes it at start and puts the passages retrieved
//! for each question into the prompt; without one it sends the question alone.

use ragpool_queue::TaskState;
use serde_json::{Value, json};

mod loop_support;
use loop_support::{Behaviour, Env, ExecutorProcess, FakeRag, quick_queues};

/// A model server that answers every chat completion with `content`.
async fn model_server(content: &'static str) -> FakeRag {
    FakeRag::start(move |_, _| {
        Behaviour::Answer(
            200,
            json!({
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "model": "served-model",
                "choices": [{
                    "index": 0,
                    "message": { "role": "assistant", "content": content },
                    "finish_reason": "stop",
                }],
            }),
        )
    })
    .await
}

/// The system and user messages of a chat-completions request.
fn messages(body: &Value) -> (String, String) {
    let text = |i: usize| {
        body["messages"][i]["content"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    (text(0), text(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openai_executor_with_a_corpus_puts_retrieved_passages_in_its_prompt() {
    let env = Env::start(quick_queues()).await;
    let redis = env.url();
    let docs = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        docs.path().join("lease.md"),
        "# Leases\n\nA claimed task holds a lease of fifteen seconds.\n",
    )
    .expect("write");
    std::fs::write(
        docs.path().join("charts.md"),
        "# Charts\n\nHelm values live in values.yaml.\n",
    )
    .expect("write");
    let folder = docs.path().to_str().expect("utf-8 path").to_owned();
    let model = model_server("Fifteen seconds [1].").await;
    let base = format!("{}/v1", model.url);
    let mut executor = ExecutorProcess::start(&[
        ("RAGPOOL_REDIS_URL", &redis),
        ("RAGPOOL_BACKEND", "openai"),
        ("RAGPOOL_OPENAI_BASE_URL", &base),
        ("RAGPOOL_OPENAI_MODEL", "answer-model"),
        ("RAGPOOL_DOCS", &folder),
        ("RAGPOOL_WORKER_ID", "executor-openai"),
    ])
    .await;
    // Logged after the health endpoints are up (start() waited for that line).
    let built = executor.wait_log("document index built").await;
    assert_eq!(built["fields"]["documents"], 2, "{built}");
    assert_eq!(built["fields"]["passages"], 2, "{built}");
    assert_eq!(built["fields"]["folder"], folder.as_str(), "{built}");

    let id = env.ask("How long is a task's lease?").await;
    let task = env.ended(&id).await;
    assert_eq!(task.state, TaskState::Finished, "{task:?}");

    let request = model.next_request().await;
    assert_eq!(request.path, "/v1/chat/completions");
    assert_eq!(request.body["model"], "answer-model");
    let (system, prompt) = messages(&request.body);
    assert!(system.contains("Cite each passage"), "{system}");
    assert!(
        prompt.starts_with(
            "Passages:\n[1] lease.md (passage 1)\nA claimed task holds a lease of fifteen seconds."
        ),
        "{prompt}"
    );
    assert!(
        prompt.ends_with("Question: How long is a task's lease?"),
        "{prompt}"
    );

    let result = task.result.expect("a result");
    assert_eq!(result["answer"], "Fifteen seconds [1].");
    assert_eq!(result["model"], "served-model");
    assert_eq!(result["citations"][0]["document"], "lease.md");
    assert_eq!(result["citations"][0]["passage"], 1);

    executor.sigterm();
    let (status, output) = executor.exit().await;
    assert!(status.success(), "{status}\n{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openai_executor_without_a_corpus_asks_the_question_alone() {
    let env = Env::start(quick_queues()).await;
    let redis = env.url();
    let model = model_server("About fifteen seconds.").await;
    let base = format!("{}/v1", model.url);
    let mut executor = ExecutorProcess::start(&[
        ("RAGPOOL_REDIS_URL", &redis),
        ("RAGPOOL_BACKEND", "openai"),
        ("RAGPOOL_OPENAI_BASE_URL", &base),
        ("RAGPOOL_OPENAI_MODEL", "answer-model"),
        ("RAGPOOL_WORKER_ID", "executor-plain"),
    ])
    .await;
    let line = executor
        .wait_log(
            "no document corpus (--docs / RAGPOOL_DOCS unset): answers are plain model calls, \
             without retrieved passages or citations",
        )
        .await;
    assert_eq!(line["level"], "INFO");

    let id = env.ask("How long is a task's lease?").await;
    let task = env.ended(&id).await;
    assert_eq!(task.state, TaskState::Finished, "{task:?}");
    let request = model.next_request().await;
    let (system, prompt) = messages(&request.body);
    assert_eq!(system, "Answer the question concisely and accurately.");
    assert_eq!(prompt, "Question: How long is a task's lease?");
    let result = task.result.expect("a result");
    assert_eq!(result["answer"], "About fifteen seconds.");
    assert!(result.get("citations").is_none(), "{result}");

    executor.sigterm();
    let (status, output) = executor.exit().await;
    assert!(status.success(), "{status}\n{output}");
}
