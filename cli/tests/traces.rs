//! Traces from submission to model call: the `ragpool api` and `ragpool executor` processes
//! export to an OTLP receiver in this test (real OTLP/HTTP protobuf, decoded with the
//! `opentelemetry-proto` types), and each task is one trace: the API's request span, the
//! executor's task span (its child), and the backend request the RAG service received as
//! `traceparent`. A retried task's second attempt is a second task span in the same trace,
//! linked to the first.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use ragpool_queue::testing::RedisServer;
use ragpool_queue::{Broker, BrokerConfig, TaskId, TaskState};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::Notify;

const PATIENCE: Duration = Duration::from_secs(30);

/// A span as received, with the service that sent it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    span: Span,
}

impl Received {
    fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }

    fn parent_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }

    /// A string or integer attribute, as text.
    fn attribute(&self, key: &str) -> Option<String> {
        let kv = self.span.attributes.iter().find(|kv| kv.key == key)?;
        match kv.value.as_ref()?.value.as_ref()? {
            AnyValue::StringValue(s) => Some(s.clone()),
            AnyValue::IntValue(i) => Some(i.to_string()),
            other => Some(format!("{other:?}")),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An OTLP/HTTP trace receiver on 127.0.0.1.
#[derive(Default)]
struct Receiver {
    spans: Mutex<Vec<Received>>,
    arrived: Notify,
}

impl Receiver {
    async fn start() -> (Arc<Receiver>, String) {
        let receiver = Arc::new(Receiver::default());
        let app = Router::new()
            .route("/v1/traces", post(export))
            .with_state(receiver.clone());
        (receiver, serve(app).await)
    }

    /// Waits until `done` holds for the spans received so far, and returns them.
    async fn until(&self, what: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let arrived = self.arrived.notified();
            {
                let spans = self.spans.lock().expect("lock");
                if done(&spans) {
                    return spans.clone();
                }
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                let spans = self.spans.lock().expect("lock");
                let names: Vec<(&str, &str)> = spans
                    .iter()
                    .map(|s| (s.service.as_str(), s.span.name.as_str()))
                    .collect();
                panic!("never received {what}; received {names:?}");
            }
        }
    }
}

async fn export(
    State(receiver): State<Arc<Receiver>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    assert_eq!(
        headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/x-protobuf")
    );
    let request = match ExportTraceServiceRequest::decode(body) {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let mut received = Vec::new();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                AnyValue::StringValue(s) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                received.push(Received {
                    service: service.clone(),
                    span,
                });
            }
        }
    }
    receiver.spans.lock().expect("lock").extend(received);
    receiver.arrived.notify_waiters();
    (
        [("content-type", "application/x-protobuf")],
        Vec::<u8>::new(),
    )
        .into_response()
}

/// A RAG service for the `http` backend that records each request's `traceparent` and
/// answers `/query`: a question starting with "flaky" gets 503s for its first attempt (the
/// backend's request and its two retries), then an answer.
#[derive(Default)]
struct Rag {
    /// (question, traceparent) per request, in arrival order.
    seen: Mutex<Vec<(String, Option<String>)>>,
}

impl Rag {
    async fn start() -> (Arc<Rag>, String) {
        let rag = Arc::new(Rag::default());
        let app = Router::new().fallback(rag_call).with_state(rag.clone());
        (rag, serve(app).await)
    }

    fn traceparents(&self, question: &str) -> Vec<Option<String>> {
        let seen = self.seen.lock().expect("lock");
        seen.iter()
            .filter(|(q, _)| q == question)
            .map(|(_, t)| t.clone())
            .collect()
    }
}

async fn rag_call(State(rag): State<Arc<Rag>>, headers: HeaderMap, body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or_default();
    let question = body["question"].as_str().unwrap_or_default().to_string();
    let traceparent = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let before = {
        let mut seen = rag.seen.lock().expect("lock");
        let before = seen.iter().filter(|(q, _)| *q == question).count();
        seen.push((question.clone(), traceparent));
        before
    };
    if question.starts_with("flaky") && before < 3 {
        return (StatusCode::SERVICE_UNAVAILABLE, "warming up").into_response();
    }
    axum::Json(json!({"answer": format!("re: {question}")})).into_response()
}

