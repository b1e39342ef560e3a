//! Test fixtures: pools, observations, a fake observer, and a scripted Kubernetes API server
//! built on kube's mock service that checks each request the reconciler makes, in order.

use std::collections::VecDeque;
use std::sync::Mutex;

use async_trait::async_trait;
use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use kube::{Client, Resource};
use ragpool_queue::WorkerInfo;
use serde_json::{Value, json};

use crate::crd::{
    ExecutorSpec, QueueName, QueuesSpec, RagWorkerPool, RagWorkerPoolSpec, RedisSpec, ScalingSpec,
};
use crate::observe::{Observation, ObserveError, Observer};

/// A pool spec serving queue `q` at `redis://redis:6379`, scaled between 0 and 20 replicas.
pub fn spec() -> RagWorkerPoolSpec {
    RagWorkerPoolSpec {
        queues: QueuesSpec {
            names: vec![QueueName("image_analysis".into())],
            priority: Default::default(),
            weights: None,
        },
        redis: RedisSpec {
            url: Some("redis://redis:6379".into()),
            ..RedisSpec::default()
        },
        executor: ExecutorSpec::with_image("ragpool/executor:test"),
        scaling: ScalingSpec::between(0, 20),
    }
}

/// A pool named `pool` in namespace `ns` with the given spec.
pub fn pool(spec: RagWorkerPoolSpec) -> RagWorkerPool {
    let mut pool = RagWorkerPool::new("pool", spec);
    pool.meta_mut().namespace = Some("ns".into());
    pool.meta_mut().uid = Some("uid-1".into());
    pool.meta_mut().generation = Some(1);
    pool
}

/// An observation at `at_s` seconds with `queued` waiting and `started` running.
pub fn obs(at_s: u64, queued: u64, started: u64) -> Observation {
    Observation {
        queued,
        started,
        at_ms: at_s * 1000,
        ..Observation::default()
    }
}

/// A registry record for an executor in pod `pod` running `in_flight` tasks.
pub fn worker(pod: &str, in_flight: u32) -> WorkerInfo {
    WorkerInfo {
        id: format!("id-{pod}"),
        pod: Some(pod.into()),
        in_flight,
        concurrency: 4,
        ..WorkerInfo::default()
    }
}

/// An observer that returns scripted results, one per call, and repeats the last one. It
/// keeps the partition count of each pool it was asked about, as the Redis observer would
/// connect with it.
pub struct FakeObserver {
    script: Mutex<VecDeque<Result<Observation, ObserveError>>>,
    partitions: Mutex<Vec<u16>>,
}

impl FakeObserver {
    pub fn new(script: Vec<Result<Observation, ObserveError>>) -> Self {
        Self {
            script: Mutex::new(script.into()),
            partitions: Mutex::default(),
        }
    }

    /// The partition counts observed with, one per call.
    pub fn partitions(&self) -> Vec<u16> {
        self.partitions
            .lock()
            .map(|p| p.clone())
            .unwrap_or_default()
    }
}

#[async_trait]
impl Observer for FakeObserver {
    async fn observe(&self, pool: &RagWorkerPool) -> Result<Observation, ObserveError> {
        if let Ok(mut seen) = self.partitions.lock() {
            seen.push(
                pool.spec
                    .redis
                    .partition_count(ragpool_queue::AUTO_PARTITIONS),
            );
        }
        let mut script = self
            .script
            .lock()
            .map_err(|e| ObserveError::Config(e.to_string()))?;
        let next = if script.len() > 1 {
            script.pop_front()
        } else {
            script.front().cloned()
        };
        next.unwrap_or_else(|| Err(ObserveError::Config("script is empty".into())))
    }
}

/// One expected request and the reply to it.
pub struct Exchange {
    pub method: Method,
    /// The path, without the query string.
    pub path: String,
    /// `path` is only the start of the path (for names the client makes up, such as an
    /// Event's).
    pub prefix: bool,
    /// Substrings the query string must contain (for example `fieldManager=ragpool-operator`).
    pub query: Vec<String>,
    /// Called with the request body (JSON, `Null` when empty) to assert on it.
    pub check: Box<dyn Fn(&Value) + Send>,
    pub status: StatusCode,
    /// The reply body; `Null` echoes the request body (what the API server does for a
    /// successful apply or create, near enough).
    pub reply: Value,
}

impl Exchange {
    pub fn new(method: Method, path: &str) -> Self {
        Self {
            method,
            path: path.into(),
            prefix: false,
            query: Vec::new(),
            check: Box::new(|_| {}),
            status: StatusCode::OK,
            reply: Value::Null,
        }
    }

    /// Accepts any path that starts with the given one.
    pub fn prefix(mut self) -> Self {
        self.prefix = true;
        self
    }

    pub fn query(mut self, part: &str) -> Self {
        self.query.push(part.into());
        self
    }

    pub fn check(mut self, f: impl Fn(&Value) + Send + 'static) -> Self {
        self.check = Box::new(f);
        self
    }

    pub fn reply(mut self, status: StatusCode, body: Value) -> Self {
        self.status = status;
        self.reply = body;
        self
    }
}

/// A `404 Not Found` status body.
pub fn not_found(kind: &str, name: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("{kind} \"{name}\" not found"), "reason": "NotFound", "code": 404
    })
}

/// Starts a mock API server that expects exactly `script`, in order. The returned handle
/// resolves once every exchange happened; it panics on the first mismatch.
pub fn mock_api(script: Vec<Exchange>) -> (Client, tokio::task::JoinHandle<Vec<String>>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(async move {
        let mut seen = Vec::new();
        for (i, ex) in script.into_iter().enumerate() {
            let Some((request, send)) = handle.next_request().await else {
                panic!(
                    "request {i} ({} {}) never came; saw {seen:?}",
                    ex.method, ex.path
                );
            };
            let line = format!("{} {}", request.method(), request.uri());
            assert_eq!(
                request.method(),
                ex.method,
                "request {i}: {line}; before: {seen:?}"
            );
            let path = request.uri().path();
            if ex.prefix {
                assert!(
                    path.starts_with(&ex.path),
                    "request {i}: {line} is not under {}; before: {seen:?}",
                    ex.path
                );
            } else {
                assert_eq!(path, ex.path, "request {i}: {line}; before: {seen:?}");
            }
            let query = request.uri().query().unwrap_or_default().to_owned();
            for part in &ex.query {
                assert!(
                    query.contains(part.as_str()),
                    "request {i}: {line} lacks {part}"
                );
            }
            let bytes = request
                .into_body()
                .collect_bytes()
                .await
                .unwrap_or_default();
            let body: Value = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).unwrap_or(Value::Null)
            };
            (ex.check)(&body);
            seen.push(line);
            let reply = if ex.reply.is_null() { &body } else { &ex.reply };
            let reply = serde_json::to_vec(reply).unwrap_or_default();
            let mut response = Response::new(Body::from(reply));
            *response.status_mut() = ex.status;
            send.send_response(response);
        }
        seen
    });
    (Client::new(service, "default"), server)
}
