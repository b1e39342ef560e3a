//! [`SentinelConn`]: a multiplexed connection to whichever server the sentinels name primary.
//!
//! redis-rs's Sentinel support finds the primary (it asks the sentinels, then checks with
//! `ROLE` that the server it was told about really is a primary) but its connections keep
//! talking to the server they were opened to. After a failover that server is gone (killed)
//! or a replica (demoted), so this wrapper drops its connection whenever a reply says it is
//! no longer talking to a primary and asks the sentinels again on the next command:
//!
//! - a connection error (refused, reset, timed out): the primary is unreachable;
//! - `READONLY`: a write reached a replica, which refused it, so nothing was written and the
//!   command is sent once more to the new primary;
//! - `UNBLOCKED` (a blocked `BLPOP`/`XREAD` cut short by the demotion), `MASTERDOWN`,
//!   `LOADING`: the server is in no state to serve.
//!
//! A write therefore never lands on a replica: every connection starts at a server that
//! answered `ROLE` as primary, and a demoted one refuses writes until the connection is
//! dropped.
//!
//! Replies alone do not notice every failover, though. After `SENTINEL FAILOVER` (or a
//! failover around a primary that was only cut off) the former primary keeps answering as a
//! primary until the sentinels demote it, and they do that only when their next periodic
//! `INFO` (every ten seconds) finds it still claiming to be one. Writes that land there in
//! between are discarded when it resynchronises from the new primary: with durability `local`
//! each of them is an acknowledged task lost, with `replicated` each is a `503` (its `WAIT`
//! finds no replica). So while a connection is in use a watcher asks the sentinels every
//! [`WATCH_INTERVAL`] which server is primary, and drops the connection as soon as they name
//! another one.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{AsyncConnectionConfig, Cmd, ConnectionAddr, Pipeline, RedisFuture, TlsMode, Value};

use crate::conn::{SentinelTarget, never_sent};
use crate::error::Result;

/// How often the sentinels are asked whether the primary in use is still the one they name:
/// the longest a former primary keeps taking writes from this process after a failover.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// A connection to the primary the sentinels name. Cheap to clone; clones share the socket
/// and the lookup.
#[derive(Clone)]
pub struct SentinelConn {
    shared: Arc<Shared>,
    db: i64,
}

struct Shared {
    /// Held while asking the sentinels, so concurrent callers that all saw the old primary
    /// fail wait for one lookup instead of each making their own.
    client: tokio::sync::Mutex<SentinelClient>,
    current: Mutex<Option<(u64, MultiplexedConnection)>>,
    /// The address of the primary `current` is connected to, as `host:port`.
    address: Mutex<Option<(u64, String)>>,
    generation: AtomicU64,
    config: AsyncConnectionConfig,
    /// Whether the watcher task runs (it is started with the first connection, on the
    /// runtime that made it).
    watching: AtomicBool,
}

impl SentinelConn {
    /// Prepares the lookup; nothing is sent until the first command.
    pub(crate) fn new(
        target: &SentinelTarget,
        certificates: Option<redis::TlsCertificates>,
        response_timeout: Option<Duration>,
    ) -> Result<SentinelConn> {
        let sentinels = target.sentinels.iter().map(|(host, port)| {
            if target.tls {
                ConnectionAddr::TcpTls {
                    host: host.clone(),
                    port: *port,
                    insecure: false,
                    tls_params: None,
                }
            } else {
                ConnectionAddr::Tcp(host.clone(), *port)
            }
        });
        let mut builder =
            SentinelClientBuilder::new(sentinels, &target.master_name, SentinelServerType::Master)?
                .set_client_to_redis_db(target.db);
        if target.tls {
            builder = builder.set_client_to_redis_tls_mode(TlsMode::Secure);
            if let Some(certs) = certificates {
                builder = builder
                    .set_client_to_sentinel_certificates(certs.clone())
                    .set_client_to_redis_certificates(certs);
            }
        }
        if let Some(user) = &target.username {
            builder = builder.set_client_to_redis_username(user);
        }
        if let Some(password) = &target.password {
            builder = builder.set_client_to_redis_password(password);
        }
        if let Some(user) = &target.sentinel_username {
            builder = builder.set_client_to_sentinel_username(user);
        }
        if let Some(password) = &target.sentinel_password {
            builder = builder.set_client_to_sentinel_password(password);
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(response_timeout);
        Ok(SentinelConn {
            shared: Arc::new(Shared {
                client: tokio::sync::Mutex::new(builder.build()?),
                current: Mutex::new(None),
                address: Mutex::new(None),
                generation: AtomicU64::new(0),
                config,
                watching: AtomicBool::new(false),
            }),
            db: target.db,
        })
    }

    fn cached(&self) -> Option<(u64, MultiplexedConnection)> {
        self.shared
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The connection to the current primary, found through the sentinels when there is none.
    async fn connection(&self) -> redis::RedisResult<(u64, MultiplexedConnection)> {
        if let Some(found) = self.cached() {
            return Ok(found);
        }
        let mut client = self.shared.client.lock().await;
        // Another caller may have found the primary while this one waited for the lock.
        if let Some(found) = self.cached() {
            return Ok(found);
        }
        let primary = client.async_get_client().await?;
        let address = primary.get_connection_info().addr().to_string();
        let conn = primary
            .get_multiplexed_async_connection_with_config(&self.shared.config)
            .await?;
        let generation = self.shared.generation.fetch_add(1, Ordering::Relaxed) + 1;
        *self
            .shared
            .address
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some((generation, address));
        *self
            .shared
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some((generation, conn.clone()));
        drop(client);
        self.watch();
        Ok((generation, conn))
    }

    /// Starts the watcher (once): every [`WATCH_INTERVAL`] it asks the sentinels for the
    /// primary and forgets the connection when they name a server other than the one it is
    /// open to. It ends when the last clone of this connection is dropped.
    fn watch(&self) {
        if self.shared.watching.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.shared.watching.store(false, Ordering::Release);
            return;
        };
        let shared: Weak<Shared> = Arc::downgrade(&self.shared);
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(WATCH_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                let in_use = shared
                    .address
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                let Some((generation, address)) = in_use else {
                    continue;
                };
                // Only the sentinels' answer counts; a failed lookup (a failover under way,
                // sentinels unreachable) leaves the connection to the replies' judgement.
                let named = {
                    let mut client = shared.client.lock().await;
                    client
                        .async_get_client()
                        .await
                        .map(|c| c.get_connection_info().addr().to_string())
                };
                if let Ok(named) = named
                    && named != address
                {
                    let conn = SentinelConn {
                        shared: shared.clone(),
                        db: 0,
                    };
                    tracing::info!(
                        from = %address,
                        to = %named,
                        "the sentinels name another primary; switching"
                    );
                    conn.forget(generation);
                }
            }
        });
    }

    /// Forgets connection `generation` (unless a newer one already replaced it), so the next
    /// command asks the sentinels again.
    fn forget(&self, generation: u64) {
        let mut current = self
            .shared
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if current.as_ref().is_some_and(|(g, _)| *g == generation) {
            tracing::info!("Redis primary lost or demoted; asking the sentinels again");
            *current = None;
            *self
                .shared
                .address
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = None;
        }
    }
}

