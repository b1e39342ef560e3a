//! A primary, one replica and three Redis Sentinels ([`RedisSentinel`]) on loopback, set up
//! to fail over within a second or two.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::port::{self, PortReservation};
use super::resp::{self, Conn, Reply};
use super::server::{RedisServer, ServerOptions};
use super::{HarnessError, poll_until};

/// The name the sentinels monitor the primary under.
pub const MASTER_NAME: &str = "ragpool";
const SENTINELS: usize = 3;
const QUORUM: usize = 2;
/// A primary that does not answer for this long is subjectively down; with the quorum agreeing
/// it is failed over. Small so that a test's failover takes about a second.
const DOWN_AFTER_MS: u64 = 500;
const FAILOVER_TIMEOUT_MS: u64 = 2000;
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const FAILOVER_WAIT: Duration = Duration::from_secs(30);

/// One `redis-server --sentinel` process with its own config file (Sentinel rewrites it).
#[derive(Debug)]
struct SentinelProcess {
    dir: TempDir,
    port: PortReservation,
    child: Option<Child>,
}

impl SentinelProcess {
    fn start(primary: u16) -> Result<SentinelProcess, HarnessError> {
        let dir = tempfile::Builder::new()
            .prefix("ragpool-sentinel-")
            .tempdir()
            .map_err(HarnessError::io("creating a directory for a sentinel"))?;
        let port = port::reserve(false)?;
        let config = format!(
            "port {port}\n\
             bind 127.0.0.1\n\
             daemonize no\n\
             dir {dir}\n\
             sentinel monitor {MASTER_NAME} 127.0.0.1 {primary} {QUORUM}\n\
             sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n\
             sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}\n\
             sentinel parallel-syncs {MASTER_NAME} 1\n",
            port = port.port(),
            dir = dir.path().display(),
        );
        let config_path = dir.path().join("sentinel.conf");
        std::fs::write(&config_path, config).map_err(HarnessError::io(format!(
            "writing {}",
            config_path.display()
        )))?;
        let log = |path: &PathBuf| -> Result<File, HarnessError> {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(HarnessError::io(format!("opening {}", path.display())))
        };
        let log_path = dir.path().join("sentinel.log");
        let child = Command::new("redis-server")
            .arg(&config_path)
            .arg("--sentinel")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log(&log_path)?)
            .stderr(log(&log_path)?)
            .spawn()
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => HarnessError::RedisNotInstalled {
                    program: "redis-server",
                },
                _ => HarnessError::Io {
                    context: "spawning redis-server --sentinel".into(),
                    source: e,
                },
            })?;
        Ok(SentinelProcess {
            dir,
            port,
            child: Some(child),
        })
    }

    fn port(&self) -> u16 {
        self.port.port()
    }

    fn call(&self, args: &[&str]) -> io::Result<Reply> {
        Conn::open(self.port())?.call(args)
    }

    fn log_tail(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sentinel.log"))
            .map(|log| {
                let lines: Vec<&str> = log.lines().collect();
                lines[lines.len().saturating_sub(20)..].join("\n")
            })
            .unwrap_or_default()
    }
}

impl Drop for SentinelProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Errors mean the process is already gone, which is the goal.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A primary and one replica watched by three sentinels, all on 127.0.0.1, failing over in
/// about a second. Dropping it kills every process.
///
/// Which of the two servers is primary changes with each failover; [`primary`] and
/// [`replica`] always answer by asking the sentinels.
///
/// [`primary`]: Self::primary
/// [`replica`]: Self::replica
#[derive(Debug)]
pub struct RedisSentinel {
    servers: Vec<RedisServer>,
    sentinels: Vec<SentinelProcess>,
}

impl RedisSentinel {
    /// Starts the two servers (no persistence) and the sentinels, and waits until every
    /// sentinel knows the replica and the other sentinels and the replica is in sync.
    pub fn start() -> Result<RedisSentinel, HarnessError> {
        Self::start_with(ServerOptions::default())
    }

    /// Like [`start`](Self::start), with `opts` for both servers.
    pub fn start_with(opts: ServerOptions) -> Result<RedisSentinel, HarnessError> {
        let primary = RedisServer::start_with(opts)?;
        let replica = RedisServer::start_replica_of(primary.port(), opts)?;
        let sentinels = (0..SENTINELS)
            .map(|_| SentinelProcess::start(primary.port()))
            .collect::<Result<Vec<_>, _>>()?;
        let mut this = RedisSentinel {
            servers: vec![primary, replica],
            sentinels,
        };
        this.wait_until_ready()?;
        Ok(this)
    }

    /// `redis+sentinel://127.0.0.1:A,127.0.0.1:B,127.0.0.1:C/ragpool`.
    pub fn url(&self) -> String {
        format!(
            "redis+sentinel://{}/{MASTER_NAME}",
            self.addresses().join(",")
        )
    }

