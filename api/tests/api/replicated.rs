//! `--durability replicated`: a submission is answered 202 only once a Redis replica has it;
//! with no replica it is 503 `not_replicated` with `Retry-After`, and the client's retry with
//! the same idempotency key is accepted once the replica is back.

use ragpool_api::ApiConfig;
use ragpool_queue::Durability;
use ragpool_queue::testing::{RedisServer, ServerOptions};
use serde_json::json;

use crate::support::{TestApi, json};

async fn replica_of(port: u16) -> RedisServer {
    tokio::task::spawn_blocking(move || {
        let replica =
            RedisServer::start_replica_of(port, ServerOptions::default()).expect("replica starts");
        replica.wait_until_in_sync().expect("replica in sync");
        replica
    })
    .await
    .unwrap()
}

async fn submit(api: &TestApi, key: &str) -> (u16, serde_json::Value, Option<String>) {
    let r = api
        .post("/api/async/query")
        .header("Idempotency-Key", key)
        .json(&json!({ "question": "kept across a failover?" }))
        .send()
        .await
        .unwrap();
    let retry_after = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let (status, body) = json(r).await;
    (status, body, retry_after)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submission_waits_for_a_replica() {
    let mut config = ApiConfig::default();
    config.durability.durability = Durability::Replicated;
    config.durability.replication_timeout_ms = 200;
    let api = TestApi::start_with(config, ServerOptions::default()).await;

    // No replica yet.
    let (status, body, retry_after) = submit(&api, "k1").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "not_replicated", "{body}");
    assert_eq!(retry_after.as_deref(), Some("1"));

    let mut replica = replica_of(api.redis.port()).await;
    let (status, body, _) = submit(&api, "k1").await;
    assert_eq!(status, 202, "{body}");
    let first = body["task_id"].as_str().unwrap().to_string();
    let (status, body, _) = submit(&api, "k2").await;
    assert_eq!(status, 202, "{body}");
    assert_ne!(body["task_id"], first.as_str());

    let mut replica = tokio::task::spawn_blocking(move || {
        replica.stop().expect("replica stops");
        replica
    })
    .await
    .unwrap();
    let (status, body, retry_after) = submit(&api, "k3").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "not_replicated", "{body}");
    assert_eq!(retry_after.as_deref(), Some("1"));
    // Reads need no replica.
    let r = api
        .get(&format!("/api/async/task/{first}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let _replica = tokio::task::spawn_blocking(move || {
        replica.start_again().expect("replica restarts");
        replica.wait_until_in_sync().expect("replica in sync");
        replica
    })
    .await
    .unwrap();
    let (status, body, _) = submit(&api, "k3").await;
    assert_eq!(status, 202, "{body}");
}
