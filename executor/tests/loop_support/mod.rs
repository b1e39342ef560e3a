//! Shared pieces of the job-loop tests: a real Redis and a broker per test, a fake RAG service
//! that records what it receives and answers as each test tells it, and executors run either
//! in this process or as `ragpool-executor` child processes.
//!
//! Every wait here is for a signal (a request arriving, a task event, a log line) with a
//! generous deadline that only turns a hang into a failure.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use clap::Parser;
use ragpool_executor::backend::Backend;
use ragpool_executor::settings::ExecutorSettings;
use ragpool_queue::payload::CompleteAnswer;
use ragpool_queue::testing::{RedisServer, ServerOptions};
use ragpool_queue::{
    Broker, BrokerConfig, Enqueued, NewTask, Payload, QueueConfig, Task, TaskEvent, TaskId,
    TaskState,
};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{Notify, broadcast, mpsc};
use tokio_util::sync::CancellationToken;

/// Longest any single wait in these tests may take before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// A fresh `redis-server` and a broker over it whose queue settings the test chose. Tasks take
/// their timeout, attempts and backoff from the broker that enqueues them, so these settings
/// rule the tasks of the test whatever the executors are configured with.
pub struct Env {
    pub redis: RedisServer,
    pub broker: Broker,
}

impl Env {
    pub async fn start(queues: Vec<QueueConfig>) -> Env {
        Self::start_with(queues, ServerOptions::default()).await
    }

    /// A Redis with an append-only file (`appendfsync always`), so that a SIGKILL and a
    /// restart keep every acknowledged write.
    pub async fn start_persistent(queues: Vec<QueueConfig>) -> Env {
        let opts = ServerOptions {
            aof: true,
            cluster: false,
        };
        Self::start_with(queues, opts).await
    }

    async fn start_with(queues: Vec<QueueConfig>, opts: ServerOptions) -> Env {
        let redis = tokio::task::spawn_blocking(move || RedisServer::start_with(opts))
            .await
            .expect("harness thread")
            .expect("redis-server starts");
        let mut config = BrokerConfig::from_url(&redis.url()).expect("redis url");
        config.queues = queues;
        let broker = Broker::connect(config).await.expect("broker connects");
        Env { redis, broker }
    }

    pub fn url(&self) -> String {
        self.redis.url()
    }

    /// Enqueues a `complete_answer` task asking `question` on the `answer_generation` queue.
    pub async fn ask(&self, question: &str) -> TaskId {
        self.enqueue(CompleteAnswer {
            question: question.into(),
            ..CompleteAnswer::default()
        })
        .await
        .id
    }

    pub async fn enqueue(&self, payload: impl Into<Payload>) -> Enqueued {
        self.broker
            .enqueue(NewTask::new(payload))
            .await
            .expect("enqueue")
    }

    /// Waits until the task ends and returns it.
    pub async fn ended(&self, id: &TaskId) -> Task {
        let task = self
            .broker
            .wait_for_end(id, PATIENCE)
            .await
            .expect("reading the task")
            .expect("the task exists");
        assert!(
            task.state.is_terminal(),
            "task {id} did not end within {PATIENCE:?}: {task:?}"
        );
        task
    }

    /// Kills Redis with SIGKILL. Needs the multi-threaded test runtime.
    pub fn kill_redis(&mut self) {
        tokio::task::block_in_place(|| self.redis.kill().expect("redis-server dies"));
    }

