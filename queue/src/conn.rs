//! Connections to a single Redis server or a Redis Cluster, behind one type.
//!
//! Commands go over a multiplexed connection that reconnects on its own. Blocking commands
//! (`BLPOP`, `XREAD BLOCK`) get a connection of their own with no response timeout: on a
//! shared connection they would hold up every other command, and redis-rs's default 500 ms
//! response timeout would cut them off.

use std::str::FromStr;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::error::{QueueError, Result};

/// Where Redis is: one server, or the seed nodes of a cluster.
///
/// Parsed from a URL (`redis://`, `rediss://` for TLS, with `user:password@` when needed) or a
/// comma-separated list of URLs, which means a cluster. `redis+cluster://` (or
/// `rediss+cluster://`) selects cluster mode with a single seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisTarget {
    pub urls: Vec<String>,
    pub cluster: bool,
    /// PEM root certificate(s) to trust for `rediss://` instead of the system's roots (a
    /// private CA, as in most in-cluster Redis deployments).
    pub ca_cert: Option<Vec<u8>>,
}

impl RedisTarget {
    /// Trusts the CA certificate(s) in the PEM file at `path` for TLS connections.
    pub fn with_ca_file(mut self, path: &std::path::Path) -> Result<Self> {
        let pem = std::fs::read(path).map_err(|e| {
            QueueError::Config(format!("reading Redis CA file {}: {e}", path.display()))
        })?;
        self.ca_cert = Some(pem);
        Ok(self)
    }

    fn certificates(&self) -> Option<redis::TlsCertificates> {
        self.ca_cert.as_ref().map(|pem| redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(pem.clone()),
        })
    }
}

impl FromStr for RedisTarget {
    type Err = QueueError;

    fn from_str(s: &str) -> Result<Self> {
        let mut cluster = false;
        let mut urls = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let url = if let Some(rest) = part.strip_prefix("redis+cluster://") {
                cluster = true;
                format!("redis://{rest}")
            } else if let Some(rest) = part.strip_prefix("rediss+cluster://") {
                cluster = true;
                format!("rediss://{rest}")
            } else {
                part.to_string()
            };
            redis::parse_redis_url(&url).ok_or_else(|| {
                QueueError::Config(format!(
                    "invalid Redis URL {:?}: expected redis://host:port or rediss://host:port",
                    redact(part)
                ))
            })?;
            urls.push(url);
        }
        if urls.is_empty() {
            return Err(QueueError::Config("empty Redis URL".into()));
        }
        cluster |= urls.len() > 1;
        Ok(RedisTarget {
            urls,
            cluster,
            ca_cert: None,
        })
    }
}

/// A URL with its password replaced, for messages and logs.
pub fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://***@{host}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// A connection to either kind of deployment. Cheap to clone; clones share the socket.
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    /// Opens a multiplexed connection. For a single server this does not wait for Redis to be
    /// up: the first command connects, and a lost connection is re-established on the next.
    pub async fn open(target: &RedisTarget, response_timeout: Option<Duration>) -> Result<Conn> {
        if target.urls.iter().any(|u| u.starts_with("rediss://")) {
            // rustls needs one process-wide crypto provider; install ring's unless the
            // application already chose one (then this is a no-op).
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        if target.cluster {
            let mut builder = ClusterClientBuilder::new(target.urls.clone())
                .connection_timeout(Duration::from_secs(5))
                .retries(3);
            if let Some(certs) = target.certificates() {
                builder = builder.certs(certs);
            }
            builder = match response_timeout {
                Some(t) => builder.response_timeout(t),
                // No per-response limit: large enough for any block time we use.
                None => builder.response_timeout(Duration::from_secs(24 * 3600)),
            };
            let client = builder.build()?;
            Ok(Conn::Cluster(client.get_async_connection().await?))
        } else {
            let url = target.urls[0].as_str();
            let client = match target.certificates() {
                Some(certs) => redis::Client::build_with_tls(url, certs)?,
                None => redis::Client::open(url)?,
            };
            let config = ConnectionManagerConfig::new()
                .set_response_timeout(response_timeout)
                .set_connection_timeout(Some(Duration::from_secs(5)))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_secs(1));
            Ok(Conn::Single(ConnectionManager::new_lazy_with_config(
                client, config,
            )?))
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            // The connection manager learns that its socket died (Redis restarted) only when a
            // command fails on it. When that failure was on writing, Redis never saw the
            // command, so sending it once more on the new connection is safe and saves the
            // caller a spurious error.
            Conn::Single(c) => Box::pin(async move {
                match c.req_packed_command(cmd).await {
                    Err(e) if never_sent(&e) => c.req_packed_command(cmd).await,
                    other => other,
                }
            }),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// True when the connection was found closed before the command went out: redis-rs reports
/// that as an I/O "broken pipe" (it does not expose the `io::Error` itself, so the kind is read
/// from the message). A reply lost after the command was sent is indistinguishable from it,
/// but retrying then only succeeds if Redis came back within that instant, and every script
/// either refuses a repeat (a lease transition answers `LeaseLost`) or repeats harmlessly.
fn never_sent(e: &redis::RedisError) -> bool {
    e.is_io_error() && e.is_connection_dropped() && e.to_string().contains("broken pipe")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_single_cluster_and_tls_targets() {
        let single: RedisTarget = "redis://127.0.0.1:6379".parse().unwrap();
        assert!(!single.cluster);
        let list: RedisTarget = "redis://a:1, redis://b:2".parse().unwrap();
        assert!(list.cluster);
        assert_eq!(list.urls, vec!["redis://a:1", "redis://b:2"]);
        let tagged: RedisTarget = "rediss+cluster://:pw@h:6380".parse().unwrap();
        assert!(tagged.cluster);
        assert_eq!(tagged.urls, vec!["rediss://:pw@h:6380"]);
        let err = "http://nope"
            .parse::<RedisTarget>()
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid Redis URL"), "{err}");
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("redis://:secret@h:1"), "redis://***@h:1");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
    }
}
