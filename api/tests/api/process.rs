//! The real `ragpool-api` binary as a child process, for the attacks that must be measured
//! on the process itself (its connections, its peak memory, its budget gauge), and raw
//! HTTP/1.1 clients that send what a hostile client sends: heads without bodies, bodies a
//! byte at a time, connections from other loopback addresses.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ragpool_api::ApiConfig;
use ragpool_queue::Broker;
use ragpool_queue::testing::{RedisServer, read_until_closed};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;

/// How long a test waits for anything before it fails; a guard against a hang, never what
/// is asserted.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// A running `ragpool-api` on a free loopback port, logging JSON lines.
pub struct ApiProcess {
    child: tokio::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
    redis_url: String,
    /// The Redis it was started over, when it has one of its own.
    _redis: Option<RedisServer>,
    /// Its API listener.
    pub addr: SocketAddr,
    /// Its health listener, when started with `--health-listen`.
    pub health: Option<SocketAddr>,
    pub client: reqwest::Client,
}

impl ApiProcess {
    /// Starts the binary with `args` (after `--listen 127.0.0.1:0`) over a fresh Redis of
    /// its own, and waits until it listens.
    pub async fn start(args: &[&str]) -> ApiProcess {
        let redis = RedisServer::start().expect("starting redis-server");
        let url = redis.url();
        Self::launch(&url, args, &[], Some(redis)).await
    }

    /// Starts the binary over the Redis at `redis_url` with the environment `env`, and waits
    /// until it listens.
    pub async fn start_on(redis_url: &str, env: &[(&str, &str)]) -> ApiProcess {
        Self::launch(redis_url, &[], env, None).await
    }

    async fn launch(
        redis_url: &str,
        args: &[&str],
        env: &[(&str, &str)],
        redis: Option<RedisServer>,
    ) -> ApiProcess {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_ragpool-api"));
        command
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env_clear()
            .env("RAGPOOL_REDIS_URL", redis_url)
            .env("RAGPOOL_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("ragpool-api starts");
        let stderr = child.stderr.take().expect("piped stderr");
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let (tx, mut logs) = mpsc::unbounded_channel::<Value>();
        {
            let lines = lines.clone();
            // Reads to the end: a full pipe would stop the server's logging, and the server.
            tokio::spawn(async move {
                let mut reader = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    if let Ok(value) = serde_json::from_str::<Value>(&line) {
                        let _ = tx.send(value);
                    }
                    lines.lock().expect("lock").push(line);
                }
            });
        }
        let addr_of = |line: &Value| -> SocketAddr {
            line["fields"]["addr"]
                .as_str()
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("no address in {line}"))
        };
        let mut health = None;
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let addr = loop {
            let line = match tokio::time::timeout_at(deadline, logs.recv()).await {
                Ok(Some(line)) => line,
                _ => panic!(
                    "ragpool-api never listened; its output:\n{}",
                    lines.lock().expect("lock").join("\n")
                ),
            };
            match line["fields"]["message"].as_str() {
                Some("health listening") => health = Some(addr_of(&line)),
                Some("ragpool-api listening") => break addr_of(&line),
                _ => {}
            }
        };
        ApiProcess {
            child,
            lines,
            redis_url: redis_url.to_owned(),
            _redis: redis,
            addr,
            health,
            client: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A broker on the process's Redis, with the API's default settings.
    pub async fn broker(&self) -> Broker {
        let config = ApiConfig {
            redis_url: self.redis_url.clone(),
            ..ApiConfig::default()
        };
        Broker::connect(config.broker_config().expect("broker config"))
            .await
            .expect("broker")
    }

    /// The process's peak resident memory in kB (`VmHWM` of `/proc/PID/status`).
    pub fn peak_rss_kb(&self) -> u64 {
        let pid = self.child.id().expect("ragpool-api is running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM")
    }

    /// The process's peak resident memory in bytes.
    pub fn peak_rss(&self) -> u64 {
        self.peak_rss_kb() * 1024
    }

    /// What it logged so far.
    pub fn output(&self) -> String {
        self.lines.lock().expect("lock").join("\n")
    }

    /// The metrics text.
    pub async fn metrics(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// `ragpool_api_submission_reserved_bytes`: the submission budget in use.
    pub async fn in_flight(&self) -> i64 {
        self.metrics()
            .await
            .lines()
            .find_map(|l| l.strip_prefix("ragpool_api_submission_reserved_bytes "))
            .and_then(|v| v.trim().parse().ok())
            .expect("the gauge is exported")
    }

    /// Polls the in-flight gauge until `cond` holds, failing after [`PATIENCE`].
    pub async fn until_in_flight(&self, what: &str, cond: impl Fn(i64) -> bool) -> i64 {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let now = self.in_flight().await;
            if cond(now) {
                return now;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "in-flight gauge never {what} (now {now})"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A request head: `method path`, `Host`, `Connection: close`, then `headers`.
pub fn head(method: &str, path: &str, headers: &[(&str, String)]) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// Opens a connection and sends `head` (and nothing more).
pub async fn send_head(addr: SocketAddr, head: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(head).await.expect("write head");
    stream
}

/// The status and body of the response on `stream`, read to the connection's end (requests
/// are sent with `Connection: close`); `None` when the server reset the connection before a
/// status line could be read (it refused a body it did not read).
pub async fn read_answer(stream: &mut (impl AsyncReadExt + Unpin)) -> Option<(u16, Value)> {
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut raw))
        .await
        .expect("the server answers in time");
    let text = String::from_utf8_lossy(&raw);
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    Some((status, body))
}

/// Sends `head` and `body` while reading the answer, as a client does that may be answered
/// before its body is sent.
pub async fn post_raw(addr: SocketAddr, head: Vec<u8>, body: Arc<Vec<u8>>) -> Option<(u16, Value)> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        // A refused body is not read: the write fails when the server closes.
        if write.write_all(&head).await.is_ok() {
            let _ = write.write_all(&body).await;
        }
        write
    });
    let answer = read_answer(&mut read).await;
    drop(writer.await);
    answer
}