    /// Starts the killed Redis again on its port (empty unless the server keeps an
    /// append-only file).
    pub async fn restart_redis(&mut self) {
        tokio::task::block_in_place(|| self.redis.start_again().expect("redis-server restarts"));
        // The broker's connection learns that its socket died from the first command it
        // sends, which fails; the next one reconnects.
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while let Err(e) = self.broker.ping().await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "broker never reconnected: {e}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The `answer_generation` queue with quick retries, and `attempts`/`timeout` as given.
pub fn answer_queue(max_attempts: u32, timeout: Duration) -> QueueConfig {
    let mut q = QueueConfig::new("answer_generation").with_timeout(timeout);
    q.max_attempts = max_attempts;
    q.backoff_base = Duration::from_millis(50);
    q.backoff_max = Duration::from_millis(100);
    q
}

/// The seed's queues with quick retries and the default timeouts.
pub fn quick_queues() -> Vec<QueueConfig> {
    ragpool_queue::default_queues()
        .into_iter()
        .map(|mut q| {
            q.backoff_base = Duration::from_millis(50);
            q.backoff_max = Duration::from_millis(100);
            q
        })
        .collect()
}

/// Follows the events stream from the moment it was created.
pub struct Events {
    rx: broadcast::Receiver<TaskEvent>,
    seen: Vec<TaskEvent>,
}

impl Events {
    pub async fn follow(broker: &Broker) -> Events {
        let rx = broker.events().await.expect("events hub").subscribe();
        Events {
            rx,
            seen: Vec::new(),
        }
    }

    /// Every event of task `id` up to and including the one that ended it.
    pub async fn until_end(&mut self, id: &TaskId) -> Vec<TaskEvent> {
        self.until(id, |e| e.state.is_terminal()).await
    }

    /// Every event of task `id` up to and including the first one in `state`.
    pub async fn until_state(&mut self, id: &TaskId, state: TaskState) -> Vec<TaskEvent> {
        self.until(id, |e| e.state == state).await
    }

    pub async fn until(
        &mut self,
        id: &TaskId,
        done: impl Fn(&TaskEvent) -> bool,
    ) -> Vec<TaskEvent> {
        let reached = |seen: &[TaskEvent]| seen.iter().any(|e| e.task_id == id.as_str() && done(e));
        while !reached(&self.seen) {
            let event = tokio::time::timeout(PATIENCE, self.rx.recv())
                .await
                .unwrap_or_else(|_| panic!("task {id}: awaited event missing; saw {:?}", self.seen))
                .expect("events stream");
            self.seen.push(event);
        }
        self.seen
            .iter()
            .filter(|e| e.task_id == id.as_str())
            .cloned()
            .collect()
    }
}

/// One request as the fake RAG service saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub path: String,
    pub body: Value,
}

impl Recorded {
    pub fn question(&self) -> &str {
        self.body["question"].as_str().unwrap_or_default()
    }
}

/// What the fake RAG service does with one request.
pub enum Behaviour {
    /// Answer at once with this status and JSON body.
    Answer(u16, Value),
    /// Never answer: the caller has to give up on its own.
    Hang,
    /// Answer once the test notifies.
    AnswerWhen(Arc<Notify>, u16, Value),
}

/// Decides a request's [`Behaviour`] from the request and how many identical requests came
/// before it (a retry or a re-delivery sends the same body again).
type Respond = dyn Fn(&Recorded, usize) -> Behaviour + Send + Sync;

struct RagState {
    requests: Mutex<Vec<Recorded>>,
    arrivals: mpsc::UnboundedSender<Recorded>,
    respond: Box<Respond>,
}

/// An HTTP RAG service on 127.0.0.1 for the `http` backend: it records each request, reports
/// its arrival, and answers as `respond` says.
pub struct FakeRag {
    pub url: String,
    state: Arc<RagState>,
    arrivals: tokio::sync::Mutex<mpsc::UnboundedReceiver<Recorded>>,
}

impl FakeRag {
    pub async fn start(
        respond: impl Fn(&Recorded, usize) -> Behaviour + Send + Sync + 'static,
    ) -> FakeRag {
        let (tx, rx) = mpsc::unbounded_channel();
        let state = Arc::new(RagState {
            requests: Mutex::default(),
            arrivals: tx,
            respond: Box::new(respond),
        });
        let app = Router::new().fallback(handle).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake RAG service");
        let url = format!("http://{}", listener.local_addr().expect("local addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeRag {
            url,
            state,
            arrivals: tokio::sync::Mutex::new(rx),
        }
    }

    /// Waits for the next request to arrive (in arrival order).
    pub async fn next_request(&self) -> Recorded {
        let mut rx = self.arrivals.lock().await;
        tokio::time::timeout(PATIENCE, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no request reached the fake RAG service"))
            .expect("fake RAG service running")
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().expect("lock").clone()
    }
}

async fn handle(State(state): State<Arc<RagState>>, uri: Uri, body: Bytes) -> Response {
    let body = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    let request = Recorded {
        path: uri.path().to_owned(),
        body,
    };
    let behaviour = {
        let mut requests = state.requests.lock().expect("lock");
        let before = requests
            .iter()
            .filter(|r| r.path == request.path && r.body == request.body)
            .count();
        requests.push(request.clone());
        (state.respond)(&request, before)
    };
    let _ = state.arrivals.send(request);
    let (status, body) = match behaviour {
        Behaviour::Answer(status, body) => (status, body),
        Behaviour::Hang => std::future::pending().await,
        Behaviour::AnswerWhen(gate, status, body) => {
            gate.notified().await;
            (status, body)
        }
    };
    let status = StatusCode::from_u16(status).expect("a valid status");
    (status, axum::Json(body)).into_response()
}

/// Parses executor settings as the binary would, from `args` after the Redis URL; the metrics
/// listener takes a free port.
pub fn settings(redis_url: &str, args: &[&str]) -> ExecutorSettings {
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        settings: ExecutorSettings,
    }
    let mut argv = vec![
        "ragpool-executor",
        "--redis-url",
        redis_url,
        "--metrics-listen",
        "127.0.0.1:0",
    ];
    argv.extend_from_slice(args);
    Cli::try_parse_from(argv)
        .expect("executor settings parse")
        .settings
}

/// An executor running on this test's runtime.
pub struct InProcess {
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl InProcess {
    /// Runs the backend the settings name.
    pub fn start(settings: ExecutorSettings) -> InProcess {
        let stop = CancellationToken::new();
        let handle = tokio::spawn(ragpool_executor::run(settings, stop.clone()));
        InProcess { stop, handle }
    }

    /// Runs `backend`.
    pub fn with_backend(settings: ExecutorSettings, backend: Arc<dyn Backend>) -> InProcess {
        let stop = CancellationToken::new();
        let handle = tokio::spawn(ragpool_executor::run_with_backend(
            settings,
            backend,
            stop.clone(),
        ));
        InProcess { stop, handle }
    }

    /// Stops claiming, drains and waits for the executor to return.
    pub async fn shutdown(self) {
        self.stop.cancel();
        tokio::time::timeout(PATIENCE, self.handle)
            .await
            .expect("the executor stops")
            .expect("the executor task")
            .expect("the executor returns Ok");
    }
}

/// A `ragpool-executor` child process configured through its `RAGPOOL_*` environment, logging
/// JSON lines that the test can wait for.
pub struct ExecutorProcess {
    child: tokio::process::Child,
    logs: mpsc::UnboundedReceiver<Value>,
    /// Every line it printed, for failure messages.
    lines: Arc<Mutex<Vec<String>>>,
    /// Where its /healthz, /readyz and /metrics answer.
    pub metrics_addr: SocketAddr,
}

impl ExecutorProcess {
    /// Starts the binary with `env` (on top of JSON logs and a free metrics port) and waits
    /// until its health endpoint is bound.
    pub async fn start(env: &[(&str, &str)]) -> ExecutorProcess {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_ragpool-executor"));
        command
            .env("RAGPOOL_LOG_FORMAT", "json")
            .env("RAGPOOL_LOG", "info")
            .env("RAGPOOL_METRICS_LISTEN", "127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("ragpool-executor starts");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, logs) = mpsc::unbounded_channel();
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
        let mut process = ExecutorProcess {
            child,
            logs,
            lines,
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let bound = process.wait_log("health and metrics listening").await;
        process.metrics_addr = bound["fields"]["addr"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {bound}"));
        process
    }

    /// Waits for a log line whose message is `message` and returns it.
    pub async fn wait_log(&mut self, message: &str) -> Value {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            match tokio::time::timeout_at(deadline, self.logs.recv()).await {
                Ok(Some(line)) if line["fields"]["message"] == message => return line,
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => panic!(
                    "the executor never logged {message:?}; its output:\n{}",
                    self.output()
                ),
            }
        }
    }

    /// What it printed so far.
    pub fn output(&self) -> String {
        self.lines.lock().expect("lock").join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("the executor is running")
    }

    pub fn sigterm(&self) {
        let pid = rustix::process::Pid::from_raw(self.pid() as i32).expect("a valid pid");
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM sent");
    }

    /// SIGKILL, and waits for the process to be gone.
    pub async fn sigkill(mut self) {
        self.child.kill().await.expect("SIGKILL");
    }

    /// Waits for the process to exit.
    pub async fn exit(mut self) -> (ExitStatus, String) {
        let status = tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("the executor did not exit; output:\n{}", self.output()))
            .expect("waiting for the executor");
        // Let the reader take in the last lines before they are reported.
        let output = self.output();
        (status, output)
    }

    pub fn metrics_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.metrics_addr)
    }
}

/// The env of an executor process forwarding to `rag` over Redis at `redis_url`.
pub fn http_executor_env<'a>(
    redis_url: &'a str,
    rag: &'a FakeRag,
    worker_id: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("RAGPOOL_REDIS_URL", redis_url),
        ("RAGPOOL_BACKEND", "http"),
        ("RAGPOOL_HTTP_URL", rag.url.as_str()),
        ("RAGPOOL_WORKER_ID", worker_id),
    ]
}

