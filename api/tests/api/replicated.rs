//! `--durability replicated`: a submission is answered 202 only once a Redis replica has it;
//! with no replica it is 503 `not_replicated` with `Retry-After`, and the client's retry with
//! the same idempotency key is accepted once the replica is back. On a Redis Cluster the same
//! holds per master.

use ragpool_api::ApiConfig;
use ragpool_queue::testing::{RedisCluster, RedisServer, ServerOptions};
use ragpool_queue::{Broker, Durability};
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
    // Long enough that a replica that is up acknowledges in time on a loaded machine.
    config.durability.replication_timeout_ms = 2000;
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

/// On a Redis Cluster with a replica per master, a submission waits for the replica of the
/// master serving its partition: with that replica down it is 503 `not_replicated` with
/// `Retry-After`, while a submission to another master's partition is accepted; once the
/// replica is back the retry is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submission_on_a_cluster_waits_for_its_masters_replica() {
    let cluster = tokio::task::spawn_blocking(|| {
        RedisCluster::start_with_replicas(3, ServerOptions::default())
    })
    .await
    .unwrap()
    .expect("three masters with a replica each start");
    let mut config = ApiConfig {
        redis_url: cluster.urls().join(","),
        ..ApiConfig::default()
    };
    config.partitions.partitions = 6;
    config.durability.durability = Durability::Replicated;
    config.durability.replication_timeout_ms = 2000;
    let broker = Broker::connect(config.broker_config().unwrap())
        .await
        .expect("broker");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(ragpool_api::serve(
        config,
        broker.clone(),
        listener,
        async move {
            let _ = stopped.await;
        },
    ));
    let http = reqwest::Client::new();
    let submit = |key: String| {
        let request = http
            .post(format!("{base}/api/async/query"))
            .header("x-ragpool-client", "test")
            .header("Idempotency-Key", key)
            .json(&json!({ "question": "kept across a failover?" }));
        async move {
            let r = request.send().await.unwrap();
            let retry_after = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            let (status, body) = json(r).await;
            (status, body, retry_after)
        }
    };
    // Stops the replica of the master serving partition 0, and finds an idempotency key
    // whose partition that master serves and one served by another master.
    let keys = broker.keys().clone();
    let (mut cluster, replica, alone, elsewhere) = tokio::task::spawn_blocking(move || {
        let mut cluster = cluster;
        let master_of_key = |cluster: &RedisCluster, key: &str| {
            cluster
                .master_of(keys.of_idempotency(key).slot())
                .expect("every slot has a master")
        };
        let master = master_of_key(&cluster, "first");
        let replica = cluster
            .replica_of(master)
            .expect("the master has a replica");
        cluster.nodes()[replica].stop().expect("the replica stops");
        let mut candidates = (0..).map(|n| format!("key-{n}"));
        let alone = candidates
            .by_ref()
            .find(|k| master_of_key(&cluster, k) == master)
            .unwrap();
        let elsewhere = candidates
            .find(|k| master_of_key(&cluster, k) != master)
            .unwrap();
        (cluster, replica, alone, elsewhere)
    })
    .await
    .unwrap();
    let (status, body, retry_after) = submit(alone.clone()).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "not_replicated", "{body}");
    assert_eq!(retry_after.as_deref(), Some("1"));
    let (status, body, _) = submit(elsewhere).await;
    assert_eq!(status, 202, "another master's partition: {body}");

    cluster = tokio::task::spawn_blocking(move || {
        cluster
            .start_again(replica)
            .expect("the replica is back in sync");
        cluster
    })
    .await
    .unwrap();
    let (status, body, _) = submit(alone).await;
    assert_eq!(status, 202, "{body}");
    let _ = stop.send(());
    server.await.unwrap().unwrap();
    drop(cluster);
}
