//! The dashboard's endpoints: task lists per state with cursors, workers, bulk retry and
//! purge, the snapshot with its Redis-kept history, the shared live stream, task detail,
//! the embedded page, and admin-only access when keys are configured.

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt;
use ragpool_api::{ApiConfig, AuthConfig};
use ragpool_queue::testing::ServerOptions;
use ragpool_queue::{Retry, TaskError, WorkerInfo};
use serde_json::{Value, json};

use crate::support::{PNG_1X1, TestApi, b64, json};

async fn get_json(api: &TestApi, path: &str) -> (u16, Value) {
    json(api.get(path).send().await.unwrap()).await
}

fn ids(page: &Value) -> Vec<String> {
    page["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["task_id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_lists_page_newest_first_without_payloads() {
    let api = TestApi::start().await;
    let mut submitted = Vec::new();
    for i in 0..5 {
        submitted.push(api.submit_query(&format!("question {i}")).await);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/queue/full_query/tasks?state=queued&limit=2&cursor={c}"),
            None => "/api/queue/full_query/tasks?state=queued&limit=2".to_string(),
        };
        let (status, page) = get_json(&api, &path).await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["total"], 5);
        let row = &page["tasks"][0];
        assert_eq!(row["kind"], "full_query");
        assert_eq!(row["status"], "queued");
        assert!(row.get("payload").is_none(), "{row}");
        seen.extend(ids(&page));
        pages += 1;
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    submitted.reverse();
    assert_eq!(seen, submitted, "newest first, each task once");

    // A cursor whose task left the index continues below its score.
    let (_, first) = get_json(&api, "/api/queue/full_query/tasks?state=queued&limit=2").await;
    let cursor = first["next_cursor"].as_str().unwrap().to_string();
    let claimed_then_gone = &ids(&first)[1];
    api.delete(&format!("/api/async/task/{claimed_then_gone}"))
        .send()
        .await
        .unwrap();
    let (_, next) = get_json(
        &api,
        &format!("/api/queue/full_query/tasks?state=queued&limit=10&cursor={cursor}"),
    )
    .await;
    assert_eq!(ids(&next), submitted[2..].to_vec());

    let (status, canceled) = get_json(&api, "/api/queue/full_query/tasks?state=canceled").await;
    assert_eq!(status, 200);
    assert_eq!(ids(&canceled), vec![claimed_then_gone.clone()]);
    assert_eq!(canceled["tasks"][0]["error_kind"], "canceled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_list_input_is_checked() {
    let api = TestApi::start().await;
    for (path, status, code) in [
        ("/api/queue/full_query/tasks", 422, "invalid_field"),
        (
            "/api/queue/full_query/tasks?state=sleeping",
            422,
            "invalid_field",
        ),
        (
            "/api/queue/full_query/tasks?state=queued&limit=0",
            422,
            "out_of_range",
        ),
        (
            "/api/queue/full_query/tasks?state=queued&limit=201",
            422,
            "out_of_range",
        ),
        (
            "/api/queue/full_query/tasks?state=queued&limit=x",
            422,
            "invalid_field",
        ),
        (
            "/api/queue/full_query/tasks?state=queued&cursor=nope",
            400,
            "invalid_cursor",
        ),
        (
            "/api/queue/no_such_queue/tasks?state=queued",
            404,
            "not_found",
        ),
    ] {
        let (s, body) = get_json(&api, path).await;
        assert_eq!(
            (s, body["error"]["code"].as_str()),
            (status, Some(code)),
            "{path}: {body}"
        );
    }
    let r = api
        .post("/api/queue/full_query/purge?state=queued")
        .send()
        .await
        .unwrap();
    let (s, body) = json(r).await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (422, Some("invalid_field"))
    );
    let (s, _) = json(
        api.post("/api/queue/nope/retry-failed")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_failed_and_purge_act_on_a_whole_queue() {
    let api = TestApi::start().await;
    let mut failed = HashSet::new();
    for i in 0..3 {
        api.submit_query(&format!("q{i}")).await;
        let claimed = api.claim("full_query").await;
        api.broker
            .fail(
                &claimed.lease,
                &TaskError::new("backend_unavailable", "connection refused"),
                Retry::Permanent,
            )
            .await
            .unwrap();
        failed.insert(claimed.task.id.to_string());
    }
    let (_, list) = get_json(&api, "/api/queue/full_query/tasks?state=failed").await;
    assert_eq!(list["tasks"][0]["error_message"], "connection refused");

    let (status, outcome) = json(
        api.post("/api/queue/full_query/retry-failed")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{outcome}");
    assert_eq!(outcome, json!({ "done": 3, "remaining": 0 }));
    let (_, queued) = get_json(&api, "/api/queue/full_query/tasks?state=queued").await;
    assert_eq!(ids(&queued).into_iter().collect::<HashSet<_>>(), failed);
    assert_eq!(queued["tasks"][0]["attempts"], 0);

    // Finish one, then purge the finished.
    let claimed = api.claim("full_query").await;
    api.broker
        .complete(&claimed.lease, &json!({ "answer": "42" }))
        .await
        .unwrap();
    let done = claimed.task.id.to_string();
    let (status, outcome) = json(
        api.post("/api/queue/full_query/purge?state=finished")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, outcome),
        (200, json!({ "done": 1, "remaining": 0 }))
    );
    let (status, _) = get_json(&api, &format!("/api/async/task/{done}")).await;
    assert_eq!(status, 404, "a purged task is gone");
    let (_, finished) = get_json(&api, "/api/queue/full_query/tasks?state=finished").await;
    assert_eq!(finished["total"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_and_the_snapshot_describe_the_deployment() {
    let api = TestApi::start().await;
    let info = WorkerInfo {
        id: "exec-1".into(),
        host: "node-a".into(),
        pod: Some("pool-abc".into()),
        queues: vec!["full_query".into()],
        concurrency: 4,
        in_flight: 3,
        started_at_ms: 1,
        ..WorkerInfo::default()
    };
    api.broker
        .register_worker(&info, Duration::from_secs(30))
        .await
        .unwrap();
    let (status, body) = get_json(&api, "/api/workers").await;
    assert_eq!(status, 200, "{body}");
    let w = &body["workers"][0];
    assert_eq!(
        (&w["id"], &w["pod"], &w["utilization"], &w["silent"]),
        (
            &json!("exec-1"),
            &json!("pool-abc"),
            &json!(0.75),
            &json!(false)
        )
    );
    assert!(w["seconds_since_heartbeat"].as_f64().unwrap() < 10.0);

    api.submit_query("q").await;
    let (status, snap) = get_json(&api, "/api/dashboard/snapshot").await;
    assert_eq!(status, 200, "{snap}");
    let queues: Vec<&str> = snap["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["queue"].as_str().unwrap())
        .collect();
    assert!(queues.contains(&"full_query"), "{queues:?}");
    let fq = snap["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == "full_query")
        .unwrap();
    assert_eq!(fq["queued"], 1);
    assert!(fq["history"].is_array());
    assert_eq!(snap["workers"][0]["id"], "exec-1");
    assert_eq!(snap["utilization"], 0.75);
    assert_eq!(snap["owners"], json!([]), "no keys, no owners");

    // The minute's sample is kept in Redis, shared by every replica.
    let client = redis::Client::open(api.redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let kept: u64 = redis::cmd("HLEN")
        .arg("{ragpool}:q:full_query:history")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(kept, 1);
}

/// Reads server-sent events until `done` says stop: `(event name, data)`.
async fn events_until(
    r: reqwest::Response,
    mut done: impl FnMut(&str, &Value) -> bool,
) -> Vec<(String, Value)> {
    let mut events = Vec::new();
    let mut buffer = String::new();
    let mut body = r.bytes_stream();
    while let Some(chunk) = body.next().await {
        buffer.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let mut name = None;
            let mut data = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = Some(v.trim().to_string());
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            if let (Some(name), Ok(data)) = (name, serde_json::from_str::<Value>(&data)) {
                let stop = done(&name, &data);
                events.push((name, data));
                if stop {
                    return events;
                }
            }
        }
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_stream_sends_snapshots_and_task_changes() {
    let api = TestApi::start().await;
    let r = api.get("/api/dashboard/events").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let submitter = {
        let base = api.base.clone();
        tokio::spawn(async move {
            // After the stream has opened: the change must arrive through it.
            reqwest::Client::new()
                .post(format!("{base}/api/async/query"))
                .json(&json!({ "question": "live?" }))
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        })
    };
    // The first snapshot may come before or after the change, whichever the shared reader
    // and the submission finish first; both must come.
    let (mut saw_snapshot, mut saw_change) = (false, false);
    let events = events_until(r, |name, data| {
        saw_snapshot |= name == "snapshot" && data["queues"].is_array();
        saw_change |=
            name == "changes" && data["counts"]["full_query"]["queued"].as_u64() >= Some(1);
        saw_snapshot && saw_change
    })
    .await;
    let submitted = submitter.await.unwrap();
    let (_, changes) = events
        .iter()
        .find(|(name, _)| name == "changes")
        .expect("a changes event");
    assert_eq!(changes["recent"][0]["task_id"], submitted["task_id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_detail_summarizes_the_payload_without_image_data() {
    let api = TestApi::start().await;
    let r = api
        .post("/api/async/analyze-image")
        .json(&json!({ "image": b64(PNG_1X1), "prompt": "what is it" }))
        .send()
        .await
        .unwrap();
    let (status, submitted) = json(r).await;
    assert_eq!(status, 202, "{submitted}");
    let id = submitted["task_id"].as_str().unwrap();
    let r = api
        .get(&format!("/api/async/task/{id}/detail"))
        .send()
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["task_id"], id);
    assert_eq!(body["status"], "queued");
    assert_eq!(body["payload"]["prompt"], "what is it");
    assert_eq!(body["payload"]["image_bytes"], PNG_1X1.len());
    assert!(!text.contains(&b64(PNG_1X1)), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_served_from_the_binary_with_a_strict_policy() {
    let api = TestApi::start().await;
    for (path, kind, needle) in [
        ("/dashboard", "text/html", "app.js"),
        ("/dashboard/app.js", "text/javascript", "sessionStorage"),
        ("/dashboard/style.css", "text/css", "tabular-nums"),
    ] {
        let r = api.get(path).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let ct = r.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ct.starts_with(kind), "{path}: {ct}");
        let csp = r.headers()["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("script-src 'self'"), "{csp}");
        assert!(r.text().await.unwrap().contains(needle), "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_keys_the_operator_endpoints_need_an_admin_key() {
    const ALICE: &str = "alice-key-0123456789";
    const ROOT: &str = "root-key-0123456789a";
    let config = ApiConfig {
        auth: AuthConfig {
            api_keys: Some(format!("alice:{ALICE},root:{ROOT}:admin")),
            api_keys_file: None,
            api_key_settings: None,
        },
        ..ApiConfig::default()
    };
    let mut api = TestApi::start_with(config, ServerOptions::default()).await;
    let gets = [
        "/api/queue/full_query/tasks?state=queued",
        "/api/workers",
        "/api/dashboard/snapshot",
        "/api/dashboard/events",
    ];
    let posts = [
        "/api/queue/full_query/retry-failed",
        "/api/queue/full_query/purge",
    ];
    for (key, want) in [(None, 401), (Some(ALICE), 403)] {
        api.key = key.map(str::to_string);
        for path in gets {
            assert_eq!(api.get(path).send().await.unwrap().status(), want, "{path}");
        }
        for path in posts {
            assert_eq!(
                api.post(path).send().await.unwrap().status(),
                want,
                "{path}"
            );
        }
    }
    api.key = Some(ROOT.to_string());
    for path in &gets[..3] {
        assert_eq!(api.get(path).send().await.unwrap().status(), 200, "{path}");
    }

    // The snapshot lists each key's tasks by the key's name, never the key.
    api.key = Some(ALICE.to_string());
    api.submit_query("one").await;
    api.submit_query("two").await;
    api.claim("full_query").await;
    api.key = Some(ROOT.to_string());
    let (status, snap) = get_json(&api, "/api/dashboard/snapshot").await;
    assert_eq!(status, 200);
    assert_eq!(
        snap["owners"],
        json!([{"owner": "alice", "queued": 1, "started": 1}])
    );
    let text = snap.to_string();
    assert!(!text.contains(ALICE) && !text.contains(ROOT), "{text}");
    // The page itself holds no data and loads without a key.
    api.key = None;
    assert_eq!(api.get("/dashboard").send().await.unwrap().status(), 200);
}
