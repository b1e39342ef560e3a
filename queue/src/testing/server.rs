//! One `redis-server` process in its own temporary directory.

use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::port::{self, PortReservation};
use super::resp::{self, Conn, Reply};
use super::{HarnessError, poll_until};

/// A new server whose process exits at once most likely lost its port to another process
/// between the free-port check and its own bind, so it is retried on another port.
const START_ATTEMPTS: usize = 5;
const READY_TIMEOUT: Duration = Duration::from_secs(10);
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);
const LOG_FILE: &str = "redis.log";
const LOG_TAIL_LINES: usize = 30;

/// How a [`RedisServer`] is configured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerOptions {
    /// Append-only file with `appendfsync always`: every acknowledged write survives a stop
    /// or a kill. Without it the server keeps nothing across restarts.
    pub aof: bool,
    /// Start as a Redis Cluster node (`cluster-enabled yes`, `nodes.conf` in its directory).
    pub cluster: bool,
}

/// A `redis-server` on 127.0.0.1 with its own port and data directory, both kept across
/// [`stop`](Self::stop)/[`kill`](Self::kill) and [`start_again`](Self::start_again).
/// Dropping it kills and reaps the process.
#[derive(Debug)]
pub struct RedisServer {
    dir: TempDir,
    opts: ServerOptions,
    ports: PortReservation,
    child: Option<Child>,
    /// Started as a replica of the server on this port (`replicaof`).
    replica_of: Option<u16>,
}

impl RedisServer {
    /// Starts a server without persistence (`save ""`, `appendonly no`).
    pub fn start() -> Result<RedisServer, HarnessError> {
        Self::start_with(ServerOptions::default())
    }

    /// Starts a server with `opts` on a free port and waits until it answers `PING`.
    pub fn start_with(opts: ServerOptions) -> Result<RedisServer, HarnessError> {
        Self::start_inner(opts, None)
    }

    /// Starts a replica of the server on loopback port `primary` (`--replicaof`). Whoever
    /// manages replication later (Sentinel) may change that; a restart starts it as a replica
    /// of `primary` again, and Sentinel corrects that too.
    pub fn start_replica_of(
        primary: u16,
        opts: ServerOptions,
    ) -> Result<RedisServer, HarnessError> {
        Self::start_inner(opts, Some(primary))
    }

