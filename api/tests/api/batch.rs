//! `POST /api/async/batch`: order, per-item checks identical to the single endpoints,
//! all-or-nothing and partial acceptance, idempotency keys, limits, auth, metrics, outages.

use ragpool_api::{ApiConfig, AuthConfig, Limits};
use ragpool_queue::payload::{AnalyzeImage, CompleteAnswer, FullQuery};
use ragpool_queue::testing::ServerOptions;
use ragpool_queue::{Payload, TaskId};
use serde_json::{Value, json};

use crate::support::{PNG_1X1, TestApi, b64, json};

const BATCH: &str = "/api/async/batch";

async fn post(api: &TestApi, body: Value) -> (u16, Value) {
    json(api.post(BATCH).json(&body).send().await.unwrap()).await
}

async fn payload(api: &TestApi, id: &Value) -> Payload {
    let id: TaskId = id.as_str().expect("task_id").parse().unwrap();
    api.broker.payload(&id).await.unwrap().expect("stored")
}

async fn total_enqueued(api: &TestApi) -> u64 {
    let stats = api.broker.stats().await.unwrap();
    stats.iter().map(|s| s.total_enqueued).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_is_queued_and_answered_in_order() {
    let api = TestApi::start().await;
    let (status, body) = post(
        &api,
        json!({"tasks": [
            {"kind": "full_query", "question": "first", "top_k": 2},
            {"kind": "analyze_image", "image": b64(PNG_1X1), "prompt": "second"},
            {"kind": "complete_answer", "question": "third", "context": "some text"},
        ]}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        (body["queued"].as_u64(), body["refused"].as_u64()),
        (Some(3), Some(0))
    );
    let tasks = body["tasks"].as_array().unwrap();
    let queues: Vec<&str> = tasks.iter().map(|t| t["queue"].as_str().unwrap()).collect();
    assert_eq!(
        queues,
        ["full_query", "image_analysis", "answer_generation"]
    );
    for t in tasks {
        assert_eq!(t["status"], "queued");
        assert_eq!(t["replayed"], false);
        let id = t["task_id"].as_str().unwrap();
        assert_eq!(t["status_url"], format!("/api/async/task/{id}"));
        assert_eq!(t["events_url"], format!("/api/async/task/{id}/events"));
    }
    assert_eq!(
        payload(&api, &tasks[0]["task_id"]).await,
        Payload::FullQuery(FullQuery {
            question: "first".into(),
            top_k: Some(2),
            ..FullQuery::default()
        })
    );
    assert_eq!(
        payload(&api, &tasks[1]["task_id"]).await,
        Payload::AnalyzeImage(AnalyzeImage {
            image: Some(b64(PNG_1X1)),
            image_url: None,
            prompt: Some("second".into()),
        })
    );
    assert_eq!(
        payload(&api, &tasks[2]["task_id"]).await,
        Payload::CompleteAnswer(CompleteAnswer {
            question: "third".into(),
            context: Some("some text".into()),
            ..CompleteAnswer::default()
        })
    );

    let metrics = api
        .get("/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        r#"ragpool_api_submissions_total{queue="full_query"} 1"#,
        r#"ragpool_api_submissions_total{queue="image_analysis"} 1"#,
        r#"ragpool_api_http_requests_total{method="POST",route="/api/async/batch",status="202"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_item_is_checked_exactly_like_its_single_endpoint() {
    let config = ApiConfig {
        limits: Limits {
            max_image_bytes: 1024,
            max_question_bytes: 100,
            max_top_k: 20,
            ..Limits::default()
        },
        ..ApiConfig::default()
    };
    let api = TestApi::start_with(config, ServerOptions::default()).await;
    let unknown = TaskId::new().to_string();
    let big_png = [PNG_1X1, &vec![0u8; 2048]].concat();
    // (single endpoint, batch kind, body)
    let cases = [
        ("query", "full_query", json!({})),
        ("query", "full_query", json!({"question": "  "})),
        ("query", "full_query", json!({"question": "q", "top_k": 0})),
        (
            "query",
            "full_query",
            json!({"question": "q", "top_k": "3"}),
        ),
        ("query", "full_query", json!({"question": "x".repeat(101)})),
        (
            "query",
            "full_query",
            json!({"question": "q", "image": "%%%"}),
        ),
        (
            "query",
            "full_query",
            json!({"question": "q", "image": b64(PNG_1X1), "image_url": "https://93.184.216.34/a.png"}),
        ),
        ("analyze-image", "analyze_image", json!({"prompt": "p"})),
        ("analyze-image", "analyze_image", json!({"image": ""})),
        (
            "analyze-image",
            "analyze_image",
            json!({"image": b64(b"plain text")}),
        ),
        (
            "analyze-image",
            "analyze_image",
            json!({"image": b64(&big_png)}),
        ),
        (
            "analyze-image",
            "analyze_image",
            json!({"image_url": "https://93.184.216.34/a.png"}),
        ),
        (
            "complete-answer",
            "complete_answer",
            json!({"question": "q", "context": unknown}),
        ),
        ("complete-answer", "complete_answer", json!({"question": 5})),
    ];
    for (endpoint, kind, body) in cases {
        let single = api
            .post(&format!("/api/async/{endpoint}"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let (single_status, single) = json(single).await;
        assert!(single_status >= 400, "{endpoint} {body}: {single}");
        let mut item = body.clone();
        item["kind"] = json!(kind);
        let (status, batch) = post(
            &api,
            json!({"tasks": [{"kind": "full_query", "question": "ok"}, item]}),
        )
        .await;
        assert_eq!(status, 422, "{batch}");
        assert_eq!(batch["error"]["code"], "invalid_batch");
        let errors = batch["errors"].as_array().unwrap();
        assert_eq!(errors.len(), 1, "{batch}");
        assert_eq!(errors[0]["index"], 1);
        assert_eq!(
            errors[0]["error"]["code"], single["error"]["code"],
            "{endpoint} {body}: batch {batch}, single {single}"
        );
    }
    assert_eq!(total_enqueued(&api).await, 0, "nothing was queued");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_item_queues_nothing_unless_partial() {
    let api = TestApi::start().await;
    let tasks = json!([
        {"kind": "full_query", "question": "good"},
        {"kind": "full_query"},
        {"kind": "translate", "question": "what?"},
        "not an object",
        {"question": "no kind"},
        {"kind": "complete_answer", "question": "also good", "idempotency_key": ""},
        {"kind": "complete_answer", "question": "good too"},
    ]);
    let (status, body) = post(&api, json!({"tasks": tasks})).await;
    assert_eq!(status, 422, "{body}");
    let codes: Vec<(u64, &str)> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["index"].as_u64().unwrap(),
                e["error"]["code"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        codes,
        [
            (1, "missing_field"),
            (2, "invalid_field"),
            (3, "invalid_field"),
            (4, "missing_field"),
            (5, "invalid_field"),
        ]
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("nothing was queued"),
        "{body}"
    );
    assert_eq!(total_enqueued(&api).await, 0);

    let (status, body) = post(&api, json!({"tasks": tasks, "partial": true})).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        (body["queued"].as_u64(), body["refused"].as_u64()),
        (Some(2), Some(5))
    );
    let items = body["tasks"].as_array().unwrap();
    assert_eq!(items.len(), 7);
    assert_eq!(items[0]["queue"], "full_query");
    assert_eq!(items[1]["error"]["code"], "missing_field");
    assert_eq!(items[6]["queue"], "answer_generation");
    assert!(items[6].get("error").is_none());
    assert_eq!(total_enqueued(&api).await, 2);

    // Partial with nothing good queues nothing either.
    let (status, body) = post(
        &api,
        json!({"tasks": [{"kind": "full_query"}], "partial": true}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("invalid_batch"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_hold_within_and_across_batches_and_endpoints() {
    let api = TestApi::start().await;
    let (status, first) = post(
        &api,
        json!({"tasks": [
            {"kind": "full_query", "question": "a", "idempotency_key": "k1"},
            {"kind": "full_query", "question": "a again", "idempotency_key": "k1"},
            {"kind": "full_query", "question": "b", "idempotency_key": "k2"},
        ]}),
    )
    .await;
    assert_eq!(status, 202, "{first}");
    let t = &first["tasks"];
    assert_eq!(t[0]["task_id"], t[1]["task_id"]);
    assert_ne!(t[0]["task_id"], t[2]["task_id"]);
    assert_eq!(
        (t[0]["replayed"].as_bool(), t[1]["replayed"].as_bool()),
        (Some(false), Some(true))
    );
    assert_eq!(
        (first["queued"].as_u64(), first["replayed"].as_u64()),
        (Some(2), Some(1))
    );

    let (status, again) = post(
        &api,
        json!({"tasks": [{"kind": "full_query", "question": "b", "idempotency_key": "k2"}]}),
    )
    .await;
    assert_eq!(status, 202, "{again}");
    assert_eq!(again["tasks"][0]["task_id"], t[2]["task_id"]);
    assert_eq!(again["tasks"][0]["replayed"], true);

    // The single endpoint's header shares the keys.
    let r = api
        .post("/api/async/query")
        .header("Idempotency-Key", "k1")
        .json(&json!({"question": "a"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["idempotent-replayed"], "true");
    assert_eq!(json(r).await.1["task_id"], t[0]["task_id"]);

    // One key on two kinds: refused before anything is queued, as the single endpoint does.
    let (status, body) = post(
        &api,
        json!({"tasks": [
            {"kind": "full_query", "question": "c", "idempotency_key": "k3"},
            {"kind": "complete_answer", "question": "c", "idempotency_key": "k3"},
        ]}),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["errors"][0]["index"], 1);
    assert_eq!(body["errors"][0]["error"]["code"], "idempotency_key_reused");
    // A key held by an earlier task of another kind: that item is refused in place.
    let (status, body) = post(
        &api,
        json!({"tasks": [{"kind": "analyze_image", "image": b64(PNG_1X1), "idempotency_key": "k1"}]}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["tasks"][0]["error"]["code"], "idempotency_key_reused");
    assert_eq!(total_enqueued(&api).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_malformed_batches() {
    let config = ApiConfig {
        limits: Limits {
            max_batch_tasks: 2,
            ..Limits::default()
        },
        ..ApiConfig::default()
    };
    let api = TestApi::start_with(config, ServerOptions::default()).await;
    let item = json!({"kind": "full_query", "question": "q"});
    let (status, body) = post(&api, json!({"tasks": [item, item, item]})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (413, Some("too_many_tasks"))
    );
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("at most 2") && message.contains("--max-batch-tasks"),
        "{message}"
    );

    let (status, body) = post(&api, json!({"tasks": [item, item]})).await;
    assert_eq!((status, body["queued"].as_u64()), (202, Some(2)));

    let (status, body) = post(&api, json!({"tasks": []})).await;
    assert_eq!(
        (status, body["tasks"].as_array().map(Vec::len)),
        (202, Some(0))
    );

    let (status, body) = post(&api, json!({"partial": true})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("missing_field"))
    );
    let (status, body) = post(&api, json!({"tasks": {"kind": "full_query"}})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("invalid_field"))
    );
    let r = api
        .post(BATCH)
        .body("{")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(json(r).await.1["error"]["code"], "malformed_json");
    let r = api
        .post(BATCH)
        .body("tasks")
        .header("content-type", "text/plain")
        .send()
        .await
        .unwrap();
    assert_eq!(json(r).await.0, 415);
    assert_eq!(total_enqueued(&api).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_required_and_tasks_belong_to_the_caller() {
    const ALICE: &str = "alice-key-0123456789abcdef";
    const BOB: &str = "bob-key-0123456789abcdef01";
    let config = ApiConfig {
        auth: AuthConfig {
            api_keys: Some(format!("alice:{ALICE},bob:{BOB}")),
            api_keys_file: None,
            api_key_settings: None,
        },
        ..ApiConfig::default()
    };
    let mut api = TestApi::start_with(config, ServerOptions::default()).await;
    let body =
        json!({"tasks": [{"kind": "full_query", "question": "q", "idempotency_key": "same"}]});
    let (status, refused) = post(&api, body.clone()).await;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );

    api.key = Some(ALICE.into());
    let (_, alice) = post(&api, body.clone()).await;
    let id = &alice["tasks"][0]["task_id"];
    let task: TaskId = id.as_str().unwrap().parse().unwrap();
    let stored = api.broker.get(&task).await.unwrap().unwrap();
    assert_eq!(stored.owner.as_deref(), Some("alice"));
    // Keys are scoped by caller: Bob's "same" is another task, which Alice cannot read.
    api.key = Some(BOB.into());
    let (_, bob) = post(&api, body).await;
    assert_ne!(&bob["tasks"][0]["task_id"], id);
    assert_eq!(bob["tasks"][0]["replayed"], false);
    let r = api
        .get(&format!("/api/async/task/{}", id.as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_is_503() {
    let mut api = TestApi::start().await;
    api.redis.kill().expect("killing redis-server");
    let r = api
        .post(BATCH)
        .json(&json!({"tasks": [{"kind": "full_query", "question": "q"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["retry-after"], "1");
    let (status, body) = json(r).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("unavailable"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_the_batch() {
    let api = TestApi::start().await;
    let (_, doc) = json(api.get("/openapi.json").send().await.unwrap()).await;
    let op = &doc["paths"]["/api/async/batch"]["post"];
    for status in ["202", "400", "401", "413", "415", "422", "503"] {
        assert!(op["responses"].get(status).is_some(), "{status}: {op}");
    }
    let schemas = &doc["components"]["schemas"];
    assert_eq!(
        schemas["BatchRequest"]["properties"]["tasks"]["maxItems"], 1000,
        "the configured limit"
    );
    for name in [
        "BatchRequest",
        "BatchTaskRequest",
        "BatchAccepted",
        "BatchRejected",
    ] {
        assert!(schemas.get(name).is_some(), "{name}");
    }
}
