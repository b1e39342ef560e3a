//! The real `ragpool-api` binary as a child process over its own `redis-server`, for the
//! attacks that must be measured on the process itself (its connections, its peak memory).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ragpool_api::ApiConfig;
use ragpool_queue::Broker;
use ragpool_queue::testing::{RedisServer, read_until_closed};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;

/// Longest wait for the process to start; a guard against a hang, never what is asserted.
const PATIENCE: Duration = Duration::from_secs(30);

/// A running `ragpool-api` on a free loopback port, logging JSON lines.
pub struct ApiProcess {
    child: tokio::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
    /// Its API listener.
    pub addr: SocketAddr,
    /// Its health listener, when started with `--health-listen`.
    pub health: Option<SocketAddr>,
    pub redis: RedisServer,
}

impl ApiProcess {
    /// Starts the binary with `args` (after `--listen 127.0.0.1:0`) over a fresh Redis, and
    /// waits until it listens.
    pub async fn start(args: &[&str]) -> ApiProcess {
        let redis = RedisServer::start().expect("starting redis-server");
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ragpool-api"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env_clear()
            .env("RAGPOOL_REDIS_URL", redis.url())
            .env("RAGPOOL_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("ragpool-api starts");
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
            addr,
            health,
            redis,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A broker on the process's Redis, with the API's default settings.
    pub async fn broker(&self) -> Broker {
        let config = ApiConfig {
            redis_url: self.redis.url(),
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

    /// What it logged so far.
    pub fn output(&self) -> String {
        self.lines.lock().expect("lock").join("\n")
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
