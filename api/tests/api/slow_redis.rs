//! A Redis whose replies are late: a submission is never answered 503 as if nothing happened
//! while its task exists. A reply within `--redis-response-timeout-seconds` is waited for; a
//! reply past it is answered `503 outcome_unknown`, and a retry with the same key returns the
//! task the first call made.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ragpool_api::ApiConfig;
use ragpool_queue::testing::RedisServer;
use ragpool_queue::{Broker, BrokerConfig};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{TestApi, json};

/// A TCP proxy in front of Redis that holds every reply for a settable delay.
struct SlowProxy {
    addr: SocketAddr,
    delay_ms: Arc<AtomicU64>,
}

impl SlowProxy {
    async fn start(redis: SocketAddr) -> SlowProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let delay_ms = Arc::new(AtomicU64::new(0));
        let delay = Arc::clone(&delay_ms);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(redis).await else {
                    continue;
                };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                });
                let delay = Arc::clone(&delay);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = server_read.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        let ms = delay.load(Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        if client_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        SlowProxy { addr, delay_ms }
    }

    fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    fn delay(&self, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }
}

/// The API through a slow proxy, and a broker that reaches Redis directly.
async fn start(config: ApiConfig) -> (TestApi, SlowProxy, Broker) {
    let redis = RedisServer::start().expect("redis-server");
    let direct = Broker::connect(BrokerConfig::from_url(&redis.url()).unwrap())
        .await
        .unwrap();
    let port = redis.port();
    let proxy = SlowProxy::start(SocketAddr::from(([127, 0, 0, 1], port))).await;
    let api = TestApi::start_through(config, redis, &proxy.url()).await;
    // One submission while replies are prompt: the connection is up, the layout checked and
    // the script loaded, so a late reply is the script call's own.
    api.submit_query("warm-up").await;
    (api, proxy, direct)
}

async fn tasks(direct: &Broker) -> u64 {
    direct
        .queue_stats("full_query")
        .await
        .unwrap()
        .total_enqueued
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_reply_is_waited_for_not_answered_503() {
    let (api, proxy, direct) = start(ApiConfig::default()).await;
    // Later than the 5 s a Redis call used to be given.
    proxy.delay(Duration::from_secs(6));
    let r = api
        .post("/api/async/query")
        .json(&json!({ "question": "slow" }))
        .send()
        .await
        .unwrap();
    let (status, body) = json(r).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(tasks(&direct).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_past_the_timeout_says_the_task_may_exist_and_a_retry_returns_it() {
    let config = ApiConfig {
        redis_response_timeout_seconds: 2,
        ..ApiConfig::default()
    };
    let (api, proxy, direct) = start(config).await;
    proxy.delay(Duration::from_secs(3));
    let submit = || {
        api.post("/api/async/query")
            .header("Idempotency-Key", "late-1")
            .json(&json!({ "question": "late" }))
            .send()
    };
    let r = submit().await.unwrap();
    assert_eq!(r.headers()["retry-after"], "1");
    let (status, body) = json(r).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "outcome_unknown", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("may have been created"), "{message}");
    // Redis ran the script at once; only its reply was late.
    assert_eq!(tasks(&direct).await, 2, "the task exists");

    proxy.delay(Duration::ZERO);
    let r = submit().await.unwrap();
    assert_eq!(r.headers()["idempotent-replayed"], "true");
    let (status, body) = json(r).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(tasks(&direct).await, 2, "the retry made no second task");
}
