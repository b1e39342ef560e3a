//! The client subcommands (`submit`, `status`, `stats`, `cancel`, `retry`) run as the
//! `ragpool` binary against the real API (and executor) over a real Redis.

mod support;

use serde_json::Value;
use support::{QUESTION, Stack, png, ragpool};

const KEY: &str = "k3y-for-the-cli-tests-0123456789";

#[tokio::test]
async fn submits_reads_lists_and_cancels_tasks() {
    let stack = Stack::start(None, false).await;
    let api = ["--api-url", stack.url.as_str()];

    let query = ragpool(
        &[&["submit", "query", QUESTION, "--top-k", "2"][..], &api].concat(),
        &[],
    )
    .await;
    let submitted = query.assert_ok().json();
    assert_eq!(submitted["status"], "queued");
    assert_eq!(submitted["queue"], "full_query");
    let id = submitted["task_id"].as_str().expect("task_id").to_owned();

    let status = ragpool(&[&["status", &id][..], &api].concat(), &[]).await;
    let task = status.assert_ok().json();
    assert_eq!(task["task_id"], id.as_str());
    assert_eq!(task["kind"], "full_query");
    assert_eq!(task["status"], "queued");

    // No executor runs, so the task cannot end: --wait gives up with its own exit status.
    let waited = ragpool(&[&["status", &id, "--wait", "1"][..], &api].concat(), &[]).await;
    assert_eq!(waited.code, Some(3), "{waited:?}");
    assert_eq!(waited.json()["status"], "queued");
    assert!(waited.stderr.contains("still queued"), "{waited:?}");

    let answer = ragpool(
        &[
            &[
                "submit",
                "answer",
                "Why?",
                "--context",
                "some context",
                "--top-k",
                "3",
            ][..],
            &api,
        ]
        .concat(),
        &[],
    )
    .await;
    assert_eq!(answer.assert_ok().json()["queue"], "answer_generation");

    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("pixel.png");
    std::fs::write(&image, png()).expect("writing the image");
    let image = image.to_string_lossy().into_owned();
    let analyze = ragpool(
        &[
            &["submit", "image", &image, "--prompt", "colours?"][..],
            &api,
        ]
        .concat(),
        &[],
    )
    .await;
    assert_eq!(analyze.assert_ok().json()["queue"], "image_analysis");
    let with_image = ragpool(
        &[
            &["submit", "query", "What is shown?", "--image", &image][..],
            &api,
        ]
        .concat(),
        &[],
    )
    .await;
    assert_eq!(with_image.assert_ok().json()["queue"], "full_query");

    let stats = ragpool(&[&["stats"][..], &api].concat(), &[]).await;
    let stats = stats.assert_ok().json();
    let text = stats.to_string();
    for queue in ["image_analysis", "answer_generation", "full_query"] {
        assert!(text.contains(queue), "stats lack {queue}: {stats:#}");
    }

    let cancel = ragpool(&[&["cancel", &id][..], &api].concat(), &[]).await;
    assert_eq!(cancel.assert_ok().json()["status"], "canceled");

    // Ended tasks cannot be canceled, and only failed ones retried: the API's 409 and its
    // error code are shown, and the exit status is non-zero.
    let again = ragpool(&[&["cancel", &id][..], &api].concat(), &[]).await;
    assert_eq!(again.code, Some(1), "{again:?}");
    assert!(again.stderr.contains("409"), "{again:?}");
    assert!(again.stdout.is_empty(), "{again:?}");
    let retry = ragpool(&[&["retry", &id][..], &api].concat(), &[]).await;
    assert_eq!(retry.code, Some(1), "{retry:?}");
    assert!(retry.stderr.contains("409"), "{retry:?}");

    let unknown = "00000000-0000-4000-8000-000000000000";
    let missing = ragpool(&[&["status", unknown][..], &api].concat(), &[]).await;
    assert_eq!(missing.code, Some(1), "{missing:?}");
    assert!(missing.stderr.contains("404 Not Found"), "{missing:?}");

    stack.shutdown().await;
}

#[tokio::test]
async fn api_errors_show_their_code_and_message() {
    let stack = Stack::start(None, false).await;
    let api = ["--api-url", stack.url.as_str()];

    let bad = ragpool(
        &[&["submit", "query", QUESTION, "--top-k", "0"][..], &api].concat(),
        &[],
    )
    .await;
    assert_eq!(bad.code, Some(1), "{bad:?}");
    assert!(
        bad.stderr.starts_with("error: the API answered 422"),
        "{bad:?}"
    );
    assert!(bad.stderr.contains("top_k"), "{bad:?}");

    let dir = tempfile::tempdir().expect("tempdir");
    let text = dir.path().join("notes.png");
    std::fs::write(&text, "plain text, not an image").expect("writing");
    let text = text.to_string_lossy().into_owned();
    let refused = ragpool(&[&["submit", "image", &text][..], &api].concat(), &[]).await;
    assert_eq!(refused.code, Some(1), "{refused:?}");
    assert!(refused.stderr.contains("415"), "{refused:?}");

    let malformed = ragpool(&[&["status", "not-a-task-id"][..], &api].concat(), &[]).await;
    assert_eq!(malformed.code, Some(1), "{malformed:?}");
    assert!(malformed.stderr.contains("400"), "{malformed:?}");

    stack.shutdown().await;
}

