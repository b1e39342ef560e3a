//! Serving an axum router to clients that may be hostile: a header timeout, a body timeout,
//! a cap on open connections and on those of one peer address, with a graceful shutdown.
//!
//! It lives in `ragpool-runtime`, the crate every component links for what they share
//! beyond the queue protocol: the API, the executor's health and metrics listener and the
//! operator's all serve through [`serve`], so the limits are written once and every
//! listener has them. Plain `axum::serve` sets none, and an idle or half-sent connection is
//! then held until file descriptors run out.
//!
//! The pieces are hyper's and tower-http's own:
//! - **Header timeout**: hyper's HTTP/1 `header_read_timeout`. hyper starts it whenever it
//!   waits for a request head, from the accept and again from the end of each response, so it
//!   is also the idle limit of a kept-alive connection (hyper has one timer for both).
//! - **Body timeout**: tower-http's [`RequestBodyTimeoutLayer`], the longest pause between two
//!   pieces of a request body. The body then fails, the handler answers 4xx, and the
//!   connection is closed.
//! - **Connection limit**: a semaphore with one permit per open connection. A connection
//!   past the limit is answered `503` with `Connection: close` and closed at once, so the
//!   client learns why instead of waiting in the listen backlog.
//! - **Per-peer limit**: at most so many of those connections from one peer address
//!   ([`Slots`]); one more is answered `429` and closed the same way. One client (one
//!   address) can then no longer hold every connection, the probes' included.
//!
//! Both refusals are JSON in the API's error shape, with `Retry-After`, written without
//! reading the request. Each served request carries its peer's address as axum's
//! [`ConnectInfo`]`<SocketAddr>`, for per-peer rules further in.
//!
//! Only HTTP/1 is served, as before: the components are reached by probes, Prometheus and
//! HTTP/1 clients, and HTTP/2 would add a protocol surface nobody uses.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::{Extension, Router};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tower::Layer;
use tower_http::timeout::RequestBodyTimeoutLayer;

mod slots;
pub use slots::{Slot, Slots};

/// The limits every listener applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// Time a client has to send a complete request head, counted from the accept and, on a
    /// kept-alive connection, from the end of the previous response.
    pub header_timeout: Duration,
    /// Longest pause between two pieces of a request body.
    pub body_timeout: Duration,
    /// Connections open at once; one more is answered `503` and closed.
    pub max_connections: usize,
    /// Connections open at once from one peer address; one more is answered `429` and
    /// closed.
    pub max_connections_per_peer: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            header_timeout: Duration::from_secs(DEFAULT_HEADER_TIMEOUT_SECONDS),
            body_timeout: Duration::from_secs(DEFAULT_BODY_TIMEOUT_SECONDS),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_peer: DEFAULT_MAX_CONNECTIONS_PER_PEER,
        }
    }
}

pub const DEFAULT_HEADER_TIMEOUT_SECONDS: u64 = 30;
pub const DEFAULT_BODY_TIMEOUT_SECONDS: u64 = 30;
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;
/// A quarter of [`DEFAULT_MAX_CONNECTIONS`]: four busy addresses (a proxy's, a NAT's) fit,
/// and one address alone leaves three quarters to everyone else.
pub const DEFAULT_MAX_CONNECTIONS_PER_PEER: usize = 128;

/// The flags and `RAGPOOL_*` variables that set [`ServerLimits`], the same in every binary.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct ServerArgs {
    /// Seconds a client has to send a request's headers, counted from the connection's start
    /// and, on a kept-alive connection, from the end of the previous response: so also how
    /// long an idle connection is kept.
    #[arg(
        long,
        env = "RAGPOOL_HEADER_TIMEOUT_SECONDS",
        default_value_t = DEFAULT_HEADER_TIMEOUT_SECONDS,
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    pub header_timeout_seconds: u64,

    /// Longest pause in seconds between two pieces of a request body; a slower body fails.
    #[arg(
        long,
        env = "RAGPOOL_BODY_TIMEOUT_SECONDS",
        default_value_t = DEFAULT_BODY_TIMEOUT_SECONDS,
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    pub body_timeout_seconds: u64,

    /// Connections open at once; one more is answered 503 and closed.
    #[arg(
        long,
        env = "RAGPOOL_MAX_CONNECTIONS",
        default_value_t = DEFAULT_MAX_CONNECTIONS as u64,
        value_parser = clap::value_parser!(u64).range(1..=1_000_000)
    )]
    pub max_connections: u64,

    /// Connections open at once from one peer address; one more is answered 429 and closed.
    /// Behind a proxy every client shares the proxy's address: raise it to
    /// --max-connections there.
    #[arg(
        long,
        env = "RAGPOOL_MAX_CONNECTIONS_PER_PEER",
        default_value_t = DEFAULT_MAX_CONNECTIONS_PER_PEER as u64,
        value_parser = clap::value_parser!(u64).range(1..=1_000_000)
    )]
    pub max_connections_per_peer: u64,
}

