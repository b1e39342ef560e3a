//! The success path of every endpoint.

use std::time::Duration;

use ragpool_api::ApiConfig;
use ragpool_queue::payload::{AnalyzeImage, CompleteAnswer};
use ragpool_queue::testing::ServerOptions;
use ragpool_queue::{Payload, Progress, Retry, TaskError, TaskId, TaskState, WorkerInfo};
use serde_json::json;

use crate::support::{PNG_1X1, TestApi, b64, json};

async fn payload(api: &TestApi, id: &str) -> Payload {
    let id: TaskId = id.parse().unwrap();
    api.broker.payload(&id).await.unwrap().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analyze_image_accepts_base64_json() {
    let api = TestApi::start().await;
    let r = api
        .post("/api/async/analyze-image")
        .json(&json!({ "image": b64(PNG_1X1), "prompt": "what is this?" }))
        .send()
        .await
        .unwrap();
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let (status, body) = json(r).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "queued");
    assert_eq!(body["queue"], "image_analysis");
    let id = body["task_id"].as_str().unwrap();
    assert_eq!(location, format!("/api/async/task/{id}"));
    assert_eq!(body["status_url"], location);
    assert_eq!(body["events_url"], format!("{location}/events"));
    let Payload::AnalyzeImage(stored) = payload(&api, id).await else {
        panic!("not a AnalyzeImage payload")
    };
    assert_eq!(
        stored,
        AnalyzeImage {
            image: Some(b64(PNG_1X1)),
            image_url: None,
            prompt: Some("what is this?".into()),
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analyze_image_accepts_a_multipart_upload() {
    let api = TestApi::start().await;
    let form = reqwest::multipart::Form::new()
        .part(
            "image",
            reqwest::multipart::Part::bytes(PNG_1X1.to_vec()).file_name("pixel.png"),
        )
        .text("prompt", "describe");
    let r = api
        .post("/api/async/analyze-image")
        .multipart(form)
        .send()
        .await
        .unwrap();
    let (status, body) = json(r).await;
    assert_eq!(status, 202, "{body}");
    let Payload::AnalyzeImage(stored) = payload(&api, body["task_id"].as_str().unwrap()).await
    else {
        panic!("not a AnalyzeImage payload")
    };
    assert_eq!(stored.image.as_deref(), Some(b64(PNG_1X1).as_str()));
    assert_eq!(stored.prompt.as_deref(), Some("describe"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_urls_when_enabled_are_checked() {
    let config = ApiConfig {
        allow_image_urls: true,
        ..ApiConfig::default()
    };
    let api = TestApi::start_with(config, ServerOptions::default()).await;
    // A public IP literal: accepted without any DNS lookup.
    let r = api
        .post("/api/async/analyze-image")
        .json(&json!({ "image_url": "https://93.184.216.34/cat.png" }))
        .send()
        .await
        .unwrap();
    let (status, body) = json(r).await;
    assert_eq!(status, 202, "{body}");
    let Payload::AnalyzeImage(stored) = payload(&api, body["task_id"].as_str().unwrap()).await
    else {
        panic!("not a AnalyzeImage payload")
    };
    assert_eq!(
        stored.image_url.as_deref(),
        Some("https://93.184.216.34/cat.png")
    );
    for refused in [
        "https://127.0.0.1/x.png",
        "https://169.254.169.254/latest/meta-data/",
        "https://[::1]/x.png",
        "https://10.0.0.8/x.png",
        "http://93.184.216.34/x.png",
        "https://localhost/x.png",
    ] {
        let r = api
            .post("/api/async/query")
            .json(&json!({ "question": "q", "image_url": refused }))
            .send()
            .await
            .unwrap();
        let (status, body) = json(r).await;
        assert_eq!(status, 422, "{refused}: {body}");
        assert_eq!(body["error"]["code"], "image_url_refused", "{refused}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_answer_takes_text_or_a_task_as_context() {
    let api = TestApi::start().await;
    let r = api
        .post("/api/async/complete-answer")
        .json(&json!({ "question": "why?", "context": "because", "top_k": 3 }))
        .send()
        .await
        .unwrap();
    let (status, body) = json(r).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["queue"], "answer_generation");
    let Payload::CompleteAnswer(stored) = payload(&api, body["task_id"].as_str().unwrap()).await
    else {
        panic!("not a CompleteAnswer payload")
    };
    assert_eq!(
        stored,
        CompleteAnswer {
            question: "why?".into(),
            context: Some("because".into()),
            context_task_id: None,
            top_k: Some(3),
        }
    );

    let r = api
        .post("/api/async/analyze-image")
        .json(&json!({ "image": b64(PNG_1X1) }))
        .send()
        .await
        .unwrap();
    let image_task = json(r).await.1["task_id"].as_str().unwrap().to_string();
    let r = api
        .post("/api/async/complete-answer")
        .json(&json!({ "question": "what is shown?", "context": image_task }))
        .send()
        .await
        .unwrap();
    let (status, body) = json(r).await;
    assert_eq!(status, 202, "{body}");
    let Payload::CompleteAnswer(stored) = payload(&api, body["task_id"].as_str().unwrap()).await
    else {
        panic!("not a CompleteAnswer payload")
    };
    assert_eq!(stored.context, None);
    assert_eq!(stored.context_task_id.as_deref(), Some(image_task.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_with_and_without_an_image() {
    let api = TestApi::start().await;
    let id = api.submit_query("plain question").await;
    let Payload::FullQuery(stored) = payload(&api, &id).await else {
        panic!("not a FullQuery payload")
    };
    assert_eq!(stored.question, "plain question");
    assert_eq!(stored.image, None);
    let r = api
        .post("/api/async/query")
        .json(&json!({ "question": "and this?", "image": b64(PNG_1X1), "top_k": 5 }))
        .send()
        .await
        .unwrap();
    let (status, body) = json(r).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["queue"], "full_query");
    let Payload::FullQuery(stored) = payload(&api, body["task_id"].as_str().unwrap()).await else {
        panic!("not a FullQuery payload")
    };
    assert_eq!(stored.image.as_deref(), Some(b64(PNG_1X1).as_str()));
    assert_eq!(stored.top_k, Some(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_returns_the_same_task() {
    let api = TestApi::start().await;
    let send = || {
        api.post("/api/async/query")
            .header("Idempotency-Key", "order-42")
            .json(&json!({ "question": "once" }))
            .send()
    };
    let first = send().await.unwrap();
    assert!(first.headers().get("idempotent-replayed").is_none());
    let (s1, b1) = json(first).await;
    let second = send().await.unwrap();
    assert_eq!(second.headers()["idempotent-replayed"], "true");
    let (s2, b2) = json(second).await;
    assert_eq!((s1, s2), (202, 202));
    assert_eq!(b1["task_id"], b2["task_id"]);
    let stats = api.broker.queue_stats("full_query").await.unwrap();
    assert_eq!(stats.total_enqueued, 1);
    // The same key on another kind of task is a client error, not a silent replay.
    let r = api
        .post("/api/async/complete-answer")
        .header("Idempotency-Key", "order-42")
        .json(&json!({ "question": "once" }))
        .send()
        .await
        .unwrap();
    let (status, body) = json(r).await;
    assert_eq!(status, 422);
    assert_eq!(body["error"]["code"], "idempotency_key_reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_reads_follow_the_lifecycle() {
    let api = TestApi::start().await;
    let first = api.submit_query("one").await;
    let second = api.submit_query("two").await;

    let (status, body) = json(
        api.get(&format!("/api/async/task/{second}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["task_id"], second);
    assert_eq!(body["kind"], "full_query");
    assert_eq!(body["queue"], "full_query");
    assert_eq!(body["status"], "queued");
    assert_eq!(body["position"], 1);
    assert_eq!(body["attempts"], 0);
    assert_eq!(body["max_attempts"], 3);
    assert!(body["enqueued_at"].as_str().unwrap().ends_with('Z'));
    assert!(body.get("payload").is_none(), "the payload is not shown");

    let claimed = api.claim("full_query").await;
    assert_eq!(claimed.task.id.as_str(), first);
    api.broker
        .heartbeat(
            &claimed.lease,
            Some(&Progress {
                percent: 40,
                message: "retrieving".into(),
            }),
        )
        .await
        .unwrap();
    let (_, body) = json(
        api.get(&format!("/api/async/task/{first}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(body["status"], "started");
    assert_eq!(body["progress"]["percent"], 40);
    assert_eq!(body["progress"]["message"], "retrieving");
    assert_eq!(body["worker"], "test-worker");
    assert!(body.get("position").is_none());
    let (_, body) = json(
        api.get(&format!("/api/async/task/{second}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(body["position"], 0, "moves up once the first is claimed");

    api.broker
        .complete(&claimed.lease, &json!({ "answer": "42" }))
        .await
        .unwrap();
    let (_, body) = json(
        api.get(&format!("/api/async/task/{first}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(body["status"], "finished");
    assert_eq!(body["result"], json!({ "answer": "42" }));
    assert!(body["finished_at"].is_string());
    assert!(body["expires_at"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_retry() {
    let api = TestApi::start().await;
    // A waiting task is canceled at once.
    let waiting = api.submit_query("wait").await;
    let (status, body) = json(
        api.delete(&format!("/api/async/task/{waiting}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "canceled");

    // A running task is asked to stop.
    let running = api.submit_query("run").await;
    let claimed = api.claim("full_query").await;
    assert_eq!(claimed.task.id.as_str(), running);
    let (status, body) = json(
        api.delete(&format!("/api/async/task/{running}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "started");
    assert_eq!(body["cancel_requested"], true);
    let beat = api.broker.heartbeat(&claimed.lease, None).await.unwrap();
    assert!(beat.cancel_requested);

    // A failed task goes back on its queue.
    let failing = api.submit_query("fail").await;
    let claimed = api.claim("full_query").await;
    assert_eq!(claimed.task.id.as_str(), failing);
    api.broker
        .fail(
            &claimed.lease,
            &TaskError::new("bad_input", "nope"),
            Retry::Permanent,
        )
        .await
        .unwrap();
    let (_, body) = json(
        api.get(&format!("/api/async/task/{failing}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(body["status"], "failed");
    assert_eq!(body["error"]["kind"], "bad_input");
    let (status, body) = json(
        api.post(&format!("/api/async/task/{failing}/retry"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "queued");
    assert_eq!(body["attempts"], 0);
    let task = api
        .broker
        .get(&failing.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(task.state, TaskState::Queued);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_show_queues_and_workers() {
    let api = TestApi::start().await;
    api.submit_query("a").await;
    api.submit_query("b").await;
    api.broker
        .register_worker(
            &WorkerInfo {
                id: "w1".into(),
                host: "node-a".into(),
                queues: vec!["full_query".into()],
                concurrency: 4,
                in_flight: 1,
                ..WorkerInfo::default()
            },
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    let (status, body) = json(api.get("/api/queue/stats").send().await.unwrap()).await;
    assert_eq!(status, 200, "{body}");
    let queues = body["queues"].as_array().unwrap();
    let names: Vec<&str> = queues
        .iter()
        .map(|q| q["queue"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["image_analysis", "answer_generation", "full_query"]);
    let fq = &queues[2];
    assert_eq!(fq["queued"], 2);
    assert_eq!(fq["total_enqueued"], 2);
    assert!(fq["processing"]["samples"].is_u64());
    assert!(fq.get("rates").is_none(), "no rate from a single reading");
    let workers = body["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 1);
    assert_eq!(workers[0]["id"], "w1");
    assert_eq!(workers[0]["in_flight"], 1);
    assert_eq!(body["utilization"], 0.25);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_metrics_and_openapi() {
    let api = TestApi::start().await;
    let (status, body) = json(api.get("/healthz").send().await.unwrap()).await;
    assert_eq!((status, &body["status"]), (200, &json!("ok")));
    let (status, body) = json(api.get("/readyz").send().await.unwrap()).await;
    assert_eq!((status, &body["status"]), (200, &json!("ready")));

    api.submit_query("count me").await;
    let r = api.get("/metrics").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = r.text().await.unwrap();
    assert!(
        text.contains("ragpool_api_submissions_total{queue=\"full_query\"} 1"),
        "{text}"
    );
    assert!(text.contains(
        "ragpool_api_http_requests_total{method=\"POST\",route=\"/api/async/query\",status=\"202\"} 1"
    ));
    assert!(text.contains("ragpool_api_http_request_duration_seconds_bucket"));

    let (status, doc) = json(api.get("/openapi.json").send().await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    for path in [
        "/api/async/analyze-image",
        "/api/async/complete-answer",
        "/api/async/query",
        "/api/async/task/{task_id}",
        "/api/async/task/{task_id}/events",
        "/api/async/task/{task_id}/retry",
        "/api/queue/stats",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} missing");
    }
    assert!(
        doc["paths"]["/api/async/task/{task_id}"]
            .get("delete")
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_carry_a_request_id() {
    let api = TestApi::start().await;
    let r = api.get("/healthz").send().await.unwrap();
    assert!(!r.headers()["x-request-id"].is_empty());
    let r = api
        .get("/healthz")
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "abc-123");
}

/// With traces off (no OTLP endpoint: this process exports nothing) a submission stores no
/// trace context, even when the caller sends one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_traces_a_callers_traceparent_is_not_stored() {
    let api = TestApi::start().await;
    let r = api
        .post("/api/async/query")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .json(&json!({ "question": "traced?" }))
        .send()
        .await
        .unwrap();
    let (status, body) = json(r).await;
    assert_eq!(status, 202, "{body}");
    let claimed = api.claim("full_query").await;
    assert_eq!(claimed.task.id.as_str(), body["task_id"].as_str().unwrap());
    assert_eq!((claimed.trace, claimed.first_attempt), (None, None));
}
