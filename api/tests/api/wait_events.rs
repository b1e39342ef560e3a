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

/// One server-sent event: its name, its `id:` if it had one, and its data as JSON.
#[derive(Debug, Clone)]
struct Sse {
    name: String,
    id: Option<String>,
    data: Value,
}

/// Reads a response's server-sent events one at a time.
struct SseReader {
    body: futures::stream::BoxStream<'static, reqwest::Result<axum::body::Bytes>>,
    buffer: String,
}

impl SseReader {
    fn new(r: reqwest::Response) -> SseReader {
        assert_eq!(r.status(), 200);
        SseReader {
            body: r.bytes_stream().boxed(),
            buffer: String::new(),
        }
    }

    /// The next event; `None` when the stream ended.
    async fn next(&mut self) -> Option<Sse> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut sse = Sse {
                    name: String::new(),
                    id: None,
                    data: Value::Null,
                };
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        sse.name = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("id:") {
                        sse.id = Some(v.trim().to_string());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        sse.data = serde_json::from_str(v.trim_start()).unwrap();
                    }
                }
                if sse.name.is_empty() {
                    continue; // a keep-alive comment
                }
                return Some(sse);
            }
            let chunk = tokio::time::timeout(std::time::Duration::from_secs(30), self.body.next())
                .await
                .expect("an event within 30 s")?;
            self.buffer
                .push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        }
    }

    async fn rest(mut self) -> Vec<Sse> {
        let mut out = Vec::new();
        while let Some(e) = self.next().await {
            out.push(e);
        }
        out
    }
}

async fn open_events(api: &TestApi, id: &str, last_event_id: Option<&str>) -> SseReader {
    let mut request = api.get(&format!("/api/async/task/{id}/events"));
    if let Some(last) = last_event_id {
        request = request.header("last-event-id", last);
    }
    SseReader::new(request.send().await.unwrap())
}

