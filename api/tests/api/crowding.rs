//! Clients that crowd the real `ragpool-api` binary out of connections: half-sent requests
//! from one address, many connections from one peer, many event streams of one key. The
//! probes, the other peers and the other keys must still be served.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use crate::process::{ApiProcess, client_from, connect_from, loopback, read_to_close};

/// A request head cut off in the middle of a header: the server waits for the rest.
const HALF_SENT: &[u8] = b"GET /api/queue/stats HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ";

/// Opens `n` connections from `from` to `to`, each with a half-sent request head.
async fn half_open(
    n: usize,
    from: std::net::IpAddr,
    to: std::net::SocketAddr,
) -> Vec<tokio::net::TcpStream> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let mut stream = connect_from(from, to).await;
        // A refused connection may be closed before this is written; that is fine.
        let _ = stream.write_all(HALF_SENT).await;
        held.push(stream);
    }
    held
}

/// Status and JSON body of a GET through `client`.
async fn get(client: &reqwest::Client, url: &str) -> (StatusCode, Value) {
    let response = client.get(url).send().await.expect("request");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Asserts a raw refusal: `status`, `Retry-After: 1`, and the JSON error `code`.
fn assert_refused(answer: &str, status: u16, code: &str) {
    assert!(
        answer.starts_with(&format!("HTTP/1.1 {status} ")),
        "{answer}"
    );
    assert!(answer.contains("\r\nretry-after: 1\r\n"), "{answer}");
    assert!(
        answer.contains("\r\ncontent-type: application/json\r\n"),
        "{answer}"
    );
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("");
    let body: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("{answer}"));
    assert_eq!(body["error"]["code"], code, "{answer}");
}

/// 600 half-sent requests from 127.0.0.1 (more than the 512 connections of the listener)
/// take no probe down: the health listener answers, from that very address too, and the API
/// listener still serves another address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_connections_leave_the_probes_answering() {
    let api = ApiProcess::start(&["--health-listen", "127.0.0.1:0"]).await;
    let health = api.health.expect("the health listener's address");
    let attacker = loopback(1);
    let before_kb = api.peak_rss_kb();
    let held = half_open(600, attacker, api.addr).await;
    // The listener accepts in order: this one is looked at after the 600, so its refusal
    // shows they were all counted.
    let mut one_more = connect_from(attacker, api.addr).await;
    assert_refused(
        &read_to_close(&mut one_more).await,
        429,
        "too_many_connections_from_peer",
    );

    let from_attacker = client_from(attacker);
    for path in ["/healthz", "/readyz"] {
        let (status, body) = get(&from_attacker, &format!("http://{health}{path}")).await;
        assert_eq!(status, 200, "{path} on the health listener: {body}");
    }
    let (status, body) = get(&from_attacker, &format!("http://{health}/api/queue/stats")).await;
    assert_eq!(
        status, 404,
        "the health listener serves the probes only: {body}"
    );
    for path in ["/healthz", "/readyz", "/api/queue/stats"] {
        let (status, body) = get(&client_from(loopback(2)), &api.url(path)).await;
        assert_eq!(status, 200, "{path} from another address: {body}");
    }
    let peak_kb = api.peak_rss_kb();
    println!(
        "600 half-open connections: VmHWM {before_kb} kB before, {peak_kb} kB after ({} kB more)",
        peak_kb - before_kb
    );
    // 128 held connections with their buffers: a few MB at most, far below this.
    assert!(peak_kb - before_kb < 64 * 1024, "{}", api.output());
    drop(held);
}

/// One address past its connection cap is refused with a 429; another address is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_peer_over_its_connection_cap_is_refused_while_another_is_served() {
    let api = ApiProcess::start(&["--max-connections-per-peer", "4"]).await;
    let crowd = loopback(2);
    let held = half_open(4, crowd, api.addr).await;
    let mut fifth = connect_from(crowd, api.addr).await;
    assert_refused(
        &read_to_close(&mut fifth).await,
        429,
        "too_many_connections_from_peer",
    );
    let (status, body) = get(&client_from(loopback(3)), &api.url("/api/queue/stats")).await;
    assert_eq!(status, 200, "{body}");
    drop(held);
}

const ALICE: &str = "alice-key-0123456789";
const BOB: &str = "bob-key-0123456789ab";

/// Submits a query with `key` from `client` and returns the task id.
async fn submit(client: &reqwest::Client, api: &ApiProcess, key: &str) -> String {
    let response = client
        .post(api.url("/api/async/query"))
        .bearer_auth(key)
        .json(&serde_json::json!({ "question": "who holds the streams?" }))
        .send()
        .await
        .expect("submit");
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.expect("json");
    body["task_id"].as_str().expect("task_id").to_string()
}

/// One key opening as many event streams as the listener has connections gets 429s past
/// its cap, and another key's event stream still opens and gets its first event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_holding_many_event_streams_does_not_block_another_keys() {
    let keys = format!("alice:{ALICE},bob:{BOB}");
    let api = ApiProcess::start(&[
        "--api-keys",
        &keys,
        "--max-connections",
        "16",
        "--max-held-requests-per-key",
        "4",
    ])
    .await;
    let alice = client_from(loopback(2));
    let alices = submit(&alice, &api, ALICE).await;
    let events = |id: &str| api.url(&format!("/api/async/task/{id}/events"));

    let mut open = Vec::new();
    let mut refused = 0;
    for _ in 0..16 {
        let response = alice
            .get(events(&alices))
            .bearer_auth(ALICE)
            .send()
            .await
            .expect("events");
        match response.status() {
            StatusCode::OK => open.push(response),
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(response.headers()["retry-after"], "5");
                let body: Value = response.json().await.expect("json");
                assert_eq!(body["error"]["code"], "too_many_held_requests", "{body}");
                refused += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!((open.len(), refused), (4, 12));
    // A `?wait` is a held request too.
    let response = alice
        .get(api.url(&format!("/api/async/task/{alices}?wait=30")))
        .bearer_auth(ALICE)
        .send()
        .await
        .expect("wait");
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);

    let bob = client_from(loopback(3));
    let bobs = submit(&bob, &api, BOB).await;
    let mut stream = bob
        .get(events(&bobs))
        .bearer_auth(BOB)
        .send()
        .await
        .expect("bob's events");
    assert_eq!(stream.status(), StatusCode::OK);
    let first = tokio::time::timeout(Duration::from_secs(30), stream.chunk())
        .await
        .expect("a first event")
        .expect("a chunk")
        .expect("not the end");
    let first = String::from_utf8_lossy(&first);
    assert!(first.contains("event: queued"), "{first}");
}