    fn start_inner(
        opts: ServerOptions,
        replica_of: Option<u16>,
    ) -> Result<RedisServer, HarnessError> {
        let dir = tempfile::Builder::new()
            .prefix("ragpool-redis-")
            .tempdir()
            .map_err(HarnessError::io("creating a directory for redis-server"))?;
        let mut server = RedisServer {
            dir,
            opts,
            ports: port::reserve(opts.cluster)?,
            child: None,
            replica_of,
        };
        let mut attempt = 1;
        loop {
            match server.start_again() {
                Ok(()) => return Ok(server),
                Err(HarnessError::Exited { .. }) if attempt < START_ATTEMPTS => {
                    attempt += 1;
                    server.ports = port::reserve(opts.cluster)?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Makes the next [`start_again`](Self::start_again) start a replica of `primary` (a
    /// former primary rejoining as a replica), or a primary with `None`.
    pub fn set_replica_of(&mut self, primary: Option<u16>) {
        self.replica_of = primary;
    }

    /// Waits until this replica reports its link to its primary up and the primary lists it
    /// `online` (only then does `WAIT` count it): from then on it acknowledges the primary's
    /// writes.
    pub fn wait_until_in_sync(&self) -> Result<(), HarnessError> {
        let port = self.port();
        let replication =
            |port: u16| match Conn::open(port).and_then(|mut c| c.call(&["INFO", "replication"])) {
                Ok(Reply::Bulk(Some(info))) => Some(info),
                _ => None,
            };
        poll_until(
            READY_TIMEOUT,
            &format!("the replica on port {port} to be in sync"),
            || {
                let Some(mine) = replication(port) else {
                    return Ok(false);
                };
                if resp::info_field(&mine, "master_link_status") != Some("up") {
                    return Ok(false);
                }
                let Some(primary) = resp::info_field(&mine, "master_port")
                    .and_then(|p| p.parse::<u16>().ok())
                    .and_then(replication)
                else {
                    return Ok(false);
                };
                let listed = format!("port={port},state=online");
                Ok(primary.lines().any(|line| line.contains(&listed)))
            },
        )
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port())
    }

    /// The port the server listens on, the same across restarts.
    pub fn port(&self) -> u16 {
        self.ports.port()
    }

    /// The options the server was started with.
    pub fn options(&self) -> ServerOptions {
        self.opts
    }

    /// The server's working directory (data files, `nodes.conf` and its log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The process id while a process is held (running or exited but not yet reaped).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is alive.
    pub fn is_running(&mut self) -> bool {
        self.reap_if_exited();
        self.child.is_some()
    }

    /// Shuts the server down gracefully with `SHUTDOWN` (the append-only file, when on, is
    /// flushed) and waits for the process to exit. Does nothing if it is not running.
    pub fn stop(&mut self) -> Result<(), HarnessError> {
        if !self.is_running() {
            return Ok(());
        }
        let port = self.port();
        let reply = Conn::open(port).and_then(|mut conn| conn.call(&["SHUTDOWN"]));
        match reply {
            // A server that shuts down closes the connection without answering.
            Err(e) if is_closed(&e) => {}
            Err(e) => {
                return Err(HarnessError::Io {
                    context: format!("sending SHUTDOWN to redis-server on port {port}"),
                    source: e,
                });
            }
            Ok(reply) => {
                return Err(HarnessError::Protocol {
                    port,
                    reply: format!("SHUTDOWN answered {reply}"),
                });
            }
        }
        self.wait_for_exit("SHUTDOWN")
    }

    /// Kills the process with SIGKILL (nothing is flushed) and waits for it to exit.
    /// Does nothing if it is not running.
    pub fn kill(&mut self) -> Result<(), HarnessError> {
        if !self.is_running() {
            return Ok(());
        }
        let port = self.port();
        if let Some(child) = self.child.as_mut() {
            child.kill().map_err(HarnessError::io(format!(
                "killing redis-server on port {port}"
            )))?;
        }
        self.wait_for_exit("SIGKILL")
    }

    /// Starts the process again with the same port, directory and options, and waits until
    /// it answers `PING` (after loading its append-only file, if any).
    pub fn start_again(&mut self) -> Result<(), HarnessError> {
        if self.is_running() {
            return Err(HarnessError::AlreadyRunning(self.port()));
        }
        let log_path = self.log_path();
        let open_log = || {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .map_err(HarnessError::io(format!("opening {}", log_path.display())))
        };
        let child = Command::new("redis-server")
            .args(self.args())
            .current_dir(self.dir())
            .stdin(Stdio::null())
            .stdout(open_log()?)
            .stderr(open_log()?)
            .spawn()
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => HarnessError::RedisNotInstalled {
                    program: "redis-server",
                },
                _ => HarnessError::Io {
                    context: "spawning redis-server".into(),
                    source: e,
                },
            })?;
        self.child = Some(child);
        self.wait_ready()
    }

    /// [`stop`](Self::stop) then [`start_again`](Self::start_again).
    pub fn restart(&mut self) -> Result<(), HarnessError> {
        self.stop()?;
        self.start_again()
    }

    fn args(&self) -> Vec<String> {
        let mut args: Vec<String> = [
            "--port",
            &self.port().to_string(),
            "--bind",
            "127.0.0.1",
            "--dir",
            &self.dir().display().to_string(),
            "--daemonize",
            "no",
            "--save",
            "",
            // A replica's first sync starts at once instead of after 5 s (the default delay
            // waits for more replicas to share one transfer).
            "--repl-diskless-sync-delay",
            "0",
        ]
        .map(String::from)
        .into();
        let persistence: &[&str] = if self.opts.aof {
            &["--appendonly", "yes", "--appendfsync", "always"]
        } else {
            &["--appendonly", "no"]
        };
        args.extend(persistence.iter().map(|s| s.to_string()));
        if let Some(primary) = self.replica_of {
            args.extend([
                "--replicaof".into(),
                "127.0.0.1".into(),
                primary.to_string(),
            ]);
        }
        if self.opts.cluster {
            let cluster = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "5000",
            ];
            args.extend(cluster.map(String::from));
        }
        args
    }

    fn log_path(&self) -> PathBuf {
        self.dir().join(LOG_FILE)
    }

    /// The last lines of the server's log, for error messages.
    pub fn log_tail(&self) -> String {
        match std::fs::read_to_string(self.log_path()) {
            Ok(log) => {
                let lines: Vec<&str> = log.lines().collect();
                lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
            }
            Err(e) => format!("(log unreadable: {e})"),
        }
    }

    /// Polls until the process answers `PING` and reports its own pid: a `PONG` alone could
    /// come from another test's server that won a race for the same port.
    fn wait_ready(&mut self) -> Result<(), HarnessError> {
        let port = self.port();
        let Some(pid) = self.pid() else {
            return Err(HarnessError::Timeout(format!(
                "redis-server on port {port} has no process"
            )));
        };
        let result = poll_until(
            READY_TIMEOUT,
            &format!("redis-server on port {port} to answer PING"),
            || {
                if let Some(status) = self.reap_if_exited() {
                    return Err(HarnessError::Exited {
                        port,
                        status,
                        log_tail: self.log_tail(),
                    });
                }
                Ok(answers_as(port, pid))
            },
        );
        if let Err(HarnessError::Timeout(what)) = result {
            // A server that never became ready is of no use; don't leave it running.
            self.kill_and_reap();
            return Err(HarnessError::Timeout(format!(
                "{what}; log tail:\n{}",
                self.log_tail()
            )));
        }
        result
    }

    fn wait_for_exit(&mut self, how: &str) -> Result<(), HarnessError> {
        let port = self.port();
        let what = format!("redis-server on port {port} to exit after {how}");
        let result = poll_until(EXIT_TIMEOUT, &what, || Ok(!self.is_running()));
        if result.is_err() {
            self.kill_and_reap();
        }
        result
    }

    /// Reaps the process if it has exited and returns its status.
    fn reap_if_exited(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => {
                self.child = None;
                Some(status)
            }
            // An error means the process cannot be waited on by us any more.
            Err(_) => {
                self.child = None;
                None
            }
            Ok(None) => None,
        }
    }

    fn kill_and_reap(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Errors mean the process is already gone, which is the goal.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill_and_reap();
    }
}

fn is_closed(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
    )
}

/// Whether the server on `port` answers `PING` with `PONG` and is the process `pid`.
fn answers_as(port: u16, pid: u32) -> bool {
    let check = || -> io::Result<bool> {
        let mut conn = Conn::open(port)?;
        if conn.call(&["PING"])? != Reply::Simple("PONG".into()) {
            return Ok(false);
        }
        let Reply::Bulk(Some(info)) = conn.call(&["INFO", "server"])? else {
            return Ok(false);
        };
        Ok(resp::info_field(&info, "process_id") == Some(pid.to_string().as_str()))
    };
    check().unwrap_or(false)
}
