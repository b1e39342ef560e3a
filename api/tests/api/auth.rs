//! Auth on: keys are required, a task is visible only to the key that created it, and an
//! admin key may read stats and see, retry and cancel any task.

use ragpool_api::{ApiConfig, AuthConfig};
use ragpool_queue::testing::ServerOptions;
use ragpool_queue::{Retry, TaskError};
use serde_json::json;

use crate::support::{TestApi, json};

const ALICE: &str = "alice-key-0123456789";
const BOB: &str = "bob-key-0123456789ab";
const ROOT: &str = "root-key-0123456789a";

/// The API with keys from both sources; the file must outlive the server's start.
async fn start() -> (TestApi, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys");
    std::fs::write(&file, format!("# admins\nroot:{ROOT}:admin\n")).unwrap();
    let config = ApiConfig {
        auth: AuthConfig {
            api_keys: Some(format!("alice:{ALICE},bob:{BOB}")),
            api_keys_file: Some(file),
            api_key_settings: None,
        },
        ..ApiConfig::default()
    };
    (
        TestApi::start_with(config, ServerOptions::default()).await,
        dir,
    )
}

fn as_key(api: &mut TestApi, key: &str) {
    api.key = Some(key.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_required_and_tasks_are_private() {
    let (mut api, _keys) = start().await;

    // No key, a wrong key, a wrong scheme.
    let r = api
        .client
        .post(api.url("/api/async/query"))
        .json(&json!({ "question": "q" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"ragpool\"");
    let (status, body) = json(r).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    for header in ["Bearer not-a-key-at-all-xx", "Basic YWxpY2U6eA==", ALICE] {
        let r = api
            .client
            .get(api.url("/api/queue/stats"))
            .header("authorization", header)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{header}");
    }
    // Probes, metrics and the API description need no key.
    for path in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        let r = api.client.get(api.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }

    as_key(&mut api, ALICE);
    let alices = api.submit_query("alice's question").await;
    let task = api
        .broker
        .get(&alices.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        task.owner.as_deref(),
        Some("alice"),
        "the key's name, never the key"
    );
    let (status, _) = json(
        api.get(&format!("/api/async/task/{alices}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = json(api.get("/api/queue/stats").send().await.unwrap()).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );

    // Bob cannot see, follow, cancel or retry Alice's task, nor use it as context.
    as_key(&mut api, BOB);
    for (method, path) in [
        (reqwest::Method::GET, format!("/api/async/task/{alices}")),
        (
            reqwest::Method::GET,
            format!("/api/async/task/{alices}/events"),
        ),
        (reqwest::Method::DELETE, format!("/api/async/task/{alices}")),
        (
            reqwest::Method::POST,
            format!("/api/async/task/{alices}/retry"),
        ),
    ] {
        let (status, body) = json(api.req(method.clone(), &path).send().await.unwrap()).await;
        assert_eq!(status, 404, "{method} {path}: {body}");
        assert_eq!(body["error"]["code"], "not_found");
    }
    let r = api
        .post("/api/async/complete-answer")
        .json(&json!({ "question": "q", "context": alices }))
        .send()
        .await
        .unwrap();
    let (status, body) = json(r).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("invalid_context"))
    );

    // Idempotency keys are per key: the same key from Bob makes Bob's own task.
    let send = |api: &TestApi| {
        api.post("/api/async/query")
            .header("Idempotency-Key", "same")
            .json(&json!({ "question": "q" }))
            .send()
    };
    let bobs = json(send(&api).await.unwrap()).await.1["task_id"].clone();
    as_key(&mut api, ALICE);
    let alices_idem = json(send(&api).await.unwrap()).await.1["task_id"].clone();
    assert_ne!(bobs, alices_idem);

    // The admin sees stats and anyone's task, and can cancel and retry it.
    as_key(&mut api, ROOT);
    let (status, body) = json(api.get("/api/queue/stats").send().await.unwrap()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["queues"][2]["total_enqueued"], 3);
    let (status, _) = json(
        api.get(&format!("/api/async/task/{alices}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = json(
        api.delete(&format!("/api/async/task/{alices}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body["status"].as_str()), (200, Some("canceled")));

    let claimed = api.claim("full_query").await;
    api.broker
        .fail(
            &claimed.lease,
            &TaskError::new("bad_input", "x"),
            Retry::Permanent,
        )
        .await
        .unwrap();
    let failed = claimed.task.id.to_string();
    let (status, body) = json(
        api.post(&format!("/api/async/task/{failed}/retry"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body["status"].as_str()), (202, Some("queued")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_max_queued_refuses_with_429_and_stats_count_by_owner() {
    let config = ApiConfig {
        auth: AuthConfig {
            api_keys: Some(format!(
                "alice:{ALICE}:maxQueued=2:maxInFlight=1,bob:{BOB}:weight=3,root:{ROOT}:admin"
            )),
            api_keys_file: None,
            api_key_settings: None,
        },
        ..ApiConfig::default()
    };
    let mut api = TestApi::start_with(config, ServerOptions::default()).await;
    as_key(&mut api, ALICE);
    api.submit_query("one").await;
    api.submit_query("two").await;
    let r = api
        .post("/api/async/query")
        .json(&json!({ "question": "three" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["retry-after"], "5");
    let (status, body) = json(r).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("max_queued"))
    );
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("maxQueued") && message.contains("2 are queued"),
        "{message}"
    );
    // Bob is not held back.
    as_key(&mut api, BOB);
    api.submit_query("bob's").await;

    // Stats by owner: admin only, names only.
    let (status, _) = json(api.get("/api/queue/stats?by=owner").send().await.unwrap()).await;
    assert_eq!(status, 403);
    as_key(&mut api, ROOT);
    let (status, body) = json(api.get("/api/queue/stats?by=owner").send().await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(
        body["owners"],
        json!([
            {"owner": "alice", "queued": 2, "started": 0, "max_in_flight": 1},
            {"owner": "bob", "queued": 1, "started": 0},
        ])
    );
    let (_, body) = json(api.get("/api/queue/stats").send().await.unwrap()).await;
    assert!(body.get("owners").is_none());
    let (status, body) = json(api.get("/api/queue/stats?by=queue").send().await.unwrap()).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("invalid_field")),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("by must be")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_per_owner_show_each_keys_tasks_by_name() {
    let config = ApiConfig {
        auth: AuthConfig {
            api_keys: Some(format!("alice:{ALICE},bob:{BOB},root:{ROOT}:admin")),
            api_keys_file: None,
            api_key_settings: None,
        },
        metrics_per_owner: true,
        ..ApiConfig::default()
    };
    let mut api = TestApi::start_with(config, ServerOptions::default()).await;
    as_key(&mut api, ALICE);
    api.submit_query("one").await;
    api.submit_query("two").await;
    as_key(&mut api, BOB);
    api.submit_query("bob's").await;
    let claimed = api.claim("full_query").await;
    assert_eq!(claimed.task.owner.as_deref(), Some("alice"));

    let text = api
        .get("/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        r#"ragpool_api_owner_queued{owner="alice"} 1"#,
        r#"ragpool_api_owner_started{owner="alice"} 1"#,
        r#"ragpool_api_owner_queued{owner="bob"} 1"#,
        r#"ragpool_api_owner_started{owner="bob"} 0"#,
        // A key with no tasks reads 0; its series exists because the key does.
        r#"ragpool_api_owner_queued{owner="root"} 0"#,
    ] {
        assert!(text.contains(line), "{line} not in\n{text}");
    }
    assert!(!text.contains(ALICE) && !text.contains(BOB), "{text}");

    // The task ends: the gauges follow at the next scrape.
    api.broker
        .complete(&claimed.lease, &json!({ "answer": "ok" }))
        .await
        .unwrap();
    let text = api
        .get("/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(r#"ragpool_api_owner_started{owner="alice"} 0"#),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_have_no_owner_gauges_unless_asked_for() {
    let (mut api, _keys) = start().await;
    as_key(&mut api, ALICE);
    api.submit_query("one").await;
    let text = api
        .get("/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!text.contains("ragpool_api_owner_"), "{text}");
}
