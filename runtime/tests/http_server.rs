//! The shared HTTP listener against clients that stall or crowd it, on loopback: each limit
//! closes or refuses what it should, and a shutdown still lets requests in flight finish.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::ConnectInfo;
use axum::routing::{get, post};
use ragpool_queue::testing::read_until_closed;
use ragpool_runtime::http_server::{ServerLimits, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;

/// Guards every wait on the server so that a broken limit fails the test instead of hanging
/// it. Never the thing asserted: the tests check what happened, not how long it took.
const HANG_GUARD: Duration = Duration::from_secs(20);

/// Short limits, so a closed connection is seen quickly.
fn limits() -> ServerLimits {
    ServerLimits {
        header_timeout: Duration::from_millis(300),
        body_timeout: Duration::from_millis(300),
        max_connections: 8,
        max_connections_per_peer: 8,
    }
}

struct TestServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    /// Released by the test to let `/slow` answer.
    release: Arc<Notify>,
    /// Signalled when `/slow` has started.
    entered: Arc<Notify>,
}

impl TestServer {
    async fn start(limits: ServerLimits) -> TestServer {
        let release = Arc::new(Notify::new());
        let entered = Arc::new(Notify::new());
        let router = Router::new()
            .route("/hello", get(|| async { "hello" }))
            .route(
                "/peer",
                get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move {
                    format!("from {}", peer.ip())
                }),
            )
            .route(
                "/echo",
                post(|body: Bytes| async move { format!("{} bytes", body.len()) }),
            )
            .route(
                "/slow",
                get({
                    let (release, entered) = (release.clone(), entered.clone());
                    move || async move {
                        entered.notify_one();
                        release.notified().await;
                        "finished"
                    }
                }),
            );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, router, limits, async move {
            let _ = stopped.await;
        }));
        TestServer {
            addr,
            stop: Some(stop),
            task,
            release,
            entered,
        }
    }

    async fn connect(&self) -> TcpStream {
        TcpStream::connect(self.addr).await.unwrap()
    }

    /// A connection from the loopback address `from` (127.0.0.0/8 is all loopback).
    async fn connect_from(&self, from: [u8; 4]) -> TcpStream {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from((from, 0))).unwrap();
        socket.connect(self.addr).await.unwrap()
    }
}

/// Sends one keep-alive request and reads its response, which must be `200 OK` with `body`.
async fn request_ok(stream: &mut TcpStream, path: &str, body: &str) {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).ends_with(body) {
        let n = tokio::time::timeout(HANG_GUARD, stream.read(&mut buf))
            .await
            .expect("a response")
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&seen);
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
}

