//! Waiting for results: `?wait` woken by the task's events, the SSE stream of state changes,
//! and graceful shutdown ending both.

use futures::StreamExt;
use ragpool_api::{ApiConfig, Limits};
use ragpool_queue::Progress;
use ragpool_queue::testing::ServerOptions;
use serde_json::{Value, json};

use crate::support::{TestApi, json, until};

/// Reads server-sent events until the stream ends: `(event name, data as JSON)`.
async fn read_events(r: reqwest::Response) -> Vec<(String, Value)> {
    let mut events = Vec::new();
    let mut buffer = String::new();
    let mut body = r.bytes_stream();
    while let Some(chunk) = body.next().await {
        buffer.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            if let Some(e) = parse_event(&block) {
                events.push(e);
            }
        }
    }
    events
}

fn parse_event(block: &str) -> Option<(String, Value)> {
    let mut name = None;
    let mut data = String::new();
    for line in block.lines() {
        if let Some(v) = line.strip_prefix("event:") {
            name = Some(v.trim().to_string());
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push_str(v.trim_start());
        }
    }
    Some((name?, serde_json::from_str(&data).ok()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_returns_when_the_task_finishes() {
    let api = TestApi::start().await;
    let id = api.submit_query("wait for me").await;
    let claimed = api.claim("full_query").await;

    let before = api.command_calls("hmget").await;
    let request = api.get(&format!("/api/async/task/{id}?wait=60")).send();
    let waiting = tokio::spawn(request);
    // The handler reads the task once for access, then `wait_for_end` subscribes and reads
    // it again: after two reads the request is waiting on events.
    until("the request to start waiting", || async {
        api.command_calls("hmget").await >= before + 2
    })
    .await;
    assert!(!waiting.is_finished(), "answered before the task ended");

    api.broker
        .complete(&claimed.lease, &json!({ "answer": "done" }))
        .await
        .unwrap();
    let (status, body) = json(waiting.await.unwrap().unwrap()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "finished");
    assert_eq!(body["result"]["answer"], "done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_on_an_ended_task_answers_at_once() {
    let api = TestApi::start().await;
    let id = api.submit_query("already done").await;
    let claimed = api.claim("full_query").await;
    api.broker
        .complete(&claimed.lease, &json!(1))
        .await
        .unwrap();
    // wait=60 on a finished task must not hold the request; the test would hang otherwise.
    let (status, body) = json(
        api.get(&format!("/api/async/task/{id}?wait=60"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body["status"].as_str()), (200, Some("finished")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stream_each_state_until_the_end() {
    let api = TestApi::start().await;
    let id = api.submit_query("follow me").await;
    let r = api
        .get(&format!("/api/async/task/{id}/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );

    let mut body = r.bytes_stream();
    let mut buffer = String::new();
    // The first event is the state at opening; reading it proves the stream is subscribed.
    while !buffer.contains("\n\n") {
        buffer.push_str(std::str::from_utf8(&body.next().await.unwrap().unwrap()).unwrap());
    }
    let end = buffer.find("\n\n").unwrap();
    let first: String = buffer.drain(..end + 2).collect();
    let (name, data) = parse_event(&first).unwrap();
    assert_eq!(name, "queued");
    assert_eq!(data["task_id"], id);
    assert!(data.get("event_id").is_none());

    let claimed = api.claim("full_query").await;
    api.broker
        .heartbeat(
            &claimed.lease,
            Some(&Progress {
                percent: 50,
                message: "half way".into(),
            }),
        )
        .await
        .unwrap();
    api.broker
        .complete(&claimed.lease, &json!({ "answer": "yes" }))
        .await
        .unwrap();

    // Rebuild a response-like reader over the rest of the stream.
    let mut rest = Vec::new();
    while let Some(chunk) = body.next().await {
        buffer.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            if let Some(e) = parse_event(&block) {
                rest.push(e);
            }
        }
    }
    let names: Vec<&str> = rest.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["started", "started", "finished"], "{rest:?}");
    assert_eq!(rest[1].1["details"]["progress"], "50");
    assert!(rest.iter().all(|(_, d)| d["event_id"].is_string()));
    assert!(rest.iter().all(|(_, d)| d["task_id"] == id.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_an_ended_task_are_one_event() {
    let api = TestApi::start().await;
    let id = api.submit_query("over").await;
    api.delete(&format!("/api/async/task/{id}"))
        .send()
        .await
        .unwrap();
    let r = api
        .get(&format!("/api/async/task/{id}/events"))
        .send()
        .await
        .unwrap();
    let events = read_events(r).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].0, "canceled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_end_at_their_time_limit() {
    let config = ApiConfig {
        limits: Limits {
            max_stream_seconds: 0,
            ..Limits::default()
        },
        ..ApiConfig::default()
    };
    let api = TestApi::start_with(config, ServerOptions::default()).await;
    let id = api.submit_query("nobody works on this").await;
    let r = api
        .get(&format!("/api/async/task/{id}/events"))
        .send()
        .await
        .unwrap();
    // Only the opening state, then the stream closes although the task is still queued.
    let events = read_events(r).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].0, "queued");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_waits_and_streams_and_finishes_them() {
    let mut api = TestApi::start().await;
    let id = api.submit_query("never picked up").await;

    let stream = api
        .get(&format!("/api/async/task/{id}/events"))
        .send()
        .await
        .unwrap();
    let before = api.command_calls("hmget").await;
    let waiting = tokio::spawn(api.get(&format!("/api/async/task/{id}?wait=60")).send());
    until("the request to start waiting", || async {
        api.command_calls("hmget").await >= before + 2
    })
    .await;

    api.shutdown().await.expect("serve returns cleanly");
    // The held request was answered with the task as it stood, not cut off.
    let (status, body) = json(waiting.await.unwrap().unwrap()).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("queued")));
    // The stream ended after its first event.
    let events = read_events(stream).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].0, "queued");
    // And nothing listens any more.
    assert!(api.get("/healthz").send().await.is_err());
}