    /// The sentinels' `127.0.0.1:PORT` addresses.
    pub fn addresses(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port()))
            .collect()
    }

    /// The port of the primary as the first sentinel that answers announces it
    /// (`SENTINEL get-master-addr-by-name`).
    pub fn announced_primary(&self) -> Result<u16, HarnessError> {
        let mut last = None;
        for sentinel in &self.sentinels {
            match sentinel.call(&["SENTINEL", "get-master-addr-by-name", MASTER_NAME]) {
                Ok(Reply::Array(Some(addr))) if addr.len() == 2 => {
                    if let Some(port) = addr[1].text().and_then(|p| p.parse().ok()) {
                        return Ok(port);
                    }
                    last = Some(format!("{addr:?}"));
                }
                Ok(other) => last = Some(other.to_string()),
                Err(e) => last = Some(e.to_string()),
            }
        }
        Err(HarnessError::Protocol {
            port: self.sentinels[0].port(),
            reply: format!(
                "no sentinel announced a primary: {}",
                last.unwrap_or_default()
            ),
        })
    }

    fn index_of(&self, port: u16) -> Result<usize, HarnessError> {
        self.servers
            .iter()
            .position(|s| s.port() == port)
            .ok_or_else(|| HarnessError::Protocol {
                port,
                reply: "the sentinels announce a server the harness did not start".into(),
            })
    }

    /// The server the sentinels announce as primary.
    pub fn primary(&mut self) -> Result<&mut RedisServer, HarnessError> {
        let i = self.index_of(self.announced_primary()?)?;
        Ok(&mut self.servers[i])
    }

    /// The other server: the replica (or, after a SIGKILL, the former primary).
    pub fn replica(&mut self) -> Result<&mut RedisServer, HarnessError> {
        let i = self.index_of(self.announced_primary()?)?;
        Ok(&mut self.servers[1 - i])
    }

    /// Asks a sentinel for a failover (`SENTINEL FAILOVER`) and waits until the replica is
    /// announced and answers as primary. Returns its port.
    pub fn failover(&mut self) -> Result<u16, HarnessError> {
        let old = self.announced_primary()?;
        let sentinel = &self.sentinels[0];
        match sentinel.call(&["SENTINEL", "FAILOVER", MASTER_NAME]) {
            Ok(Reply::Simple(ok)) if ok == "OK" => {}
            Ok(other) => {
                return Err(HarnessError::Protocol {
                    port: sentinel.port(),
                    reply: format!("SENTINEL FAILOVER answered {other}"),
                });
            }
            Err(e) => {
                return Err(HarnessError::Io {
                    context: "sending SENTINEL FAILOVER".into(),
                    source: e,
                });
            }
        }
        self.wait_for_new_primary(old)
    }

    /// SIGKILLs the primary and waits until the sentinels agree it is down and announce the
    /// replica, which answers as primary. Returns the new primary's port. The killed server
    /// stays down; [`restart_former_primary`](Self::restart_former_primary) brings it back as
    /// a replica.
    pub fn kill_primary(&mut self) -> Result<u16, HarnessError> {
        let old = self.announced_primary()?;
        let i = self.index_of(old)?;
        self.servers[i].kill()?;
        self.wait_for_new_primary(old)
    }

    /// Starts the killed former primary again as a replica of the current primary, and waits
    /// until it is in sync.
    pub fn restart_former_primary(&mut self) -> Result<(), HarnessError> {
        let primary = self.announced_primary()?;
        let replica = self.replica()?;
        replica.set_replica_of(Some(primary));
        replica.start_again()?;
        self.wait_for_replica_in_sync()
    }

    /// Waits until the failover away from `old` is complete: every sentinel lists a primary
    /// other than `old` with no failover in progress, that server answers `ROLE` as master,
    /// and `old`, if it still runs, has been turned into a replica. Before that a client may
    /// still be told of no primary, or find `old` still accepting writes.
    fn wait_for_new_primary(&self, old: u16) -> Result<u16, HarnessError> {
        let mut new = old;
        let old_running = self
            .servers
            .iter()
            .any(|s| s.port() == old && role(old).is_some());
        let result = poll_until(
            FAILOVER_WAIT,
            &format!("the sentinels to complete a failover away from port {old}"),
            || {
                let mut ports = Vec::new();
                for sentinel in &self.sentinels {
                    let Ok(master) = sentinel.call(&["SENTINEL", "master", MASTER_NAME]) else {
                        return Ok(false);
                    };
                    if master.field("flags") != Some("master") {
                        return Ok(false);
                    }
                    match master.field("port").and_then(|p| p.parse::<u16>().ok()) {
                        Some(port) => ports.push(port),
                        None => return Ok(false),
                    }
                }
                new = ports[0];
                Ok(ports.iter().all(|p| *p == new)
                    && new != old
                    && role(new).as_deref() == Some("master")
                    && (!old_running || role(old).as_deref() == Some("slave")))
            },
        );
        self.with_logs(result).map(|()| new)
    }

    fn wait_until_ready(&mut self) -> Result<(), HarnessError> {
        let result = poll_until(
            READY_TIMEOUT,
            "every sentinel to know the replica and the other sentinels",
            || {
                Ok(self.sentinels.iter().all(|s| {
                    let Ok(master) = s.call(&["SENTINEL", "master", MASTER_NAME]) else {
                        return false;
                    };
                    master.field("num-slaves") == Some("1")
                        && master.field("num-other-sentinels")
                            == Some(&(SENTINELS - 1).to_string()[..])
                }))
            },
        );
        self.with_logs(result)?;
        self.wait_for_replica_in_sync()
    }

    /// Waits until the replica reports its link to the primary up.
    pub fn wait_for_replica_in_sync(&mut self) -> Result<(), HarnessError> {
        self.replica()?.wait_until_in_sync()
    }

    fn with_logs(&self, result: Result<(), HarnessError>) -> Result<(), HarnessError> {
        result.map_err(|e| match e {
            HarnessError::Timeout(what) => HarnessError::Timeout(format!(
                "{what}; first sentinel's log tail:\n{}",
                self.sentinels[0].log_tail()
            )),
            other => other,
        })
    }
}

/// What the server on `port` says it is (`master`, `slave`), `None` when it does not answer.
fn role(port: u16) -> Option<String> {
    let Ok(Reply::Bulk(Some(info))) =
        Conn::open(port).and_then(|mut c| c.call(&["INFO", "replication"]))
    else {
        return None;
    };
    resp::info_field(&info, "role").map(str::to_owned)
}