#[tokio::test]
async fn idempotency_keys_return_the_first_task() {
    let stack = Stack::start(None, false).await;
    let args = [
        "submit",
        "answer",
        "Same question?",
        "--idempotency-key",
        "retry-safe-1",
        "--api-url",
        stack.url.as_str(),
    ];
    let first = ragpool(&args, &[]).await.assert_ok().json();
    let second = ragpool(&args, &[]).await.assert_ok().json();
    assert_eq!(first["task_id"], second["task_id"]);
    stack.shutdown().await;
}

#[tokio::test]
async fn waits_for_tasks_to_finish_or_fail_and_retries_them() {
    let stack = Stack::start(None, true).await;
    let api = ["--api-url", stack.url.as_str()];

    let run = ragpool(
        &[&["submit", "query", QUESTION, "--wait", "30"][..], &api].concat(),
        &[],
    )
    .await;
    let task = run.assert_ok().json();
    assert_eq!(task["status"], "finished", "{task:#}");
    assert_eq!(
        task["result"]["citations"][0]["document"], "tides.md",
        "{task:#}"
    );
    assert!(run.stderr.contains("submitted task"), "{run:?}");

    // PNG magic bytes pass the API's check; the executor cannot decode the rest, a
    // permanent failure.
    let dir = tempfile::tempdir().expect("tempdir");
    let broken = dir.path().join("broken.png");
    let mut bytes = png();
    bytes.truncate(20);
    std::fs::write(&broken, bytes).expect("writing");
    let broken = broken.to_string_lossy().into_owned();
    let failed = ragpool(
        &[&["submit", "image", &broken, "--wait", "30"][..], &api].concat(),
        &[],
    )
    .await;
    assert_eq!(failed.code, Some(4), "{failed:?}");
    let task = failed.json();
    assert_eq!(task["status"], "failed", "{task:#}");
    assert!(failed.stderr.contains("task failed"), "{failed:?}");

    let id = task["task_id"].as_str().expect("task_id");
    let retried = ragpool(&[&["retry", id][..], &api].concat(), &[]).await;
    let retried = retried.assert_ok().json();
    assert_eq!(retried["task_id"], id);
    // The answer is read after the retry; a quick executor may already have failed the task
    // again by then, in a new attempt that ended later.
    assert!(
        retried["status"] != "failed" || retried["finished_at"] != task["finished_at"],
        "{retried:#}"
    );
    let again = ragpool(&[&["status", id, "--wait", "30"][..], &api].concat(), &[]).await;
    assert_eq!(again.code, Some(4), "{again:?}");
    assert_eq!(again.json()["status"], "failed");

    stack.shutdown().await;
}

#[tokio::test]
async fn api_keys_go_as_bearer_tokens_from_the_flag_or_the_environment() {
    let stack = Stack::start(Some(&format!("cli:{KEY}:admin")), false).await;
    let api = ["--api-url", stack.url.as_str()];

    let anonymous = ragpool(&[&["stats"][..], &api].concat(), &[]).await;
    assert_eq!(anonymous.code, Some(1), "{anonymous:?}");
    assert!(anonymous.stderr.contains("401"), "{anonymous:?}");

    let by_flag = ragpool(
        &[&["submit", "query", QUESTION, "--api-key", KEY][..], &api].concat(),
        &[],
    )
    .await;
    let id = by_flag.assert_ok().json()["task_id"]
        .as_str()
        .expect("task_id")
        .to_owned();
    let by_env = ragpool(
        &["status", &id],
        &[("RAGPOOL_API_KEY", KEY), ("RAGPOOL_API_URL", &stack.url)],
    )
    .await;
    assert_eq!(by_env.assert_ok().json()["task_id"], id.as_str());

    stack.shutdown().await;
}

