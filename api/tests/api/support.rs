//! Starts a real `redis-server` and the API in-process on 127.0.0.1:0, and offers a client
//! and a few helpers that act as an executor would.

use std::time::Duration;

use base64::Engine as _;
use ragpool_api::ApiConfig;
use ragpool_queue::testing::{RedisServer, ServerOptions};
use ragpool_queue::{Broker, ClaimPolicy, Claimed, ConsumerConfig};
use reqwest::{RequestBuilder, Response};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The smallest valid PNG (1×1, transparent).
pub const PNG_1X1: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4,
    0x89, 0x00, 0x00, 0x00, 0x0a, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0x00, 0x01, 0x00, 0x00,
    0x05, 0x00, 0x01, 0x0d, 0x0a, 0x2d, 0xb4, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae,
    0x42, 0x60, 0x82,
];

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A running API over its own Redis.
pub struct TestApi {
    pub base: String,
    pub client: reqwest::Client,
    pub broker: Broker,
    pub redis: RedisServer,
    /// Sent as `Authorization: Bearer` by [`TestApi::req`] when set.
    pub key: Option<String>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestApi {
    /// The API with default settings.
    pub async fn start() -> TestApi {
        Self::start_with(ApiConfig::default(), ServerOptions::default()).await
    }

    /// The API with `config` (its Redis URL is replaced) over a Redis started with `opts`.
    pub async fn start_with(config: ApiConfig, opts: ServerOptions) -> TestApi {
        let redis = RedisServer::start_with(opts).expect("starting redis-server");
        let url = redis.url();
        Self::start_through(config, redis, &url).await
    }

    /// The API with `config` over `redis`, reached at `url` (a proxy in front of it).
    pub async fn start_through(mut config: ApiConfig, redis: RedisServer, url: &str) -> TestApi {
        config.redis_url = url.to_string();
        let broker = Broker::connect(config.broker_config().expect("broker config"))
            .await
            .expect("broker");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding 127.0.0.1:0");
        let base = format!("http://{}", listener.local_addr().expect("local addr"));
        let (tx, rx) = oneshot::channel::<()>();
        let server = tokio::spawn(ragpool_api::serve(
            config,
            broker.clone(),
            listener,
            async move {
                let _ = rx.await;
            },
        ));
        TestApi {
            base,
            client: client(),
            broker,
            redis,
            key: None,
            shutdown: Some(tx),
            server: Some(server),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// A request with this API's key, if any.
    pub fn req(&self, method: reqwest::Method, path: &str) -> RequestBuilder {
        let b = self.client.request(method, self.url(path));
        match &self.key {
            Some(k) => b.bearer_auth(k),
            None => b,
        }
    }

    pub fn get(&self, path: &str) -> RequestBuilder {
        self.req(reqwest::Method::GET, path)
    }

    pub fn post(&self, path: &str) -> RequestBuilder {
        self.req(reqwest::Method::POST, path)
    }

    pub fn delete(&self, path: &str) -> RequestBuilder {
        self.req(reqwest::Method::DELETE, path)
    }

    /// Submits a full query and returns the task id.
    pub async fn submit_query(&self, question: &str) -> String {
        let r = self
            .post("/api/async/query")
            .json(&serde_json::json!({ "question": question }))
            .send()
            .await
            .expect("submit");
        let (status, body) = json(r).await;
        assert_eq!(status, 202, "{body}");
        body["task_id"].as_str().expect("task_id").to_string()
    }

    /// Claims the next task from `queue` as a worker would.
    pub async fn claim(&self, queue: &str) -> Claimed {
        let consumer = self
            .broker
            .consumer(ConsumerConfig {
                worker_id: "test-worker".into(),
                queues: vec![queue.to_string()],
                policy: ClaimPolicy::Strict,
                lease: Duration::from_secs(30),
            })
            .await
            .expect("consumer");
        consumer
            .try_claim()
            .await
            .expect("claim")
            .expect("a task to claim")
    }

    /// Stops the server gracefully and returns what `serve` returned.
    pub async fn shutdown(&mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.server.take() {
            Some(h) => h.await.expect("server task"),
            None => Ok(()),
        }
    }

    /// Calls of a Redis command so far (from `INFO commandstats`), to tell when a request
    /// has reached a given step.
    pub async fn command_calls(&self, command: &str) -> u64 {
        let client = redis::Client::open(self.redis.url()).expect("client");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("connection");
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut conn)
            .await
            .expect("INFO");
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

/// The tests' client: it says it is no cross-site form (`X-Ragpool-Client`), as the CLI and
/// the dashboard do, so requests without a JSON body reach their handlers.
fn client() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        "x-ragpool-client",
        reqwest::header::HeaderValue::from_static("test"),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("client")
}

/// Status and JSON body of a response (`Value::Null` when the body is not JSON).
pub async fn json(r: Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let text = r.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Waits until `cond` holds, re-checking every 10 ms, for at most 10 s.
pub async fn until<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