#[tokio::test]
async fn a_connection_that_never_finishes_its_headers_is_closed() {
    let server = TestServer::start(limits()).await;
    let mut stream = server.connect().await;
    stream
        .write_all(b"GET /hello HTTP/1.1\r\nhost: x\r\nx-slow: ")
        .await
        .unwrap();
    let seen = read_until_closed(&mut stream, HANG_GUARD).await;
    assert!(!seen.contains("hello"), "{seen}");
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed() {
    let server = TestServer::start(limits()).await;
    let mut stream = server.connect().await;
    let seen = read_until_closed(&mut stream, HANG_GUARD).await;
    assert!(!seen.contains("200 OK"), "{seen}");
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed() {
    let server = TestServer::start(limits()).await;
    let mut stream = server.connect().await;
    request_ok(&mut stream, "/hello", "hello").await;
    request_ok(&mut stream, "/hello", "hello").await;
    // Nothing more is sent: the wait for the next request head runs out.
    assert_eq!(read_until_closed(&mut stream, HANG_GUARD).await, "");
}

#[tokio::test]
async fn a_stalled_body_fails_and_closes_the_connection() {
    let server = TestServer::start(limits()).await;
    let mut stream = server.connect().await;
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nonly ten b")
        .await
        .unwrap();
    let seen = read_until_closed(&mut stream, HANG_GUARD).await;
    assert!(!seen.contains("100 bytes"), "{seen}");
    // axum answers a body that failed to arrive with a client error.
    assert!(seen.starts_with("HTTP/1.1 4"), "{seen}");

    // A body that arrives in time is read whole.
    let mut stream = server.connect().await;
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\nconnection: close\r\n\r\nfive!")
        .await
        .unwrap();
    let seen = read_until_closed(&mut stream, HANG_GUARD).await;
    assert!(seen.ends_with("5 bytes"), "{seen}");
}

#[tokio::test]
async fn connections_past_the_limit_are_refused_until_one_closes() {
    let server = TestServer::start(ServerLimits {
        max_connections: 2,
        header_timeout: Duration::from_secs(60),
        ..limits()
    })
    .await;
    // Two connections hold the two permits (each has been served, so each was accepted).
    let mut first = server.connect().await;
    request_ok(&mut first, "/hello", "hello").await;
    let mut second = server.connect().await;
    request_ok(&mut second, "/hello", "hello").await;

    let mut third = server.connect().await;
    let seen = read_until_closed(&mut third, HANG_GUARD).await;
    assert!(
        seen.is_empty() || seen.starts_with("HTTP/1.1 503"),
        "{seen}"
    );
    assert!(
        seen.is_empty() || seen.contains(r#"{"error":{"code":"too_many_connections""#),
        "{seen}"
    );
    // The held connections still work.
    request_ok(&mut first, "/hello", "hello").await;

    // Once one closes, a new connection is served; the permit comes back when the server
    // has seen the close, so the first tries may still be refused.
    drop(second);
    let served = tokio::time::timeout(HANG_GUARD, async {
        loop {
            let mut next = server.connect().await;
            let _ = next
                .write_all(b"GET /hello HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                .await;
            let seen = read_until_closed(&mut next, HANG_GUARD).await;
            if seen.starts_with("HTTP/1.1 200") {
                break;
            }
            assert!(
                seen.is_empty() || seen.starts_with("HTTP/1.1 503"),
                "{seen}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(served.is_ok(), "no connection was served after one closed");
}

#[tokio::test]
async fn one_peer_past_its_share_is_refused_while_another_is_served() {
    let server = TestServer::start(ServerLimits {
        max_connections_per_peer: 2,
        header_timeout: Duration::from_secs(60),
        ..limits()
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = server.connect_from([127, 0, 0, 2]).await;
        request_ok(&mut stream, "/peer", "from 127.0.0.2").await;
        held.push(stream);
    }
    let mut third = server.connect_from([127, 0, 0, 2]).await;
    let seen = read_until_closed(&mut third, HANG_GUARD).await;
    assert!(seen.starts_with("HTTP/1.1 429"), "{seen}");
    assert!(seen.contains("retry-after: 1\r\n"), "{seen}");
    assert!(
        seen.ends_with(r#""code":"too_many_connections_from_peer","message":"this address has too many open connections; close some or try again shortly"}}"#),
        "{seen}"
    );
    // Another address is served, and the handler is told which one it is.
    let mut other = server.connect_from([127, 0, 0, 3]).await;
    request_ok(&mut other, "/peer", "from 127.0.0.3").await;
}

#[tokio::test]
async fn shutdown_finishes_requests_in_flight_and_closes_idle_connections() {
    let mut server = TestServer::start(ServerLimits {
        header_timeout: Duration::from_secs(60),
        ..limits()
    })
    .await;
    let mut idle = server.connect().await;
    request_ok(&mut idle, "/hello", "hello").await;

    let mut busy = server.connect().await;
    busy.write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    server.entered.notified().await;
    let _ = server.stop.take().map(|stop| stop.send(()));

    // The idle connection is closed by the shutdown, long before its header timeout.
    assert_eq!(read_until_closed(&mut idle, HANG_GUARD).await, "");
    // The request in flight still gets its answer, and then the connection closes.
    server.release.notify_one();
    let seen = read_until_closed(&mut busy, HANG_GUARD).await;
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    assert!(seen.ends_with("finished"), "{seen}");
    tokio::time::timeout(HANG_GUARD, &mut server.task)
        .await
        .expect("serve returned")
        .unwrap();
    // Nothing listens any more.
    assert!(TcpStream::connect(server.addr).await.is_err());
}
