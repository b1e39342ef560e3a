//! How the job loop ends a task: timeouts, cancels, retryable and permanent errors, and
//! answers built on another task's analysis. Executors run in-process against a real Redis
//! and a fake RAG service over the `http` backend.

use std::sync::Arc;
use std::time::Duration;

use ragpool_executor::backend::{self, BackendConfig, HttpConfig, RetryPolicy};
use ragpool_queue::payload::{AnalyzeImage, CompleteAnswer};
use ragpool_queue::{CancelOutcome, TaskState};
use serde_json::json;
use tokio::sync::Notify;

mod loop_support;
use loop_support::{
    Behaviour, Env, Events, FakeRag, InProcess, answer_queue, error_kinds, quick_queues, settings,
    states,
};

/// Settings of an in-process executor on `answer_generation` that forwards to `rag`.
fn http_settings(env: &Env, rag: &FakeRag) -> ragpool_executor::settings::ExecutorSettings {
    settings(
        &env.url(),
        &[
            "--queues",
            "answer_generation",
            "--lease-seconds",
            "1",
            "--backend",
            "http",
            "--http-url",
            &rag.url,
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_past_its_timeout_is_retried_by_policy_then_fails_with_kind_timeout() {
    // 1 s per attempt, two attempts: the first timeout is retried, the second is final.
    let env = Env::start(vec![answer_queue(2, Duration::from_secs(1))]).await;
    let rag = FakeRag::start(|_, _| Behaviour::Hang).await;
    let mut events = Events::follow(&env.broker).await;
    let executor = InProcess::start(http_settings(&env, &rag));

    let id = env.ask("will this ever answer?").await;
    let task = env.ended(&id).await;

    assert_eq!(task.state, TaskState::Failed, "{task:?}");
    let error = task.error.expect("an error is recorded");
    assert_eq!(error.kind, "timeout", "{error:?}");
    assert_eq!(task.attempts, 2);
    let history = events.until_end(&id).await;
    assert_eq!(
        error_kinds(&history),
        ["timeout", "timeout"],
        "first delayed, then failed: {:?}",
        states(&history)
    );
    assert!(states(&history).contains(&"delayed".to_owned()));
    assert_eq!(rag.requests().len(), 2, "one request per attempt");
    executor.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_task_canceled_ends_canceled_at_its_next_heartbeat() {
    let env = Env::start(quick_queues()).await;
    let rag = FakeRag::start(|_, _| Behaviour::Hang).await;
    let executor = InProcess::start(http_settings(&env, &rag));

    let id = env.ask("a long question").await;
    rag.next_request().await;
    let outcome = env.broker.cancel(&id).await.expect("cancel");
    assert_eq!(
        outcome,
        CancelOutcome::Requested,
        "the task is running, so the cancel waits for its worker"
    );
    let task = env.ended(&id).await;

    assert_eq!(task.state, TaskState::Canceled, "{task:?}");
    assert_eq!(task.error.expect("an error is recorded").kind, "canceled");
    assert_eq!(task.attempts, 1);
    assert_eq!(rag.requests().len(), 1, "a canceled task is not run again");
    executor.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_is_retried_through_the_queue_and_then_finishes() {
    let env = Env::start(quick_queues()).await;
    let rag = FakeRag::start(|_, earlier| {
        if earlier == 0 {
            Behaviour::Answer(503, json!({"detail": "warming up"}))
        } else {
            Behaviour::Answer(200, json!({"answer": "ready now"}))
        }
    })
    .await;
    // No retries inside the backend: the retry must come from the queue's policy.
    let mut http = HttpConfig::new(rag.url.clone());
    http.retry = RetryPolicy {
        max_retries: 0,
        ..RetryPolicy::default()
    };
    let backend = backend::build(&BackendConfig::Http(http))
        .await
        .expect("http backend");
    let mut events = Events::follow(&env.broker).await;
    let executor = InProcess::with_backend(http_settings(&env, &rag), backend);

    let id = env.ask("are you up?").await;
    let task = env.ended(&id).await;

    assert_eq!(task.state, TaskState::Finished, "{task:?}");
    assert_eq!(task.result, Some(json!({"answer": "ready now"})));
    assert_eq!(task.attempts, 2);
    assert_eq!(task.error, None, "a finished task carries no error");
    let history = events.until_end(&id).await;
    assert_eq!(error_kinds(&history), ["backend_unavailable"]);
    assert_eq!(
        states(&history),
        [
            "queued", "started", "delayed", "queued", "started", "finished"
        ]
    );
    assert_eq!(rag.requests().len(), 2);
    executor.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_400_fails_at_once_with_kind_bad_input() {
    let env = Env::start(quick_queues()).await;
    let rag = FakeRag::start(|_, _| {
        Behaviour::Answer(
            400,
            json!({"detail": "question must end with a question mark"}),
        )
    })
    .await;
    let executor = InProcess::start(http_settings(&env, &rag));

    let id = env.ask("no question mark").await;
    let task = env.ended(&id).await;

    assert_eq!(task.state, TaskState::Failed, "{task:?}");
    let error = task.error.expect("an error is recorded");
    assert_eq!(error.kind, "bad_input");
    assert!(
        error
            .message
            .contains("question must end with a question mark"),
        "the service's reason is kept: {error:?}"
    );
    assert_eq!(task.attempts, 1, "attempts were left, yet none was spent");
    assert_eq!(rag.requests().len(), 1);
    executor.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_with_a_context_task_gets_that_analysis_summary() {
    let env = Env::start(quick_queues()).await;
    let rag = FakeRag::start(|request, _| match request.path.as_str() {
        "/analyze-image" if request.body["image"] == "YmFk" => {
            Behaviour::Answer(400, json!({"detail": "not an image"}))
        }
        "/analyze-image" => Behaviour::Answer(
            200,
            json!({"summary": "A PNG image, 2x2 pixels, mostly red.", "format": "png"}),
        ),
        _ => Behaviour::Answer(200, json!({"answer": "It is red."})),
    })
    .await;
    let executor = InProcess::start(settings(
        &env.url(),
        &["--backend", "http", "--http-url", &rag.url],
    ));

    let analysis = env
        .enqueue(AnalyzeImage {
            image: Some("aGk=".into()),
            ..AnalyzeImage::default()
        })
        .await
        .id;
    assert_eq!(env.ended(&analysis).await.state, TaskState::Finished);
    let answer = env
        .enqueue(CompleteAnswer {
            question: "What colour is it?".into(),
            context: Some("Asked about a photo.".into()),
            context_task_id: Some(analysis.to_string()),
            ..CompleteAnswer::default()
        })
        .await
        .id;
    let task = env.ended(&answer).await;

    assert_eq!(task.state, TaskState::Finished, "{task:?}");
    let requests = rag.requests();
    let sent = requests
        .iter()
        .find(|r| r.path == "/complete-answer")
        .expect("the answer was forwarded");
    assert_eq!(
        sent.body["context"], "Asked about a photo.\n\nA PNG image, 2x2 pixels, mostly red.",
        "the submitter's context, then the analysis summary"
    );
    assert_eq!(sent.body["question"], "What colour is it?");

    // An analysis that failed cannot feed an answer: the answer fails without calling out.
    let failed_analysis = env
        .enqueue(AnalyzeImage {
            image: Some("YmFk".into()),
            ..AnalyzeImage::default()
        })
        .await
        .id;
    assert_eq!(env.ended(&failed_analysis).await.state, TaskState::Failed);
    let orphan = env
        .enqueue(CompleteAnswer {
            question: "And this one?".into(),
            context_task_id: Some(failed_analysis.to_string()),
            ..CompleteAnswer::default()
        })
        .await
        .id;
    let task = env.ended(&orphan).await;
    assert_eq!(task.state, TaskState::Failed, "{task:?}");
    assert_eq!(task.error.expect("an error").kind, "dependency_failed");
    let answers = rag
        .requests()
        .iter()
        .filter(|r| r.path == "/complete-answer")
        .count();
    assert_eq!(answers, 1, "only the first answer reached the service");
    executor.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_waits_for_its_running_analysis_without_spending_an_attempt() {
    // One attempt per answer: waiting for the analysis must not cost it.
    let queues = quick_queues()
        .into_iter()
        .map(|mut q| {
            if q.name == "answer_generation" {
                q.max_attempts = 1;
            }
            q
        })
        .collect();
    let env = Env::start(queues).await;
    let analysed = Arc::new(Notify::new());
    let rag = {
        let analysed = analysed.clone();
        FakeRag::start(move |request, _| match request.path.as_str() {
            "/analyze-image" => {
                Behaviour::AnswerWhen(analysed.clone(), 200, json!({"summary": "A slow picture."}))
            }
            _ => Behaviour::Answer(200, json!({"answer": "done"})),
        })
        .await
    };
    let mut events = Events::follow(&env.broker).await;
    let executor = InProcess::start(settings(
        &env.url(),
        &[
            "--concurrency",
            "2",
            "--lease-seconds",
            "1",
            "--backend",
            "http",
            "--http-url",
            &rag.url,
        ],
    ));

    let analysis = env
        .enqueue(AnalyzeImage {
            image: Some("aGk=".into()),
            ..AnalyzeImage::default()
        })
        .await
        .id;
    rag.next_request().await;
    let answer = env
        .enqueue(CompleteAnswer {
            question: "What is in it?".into(),
            context_task_id: Some(analysis.to_string()),
            ..CompleteAnswer::default()
        })
        .await
        .id;
    events.until_state(&answer, TaskState::Started).await;
    // Only now, with the answer running, does the analysis finish.
    analysed.notify_one();
    let task = env.ended(&answer).await;

    assert_eq!(task.state, TaskState::Finished, "{task:?}");
    assert_eq!(task.attempts, 1);
    let requests = rag.requests();
    let sent = requests
        .iter()
        .find(|r| r.path == "/complete-answer")
        .expect("the answer was forwarded");
    assert_eq!(sent.body["context"], "A slow picture.");
    executor.shutdown().await;
}