#[tokio::test]
async fn bad_input_names_the_flag_or_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing.png");
    let missing = missing.to_string_lossy().into_owned();

    let image = ragpool(&["submit", "image", &missing], &[]).await;
    assert_eq!(image.code, Some(1), "{image:?}");
    assert!(
        image.stderr.contains("cannot read the image file") && image.stderr.contains(&missing),
        "{image:?}"
    );

    let query = ragpool(&["submit", "query", "Q?", "--image", &missing], &[]).await;
    assert_eq!(query.code, Some(1), "{query:?}");
    assert!(
        query.stderr.contains("cannot read --image") && query.stderr.contains(&missing),
        "{query:?}"
    );

    let url = ragpool(&["stats", "--api-url", "localhost"], &[]).await;
    assert_eq!(url.code, Some(1), "{url:?}");
    // Named by its flag; a bare word where a URL belongs may be a secret, so not echoed.
    assert!(
        url.stderr.contains("--api-url") && url.stderr.contains("is not a valid http(s) URL"),
        "{url:?}"
    );
    assert!(!url.stderr.contains("localhost"), "{url:?}");

    // A port nothing listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let down = format!("http://127.0.0.1:{port}");
    let unreachable = ragpool(&["stats"], &[("RAGPOOL_API_URL", &down)]).await;
    assert_eq!(unreachable.code, Some(1), "{unreachable:?}");
    assert!(
        unreachable.stderr.contains("cannot reach the ragpool API")
            && unreachable.stderr.contains("--api-url / RAGPOOL_API_URL")
            && unreachable.stderr.contains(&down),
        "{unreachable:?}"
    );

    let usage = ragpool(&["submit", "query"], &[]).await;
    assert_eq!(usage.code, Some(2), "{usage:?}");
    assert!(usage.stderr.contains("QUESTION"), "{usage:?}");
}

/// The pretty JSON on stdout is one document, whatever the command.
#[tokio::test]
async fn output_is_one_json_document() {
    let stack = Stack::start(None, false).await;
    let run = ragpool(&["stats", "--api-url", &stack.url], &[]).await;
    run.assert_ok();
    assert!(run.stdout.contains("\n  "), "not pretty: {run:?}");
    let _: Value = run.json();
    stack.shutdown().await;
}

/// Waits (polling, up to 30 s) until `probe` returns something.
async fn eventually<T, Fut: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut probe: impl FnMut() -> Fut,
) -> T {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_stream_prints_the_answer_as_it_is_generated() {
    let stack = Stack::start(None, false).await;
    let config = ragpool_api::ApiConfig {
        redis_url: stack.redis_url.clone(),
        ..ragpool_api::ApiConfig::default()
    };
    let broker = ragpool_queue::Broker::connect(config.broker_config().expect("config"))
        .await
        .expect("broker");
    let consumer = broker
        .consumer(ragpool_queue::ConsumerConfig {
            worker_id: "test-worker".into(),
            queues: vec!["answer_generation".into()],
            policy: ragpool_queue::ClaimPolicy::Strict,
            lease: std::time::Duration::from_secs(30),
        })
        .await
        .expect("consumer");
    let url = stack.url.clone();
    let run = tokio::spawn(async move {
        ragpool(
            &[
                "submit",
                "answer",
                "Who streams?",
                "--stream",
                "--api-url",
                &url,
            ],
            &[],
        )
        .await
    });

    // Played by hand as an executor would: two pieces, then, once the CLI follows the task's
    // events, a third and the end.
    let claimed = eventually("the CLI's task to be claimable", || async {
        consumer.try_claim().await.expect("claim")
    })
    .await;
    for piece in ["Hello", " wor"] {
        broker
            .publish_delta(&claimed.lease, piece)
            .await
            .expect("delta");
    }
    let metrics = format!("{}/metrics", stack.url);
    eventually("the CLI to follow the task's events", || async {
        let text = reqwest::get(&metrics).await.ok()?.text().await.ok()?;
        text.lines()
            .any(|l| l.contains("task_id}/events") && l.contains("status=\"200\""))
            .then_some(())
    })
    .await;
    broker
        .publish_delta(&claimed.lease, "ld")
        .await
        .expect("delta");
    broker
        .complete(
            &claimed.lease,
            &serde_json::json!({"answer": "Hello world"}),
        )
        .await
        .expect("complete");

    let run = run.await.expect("the CLI ran");
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.stdout, "Hello world\n", "{run:?}");
    assert!(run.stderr.contains("streaming its answer"), "{run:?}");
    stack.shutdown().await;
}

#[tokio::test]
async fn submit_stream_prints_the_task_when_no_text_comes() {
    // The builtin backend answers in one piece, without streaming.
    let stack = Stack::start(None, true).await;
    let api = ["--api-url", stack.url.as_str()];
    let run = ragpool(
        &[
            &["submit", "answer", QUESTION, "--stream", "--wait", "30"][..],
            &api,
        ]
        .concat(),
        &[],
    )
    .await;
    let task = run.assert_ok().json();
    assert_eq!(task["status"], "finished", "{task:#}");
    stack.shutdown().await;
}