async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let url = format!("http://{}", listener.local_addr().expect("local addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// A `ragpool` component process with JSON logs, killed when dropped.
struct Component {
    child: tokio::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Component {
    /// Starts `ragpool <component>` with `env` and waits for the log line `ready`; returns
    /// the process and that line.
    async fn start(component: &str, env: &[(&str, &str)], ready: &str) -> (Component, Value) {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_ragpool"));
        command
            .arg(component)
            .env("RAGPOOL_LOG_FORMAT", "json")
            .env("RAGPOOL_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("ragpool starts");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, mut logs) = tokio::sync::mpsc::unbounded_channel::<Value>();
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        {
            let lines = lines.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    lines.lock().expect("lock").push(line.clone());
                    if let Ok(value) = serde_json::from_str::<Value>(&line) {
                        let _ = tx.send(value);
                    }
                }
            });
        }
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            match tokio::time::timeout_at(deadline, logs.recv()).await {
                Ok(Some(line)) if line["fields"]["message"] == ready => {
                    return (Component { child, lines }, line);
                }
                Ok(Some(_)) => {}
                _ => panic!(
                    "ragpool {component} never logged {ready:?}:\n{}",
                    lines.lock().expect("lock").join("\n")
                ),
            }
        }
    }

    fn output(&self) -> String {
        self.lines.lock().expect("lock").join("\n")
    }
}

impl Drop for Component {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Submits a query, with `traceparent` when given; returns the task's id.
async fn submit(api: &str, question: &str, traceparent: Option<&str>) -> TaskId {
    let mut request = reqwest::Client::new()
        .post(format!("{api}/api/async/query"))
        .json(&json!({"question": question}));
    if let Some(t) = traceparent {
        request = request.header("traceparent", t);
    }
    let answer = request.send().await.expect("submission");
    assert_eq!(answer.status(), 202);
    let body: Value = answer.json().await.expect("JSON answer");
    body["task_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no task id in {body}"))
        .parse()
        .expect("a task id")
}

/// The spans of one trace, by name.
fn of_trace<'a>(spans: &'a [Received], trace: &str) -> HashMap<&'a str, Vec<&'a Received>> {
    let mut by_name: HashMap<&str, Vec<&Received>> = HashMap::new();
    for s in spans.iter().filter(|s| s.trace_id() == trace) {
        by_name.entry(s.span.name.as_str()).or_default().push(s);
    }
    by_name
}

