//! The partition count at start-up: an API configured with another count than the
//! key prefix's refuses to start, with the message that says how to fix it; the same count
//! starts; and with Redis down at start it starts anyway and answers `500 misconfigured` on
//! first use once Redis is back.

use ragpool_api::ApiConfig;
use ragpool_queue::testing::{RedisServer, ServerOptions};
use ragpool_queue::{Broker, BrokerConfig};
use serde_json::json;

use crate::support::{json, until};

/// An API configuration for `redis` with `partitions`.
fn config(redis: &RedisServer, partitions: u16) -> ApiConfig {
    let mut config = ApiConfig {
        redis_url: redis.url(),
        ..ApiConfig::default()
    };
    config.partitions.partitions = partitions;
    config
}

/// Records the key prefix's partition count the way any process's first use does.
async fn record(redis: &RedisServer, partitions: u16) {
    let mut config = BrokerConfig::from_url(&redis.url()).expect("url");
    config.partitions = partitions;
    let broker = Broker::connect(config).await.expect("broker");
    broker.check_layout().await.expect("recording the count");
}

async fn serve_until_stopped(
    config: ApiConfig,
) -> (
    String,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let broker = Broker::connect(config.broker_config().expect("broker config"))
        .await
        .expect("broker");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(ragpool_api::serve(config, broker, listener, async move {
        let _ = rx.await;
    }));
    (base, tx, server)
}

#[tokio::test]
async fn another_count_than_the_recorded_one_stops_the_start() {
    let redis = RedisServer::start().expect("redis-server");
    record(&redis, 1).await;
    let (_, _stop, server) = serve_until_stopped(config(&redis, 6)).await;
    let err = server
        .await
        .expect("server task")
        .expect_err("an API with 6 partitions on a key prefix of 1 must not start");
    let message = format!("{err:#}");
    assert!(
        message.contains("\"ragpool\" is laid out in 1 partition(s)")
            && message.contains("configured with 6")
            && message.contains("ragpool repartition --partitions 6"),
        "{message}"
    );
}

#[tokio::test]
async fn the_recorded_count_starts_and_serves() {
    let redis = RedisServer::start().expect("redis-server");
    record(&redis, 6).await;
    let (base, stop, server) = serve_until_stopped(config(&redis, 6)).await;
    let r = reqwest::Client::new()
        .post(format!("{base}/api/async/query"))
        .json(&json!({ "question": "six?" }))
        .send()
        .await
        .expect("submit");
    let (status, body) = json(r).await;
    assert_eq!(status, 202, "{body}");
    let _ = stop.send(());
    server.await.expect("server task").expect("a clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_at_start_the_mismatch_shows_on_first_use() {
    let mut redis = RedisServer::start_with(ServerOptions {
        aof: true,
        ..ServerOptions::default()
    })
    .expect("redis-server");
    record(&redis, 1).await;
    redis.stop().expect("stopping redis-server");

    let (base, stop, server) = serve_until_stopped(config(&redis, 6)).await;
    let client = reqwest::Client::new();
    until("the API serves without Redis", || async {
        client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(
        !server.is_finished(),
        "an unreachable Redis stopped the start"
    );

    redis.start_again().expect("restarting redis-server");
    // A client retries a 503 as told; once Redis answers, the count is checked.
    let mut answer = None;
    for _ in 0..20 {
        let r = client
            .post(format!("{base}/api/async/query"))
            .json(&json!({ "question": "where?" }))
            .send()
            .await
            .expect("submit");
        let (status, body) = json(r).await;
        if status != 503 {
            answer = Some((status, body));
            break;
        }
    }
    let (status, body) = answer.expect("an answer other than 503 once Redis is back");
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["code"], "misconfigured", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("laid out in 1 partition(s)") && message.contains("configured with 6"),
        "{message}"
    );
    let _ = stop.send(());
    server.await.expect("server task").expect("a clean stop");
}
