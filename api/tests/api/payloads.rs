//! Large inputs over HTTP: the backlog limits' 429, a retry whose input is gone, and the
//! detail view's input summary.

use ragpool_api::ApiConfig;
use ragpool_queue::testing::ServerOptions;
use ragpool_queue::{Retry, TaskError, TaskId};
use serde_json::json;

use crate::support::{PNG_1X1, TestApi, b64, json};

/// Bytes one `/api/async/query` of `question` stores as its payload.
fn query_bytes(question: &str) -> u64 {
    json!({ "question": question }).to_string().len() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_backlog_answers_429_naming_the_limit_until_a_claim() {
    let mut config = ApiConfig::default();
    // Two queries' worth (the test API runs one partition).
    let parts = 1u16;
    config.limits.max_queued_payload_bytes = 2 * u64::from(parts) * query_bytes("q");
    let api = TestApi::start_with(config, ServerOptions::default()).await;
    for _ in 0..2 * parts {
        api.submit_query("q").await;
    }
    let r = api
        .post("/api/async/query")
        .json(&json!({ "question": "q" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["retry-after"], "5");
    let (status, body) = json(r).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "max_queued_payload_bytes");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("--max-queued-payload-bytes"), "{message}");

    let stats = json(api.get("/api/queue/stats").send().await.unwrap())
        .await
        .1;
    let fq = stats["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == "full_query")
        .unwrap();
    assert_eq!(
        fq["queued_payload_bytes"],
        2 * u64::from(parts) * query_bytes("q")
    );
    let metrics = api
        .get("/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(&format!(
            "ragpool_api_queued_payload_bytes{{queue=\"full_query\"}} {}",
            2 * u64::from(parts) * query_bytes("q")
        )),
        "{metrics}"
    );

    api.claim("full_query").await;
    api.submit_query("q").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retrying_a_task_whose_input_is_gone_answers_410() {
    let api = TestApi::start().await;
    let r = api
        .post("/api/async/analyze-image")
        .json(&json!({ "image": b64(PNG_1X1), "prompt": "what" }))
        .send()
        .await
        .unwrap();
    let (status, body) = json(r).await;
    assert_eq!(status, 202, "{body}");
    let id: TaskId = body["task_id"].as_str().unwrap().parse().unwrap();
    let claimed = api.claim("image_analysis").await;
    api.broker
        .fail(
            &claimed.lease,
            &TaskError::new("bad_input", "no"),
            Retry::Permanent,
        )
        .await
        .unwrap();

    // The detail view describes the input from its summary.
    let (_, detail) = json(
        api.get(&format!("/api/async/task/{id}/detail"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(detail["payload"]["image_type"], "image/png");
    assert_eq!(detail["payload"]["image_bytes"], PNG_1X1.len());
    assert_eq!(detail["payload"]["prompt"], "what");
    assert_eq!(
        detail["payload"]["input_sha256"].as_str().unwrap().len(),
        64
    );

    // As its failure TTL would.
    let mut conn = redis::Client::open(api.redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg(api.broker.keys().of_task(&id).payload(id.as_str()))
        .query_async(&mut conn)
        .await
        .unwrap();
    let (status, body) = json(
        api.post(&format!("/api/async/task/{id}/retry"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (410, Some("input_gone")),
        "{body}"
    );
}