fn delta_of(e: &Sse) -> (u64, u64, &str) {
    assert_eq!(e.name, "delta", "{e:?}");
    (
        e.data["attempt"].as_u64().unwrap(),
        e.data["seq"].as_u64().unwrap(),
        e.data["text"].as_str().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answer_text_streams_as_delta_events_between_started_and_finished() {
    let api = TestApi::start().await;
    let id = api.submit_query("stream me").await;
    let mut events = open_events(&api, &id, None).await;
    assert_eq!(events.next().await.unwrap().name, "queued");
    let claimed = api.claim("full_query").await;
    for piece in ["Leases ", "last fifteen", " seconds."] {
        api.broker
            .publish_delta(&claimed.lease, piece)
            .await
            .unwrap();
    }
    api.broker
        .heartbeat(
            &claimed.lease,
            Some(&Progress {
                percent: 80,
                message: "writing".into(),
            }),
        )
        .await
        .unwrap();
    api.broker
        .complete(
            &claimed.lease,
            &json!({"answer": "Leases last fifteen seconds."}),
        )
        .await
        .unwrap();
    let rest = events.rest().await;
    let names: Vec<&str> = rest.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        ["started", "delta", "delta", "delta", "started", "finished"],
        "{rest:?}"
    );
    let pieces: Vec<_> = rest[1..4].iter().map(delta_of).collect();
    assert_eq!(
        pieces,
        [
            (1, 1, "Leases "),
            (1, 2, "last fifteen"),
            (1, 3, " seconds.")
        ]
    );
    let ids: Vec<Option<&str>> = rest.iter().map(|e| e.id.as_deref()).collect();
    assert!(ids[0].is_some(), "state before any text keeps its id");
    assert_eq!(
        &ids[1..4],
        [
            Some("delta-1-1-7"),
            Some("delta-1-2-19"),
            Some("delta-1-3-28")
        ]
    );
    assert_eq!(
        ids[4], None,
        "a progress event after text leaves Last-Event-ID on the text"
    );
    assert!(ids[5].is_some(), "the last event has its id");
    assert_eq!(rest[1].data["task_id"], id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_client_gets_the_text_so_far_first() {
    let api = TestApi::start().await;
    let id = api.submit_query("late").await;
    let claimed = api.claim("full_query").await;
    for piece in ["Hello", " wor"] {
        api.broker
            .publish_delta(&claimed.lease, piece)
            .await
            .unwrap();
    }
    let mut events = open_events(&api, &id, None).await;
    assert_eq!(events.next().await.unwrap().name, "started");
    let so_far = events.next().await.unwrap();
    assert_eq!(delta_of(&so_far), (1, 2, "Hello wor"));
    assert_eq!(so_far.data["offset"], 0, "the text so far starts the text");
    assert_eq!(so_far.id.as_deref(), Some("delta-1-2-9"));
    api.broker
        .publish_delta(&claimed.lease, "ld")
        .await
        .unwrap();
    let next = events.next().await.unwrap();
    assert_eq!(delta_of(&next), (1, 3, "ld"));
    assert_eq!(next.data["offset"], 9);
    api.broker
        .complete(&claimed.lease, &json!({"answer": "Hello world"}))
        .await
        .unwrap();
    let rest = events.rest().await;
    assert_eq!(rest.len(), 1, "{rest:?}");
    assert_eq!(rest[0].name, "finished");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_event_id_resumes_the_text_without_loss_or_repetition() {
    let api = TestApi::start().await;
    let id = api.submit_query("resume").await;
    let claimed = api.claim("full_query").await;
    let pieces = ["one ", "two ", "three ", "four ", "five"];
    let mut received = String::new();

    let mut first = open_events(&api, &id, None).await;
    assert_eq!(first.next().await.unwrap().name, "started");
    let mut last_id = None;
    for piece in &pieces[..2] {
        api.broker
            .publish_delta(&claimed.lease, piece)
            .await
            .unwrap();
        let e = first.next().await.unwrap();
        received.push_str(delta_of(&e).2);
        last_id = e.id.clone();
    }
    // The connection drops; more text and a progress report come meanwhile.
    drop(first);
    for piece in &pieces[2..4] {
        api.broker
            .publish_delta(&claimed.lease, piece)
            .await
            .unwrap();
    }
    api.broker
        .heartbeat(
            &claimed.lease,
            Some(&Progress {
                percent: 90,
                message: "almost".into(),
            }),
        )
        .await
        .unwrap();

    let mut second = open_events(&api, &id, last_id.as_deref()).await;
    let missed = second.next().await.unwrap();
    assert_eq!(
        delta_of(&missed),
        (1, 4, "three four "),
        "resumed with the text missed, without a repeat of the state"
    );
    assert_eq!(
        missed.data["offset"], 8,
        "it follows the text the client has"
    );
    received.push_str(delta_of(&missed).2);
    api.broker
        .publish_delta(&claimed.lease, pieces[4])
        .await
        .unwrap();
    let e = second.next().await.unwrap();
    assert_eq!(delta_of(&e).1, 5);
    received.push_str(delta_of(&e).2);
    assert_eq!(received, pieces.concat());

    // Resuming with the id of the last piece sends nothing again.
    let third = open_events(&api, &id, e.id.as_deref()).await;
    api.broker
        .complete(&claimed.lease, &json!({"answer": pieces.concat()}))
        .await
        .unwrap();
    let rest = third.rest().await;
    let names: Vec<&str> = rest.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["finished"], "{rest:?}");
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_attempt_streams_again_under_its_own_number() {
    let api = TestApi::start().await;
    let id = api.submit_query("retry").await;
    let claimed = api.claim("full_query").await;
    api.broker
        .publish_delta(&claimed.lease, "half an ans")
        .await
        .unwrap();
    let mut events = open_events(&api, &id, None).await;
    assert_eq!(events.next().await.unwrap().name, "started");
    assert_eq!(
        delta_of(&events.next().await.unwrap()),
        (1, 1, "half an ans")
    );
    api.broker
        .fail(
            &claimed.lease,
            &ragpool_queue::TaskError::new("backend_unavailable", "cut off"),
            ragpool_queue::Retry::Retryable(None),
        )
        .await
        .unwrap();
    assert_eq!(events.next().await.unwrap().name, "delayed");
    until("the retry to be queued", || async {
        api.broker.maintain().await.unwrap();
        api.broker
            .get(&id.parse().unwrap())
            .await
            .unwrap()
            .is_some_and(|t| t.state == ragpool_queue::TaskState::Queued)
    })
    .await;
    let again = api.claim("full_query").await;
    api.broker
        .publish_delta(&again.lease, "A whole answer.")
        .await
        .unwrap();
    api.broker
        .complete(&again.lease, &json!({"answer": "A whole answer."}))
        .await
        .unwrap();
    let rest = events.rest().await;
    let names: Vec<&str> = rest.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        ["queued", "started", "delta", "finished"],
        "{rest:?}"
    );
    assert_eq!(delta_of(&rest[2]), (2, 1, "A whole answer."));
    assert_eq!(
        rest[2].data["offset"], 0,
        "the new attempt's text starts over"
    );
    assert_eq!(rest[2].id.as_deref(), Some("delta-2-1-15"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_after_a_retry_by_hand_gets_the_new_run_whole() {
    let api = TestApi::start().await;
    let id = api.submit_query("again by hand").await;
    let claimed = api.claim("full_query").await;
    api.broker
        .publish_delta(&claimed.lease, "First run's text")
        .await
        .unwrap();
    let mut events = open_events(&api, &id, None).await;
    events.next().await.unwrap();
    let old = events.next().await.unwrap();
    drop(events);
    api.broker
        .fail(
            &claimed.lease,
            &ragpool_queue::TaskError::new("bad_input", "no"),
            ragpool_queue::Retry::Permanent,
        )
        .await
        .unwrap();
    api.broker.retry(&id.parse().unwrap()).await.unwrap();
    let again = api.claim("full_query").await;
    assert_eq!(again.task.attempts, 1, "attempts start over");
    for piece in ["Second", " run's text, longer"] {
        api.broker.publish_delta(&again.lease, piece).await.unwrap();
    }
    // The old position names attempt 1 too, but another run: the new text comes whole.
    let mut resumed = open_events(&api, &id, old.id.as_deref()).await;
    assert_eq!(resumed.next().await.unwrap().name, "started");
    let whole = resumed.next().await.unwrap();
    assert_eq!(delta_of(&whole), (1, 2, "Second run's text, longer"));
    assert_eq!(whole.data["offset"], 0);
}
