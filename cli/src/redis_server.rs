//! The private `redis-server` of `ragpool dev`: started on a free loopback port with its data
//! (append-only file on) in a folder of the working directory, and shut down cleanly when
//! `ragpool dev` stops.
//!
//! The server runs in its own process group so that the Ctrl-C a terminal sends to
//! `ragpool dev` does not reach it: Redis must outlive the API and the executor, which still
//! talk to it while they drain.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use redis::AsyncConnectionConfig;
use tokio::process::{Child, Command};

/// How long a new server may take to answer PING.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long `SHUTDOWN` may take before the server is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Another program may take a port between our probe and Redis binding it; try a few.
const PORT_ATTEMPTS: usize = 5;
const PROGRAM: &str = "redis-server";

/// Why the private Redis could not be started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RedisServerError {
    #[error(
        "redis-server was not found on PATH. Install it (Debian/Ubuntu: `sudo apt-get install \
         redis-server`), or set RAGPOOL_REDIS_URL to a Redis you already run, e.g. \
         RAGPOOL_REDIS_URL=redis://127.0.0.1:6379 ragpool dev"
    )]
    NotInstalled,

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    #[error("redis-server exited during startup ({status}); the end of {log}:\n{tail}")]
    Exited {
        status: ExitStatus,
        log: PathBuf,
        tail: String,
    },

    #[error("redis-server on port {port} did not answer PING within {secs} s; see {log}")]
    NotReady { port: u16, secs: u64, log: PathBuf },

    #[error("redis-server could not bind a free loopback port in {0} attempts; see {1}")]
    NoPort(usize, PathBuf),
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> RedisServerError {
    let context = context.into();
    move |source| RedisServerError::Io { context, source }
}

/// A running private `redis-server`.
#[derive(Debug)]
pub struct PrivateRedis {
    child: Child,
    pid: u32,
    port: u16,
    dir: PathBuf,
}

impl PrivateRedis {
    /// Starts `redis-server` with its data, log and port file in `dir` (created if missing)
    /// and waits until it answers PING.
    pub async fn start(dir: &Path) -> Result<PrivateRedis, RedisServerError> {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        // Redis changes into its data folder before it opens the log; absolute paths keep
        // both where they are meant to be.
        let dir = std::fs::canonicalize(dir).map_err(io(format!("resolving {}", dir.display())))?;
        let log = log_path(&dir);
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port()?;
            match Self::start_on(&dir, port).await {
                Err(RedisServerError::Exited { tail, .. }) if tail.contains("already in use") => {
                    continue;
                }
                other => return other,
            }
        }
        Err(RedisServerError::NoPort(PORT_ATTEMPTS, log))
    }

    async fn start_on(dir: &Path, port: u16) -> Result<PrivateRedis, RedisServerError> {
        let log = log_path(dir);
        let mut command = Command::new(PROGRAM);
        command
            .arg("--port")
            .arg(port.to_string())
            .args(["--bind", "127.0.0.1", "--protected-mode", "yes"])
            .arg("--dir")
            .arg(dir)
            .arg("--logfile")
            .arg(&log)
            .args(["--appendonly", "yes", "--appendfsync", "everysec"])
            // The append-only file is the persistence; RDB snapshots would only add pauses.
            .args(["--save", ""])
            .args(["--daemonize", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => RedisServerError::NotInstalled,
            _ => RedisServerError::Io {
                context: format!("starting {PROGRAM}"),
                source: e,
            },
        })?;
        let pid = child.id().unwrap_or_default();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().map_err(io("checking redis-server"))? {
                return Err(RedisServerError::Exited {
                    status,
                    tail: log_tail(&log),
                    log,
                });
            }
            if ping(port, Duration::from_millis(500)).await.is_ok() {
                break;
            }
            if Instant::now() >= deadline {
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Err(RedisServerError::NotReady {
                    port,
                    secs: START_TIMEOUT.as_secs(),
                    log,
                });
            }
            // Redis has no readiness signal we can wait on besides answering PING.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        std::fs::write(port_file(dir), port.to_string())
            .map_err(io(format!("writing {}", port_file(dir).display())))?;
        Ok(PrivateRedis {
            child,
            pid,
            port,
            dir: dir.to_path_buf(),
        })
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The data folder (absolute).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Asks the server to shut down (flushing its append-only file) and waits for it to exit;
    /// kills it if it does not within a few seconds.
    pub async fn stop(mut self) -> Result<ExitStatus, RedisServerError> {
        // The connection closes under the command, so its answer is an error by design.
        let _ = send_shutdown(self.port).await;
        let status = match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(status) => status.map_err(io("waiting for redis-server to exit"))?,
            Err(_) => {
                tracing::warn!(pid = self.pid, "redis-server did not shut down; killing it");
                self.child
                    .kill()
                    .await
                    .map_err(io("killing redis-server"))?;
                self.child
                    .wait()
                    .await
                    .map_err(io("waiting for redis-server to exit"))?
            }
        };
        let _ = std::fs::remove_file(port_file(&self.dir));
        Ok(status)
    }
}

/// Shuts down a server an earlier, killed `ragpool dev` left running on this data folder.
/// It is recognised by its port file and by Redis reporting the same data folder, so an
/// unrelated Redis that took the port since is never touched. Call only while holding the
/// folder's lock. Returns whether one was stopped.
pub async fn stop_leftover(dir: &Path) -> Result<bool, RedisServerError> {
    let Ok(text) = std::fs::read_to_string(port_file(dir)) else {
        return Ok(false);
    };
    let Ok(port) = text.trim().parse::<u16>() else {
        return Ok(false);
    };
    let Ok(dir) = std::fs::canonicalize(dir) else {
        return Ok(false);
    };
    let Ok(mut conn) = connect(port, Duration::from_millis(500)).await else {
        let _ = std::fs::remove_file(port_file(&dir));
        return Ok(false);
    };
    let served: redis::RedisResult<Vec<String>> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("dir")
        .query_async(&mut conn)
        .await;
    let same = served.is_ok_and(|v| v.get(1).is_some_and(|d| Path::new(d) == dir));
    if !same {
        return Ok(false);
    }
    let _ = send_shutdown(port).await;
    let deadline = Instant::now() + STOP_TIMEOUT;
    while ping(port, Duration::from_millis(500)).await.is_ok() {
        if Instant::now() >= deadline {
            return Err(RedisServerError::Io {
                context: format!("stopping the redis-server left running on port {port}"),
                source: std::io::Error::from(std::io::ErrorKind::TimedOut),
            });
        }
        // Not our child: there is no exit to wait on, only the port going quiet.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = std::fs::remove_file(port_file(&dir));
    Ok(true)
}

async fn connect(
    port: u16,
    timeout: Duration,
) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

async fn ping(port: u16, timeout: Duration) -> redis::RedisResult<()> {
    let mut conn = connect(port, timeout).await?;
    redis::cmd("PING").query_async::<String>(&mut conn).await?;
    Ok(())
}

async fn send_shutdown(port: u16) -> redis::RedisResult<()> {
    let mut conn = connect(port, Duration::from_secs(2)).await?;
    redis::cmd("SHUTDOWN").query_async::<()>(&mut conn).await
}

fn free_port() -> Result<u16, RedisServerError> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(io("finding a free loopback port"))?;
    Ok(listener
        .local_addr()
        .map_err(io("finding a free loopback port"))?
        .port())
}

fn log_path(dir: &Path) -> PathBuf {
    dir.join("redis.log")
}

fn port_file(dir: &Path) -> PathBuf {
    dir.join("port")
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}
