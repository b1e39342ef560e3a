//! The submission budget against hostile clients, through the real `ragpool-api` binary:
//! many large images at once keep its peak memory within the budget plus its baseline, one
//! key's slow bodies cannot starve another key, a body has a total deadline, a request
//! without a body reserves nothing, and a body declared over the limit is refused from its
//! header.

use std::sync::Arc;
use std::time::Duration;

use ragpool_queue::testing::RedisServer;
use ragpool_queue::{Broker, BrokerConfig};
use serde_json::json;

use crate::process::{ApiProcess, Trickler, head, post_raw, read_answer, send_head};
use crate::support::{PNG_1X1, b64};

const MIB: u64 = 1024 * 1024;
/// The default budget, `--max-reserved-submission-bytes`.
const BUDGET: u64 = 256 * MIB;
const ALICE: &str = "aaaaaaaaaaaaaaaaaaaa";
const BOB: &str = "bbbbbbbbbbbbbbbbbbbb";

fn json_head(path: &str, length: usize, key: Option<&str>) -> Vec<u8> {
    let mut headers = vec![
        ("Content-Type", "application/json".to_string()),
        ("Content-Length", length.to_string()),
    ];
    if let Some(key) = key {
        headers.push(("Authorization", format!("Bearer {key}")));
    }
    head("POST", path, &headers)
}

/// A 10 MiB image (the default image limit) as a JSON body: about 13.3 MiB of base64.
fn large_image_body() -> Vec<u8> {
    serde_json::to_vec(&json!({ "image": b64(&large_image()), "prompt": "what is it?" })).unwrap()
}

/// A 10 MiB PNG, as far as the API looks.
fn large_image() -> Vec<u8> {
    let mut image = PNG_1X1.to_vec();
    // Incompressible filler after a valid PNG header: the API checks the type only.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    image.extend((0..10 * MIB as usize - PNG_1X1.len()).map(|_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x as u8
    }));
    image
}

const BOUNDARY: &str = "ragpool-test-boundary";

/// A 10 MiB image as a multipart body, with a prompt.
fn large_multipart_body() -> Vec<u8> {
    let mut body = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\nwhat is it?\r\n\
         --{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\
         Content-Type: image/png\r\n\r\n"
    )
    .into_bytes();
    body.extend(large_image());
    body.extend(format!("\r\n--{BOUNDARY}--\r\n").into_bytes());
    body
}

/// The most a submission may hold at its peak, in bodies: what [`COPIES`] and
/// [`MULTIPART_COPIES`] reserve (`api/src/budget.rs`) must cover it.
const MAX_BODIES_HELD: u64 = 2;

