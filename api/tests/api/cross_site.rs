//! What another site can make a browser send to the real `ragpool-api` binary with no keys
//! configured: forms and `no-cors` fetches that retry, purge or cancel, and DNS-rebound
//! reads. They are refused; the API's own (same-origin, JSON) requests still work.

use std::time::Duration;

use ragpool_queue::{Broker, ClaimPolicy, ConsumerConfig, Retry, TaskError, TaskState};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::process::ApiProcess;

const FORM: &str = "application/x-www-form-urlencoded";
const EVIL: &str = "http://evil.example";

/// A task of `full_query` claimed and failed for good, as an executor would.
async fn failed_task(api: &ApiProcess, broker: &Broker, http: &reqwest::Client) -> String {
    let response = http
        .post(api.url("/api/async/query"))
        .json(&json!({ "question": "will this fail?" }))
        .send()
        .await
        .expect("submit");
    assert_eq!(response.status(), 202);
    let consumer = broker
        .consumer(ConsumerConfig {
            worker_id: "test-worker".into(),
            queues: vec!["full_query".into()],
            policy: ClaimPolicy::Strict,
            lease: Duration::from_secs(30),
        })
        .await
        .expect("consumer");
    let claimed = consumer.try_claim().await.expect("claim").expect("a task");
    broker
        .fail(
            &claimed.lease,
            &TaskError::new("bad_input", "nope"),
            Retry::Permanent,
        )
        .await
        .expect("fail");
    claimed.task.id.to_string()
}

async fn state_of(broker: &Broker, id: &str) -> Option<TaskState> {
    let id = id.parse().expect("task id");
    broker.get(&id).await.expect("get").map(|t| t.state)
}

/// Sends `request` and returns its status and the error code of its JSON body.
async fn code_of(request: reqwest::RequestBuilder) -> (StatusCode, String) {
    let response = request.send().await.expect("request");
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    (
        status,
        body["error"]["code"].as_str().unwrap_or("").to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forms_from_another_site_change_nothing_and_the_apis_own_requests_work() {
    let api = ApiProcess::start(&[]).await;
    let broker = api.broker().await;
    let http = reqwest::Client::new();
    let failed = failed_task(&api, &broker, &http).await;
    let own_origin = format!("http://{}", api.addr);

    // What a form on evil.example posts (browsers add its Origin), and what an old browser
    // that sends no Origin would post, to every state-changing operator action.
    for path in [
        format!("/api/async/task/{failed}/retry"),
        "/api/queue/full_query/retry-failed".to_string(),
        "/api/queue/full_query/purge?state=failed".to_string(),
    ] {
        let forged = |origin: Option<&str>| {
            let request = http
                .post(api.url(&path))
                .header("content-type", FORM)
                .body("confirm=1");
            match origin {
                Some(o) => request.header("origin", o),
                None => request,
            }
        };
        assert_eq!(
            code_of(forged(Some(EVIL))).await,
            (StatusCode::FORBIDDEN, "origin_not_allowed".into()),
            "{path}"
        );
        assert_eq!(
            code_of(forged(None)).await,
            (StatusCode::FORBIDDEN, "cross_site_request".into()),
            "{path}"
        );
        // A `fetch(…, {method: 'POST', mode: 'no-cors'})` without a body.
        assert_eq!(
            code_of(http.post(api.url(&path))).await,
            (StatusCode::FORBIDDEN, "cross_site_request".into()),
            "{path}"
        );
    }
    assert_eq!(
        code_of(
            http.delete(api.url(&format!("/api/async/task/{failed}")))
                .header("origin", EVIL)
        )
        .await,
        (StatusCode::FORBIDDEN, "origin_not_allowed".into())
    );
    assert_eq!(state_of(&broker, &failed).await, Some(TaskState::Failed));

    // A DNS-rebound page: its requests name the attacker's host.
    let rebound_host = format!("evil.example:{}", api.addr.port());
    assert_eq!(
        code_of(
            http.get(api.url(&format!("/api/async/task/{failed}")))
                .header("host", &rebound_host)
        )
        .await,
        (StatusCode::FORBIDDEN, "host_not_allowed".into())
    );
    assert_eq!(
        code_of(
            http.post(api.url(&format!("/api/async/task/{failed}/retry")))
                .header("host", &rebound_host)
                .header("origin", format!("http://{rebound_host}"))
                .json(&json!({}))
        )
        .await,
        (StatusCode::FORBIDDEN, "host_not_allowed".into())
    );
    assert_eq!(state_of(&broker, &failed).await, Some(TaskState::Failed));

    // The API's own page: same origin, JSON (or the dashboard's header).
    let (status, code) = code_of(
        http.post(api.url(&format!("/api/async/task/{failed}/retry")))
            .header("origin", &own_origin)
            .json(&json!({})),
    )
    .await;
    assert_eq!((status, code.as_str()), (StatusCode::ACCEPTED, ""));
    assert_eq!(state_of(&broker, &failed).await, Some(TaskState::Queued));
    let (status, code) = code_of(
        http.delete(api.url(&format!("/api/async/task/{failed}")))
            .header("origin", &own_origin)
            .header("x-ragpool-client", "dashboard"),
    )
    .await;
    assert_eq!((status, code.as_str()), (StatusCode::OK, ""));
    assert_eq!(state_of(&broker, &failed).await, Some(TaskState::Canceled));
    let (status, _) = code_of(
        http.post(api.url("/api/queue/full_query/purge?state=canceled"))
            .header("origin", &own_origin)
            .header("x-ragpool-client", "dashboard"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(state_of(&broker, &failed).await, None);
}

/// The names an operator lists are served with no keys, the origins they list may post;
/// with keys any name is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_hosts_and_origins_are_let_in() {
    let api = ApiProcess::start(&[
        "--allowed-hosts",
        "ragpool-api.ragpool.svc,api.example",
        "--allowed-origins",
        "https://app.example",
    ])
    .await;
    let http = reqwest::Client::new();
    for host in ["ragpool-api.ragpool.svc", "API.example:443", "localhost"] {
        let (status, code) =
            code_of(http.get(api.url("/api/queue/stats")).header("host", host)).await;
        assert_eq!((status, code.as_str()), (StatusCode::OK, ""), "{host}");
    }
    let (status, code) = code_of(
        http.post(api.url("/api/async/query"))
            .header("origin", "https://app.example")
            .json(&json!({ "question": "from the app" })),
    )
    .await;
    assert_eq!((status, code.as_str()), (StatusCode::ACCEPTED, ""));
    let (status, code) = code_of(
        http.get(api.url("/api/queue/stats"))
            .header("host", "evil.example"),
    )
    .await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::FORBIDDEN, "host_not_allowed")
    );

    let keyed = ApiProcess::start(&["--api-keys", "ops:ops-key-0123456789ab:admin"]).await;
    let (status, code) = code_of(
        http.get(keyed.url("/api/queue/stats"))
            .header("host", "any-name.example")
            .bearer_auth("ops-key-0123456789ab"),
    )
    .await;
    assert_eq!((status, code.as_str()), (StatusCode::OK, ""));
}