impl Default for ServerArgs {
    fn default() -> Self {
        ServerArgs {
            header_timeout_seconds: DEFAULT_HEADER_TIMEOUT_SECONDS,
            body_timeout_seconds: DEFAULT_BODY_TIMEOUT_SECONDS,
            max_connections: DEFAULT_MAX_CONNECTIONS as u64,
            max_connections_per_peer: DEFAULT_MAX_CONNECTIONS_PER_PEER as u64,
        }
    }
}

impl ServerArgs {
    pub fn limits(&self) -> ServerLimits {
        ServerLimits {
            header_timeout: Duration::from_secs(self.header_timeout_seconds),
            body_timeout: Duration::from_secs(self.body_timeout_seconds),
            max_connections: usize::try_from(self.max_connections).unwrap_or(usize::MAX),
            max_connections_per_peer: usize::try_from(self.max_connections_per_peer)
                .unwrap_or(usize::MAX),
        }
    }
}

/// Why a connection is refused before its request is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// Every connection of the listener is taken.
    Full,
    /// Its peer address holds its share already.
    PeerFull,
}

impl Refusal {
    /// The whole answer, in the API's error shape (`{"error": {"code", "message"}}`).
    fn answer(self) -> Vec<u8> {
        let (status, code, message) = match self {
            Refusal::Full => (
                "503 Service Unavailable",
                "too_many_connections",
                "the server has too many open connections; try again shortly",
            ),
            Refusal::PeerFull => (
                "429 Too Many Requests",
                "too_many_connections_from_peer",
                "this address has too many open connections; close some or try again shortly",
            ),
        };
        let body = format!(r#"{{"error":{{"code":"{code}","message":"{message}"}}}}"#);
        format!(
            "HTTP/1.1 {status}\r\nconnection: close\r\nretry-after: {REFUSED_RETRY_AFTER_SECONDS}\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }
}

/// The `Retry-After` of a refused connection: connections come and go within seconds.
const REFUSED_RETRY_AFTER_SECONDS: u32 = 1;

/// Serves `router` on `listener` with `limits` until `shutdown` resolves; then stops
/// accepting, lets every request in flight finish (idle connections close at once) and
/// returns. Long requests that should end on shutdown (long polls, event streams) must watch
/// a signal of their own that fires with `shutdown`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()>,
) {
    let service = RequestBodyTimeoutLayer::new(limits.body_timeout).layer(router);
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let peers = Slots::new(limits.max_connections_per_peer);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    // Logged when the limit is first hit and when it is left, not per connection: a flood
    // of connections must not become a flood of log lines.
    let mut refusing = false;
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    if !is_connection_error(&e) {
                        // Out of file descriptors, most likely: give connections time to
                        // close rather than spin on the error.
                        tracing::warn!(error = %e, "accept failed; retrying in 1 s");
                        tokio::select! {
                            () = tokio::time::sleep(Duration::from_secs(1)) => {}
                            () = &mut shutdown => break,
                        }
                    }
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            if !refusing {
                refusing = true;
                tracing::warn!(%peer, limit = limits.max_connections, "connection limit reached; refusing new connections");
            }
            tokio::spawn(refuse(stream, Refusal::Full));
            continue;
        };
        let Some(peer_slot) = peers.try_take(&peer.ip()) else {
            // Per connection at DEBUG only: the address that floods would flood the log too.
            tracing::debug!(%peer, limit = limits.max_connections_per_peer, "per-peer connection limit reached; refused");
            tokio::spawn(refuse(stream, Refusal::PeerFull));
            continue;
        };
        if refusing {
            refusing = false;
            tracing::info!("below the connection limit again");
        }
        // Answers go out in small writes (a head, then the body; one server-sent event at a
        // time). With Nagle's algorithm on, a write that follows an unacknowledged one waits
        // for the client's delayed ACK — up to 40 ms on Linux — before it leaves.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
        }
        let service = Extension(ConnectInfo(peer)).layer(service.clone());
        let connection =
            http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            // Timeouts and clients going away end connections with an error; neither is the
            // server's fault.
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "connection closed");
            }
            drop((permit, peer_slot));
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Tells a connection past a limit why it is closed. The answer is sent without reading
/// the request: it fits in the empty socket buffer, so the write never waits.
async fn refuse(mut stream: TcpStream, why: Refusal) {
    let _ = stream.try_write(&why.answer());
    let _ = stream.shutdown().await;
}

/// Errors that concern one connection only (it was reset before it was accepted).
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}