/// What a reply says about the server that gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// The server is a working primary (the reply may still be an ordinary error).
    Fine,
    /// Not a primary any more, and the command had no effect: safe to send again elsewhere.
    Refused,
    /// Not usable; whether the command took effect is unknown, so it is not repeated.
    Gone,
}

fn error_verdict(e: &redis::RedisError) -> Verdict {
    if never_sent(e) || e.is_connection_refusal() {
        return Verdict::Refused;
    }
    if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
        return Verdict::Gone;
    }
    code_verdict(e.code())
}

fn code_verdict(code: Option<&str>) -> Verdict {
    match code {
        Some("READONLY") => Verdict::Refused,
        Some("UNBLOCKED" | "MASTERDOWN" | "LOADING") => Verdict::Gone,
        _ => Verdict::Fine,
    }
}

fn value_verdict(value: &Value) -> Verdict {
    match value {
        Value::ServerError(e) => code_verdict(Some(e.code())),
        _ => Verdict::Fine,
    }
}

fn values_verdict(values: &[Value]) -> Verdict {
    values
        .iter()
        .map(value_verdict)
        .find(|v| *v != Verdict::Fine)
        .unwrap_or(Verdict::Fine)
}

impl SentinelConn {
    /// Sends through the current primary's connection; on a refusal asks the sentinels again
    /// and sends once more, on any other sign of a lost primary forgets the connection.
    async fn send<T, F>(
        &self,
        call: impl Fn(MultiplexedConnection) -> F,
        verdict: impl Fn(&T) -> Verdict,
    ) -> redis::RedisResult<T>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (generation, conn) = self.connection().await?;
            let result = call(conn).await;
            let v = match &result {
                Ok(value) => verdict(value),
                Err(e) => error_verdict(e),
            };
            match v {
                Verdict::Fine => return result,
                Verdict::Refused if attempt < 2 => self.forget(generation),
                Verdict::Refused | Verdict::Gone => {
                    self.forget(generation);
                    return result;
                }
            }
        }
    }
}

impl ConnectionLike for SentinelConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let call =
                |mut c: MultiplexedConnection| async move { c.req_packed_command(cmd).await };
            self.send(call, value_verdict).await
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let call = |mut c: MultiplexedConnection| async move {
                c.req_packed_commands(cmd, offset, count).await
            };
            self.send(call, |values: &Vec<Value>| values_verdict(values))
                .await
        })
    }

    fn get_db(&self) -> i64 {
        self.db
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_error(code: &str) -> Value {
        // Parsed from the wire, as a reply arrives.
        let mut parser = redis::Parser::new();
        parser
            .parse_value(format!("-{code} some detail\r\n").as_bytes())
            .unwrap()
    }

    #[test]
    fn replies_that_mean_the_primary_is_gone_or_demoted() {
        assert_eq!(value_verdict(&server_error("READONLY")), Verdict::Refused);
        for code in ["UNBLOCKED", "MASTERDOWN", "LOADING"] {
            assert_eq!(value_verdict(&server_error(code)), Verdict::Gone, "{code}");
        }
        // An ordinary error is about the command, not the server.
        assert_eq!(value_verdict(&server_error("ERR")), Verdict::Fine);
        assert_eq!(value_verdict(&server_error("NOSCRIPT")), Verdict::Fine);
        assert_eq!(value_verdict(&Value::Okay), Verdict::Fine);
        // In a pipeline, the first telling reply decides.
        assert_eq!(
            values_verdict(&[Value::Okay, server_error("READONLY"), Value::Int(0)]),
            Verdict::Refused
        );
        let refused =
            redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(error_verdict(&refused), Verdict::Refused);
        let reset =
            redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert_eq!(error_verdict(&reset), Verdict::Gone);
    }
}
