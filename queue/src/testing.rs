//! Real `redis-server` processes for tests: a single node ([`RedisServer`]) that can be
//! stopped, killed and started again on the same port and data directory, a Redis
//! Cluster of N masters ([`RedisCluster`]), and a primary with a replica watched by three
//! sentinels ([`RedisSentinel`]).
//!
//! Everything is per instance (own port, own temporary directory), so tests may run in
//! parallel. The API is synchronous: every wait polls a condition until a deadline and fails
//! with [`HarnessError::Timeout`] instead of hanging. Dropping a server kills and reaps its
//! process.

mod cluster;
mod port;
mod resp;
mod sentinel;
mod server;

use std::time::{Duration, Instant};

pub use cluster::RedisCluster;
pub use sentinel::{MASTER_NAME, RedisSentinel};
pub use server::{RedisServer, ServerOptions};

use crate::payload::{AnalyzeImage, CompleteAnswer, FullQuery, Payload};
use crate::task::TaskKind;

/// A secret a test puts into a binary's environment and then looks for in what it printed.
pub const SECRET: &str = "SeCrEt-7f3a";

/// Runs `binary` with `args` and no environment but `env`, and waits for it to exit.
///
/// # Panics
/// When the binary cannot be started (a test binary path from `env!("CARGO_BIN_EXE_…")`).
pub fn run_isolated(binary: &str, args: &[&str], env: &[(&str, String)]) -> std::process::Output {
    let mut command = std::process::Command::new(binary);
    command.args(args).env_clear();
    for (name, value) in env {
        command.env(name, value);
    }
    command
        .output()
        .unwrap_or_else(|e| panic!("running {binary}: {e}"))
}

/// What a process printed: its standard output, then its standard error.
pub fn printed(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Everything a server sends on `stream` until it closes the connection (a reset counts as a
/// close), for tests of listeners that close or refuse connections.
///
/// # Panics
/// When the server has not closed it within `guard`: a guard against a hang, never what a
/// test asserts.
pub async fn read_until_closed(stream: &mut tokio::net::TcpStream, guard: Duration) -> String {
    use tokio::io::AsyncReadExt as _;
    let mut seen = Vec::new();
    let closed = tokio::time::timeout(guard, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the server never closed the connection");
    String::from_utf8_lossy(&seen).into_owned()
}

/// A valid payload of `kind` whose text (question or prompt) is `text`, for tests that need
/// tasks of every kind and do not care what they ask.
pub fn sample_payload(kind: TaskKind, text: &str) -> Payload {
    match kind {
        TaskKind::AnalyzeImage => Payload::AnalyzeImage(AnalyzeImage {
            // A 1×1 PNG.
            image: Some("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAACklEQVR4nGMAAQAABQABDQottAAAAABJRU5ErkJggg==".into()),
            prompt: Some(text.into()),
            ..AnalyzeImage::default()
        }),
        TaskKind::CompleteAnswer => Payload::CompleteAnswer(CompleteAnswer {
            question: text.into(),
            ..CompleteAnswer::default()
        }),
        TaskKind::FullQuery => Payload::FullQuery(FullQuery {
            question: text.into(),
            ..FullQuery::default()
        }),
    }
}

/// Why a test Redis could not be started, stopped or checked.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// `redis-server` or `redis-cli` is not on `PATH`.
    #[error("{program} was not found on PATH: install with `apt-get install redis-server`")]
    RedisNotInstalled {
        /// The program that could not be run.
        program: &'static str,
    },
    /// An I/O operation of the harness failed.
    #[error("{context}: {source}")]
    Io {
        /// What the harness was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A condition did not become true before its deadline.
    #[error("timed out: {0}")]
    Timeout(String),
    /// `redis-server` exited while the harness waited for it to answer.
    #[error("redis-server on port {port} exited during startup ({status}); log tail:\n{log_tail}")]
    Exited {
        /// The port the server was asked to listen on.
        port: u16,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The last lines of its log.
        log_tail: String,
    },
    /// Redis answered something the harness did not expect.
    #[error("unexpected reply from redis-server on port {port}: {reply}")]
    Protocol {
        /// The port of the server that answered.
        port: u16,
        /// What it answered.
        reply: String,
    },
    /// `start_again` was called while the server is still running.
    #[error("redis-server on port {0} is already running")]
    AlreadyRunning(u16),
    /// No free port pair was found for a new server.
    #[error("no free loopback port found after {0} tries")]
    NoFreePort(usize),
    /// A cluster needs at least one master.
    #[error("a Redis Cluster needs at least 1 master, {0} requested")]
    TooFewMasters(usize),
    /// `redis-cli --cluster create` failed.
    #[error("redis-cli --cluster create failed ({status}):\n{output}")]
    ClusterCreate {
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it printed.
        output: String,
    },
}

impl HarnessError {
    fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> HarnessError {
        let context = context.into();
        move |source| HarnessError::Io { context, source }
    }
}

/// How often blocking waits re-check their condition.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Re-evaluates `ready` every [`POLL_INTERVAL`] until it returns `true`, an error, or
/// `timeout` passes; `what` names the condition in the timeout error.
fn poll_until(
    timeout: Duration,
    what: &str,
    mut ready: impl FnMut() -> Result<bool, HarnessError>,
) -> Result<(), HarnessError> {
    let deadline = Instant::now() + timeout;
    loop {
        if ready()? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(HarnessError::Timeout(format!(
                "{what} (waited {timeout:?})"
            )));
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}
