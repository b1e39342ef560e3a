//! Hostile clients speaking raw HTTP/1.1 over TCP: what they send must not grow the server's
//! state or hold its connections.

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

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
        let request = format!("M{i:05}{padding} /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
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