/// A client sending a body one byte at a time: `head`, then a space every `every`, until the
/// server answers or the client is dropped (which closes its connection).
pub struct Trickler {
    answer: tokio::task::JoinHandle<Option<(u16, Value)>>,
    stop: tokio_util::sync::CancellationToken,
}

impl Trickler {
    pub async fn start(addr: SocketAddr, head: Vec<u8>, every: Duration) -> Trickler {
        let stream = send_head(addr, &head).await;
        let (mut read, mut write) = stream.into_split();
        let stop = tokio_util::sync::CancellationToken::new();
        let stopped = stop.clone();
        let writer = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stopped.cancelled() => break,
                    _ = tokio::time::sleep(every) => {
                        if write.write_all(b" ").await.is_err() {
                            break;
                        }
                    }
                }
            }
            // Dropping the write half sends FIN: the server sees the body end early.
        });
        let answer = tokio::spawn(async move {
            let answer = read_answer(&mut read).await;
            writer.abort();
            answer
        });
        Trickler { answer, stop }
    }

    /// Whether the server has answered (and closed) already.
    pub fn answered(&self) -> bool {
        self.answer.is_finished()
    }

    /// Stops sending, closes the body early, and returns the server's answer.
    pub async fn give_up(self) -> Option<(u16, Value)> {
        self.stop.cancel();
        self.answer.await.expect("reader task")
    }

    /// Waits for the server's answer while still sending.
    pub async fn answer(self) -> Option<(u16, Value)> {
        self.answer.await.expect("reader task")
    }
}

/// A loopback address other than 127.0.0.1 (all of 127.0.0.0/8 is loopback), to act as
/// another client machine.
pub fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// A TCP connection to `to` from the loopback address `from`.
pub async fn connect_from(from: IpAddr, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(from, 0))
        .expect("binding a loopback address");
    socket.connect(to).await.expect("connect")
}

/// An HTTP client whose connections come from the loopback address `from`.
pub fn client_from(from: IpAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(from)
        .build()
        .expect("client")
}

/// Everything the server sends until it closes the connection (a reset counts as a close).
pub async fn read_to_close(stream: &mut TcpStream) -> String {
    read_until_closed(stream, PATIENCE).await
}