/// What a process holds apart from its submissions' copies, which these measurements allow
/// for: the allocator's arenas, a connection's buffers.
const FIXED: u64 = 8 * MIB;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_submission_holds_its_body_at_most_twice() {
    let redis = RedisServer::start().expect("redis-server");
    let batch = json!({ "tasks": [
        { "kind": "analyze_image", "image": b64(&large_image()), "prompt": "what is it?" },
    ] });
    let cases = [
        (
            "/api/async/analyze-image",
            "application/json",
            large_image_body(),
        ),
        (
            "/api/async/analyze-image",
            "multipart/form-data; boundary=ragpool-test-boundary",
            large_multipart_body(),
        ),
        (
            "/api/async/batch",
            "application/json",
            serde_json::to_vec(&batch).unwrap(),
        ),
    ];
    for (path, content_type, body) in cases {
        for at_once in [1u64, 3] {
            // A fresh process each time, so its peak is this submission's alone.
            let api = ApiProcess::start_on(&redis.url(), &[]).await;
            let small = serde_json::to_vec(&json!({ "image": b64(PNG_1X1) })).unwrap();
            for _ in 0..5 {
                let r = api
                    .client
                    .post(api.url("/api/async/analyze-image"))
                    .header("Content-Type", "application/json")
                    .body(small.clone())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 202);
            }
            let baseline = api.peak_rss();
            let body = Arc::new(body.clone());
            let head = head(
                "POST",
                path,
                &[
                    ("Content-Type", content_type.to_string()),
                    ("Content-Length", body.len().to_string()),
                    ("x-ragpool-client", "test".to_string()),
                ],
            );
            let answers = futures::future::join_all(
                (0..at_once).map(|_| post_raw(api.addr, head.clone(), Arc::clone(&body))),
            )
            .await;
            for answer in &answers {
                assert_eq!(answer.as_ref().map(|a| a.0), Some(202), "{answer:?}");
            }
            let grew = api.peak_rss() - baseline;
            let len = body.len() as u64;
            eprintln!(
                "{path} {content_type}: {at_once} x {len} byte body at once: VmHWM +{} KiB, {:.2} bodies each",
                grew / 1024,
                grew as f64 / (at_once * len) as f64
            );
            assert!(
                grew <= at_once * MAX_BODIES_HELD * len + FIXED,
                "{path}: {at_once} x {len} byte {content_type} bodies took {grew} bytes"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_large_images_keep_peak_memory_within_budget_plus_baseline() {
    let redis = RedisServer::start().expect("redis-server");
    let api = ApiProcess::start_on(&redis.url(), &[]).await;
    let small = serde_json::to_vec(&json!({ "image": b64(PNG_1X1) })).unwrap();
    for _ in 0..5 {
        let r = api
            .client
            .post(api.url("/api/async/analyze-image"))
            .header("Content-Type", "application/json")
            .body(small.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    let baseline = api.peak_rss();

    let body = Arc::new(large_image_body());
    let head = json_head("/api/async/analyze-image", body.len(), None);
    let answers = futures::future::join_all(
        (0..19).map(|_| post_raw(api.addr, head.clone(), Arc::clone(&body))),
    )
    .await;
    let peak = api.peak_rss();

    let mut accepted = 0;
    for answer in &answers {
        match answer {
            Some((202, _)) => accepted += 1,
            Some((503, body)) => assert_eq!(body["error"]["code"], "over_capacity", "{body}"),
            // Refused before its body was read: the server closed on the rest of it.
            None => {}
            Some(other) => panic!("unexpected answer {other:?}"),
        }
    }
    eprintln!(
        "body {} bytes; baseline VmHWM {} KiB; peak VmHWM {} KiB (+{} KiB); {accepted} of 19 accepted",
        body.len(),
        baseline / 1024,
        peak / 1024,
        (peak - baseline) / 1024
    );
    assert!(accepted >= 1, "the budget admits work: {answers:?}");
    assert!(
        peak <= baseline + BUDGET,
        "peak {peak} over baseline {baseline} + budget {BUDGET}"
    );
    // Every accepted submission is a task, and no refused one is.
    let broker = Broker::connect(BrokerConfig::from_url(&redis.url()).unwrap())
        .await
        .unwrap();
    let stats = broker.queue_stats("image_analysis").await.unwrap();
    assert_eq!(stats.total_enqueued, 5 + accepted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_keys_trickling_bodies_leave_another_keys_submissions_accepted() {
    let redis = RedisServer::start().expect("redis-server");
    let keys = format!("alice:{ALICE},bob:{BOB}");
    let api = ApiProcess::start_on(&redis.url(), &[("RAGPOOL_API_KEYS", &keys)]).await;
    let declared = 16 * MIB as usize;
    let mut trickling = Vec::new();
    let mut one = 0;
    for _ in 0..16 {
        let head = json_head("/api/async/query", declared, Some(ALICE));
        trickling.push(Trickler::start(api.addr, head, Duration::from_millis(200)).await);
        if trickling.len() == 1 {
            one = api
                .until_in_flight("held alice's first body", |n| n > 0)
                .await as u64;
        }
    }
    // As many bodies as fit in half the budget are held; every one past that is answered
    // at once.
    let holdable = ((BUDGET / 2) / one).max(1) as usize;
    let deadline = tokio::time::Instant::now() + crate::process::PATIENCE;
    while trickling.iter().filter(|t| t.answered()).count() < 16 - holdable {
        assert!(
            tokio::time::Instant::now() < deadline,
            "alice's extra bodies are refused"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut refused = 0;
    let mut held = Vec::new();
    for t in trickling {
        if t.answered() {
            let (status, body) = t.answer().await.expect("an answer");
            assert_eq!(
                (status, body["error"]["code"].as_str()),
                (429, Some("over_key_share")),
                "{body}"
            );
            refused += 1;
        } else {
            held.push(t);
        }
    }
    let alice_holds = api.in_flight().await;
    assert!(
        alice_holds as u64 <= BUDGET / 2,
        "one key holds {alice_holds} bytes, over half the budget"
    );

    for i in 0..10 {
        let r = api
            .client
            .post(api.url("/api/async/query"))
            .bearer_auth(BOB)
            .json(&json!({ "question": format!("bob {i}") }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "bob's submission {i}");
    }
    eprintln!(
        "alice: {} bodies held ({alice_holds} bytes reserved), {refused} refused",
        held.len()
    );
    assert!(refused > 0, "alice's bodies past her share are refused");
    let metrics = api.metrics().await;
    assert!(
        metrics.contains(r#"route="/api/async/query",status="429""#),
        "refusals are counted under their route:\n{metrics}"
    );

    // A client that goes away gives its reservation back at once.
    for t in held {
        t.give_up().await;
    }
    api.until_in_flight("back to 0", |n| n == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_must_arrive_whole_within_the_deadline() {
    let redis = RedisServer::start().expect("redis-server");
    let api = ApiProcess::start_on(&redis.url(), &[("RAGPOOL_BODY_DEADLINE_SECONDS", "1")]).await;
    // A byte every 100 ms never pauses long enough for the pause timeout (30 s).
    let head = json_head("/api/async/query", 1024 * 1024, None);
    let slow = Trickler::start(api.addr, head, Duration::from_millis(100)).await;
    let (status, body) = slow.answer().await.expect("an answer");
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (408, Some("body_timeout")),
        "{body}"
    );
    api.until_in_flight("back to 0", |n| n == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_a_body_reserves_nothing_whatever_its_length_says() {
    let redis = RedisServer::start().expect("redis-server");
    let api = ApiProcess::start_on(&redis.url(), &[]).await;
    let r = api
        .client
        .post(api.url("/api/async/query"))
        .json(&json!({ "question": "q" }))
        .send()
        .await
        .unwrap();
    let task = r.json::<serde_json::Value>().await.unwrap()["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    // An event stream with a 16 MiB Content-Length and no body: its response head says the
    // handler runs, and the stream stays open.
    let head = head(
        "GET",
        &format!("/api/async/task/{task}/events"),
        &[("Content-Length", (16 * MIB).to_string())],
    );
    let mut stream = send_head(api.addr, &head).await;
    let mut first = [0u8; 12];
    tokio::time::timeout(crate::process::PATIENCE, async {
        use tokio::io::AsyncReadExt as _;
        stream.read_exact(&mut first).await
    })
    .await
    .expect("the stream answers in time")
    .expect("the response head");
    assert_eq!(&first, b"HTTP/1.1 200");
    assert_eq!(
        api.in_flight().await,
        0,
        "a request without a body holds budget"
    );
    drop(stream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_declared_over_the_limit_is_refused_from_its_header() {
    let redis = RedisServer::start().expect("redis-server");
    let api = ApiProcess::start_on(&redis.url(), &[]).await;
    // Only the head is sent: the answer must not wait for a body.
    let mut stream = send_head(api.addr, &json_head("/api/async/query", 1 << 30, None)).await;
    let (status, body) = read_answer(&mut stream).await.expect("an answer");
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (413, Some("body_too_large")),
        "{body}"
    );
    assert_eq!(api.in_flight().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_of_unknown_length_is_refused_once_past_the_limit() {
    use tokio::io::AsyncWriteExt as _;

    let redis = RedisServer::start().expect("redis-server");
    let api = ApiProcess::start_on(&redis.url(), &[("RAGPOOL_MAX_BODY_BYTES", "65536")]).await;
    let head = head(
        "POST",
        "/api/async/query",
        &[
            ("Content-Type", "application/json".to_string()),
            ("Transfer-Encoding", "chunked".to_string()),
        ],
    );
    let mut stream = send_head(api.addr, &head).await;
    // One byte over the limit, and the body not ended: the server must stop reading.
    let chunk = vec![b' '; 65_537];
    stream
        .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
        .await
        .unwrap();
    stream.write_all(&chunk).await.unwrap();
    stream.write_all(b"\r\n").await.unwrap();
    let (status, body) = read_answer(&mut stream).await.expect("an answer");
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (413, Some("body_too_large")),
        "{body}"
    );
    api.until_in_flight("back to 0", |n| n == 0).await;
}

/// `{"question": "q", "pad": [0,0,0,…]}`: JSON whose parsed tree would be many times its size.
fn crafted_body(len: usize, batch: bool) -> Vec<u8> {
    let (open, close): (&[u8], &[u8]) = if batch {
        (
            br#"{"tasks":[{"kind":"full_query","question":"q","pad":["#,
            b"0]}]}",
        )
    } else {
        (br#"{"question":"q","pad":["#, b"0]}")
    };
    let zeros = (len - open.len() - close.len()) / 2;
    let mut body = open.to_vec();
    body.extend(b"0,".repeat(zeros));
    body.extend_from_slice(close);
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crafted_json_body_costs_no_more_than_its_reservation() {
    let redis = RedisServer::start().expect("redis-server");
    let api = ApiProcess::start_on(&redis.url(), &[]).await;
    for (path, batch) in [("/api/async/query", false), ("/api/async/batch", true)] {
        let body = Arc::new(crafted_body(16 * MIB as usize - 64, batch));
        let before = api.peak_rss();
        let head = json_head(path, body.len(), None);
        let answer = post_raw(api.addr, head, Arc::clone(&body)).await;
        assert_eq!(answer.map(|a| a.0), Some(202), "{path}");
        let grew = api.peak_rss().saturating_sub(before);
        eprintln!(
            "{path}: {} byte body, VmHWM +{} KiB",
            body.len(),
            grew / 1024
        );
        assert!(
            grew <= MAX_BODIES_HELD * body.len() as u64,
            "{path}: a {} byte body took {grew} bytes",
            body.len()
        );
    }
}
