//! The real `ragpool-api` binary as a child process, for attacks whose effect is on the
//! process itself (its peak memory, its budget gauge), and raw HTTP/1.1 clients that send
//! what a hostile client sends: heads without bodies, bodies a byte at a time.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// How long a test waits for anything before it fails.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// A running `ragpool-api` over a given Redis, listening on a free loopback port.
pub struct ApiProcess {
    child: tokio::process::Child,
    pub addr: SocketAddr,
    pub client: reqwest::Client,
}

impl ApiProcess {
    /// Starts the binary with `RAGPOOL_REDIS_URL=redis_url` and `env`, and waits until it
    /// listens.
    pub async fn start(redis_url: &str, env: &[(&str, &str)]) -> ApiProcess {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_ragpool-api"));
        command
            .env_clear()
            .env("RAGPOOL_REDIS_URL", redis_url)
            .env("RAGPOOL_LISTEN", "127.0.0.1:0")
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
        let mut lines = BufReader::new(stderr).lines();
        let addr = tokio::time::timeout(PATIENCE, async {
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(value) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if value["fields"]["message"] == "ragpool-api listening" {
                    return value["fields"]["addr"]
                        .as_str()
                        .and_then(|a| a.parse().ok());
                }
            }
            None
        })
        .await
        .expect("ragpool-api listens in time")
        .expect("ragpool-api logs its address");
        // Keep draining its log so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        ApiProcess {
            child,
            addr,
            client: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The process's peak resident memory so far (`VmHWM`), in bytes.
    pub fn peak_rss(&self) -> u64 {
        let pid = self.child.id().expect("ragpool-api is running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmHWM in kB")
            * 1024
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

    /// `ragpool_api_submission_bytes_in_flight`: the submission budget in use.
    pub async fn in_flight(&self) -> i64 {
        self.metrics()
            .await
            .lines()
            .find_map(|l| l.strip_prefix("ragpool_api_submission_bytes_in_flight "))
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
