//! Hostile clients speaking raw HTTP/1.1 over TCP: what they send must not grow the server's
//! state or hold its connections.

use ragpool_api::ApiConfig;
use ragpool_queue::testing::ServerOptions;
use ragpool_runtime::http_server::ServerArgs;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::process::read_to_close;
use crate::support::TestApi;

/// Reads one response (head and a `Content-Length` body) and returns its status code.
async fn read_response<R: AsyncBufReadExt + Unpin>(reader: &mut R) -> u16 {
    let mut status_line = String::new();
    reader
        .read_line(&mut status_line)
        .await
        .expect("status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a status line: {status_line:?}"));
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).await.expect("header line");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().expect("content-length");
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).await.expect("body");
    status
}

/// Invented methods, each unique and 2 KB long, on one keep-alive connection: the raw
/// method must not become a metric label, or every request adds a series for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invented_methods_do_not_grow_the_metrics() {
    const REQUESTS: usize = 2_000;
    let api = TestApi::start().await;
    let addr = api.base.trim_start_matches("http://").to_string();
    let stream = TcpStream::connect(&addr).await.expect("connect");
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let padding = "X".repeat(2_000);
    for i in 0..REQUESTS {
        let request = format!("M{i:05}{padding} /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        write.write_all(request.as_bytes()).await.expect("write");
        let status = read_response(&mut read).await;
        assert!((400..500).contains(&status), "request {i}: status {status}");
    }

    let text = api
        .get("/metrics")
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    println!(
        "/metrics after {REQUESTS} invented methods: {} bytes",
        text.len()
    );
    assert!(!text.contains("XXXXXXXX"), "an invented method is a label");
    assert!(
        text.contains(r#"method="other",route="unmatched",status="405"} 2000"#),
        "{text}"
    );
    assert!(text.len() < 32 * 1024, "{} bytes", text.len());
}

/// A client that opens connections and never finishes a request head (slowloris) has each
/// one closed after the header timeout, and cannot hold more than the connection limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_are_closed_and_connections_are_capped() {
    let config = ApiConfig {
        server: ServerArgs {
            header_timeout_seconds: 3,
            max_connections: 3,
            ..ServerArgs::default()
        },
        ..ApiConfig::default()
    };
    let api = TestApi::start_with(config, ServerOptions::default()).await;
    let addr = api.base.trim_start_matches("http://").to_string();

    // Three connections that stop in the middle of their headers fill the limit.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(&addr).await.expect("connect");
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            .await
            .expect("write");
        held.push(stream);
    }
    // The server accepts in order, so the three hold their permits when this one comes.
    let mut refused = TcpStream::connect(&addr).await.expect("connect");
    let _ = refused
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await;
    let answer = read_to_close(&mut refused).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 503"),
        "{answer}"
    );

    // Each half-sent request is closed without an answer.
    for mut stream in held {
        let answer = read_to_close(&mut stream).await;
        assert!(!answer.contains("200 OK"), "{answer}");
    }
    // And the API serves again.
    let mut status = 0;
    for _ in 0..100 {
        status = api
            .get("/healthz")
            .send()
            .await
            .map_or(0, |r| r.status().as_u16());
        if status == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(status, 200);
}