fn the<'a>(by_name: &HashMap<&str, Vec<&'a Received>>, name: &str) -> &'a Received {
    match by_name.get(name).map(Vec::as_slice) {
        Some([one]) => one,
        other => panic!("expected one {name:?} span, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_task_is_one_trace_from_submission_to_the_backend() {
    let redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .expect("harness thread")
        .expect("redis-server starts");
    let redis_url = redis.url();
    let (receiver, otlp) = Receiver::start().await;
    let (rag, rag_url) = Rag::start().await;
    let traced = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.as_str()),
        // Spans leave within a tenth of a second rather than the default five.
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("OTEL_TRACES_SAMPLER", "parentbased_always_on"),
        ("RAGPOOL_REDIS_URL", redis_url.as_str()),
    ];
    let mut api_env = traced.to_vec();
    api_env.push(("RAGPOOL_LISTEN", "127.0.0.1:0"));
    let (api, listening) = Component::start("api", &api_env, "ragpool-api listening").await;
    let api_url = format!(
        "http://{}",
        listening["fields"]["addr"]
            .as_str()
            .expect("the API's address")
    );
    let mut executor_env = traced.to_vec();
    executor_env.extend([
        ("RAGPOOL_METRICS_LISTEN", "127.0.0.1:0"),
        ("RAGPOOL_BACKEND", "http"),
        ("RAGPOOL_HTTP_URL", rag_url.as_str()),
        ("OTEL_SERVICE_NAME", "executor-under-test"),
    ]);
    let (executor, _) =
        Component::start("executor", &executor_env, "health and metrics listening").await;

    // A client that traces its own call: the API's span continues its trace.
    let client_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let plain = submit(
        &api_url,
        "plain?",
        Some(&format!("00-{client_trace}-{client_span}-01")),
    )
    .await;
    // A client that does not: the API starts a trace.
    let flaky = submit(&api_url, "flaky?", None).await;

    let broker = Broker::connect(BrokerConfig::from_url(&redis_url).expect("redis url"))
        .await
        .expect("broker connects");
    for id in [&plain, &flaky] {
        let task = broker
            .wait_for_end(id, PATIENCE)
            .await
            .expect("reads the task")
            .expect("the task exists");
        assert_eq!(
            task.state,
            TaskState::Finished,
            "{task:?}\napi:\n{}\nexecutor:\n{}",
            api.output(),
            executor.output()
        );
    }
    assert_eq!(
        broker
            .get(&flaky)
            .await
            .expect("read")
            .expect("exists")
            .attempts,
        2,
        "the flaky task was retried once"
    );

    let task_spans = |spans: &[Received]| {
        spans
            .iter()
            .filter(|s| s.span.name == "task" && s.service == "executor-under-test")
            .count()
    };
    let stored = |spans: &[Received]| {
        spans
            .iter()
            .filter(|s| s.span.name == "store outcome")
            .count()
    };
    let spans = receiver
        .until("three task spans and their outcomes", |spans| {
            task_spans(spans) == 3 && stored(spans) == 3
        })
        .await;

    // The traced client's task: one trace, the client's.
    let trace = of_trace(&spans, client_trace);
    let request = the(&trace, "request");
    assert_eq!(
        request.service, "ragpool-api",
        "the API's default service name"
    );
    assert_eq!(
        request.parent_id(),
        client_span,
        "the API continues the caller's trace"
    );
    assert_eq!(request.attribute("task_id"), Some(plain.to_string()));
    let task = the(&trace, "task");
    assert_eq!(
        task.parent_id(),
        request.span_id(),
        "the task span is the request's child"
    );
    assert_eq!(task.attribute("id"), Some(plain.to_string()));
    for child in ["claim", "backend", "store outcome"] {
        assert_eq!(the(&trace, child).parent_id(), task.span_id(), "{child}");
    }
    let backend_request = the(&trace, "backend request");
    use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
    for (span, kind) in [
        (request, SpanKind::Server),
        (task, SpanKind::Consumer),
        (backend_request, SpanKind::Client),
    ] {
        assert_eq!(span.span.kind, kind as i32, "{}", span.span.name);
    }
    assert_eq!(
        backend_request.parent_id(),
        the(&trace, "backend").span_id()
    );
    assert_eq!(
        rag.traceparents("plain?"),
        vec![Some(format!(
            "00-{client_trace}-{}-01",
            backend_request.span_id()
        ))],
        "the RAG service joined the trace under the backend request's span"
    );

    // The retried task: its own trace, begun by the API, holding both attempts.
    let flaky_trace = spans
        .iter()
        .find(|s| s.span.name == "request" && s.attribute("task_id") == Some(flaky.to_string()))
        .expect("the flaky task's request span")
        .trace_id();
    assert_ne!(flaky_trace, client_trace, "one trace per task");
    let trace = of_trace(&spans, &flaky_trace);
    let request = the(&trace, "request");
    assert!(
        request.span.parent_span_id.is_empty(),
        "the API began this trace"
    );
    let mut attempts = trace.get("task").cloned().unwrap_or_default();
    attempts.sort_by_key(|s| s.attribute("attempt"));
    let [first, second] = attempts.as_slice() else {
        panic!("expected two attempts in one trace, got {attempts:?}");
    };
    assert_eq!(first.attribute("attempt").as_deref(), Some("1"));
    assert_eq!(second.attribute("attempt").as_deref(), Some("2"));
    for attempt in [first, second] {
        assert_eq!(
            attempt.parent_id(),
            request.span_id(),
            "each attempt is the request's child"
        );
    }
    assert!(first.span.links.is_empty(), "{:?}", first.span.links);
    assert_eq!(first.attribute("outcome").as_deref(), Some("retried"));
    assert_eq!(second.attribute("outcome").as_deref(), Some("finished"));
    let error = opentelemetry_proto::tonic::trace::v1::status::StatusCode::Error as i32;
    assert_eq!(
        first.span.status.as_ref().map(|s| s.code),
        Some(error),
        "a failed attempt is an error"
    );
    assert_ne!(second.span.status.as_ref().map(|s| s.code), Some(error));
    let links: Vec<(String, String)> = second
        .span
        .links
        .iter()
        .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
        .collect();
    assert_eq!(
        links,
        vec![(flaky_trace.clone(), first.span_id())],
        "the second attempt links to the first"
    );
    let sent: Vec<Option<String>> = trace["backend request"]
        .iter()
        .map(|s| Some(format!("00-{flaky_trace}-{}-01", s.span_id())))
        .collect();
    let mut received = rag.traceparents("flaky?");
    assert_eq!(received.len(), 4, "three refused requests, then the answer");
    received.sort();
    let mut sent = sent;
    sent.sort();
    assert_eq!(received, sent, "every backend request carried its own span");
    drop(executor);
    drop(api);
}
