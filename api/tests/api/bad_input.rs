//! Bad input and misuse: each case's status and `error.code`.

use ragpool_api::{ApiConfig, Limits, ReservedBudgetArgs};
use ragpool_queue::TaskId;
use ragpool_queue::testing::ServerOptions;
use reqwest::Method;
use serde_json::json;

use crate::support::{PNG_1X1, TestApi, b64, json};

/// A request body in the table.
enum Body {
    None,
    Json(serde_json::Value),
    Raw(&'static str, Vec<u8>),
    Form(Vec<(&'static str, Vec<u8>)>),
}

struct Case {
    name: &'static str,
    method: Method,
    path: String,
    body: Body,
    headers: Vec<(&'static str, String)>,
    status: u16,
    code: &'static str,
}

fn case(
    name: &'static str,
    method: Method,
    path: &str,
    body: Body,
    status: u16,
    code: &'static str,
) -> Case {
    Case {
        name,
        method,
        path: path.to_string(),
        body,
        headers: Vec::new(),
        status,
        code,
    }
}

const QUERY: &str = "/api/async/query";
const IMAGE: &str = "/api/async/analyze-image";
const ANSWER: &str = "/api/async/complete-answer";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_the_right_status_and_code() {
    // Small limits keep the oversized bodies small.
    let config = ApiConfig {
        limits: Limits {
            max_body_bytes: 64 * 1024,
            max_image_bytes: 1024,
            max_question_bytes: 100,
            max_top_k: 20,
            ..Limits::default()
        },
        ..ApiConfig::default()
    };
    let api = TestApi::start_with(config, ServerOptions::default()).await;

    let full_query = api.submit_query("done first").await;
    let finished = api.submit_query("done").await;
    let claimed = api.claim("full_query").await;
    assert_eq!(claimed.task.id.as_str(), full_query);
    api.broker
        .complete(&claimed.lease, &json!({}))
        .await
        .unwrap();
    let claimed = api.claim("full_query").await;
    assert_eq!(claimed.task.id.as_str(), finished);
    api.broker
        .complete(&claimed.lease, &json!({}))
        .await
        .unwrap();
    let unknown = TaskId::new();
    let queued_task = api.submit_query("waiting").await;

    let mut big_png = PNG_1X1.to_vec();
    big_png.resize(2048, 0);
    let text_file = b"just some text, not an image".to_vec();

    let mut cases = vec![
        case(
            "syntax error",
            Method::POST,
            QUERY,
            Body::Raw("application/json", b"{not json".to_vec()),
            400,
            "malformed_json",
        ),
        case(
            "empty body",
            Method::POST,
            QUERY,
            Body::Raw("application/json", Vec::new()),
            400,
            "malformed_json",
        ),
        case(
            "missing question",
            Method::POST,
            QUERY,
            Body::Json(json!({})),
            400,
            "missing_field",
        ),
        case(
            "blank question",
            Method::POST,
            QUERY,
            Body::Json(json!({"question": "   "})),
            400,
            "empty_field",
        ),
        case(
            "question of the wrong type",
            Method::POST,
            QUERY,
            Body::Json(json!({"question": 5})),
            422,
            "invalid_field",
        ),
        case(
            "body not an object",
            Method::POST,
            QUERY,
            Body::Json(json!(["q"])),
            422,
            "invalid_field",
        ),
        case(
            "top_k zero",
            Method::POST,
            QUERY,
            Body::Json(json!({"question": "q", "top_k": 0})),
            422,
            "out_of_range",
        ),
        case(
            "top_k too big",
            Method::POST,
            QUERY,
            Body::Json(json!({"question": "q", "top_k": 21})),
            422,
            "out_of_range",
        ),
        case(
            "top_k negative",
            Method::POST,
            QUERY,
            Body::Json(json!({"question": "q", "top_k": -1})),
            422,
            "invalid_field",
        ),
        case(
            "top_k a string",
            Method::POST,
            QUERY,
            Body::Json(json!({"question": "q", "top_k": "3"})),
            422,
            "invalid_field",
        ),
        case(
            "question too long",
            Method::POST,
            QUERY,
            Body::Json(json!({"question": "x".repeat(101)})),
            413,
            "text_too_large",
        ),
        // A body over the limit is refused before it is read, and a client still sending
        // may see the connection reset: budget.rs sends those over raw sockets.
        case(
            "not JSON at all",
            Method::POST,
            QUERY,
            Body::Raw("text/plain", b"question=q".to_vec()),
            415,
            "unsupported_media_type",
        ),
        case(
            "image and image_url",
            Method::POST,
            QUERY,
            Body::Json(
                json!({"question": "q", "image": b64(PNG_1X1), "image_url": "https://93.184.216.34/a.png"}),
            ),
            422,
            "invalid_field",
        ),
        case(
            "bad base64",
            Method::POST,
            IMAGE,
            Body::Json(json!({"image": "@@not base64@@"})),
            400,
            "bad_base64",
        ),
        case(
            "bad base64 in a query",
            Method::POST,
            QUERY,
            Body::Json(json!({"question": "q", "image": "%%%"})),
            400,
            "bad_base64",
        ),
        case(
            "not an image",
            Method::POST,
            IMAGE,
            Body::Json(json!({"image": b64(&text_file)})),
            415,
            "unsupported_image",
        ),
        case(
            "image over the limit",
            Method::POST,
            IMAGE,
            Body::Json(json!({"image": b64(&big_png)})),
            413,
            "image_too_large",
        ),
        case(
            "empty image",
            Method::POST,
            IMAGE,
            Body::Json(json!({"image": ""})),
            400,
            "empty_field",
        ),
        case(
            "no image at all",
            Method::POST,
            IMAGE,
            Body::Json(json!({"prompt": "p"})),
            400,
            "missing_field",
        ),
        case(
            "image URLs off",
            Method::POST,
            IMAGE,
            Body::Json(json!({"image_url": "https://93.184.216.34/a.png"})),
            422,
            "image_url_disabled",
        ),
        case(
            "uploaded text file",
            Method::POST,
            IMAGE,
            Body::Form(vec![("image", text_file.clone())]),
            415,
            "unsupported_image",
        ),
        case(
            "uploaded image over the limit",
            Method::POST,
            IMAGE,
            Body::Form(vec![("image", big_png.clone())]),
            413,
            "image_too_large",
        ),
        case(
            "form without image",
            Method::POST,
            IMAGE,
            Body::Form(vec![("prompt", b"p".to_vec())]),
            400,
            "missing_field",
        ),
        case(
            "prompt not UTF-8 in JSON",
            Method::POST,
            IMAGE,
            Body::Raw(
                "application/json",
                [
                    &br#"{"image":""#[..],
                    b64(PNG_1X1).as_bytes(),
                    b"\",\"prompt\":\"\xff\xfe\"}",
                ]
                .concat(),
            ),
            400,
            "malformed_json",
        ),
        case(
            "uploaded prompt not UTF-8",
            Method::POST,
            IMAGE,
            Body::Form(vec![
                ("image", PNG_1X1.to_vec()),
                ("prompt", vec![b'o', b'k', 0xff, 0xfe]),
            ]),
            400,
            "malformed_multipart",
        ),
        case(
            "multipart without boundary",
            Method::POST,
            IMAGE,
            Body::Raw("multipart/form-data", b"x".to_vec()),
            400,
            "malformed_multipart",
        ),
        case(
            "context task unknown",
            Method::POST,
            ANSWER,
            Body::Json(json!({"question": "q", "context": unknown.to_string()})),
            422,
            "invalid_context",
        ),
        case(
            "context task not an image analysis",
            Method::POST,
            ANSWER,
            Body::Json(json!({"question": "q", "context": full_query.clone()})),
            422,
            "invalid_context",
        ),
        case(
            "malformed task id",
            Method::GET,
            "/api/async/task/not-a-uuid",
            Body::None,
            400,
            "invalid_task_id",
        ),
        case(
            "malformed id on cancel",
            Method::DELETE,
            "/api/async/task/1234",
            Body::None,
            400,
            "invalid_task_id",
        ),
        case(
            "malformed id on events",
            Method::GET,
            "/api/async/task/zz/events",
            Body::None,
            400,
            "invalid_task_id",
        ),
        case(
            "unknown task",
            Method::GET,
            &format!("/api/async/task/{unknown}"),
            Body::None,
            404,
            "not_found",
        ),
        case(
            "cancel unknown",
            Method::DELETE,
            &format!("/api/async/task/{unknown}"),
            Body::None,
            404,
            "not_found",
        ),
        case(
            "retry unknown",
            Method::POST,
            &format!("/api/async/task/{unknown}/retry"),
            Body::None,
            404,
            "not_found",
        ),
        case(
            "events of unknown",
            Method::GET,
            &format!("/api/async/task/{unknown}/events"),
            Body::None,
            404,
            "not_found",
        ),
        case(
            "retry a queued task",
            Method::POST,
            &format!("/api/async/task/{queued_task}/retry"),
            Body::None,
            409,
            "wrong_state",
        ),
        case(
            "retry a finished task",
            Method::POST,
            &format!("/api/async/task/{finished}/retry"),
            Body::None,
            409,
            "wrong_state",
        ),
        case(
            "cancel a finished task",
            Method::DELETE,
            &format!("/api/async/task/{finished}"),
            Body::None,
            409,
            "wrong_state",
        ),
        case(
            "wait too long",
            Method::GET,
            &format!("/api/async/task/{queued_task}?wait=61"),
            Body::None,
            422,
            "out_of_range",
        ),
        case(
            "wait not a number",
            Method::GET,
            &format!("/api/async/task/{queued_task}?wait=soon"),
            Body::None,
            422,
            "invalid_field",
        ),
        case(
            "unknown path",
            Method::GET,
            "/api/async/nothing",
            Body::None,
            404,
            "not_found",
        ),
        case(
            "wrong method",
            Method::PUT,
            QUERY,
            Body::None,
            405,
            "method_not_allowed",
        ),
    ];
    let mut long_key = case(
        "idempotency key too long",
        Method::POST,
        QUERY,
        Body::Json(json!({"question": "q"})),
        400,
        "invalid_header",
    );
    long_key.headers.push(("Idempotency-Key", "k".repeat(256)));
    cases.push(long_key);

    let mut failures = Vec::new();
    for c in cases {
        let mut request = api.req(c.method.clone(), &c.path);
        for (name, value) in &c.headers {
            request = request.header(*name, value);
        }
        request = match c.body {
            Body::None => request,
            Body::Json(v) => request.json(&v),
            Body::Raw(content_type, bytes) => {
                request.header("content-type", content_type).body(bytes)
            }
            Body::Form(fields) => {
                let mut form = reqwest::multipart::Form::new();
                for (name, bytes) in fields {
                    form = form.part(name, reqwest::multipart::Part::bytes(bytes).file_name("f"));
                }
                request.multipart(form)
            }
        };
        let r = request.send().await.unwrap();
        let content_type = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string());
        let (status, body) = json(r).await;
        let code = body["error"]["code"].as_str().unwrap_or("<no error code>");
        let has_message = body["error"]["message"].is_string();
        if status != c.status
            || code != c.code
            || !has_message
            || content_type.as_deref() != Some("application/json")
        {
            failures.push(format!(
                "{}: expected {} {}, got {} {} ({:?}) {}",
                c.name, c.status, c.code, status, code, content_type, body
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));

    // None of the refused submissions left a task behind.
    let total: u64 = api
        .broker
        .stats()
        .await
        .unwrap()
        .iter()
        .map(|q| q.total_enqueued)
        .sum();
    assert_eq!(total, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_image_urls_do_not_reveal_what_a_host_resolves_to() {
    let config = ApiConfig {
        allow_image_urls: true,
        ..ApiConfig::default()
    };
    let api = TestApi::start_with(config, ServerOptions::default()).await;
    // `localhost` stands for any internal name: its refusal must not map it to an address.
    for url in ["https://localhost/x.png", "https://0x7f000001/x.png"] {
        let r = api
            .post(IMAGE)
            .json(&json!({ "image_url": url }))
            .send()
            .await
            .unwrap();
        let (status, body) = json(r).await;
        assert_eq!(status, 422, "{url}: {body}");
        assert_eq!(body["error"]["code"], "image_url_refused", "{url}");
        let message = body["error"]["message"].as_str().unwrap();
        assert_eq!(
            message, "image_url host resolves to a non-public address",
            "{url}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_request_ids_are_replaced_and_results_are_not_cached() {
    let api = TestApi::start().await;
    let echoed = |r: &reqwest::Response| r.headers()["x-request-id"].to_str().unwrap().to_owned();
    let fit = "r".repeat(128);
    let r = api
        .get("/healthz")
        .header("x-request-id", &fit)
        .send()
        .await
        .unwrap();
    assert_eq!(echoed(&r), fit);
    // Too long (a 60 KB id was copied into the response and every log line) or not visible
    // ASCII: a fresh UUID instead.
    for odd in ["r".repeat(129), "x".repeat(60_000), "a b".to_owned()] {
        let r = api
            .get("/healthz")
            .header("x-request-id", &odd)
            .send()
            .await
            .unwrap();
        let id = echoed(&r);
        assert!(id.parse::<TaskId>().is_ok(), "{} chars: {id}", odd.len());
    }

    let r = api
        .post(QUERY)
        .json(&json!({"question": "q"}))
        .send()
        .await
        .unwrap();
    let (status, body) = json(r).await;
    assert_eq!(status, 202, "{body}");
    let task = body["task_id"].as_str().unwrap().to_owned();
    for path in [
        format!("/api/async/task/{task}"),
        format!("/api/async/task/{task}/events"),
    ] {
        let r = api.get(&path).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.headers()["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(r.headers()["cache-control"], "no-store", "{path}");
    }
}

/// The API's gauge of submission bytes in flight, from `/metrics`.
async fn bytes_in_flight(api: &TestApi) -> i64 {
    let text = api
        .get("/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("ragpool_api_submission_reserved_bytes "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the gauge is exported")
}

/// Waits until the gauge reads `bytes`: the server has (or no longer has) the reservation.
async fn until_in_flight(api: &TestApi, bytes: i64) {
    for _ in 0..1000 {
        if bytes_in_flight(api).await == bytes {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("submission bytes in flight never reached {bytes}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submissions_past_the_reserved_budget_get_503_with_retry_after() {
    use tokio::io::AsyncWriteExt as _;

    let config = ApiConfig {
        limits: Limits {
            max_body_bytes: 64 * 1024,
            reserved: ReservedBudgetArgs::new(64 * 1024, 50),
            ..Limits::default()
        },
        ..ApiConfig::default()
    };
    let api = TestApi::start_with(config, ServerOptions::default()).await;
    // A slow client announces a 60 000-byte body and sends none of it yet: its reservation
    // is held while the server waits for the body.
    let addr = api.base.trim_start_matches("http://").to_string();
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(
        format!(
            "POST {QUERY} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             Content-Length: 60000\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    // Six times 60 000 bytes is more than the whole budget: it holds all of it.
    until_in_flight(&api, 64 * 1024).await;

    let big = json!({"question": "q", "pad": "x".repeat(10_000)});
    let r = api.post(QUERY).json(&big).send().await.unwrap();
    let retry_after = r.headers().get("retry-after").cloned();
    let (status, body) = json(r).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "over_capacity");
    assert_eq!(retry_after.as_ref().map(|v| v.to_str().unwrap()), Some("1"));
    // Requests without a body are not held back.
    let r = api.get("/healthz").send().await.unwrap();
    assert_eq!(r.status(), 200);

    // The slow client gives up; its reservation is given back.
    drop(slow);
    until_in_flight(&api, 0).await;
    let r = api.post(QUERY).json(&big).send().await.unwrap();
    let (status, body) = json(r).await;
    assert_eq!(status, 202, "{body}");
}