/// The states a task went through, in order; a progress report (an event in the same state)
/// is not a transition.
pub fn states(events: &[TaskEvent]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for e in events {
        if out.last().map(String::as_str) != Some(e.state.as_str()) {
            out.push(e.state.as_str().to_owned());
        }
    }
    out
}

/// The `error_kind` each event carried, if any.
pub fn error_kinds(events: &[TaskEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| e.details.get("error_kind").cloned())
        .collect()
}

/// Details of the first event in `state`.
pub fn details_of<'a>(events: &'a [TaskEvent], state: &str) -> Option<&'a HashMap<String, String>> {
    events
        .iter()
        .find(|e| e.state.as_str() == state)
        .map(|e| &e.details)
}

/// How the fake model server streams one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Streaming {
    /// Every token, then the usage chunk and `[DONE]`.
    Whole,
    /// This many tokens, then nothing more while the connection stays open.
    StallAfter(usize),
}

/// An OpenAI-compatible chat-completions server on 127.0.0.1 that streams `tokens` as
/// `text/event-stream` chunks with `gap` between them, and tells the test how far it got:
/// tokens sent (counted before each is written), requests taken, and connections the client
/// dropped before the stream ended.
#[derive(Clone)]
pub struct FakeModel {
    pub url: String,
    state: Arc<ModelState>,
}

