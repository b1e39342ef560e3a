//! Connections to a single Redis server, a primary watched by Redis Sentinel, or a Redis
//! Cluster, behind one type.
//!
//! Commands go over a multiplexed connection that reconnects on its own. Blocking commands
//! (`BLPOP`, `XREAD BLOCK`) get a connection of their own with no response timeout: on a
//! shared connection they would hold up every other command, and redis-rs's default 500 ms
//! response timeout would cut them off. A Sentinel connection asks the sentinels for the
//! primary whenever the one it used fails or turns out to be a replica (see
//! [`crate::sentinel`]).

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::error::Result;
use crate::sentinel::SentinelConn;

mod target;

pub use target::{RedisTarget, SentinelTarget};

/// A connection to any kind of deployment. Cheap to clone; clones share the socket.
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(SentinelConn),
}

impl Conn {
    /// Opens a multiplexed connection. For a single server this does not wait for Redis to be
    /// up: the first command connects, and a lost connection is re-established on the next.
    pub async fn open(target: &RedisTarget, response_timeout: Option<Duration>) -> Result<Conn> {
        let tls = target.urls.iter().any(|u| u.starts_with("rediss"));
        if tls {
            // rustls needs one process-wide crypto provider; install ring's unless the
            // application already chose one (then this is a no-op).
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        if let Some(sentinel) = &target.sentinel {
            return Ok(Conn::Sentinel(SentinelConn::new(
                sentinel,
                target.certificates(),
                response_timeout,
            )?));
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
            Conn::Sentinel(c) => c.req_packed_command(cmd),
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
            Conn::Sentinel(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
            Conn::Sentinel(c) => c.get_db(),
        }
    }
}

/// True when the connection was found closed before the command went out: redis-rs reports
/// that as an I/O "broken pipe" (it does not expose the `io::Error` itself, so the kind is read
/// from the message). A reply lost after the command was sent is indistinguishable from it,
/// but retrying then only succeeds if Redis came back within that instant, and every script
/// either refuses a repeat (a lease transition answers `LeaseLost`) or repeats harmlessly.
pub(crate) fn never_sent(e: &redis::RedisError) -> bool {
    e.is_io_error() && e.is_connection_dropped() && e.to_string().contains("broken pipe")
}
