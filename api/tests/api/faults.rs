//! Redis going away: submissions and reads fail with 503 and Retry-After, nothing
//! half-written is left, and once Redis is back everything works with nothing lost.

use ragpool_api::ApiConfig;
use ragpool_queue::testing::ServerOptions;
use serde_json::json;

use crate::support::{TestApi, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_is_503_and_recovery_loses_nothing() {
    let mut api = TestApi::start_with(
        ApiConfig::default(),
        ServerOptions {
            aof: true,
            ..ServerOptions::default()
        },
    )
    .await;
    let before = api.submit_query("before the crash").await;

    api.redis.kill().expect("killing redis-server");

    let r = api
        .post("/api/async/query")
        .header("Idempotency-Key", "during-outage")
        .json(&json!({ "question": "during the outage" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["retry-after"], "1");
    let (status, body) = json(r).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable");

    for path in [
        format!("/api/async/task/{before}"),
        "/readyz".to_string(),
        "/api/queue/stats".to_string(),
    ] {
        let r = api.get(&path).send().await.unwrap();
        assert_eq!(r.status(), 503, "{path}");
        assert!(r.headers().contains_key("retry-after"), "{path}");
        assert_eq!(json(r).await.1["error"]["code"], "unavailable", "{path}");
    }
    let (status, _) = json(api.get("/healthz").send().await.unwrap()).await;
    assert_eq!(status, 200, "the process itself is alive");

    api.redis.start_again().expect("restarting redis-server");

    // A client retries as told; the key makes the retries safe.
    let mut accepted = None;
    for _ in 0..20 {
        let r = api
            .post("/api/async/query")
            .header("Idempotency-Key", "during-outage")
            .json(&json!({ "question": "during the outage" }))
            .send()
            .await
            .unwrap();
        let (status, body) = json(r).await;
        if status == 202 {
            accepted = Some(body);
            break;
        }
        assert_eq!(status, 503, "{body}");
    }
    let accepted = accepted.expect("a submission was accepted after Redis came back");
    assert_eq!(accepted["status"], "queued");

    let (status, body) = json(
        api.get(&format!("/api/async/task/{before}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["status"], "queued",
        "the task from before the crash is kept"
    );
    let (status, _) = json(api.get("/readyz").send().await.unwrap()).await;
    assert_eq!(status, 200);

    // Exactly the two accepted tasks exist: the refused submission left nothing.
    let stats = api.broker.queue_stats("full_query").await.unwrap();
    assert_eq!(stats.total_enqueued, 2);
    assert_eq!(stats.queued, 2);
    api.shutdown().await.unwrap();
}