struct ModelState {
    tokens: Vec<String>,
    gap: Duration,
    plan: Box<dyn Fn(usize) -> Streaming + Send + Sync>,
    /// Tokens of the latest request started so far.
    sent: std::sync::atomic::AtomicUsize,
    requests: std::sync::atomic::AtomicUsize,
    progress: Notify,
    dropped: Notify,
}

/// The usage the fake model reports for every streamed answer.
pub fn fake_usage() -> Value {
    serde_json::json!({"prompt_tokens": 30, "completion_tokens": 200, "total_tokens": 230})
}

impl FakeModel {
    /// `plan` decides how request `n` (0 for the first) streams.
    pub async fn start(
        tokens: Vec<String>,
        gap: Duration,
        plan: impl Fn(usize) -> Streaming + Send + Sync + 'static,
    ) -> FakeModel {
        let state = Arc::new(ModelState {
            tokens,
            gap,
            plan: Box::new(plan),
            sent: Default::default(),
            requests: Default::default(),
            progress: Notify::new(),
            dropped: Notify::new(),
        });
        let app = Router::new()
            .fallback(stream_tokens)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeModel { url, state }
    }

    /// `count` tokens `word1 ` … `wordN `.
    pub fn words(count: usize) -> Vec<String> {
        (1..=count).map(|i| format!("word{i} ")).collect()
    }

    /// The tokens of the latest request sent so far; a token counts from just before it is
    /// written.
    pub fn sent(&self) -> usize {
        self.state.sent.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn requests(&self) -> usize {
        self.state
            .requests
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until request `request` (1 for the first) has sent at least `tokens` tokens.
    pub async fn until_sent(&self, request: usize, tokens: usize) {
        tokio::time::timeout(PATIENCE, async {
            loop {
                let notified = self.state.progress.notified();
                if self.requests() >= request && self.sent() >= tokens {
                    return;
                }
                notified.await;
            }
        })
        .await
        .expect("the fake model streams that far");
    }

    /// Waits until a client drops its connection before the stream ended.
    pub async fn until_dropped(&self) {
        tokio::time::timeout(PATIENCE, self.state.dropped.notified())
            .await
            .expect("the client drops the stream");
    }
}

fn chunk(data: &Value) -> axum::body::Bytes {
    format!("data: {data}\n\n").into()
}

async fn stream_tokens(
    axum::extract::State(state): axum::extract::State<Arc<ModelState>>,
) -> Response {
    use std::sync::atomic::Ordering;
    let request = state.requests.fetch_add(1, Ordering::SeqCst);
    state.sent.store(0, Ordering::SeqCst);
    let plan = (state.plan)(request);
    let (tx, mut rx) = mpsc::channel::<axum::body::Bytes>(1);
    tokio::spawn(async move {
        let limit = match plan {
            Streaming::Whole => state.tokens.len(),
            Streaming::StallAfter(n) => n,
        };
        for (i, token) in state.tokens.iter().take(limit).enumerate() {
            if i > 0 {
                tokio::time::sleep(state.gap).await;
            }
            state.sent.store(i + 1, Ordering::SeqCst);
            state.progress.notify_waiters();
            let data = serde_json::json!({
                "id": "chatcmpl-1",
                "object": "chat.completion.chunk",
                "model": "served-model",
                "choices": [{"index": 0, "delta": {"content": token}}],
            });
            if tx.send(chunk(&data)).await.is_err() {
                state.dropped.notify_one();
                return;
            }
        }
        if plan != Streaming::Whole {
            // Stall with the connection open until the client goes.
            tx.closed().await;
            state.dropped.notify_one();
            return;
        }
        let usage =
            serde_json::json!({"model": "served-model", "choices": [], "usage": fake_usage()});
        let _ = tx.send(chunk(&usage)).await;
        let _ = tx.send("data: [DONE]\n\n".into()).await;
    });
    let body = futures::stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
            .map(|b| b.map(Ok::<_, std::convert::Infallible>))
    });
    let mut response = axum::body::Body::from_stream(body).into_response();
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("text/event-stream"),
    );
    response
}
