//! `ragpool submit --batch`: a JSON Lines file (or stdin) sent in batches of the API's limit,
//! one id printed per line in input order, bad lines named before anything is sent.

mod support;

use serde_json::Value;
use support::{Stack, ragpool, ragpool_with_stdin};

/// The API's count of batch requests answered with `status`.
async fn batch_requests(stack: &Stack, status: u16) -> u64 {
    let metrics = reqwest::get(format!("{}/metrics", stack.url))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    let prefix = format!(
        "ragpool_api_http_requests_total{{method=\"POST\",route=\"/api/async/batch\",status=\"{status}\"}} "
    );
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |n| n.trim().parse().expect("a count"))
}

async fn task(stack: &Stack, id: &str) -> Value {
    let run = ragpool(&["status", id, "--api-url", &stack.url], &[]).await;
    run.assert_ok().json()
}

const FILE: &str = r#"{"kind": "full_query", "question": "one", "idempotency_key": "k"}
{"kind": "complete_answer", "question": "two", "context": "text"}

{"kind": "analyze_image", "image": "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAACklEQVR4nGMAAQAABQABDQottAAAAABJRU5ErkJggg=="}
{"kind": "full_query", "question": "four", "idempotency_key": "k"}
{"kind": "full_query", "question": "five"}
"#;

#[tokio::test]
async fn a_file_is_sent_in_batches_of_the_api_limit_and_ids_print_in_order() {
    let stack = Stack::start_with(None, false, |c| c.limits.max_batch_tasks = 2).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tasks.jsonl");
    std::fs::write(&path, FILE).expect("writing the file");
    let run = ragpool(
        &[
            "submit",
            "--batch",
            path.to_str().unwrap(),
            "--api-url",
            &stack.url,
        ],
        &[],
    )
    .await;
    run.assert_ok();
    let ids: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(ids.len(), 5, "{run:?}");
    let kinds = [
        "full_query",
        "complete_answer",
        "analyze_image",
        "full_query",
        "full_query",
    ];
    for (id, kind) in ids.iter().zip(kinds) {
        assert_eq!(task(&stack, id).await["kind"], kind);
    }
    assert_eq!(ids[3], ids[0], "the same idempotency key is the same task");
    assert_eq!(
        batch_requests(&stack, 202).await,
        3,
        "5 tasks in batches of 2"
    );
}

#[tokio::test]
async fn stdin_is_read_with_a_dash() {
    let stack = Stack::start(None, false).await;
    let run = ragpool_with_stdin(
        &["submit", "--batch", "-", "--api-url", &stack.url],
        &[],
        Some("{\"kind\": \"full_query\", \"question\": \"a\"}\n{\"kind\": \"full_query\", \"question\": \"b\"}\n"),
    )
    .await;
    run.assert_ok();
    let ids: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(ids.len(), 2, "{run:?}");
    assert_eq!(task(&stack, ids[1]).await["status"], "queued");
    assert_eq!(batch_requests(&stack, 202).await, 1);
}

#[tokio::test]
async fn a_bad_line_is_named_and_nothing_is_sent() {
    let stack = Stack::start(None, false).await;
    for (input, line, what) in [
        (
            "{\"kind\": \"full_query\", \"question\": \"a\"}\n{not json\n",
            2,
            "not valid JSON",
        ),
        ("\n\n[1, 2]\n", 3, "not a JSON object"),
        ("{\"question\": \"a\"}\n", 1, "no \"kind\""),
        ("{\"kind\": \"translate\"}\n", 1, "kind must be one of"),
    ] {
        let run = ragpool_with_stdin(
            &["submit", "--batch", "-", "--api-url", &stack.url],
            &[],
            Some(input),
        )
        .await;
        assert_eq!(run.code, Some(1), "{run:?}");
        assert!(
            run.stderr.contains(&format!("stdin line {line}: {what}"))
                && run.stderr.contains("nothing was sent"),
            "{run:?}"
        );
        assert!(run.stdout.is_empty(), "{run:?}");
    }
    assert_eq!(batch_requests(&stack, 202).await, 0);
    assert_eq!(batch_requests(&stack, 422).await, 0);
}

#[tokio::test]
async fn an_item_the_api_refuses_is_named_by_its_line() {
    let stack = Stack::start(None, false).await;
    let run = ragpool_with_stdin(
        &["submit", "--batch", "-", "--api-url", &stack.url],
        &[],
        Some("{\"kind\": \"full_query\", \"question\": \"a\"}\n\n{\"kind\": \"full_query\", \"top_k\": 0, \"question\": \"b\"}\n"),
    )
    .await;
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr.contains("stdin line 3: out_of_range")
            && run.stderr.contains("nothing was queued"),
        "{run:?}"
    );
    assert!(run.stdout.is_empty());
    assert_eq!(batch_requests(&stack, 422).await, 1);
}

#[tokio::test]
async fn an_unreadable_file_names_the_flag() {
    let run = ragpool(&["submit", "--batch", "/nonexistent/tasks.jsonl"], &[]).await;
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr.contains("--batch /nonexistent/tasks.jsonl"),
        "{run:?}"
    );
}
