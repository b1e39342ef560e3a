//! A small HTTP client for the ragpool API: one method per endpoint the CLI uses, each
//! returning the API's JSON answer, and errors that say what to fix (the flag, the URL, or
//! the API's own `{"error": {"code", "message"}}`).

use std::time::{Duration, Instant};

use ragpool_queue::TaskKind;
use ragpool_queue::redact::redact;
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;
use serde_json::Value;

/// The API's longest `?wait=N`; longer waits are split into several requests.
pub const MAX_WAIT_PER_REQUEST: u64 = 60;

/// The header that tells the API a request is not a cross-site form.
const CLIENT_HEADER: &str = "x-ragpool-client";

/// The header that makes a retried submission return the same task.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

/// Why a call to the API did not return its JSON answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// `--api-url` is not an http(s) URL.
    #[error("--api-url {url:?} is not a valid http(s) URL: {reason}")]
    BadUrl { url: String, reason: String },

    /// Nothing answered at the API URL (connection refused, DNS, TLS, …).
    #[error(
        "cannot reach the ragpool API at {url} ({reason}); start it with `ragpool dev`, or point \
         --api-url / RAGPOOL_API_URL at a running API"
    )]
    Unreachable { url: String, reason: String },

    /// The API answered with an error status and its error body.
    #[error("the API answered {status}: {code}: {message}")]
    Api {
        status: StatusCode,
        code: String,
        message: String,
    },

    /// The API answered something that is not the JSON it documents.
    #[error("the API at {url} answered {status} with a body that is not the expected JSON: {body}")]
    UnexpectedBody {
        url: String,
        status: StatusCode,
        body: String,
    },

    /// The API refused a batch for bad items (422 `invalid_batch`); nothing of it was queued.
    #[error("the API refused the batch: {message}")]
    InvalidBatch {
        message: String,
        /// Each bad item: its index in the batch sent, its error code and message.
        items: Vec<(usize, String, String)>,
    },

    /// The request failed half-way (timeout, connection reset, …).
    #[error("request to {url} failed: {reason}")]
    Request { url: String, reason: String },
}

impl ClientError {
    /// The HTTP status of an API error, when the API answered one.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Api { status, .. } | ClientError::UnexpectedBody { status, .. } => {
                Some(*status)
            }
            _ => None,
        }
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
    /// A refused batch's bad items.
    #[serde(default)]
    errors: Vec<ItemError>,
}

#[derive(Deserialize)]
struct ItemError {
    index: usize,
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    code: String,
    message: String,
}

/// A JSON answer of the API, parsed, and as sent so it prints with the API's key order.
#[derive(Debug, Clone)]
pub struct Reply {
    pub json: Value,
    raw: String,
}

impl Reply {
    fn parse(raw: String) -> Result<Reply, serde_json::Error> {
        let json = serde_json::from_str(&raw)?;
        Ok(Reply { json, raw })
    }

    /// Indented JSON, keys in the order the API sent them.
    pub fn pretty(&self) -> String {
        let mut out = Vec::new();
        let mut de = serde_json::Deserializer::from_str(&self.raw);
        let mut ser = serde_json::Serializer::pretty(&mut out);
        match serde_transcode::transcode(&mut de, &mut ser) {
            Ok(()) => String::from_utf8(out).unwrap_or_else(|_| self.json.to_string()),
            // `raw` parsed once already, so this is out of reach; fall back to sorted keys.
            Err(_) => serde_json::to_string_pretty(&self.json).unwrap_or_default(),
        }
    }
}

/// A connection to one ragpool API.
#[derive(Debug, Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    base: Url,
    api_key: Option<String>,
}

impl ApiClient {
    /// A client for the API at `base_url`, sending `api_key` as a bearer token when given.
    pub fn new(base_url: &str, api_key: Option<String>) -> Result<Self, ClientError> {
        let bad = |reason: String| ClientError::BadUrl {
            url: redact(base_url),
            reason,
        };
        let mut base = Url::parse(base_url).map_err(|e| bad(e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(bad(format!(
                "scheme {:?} is not http or https",
                base.scheme()
            )));
        }
        if base.cannot_be_a_base() {
            return Err(bad("it cannot hold a path".into()));
        }
        // Paths are appended as segments, so a base path such as `/ragpool` must end in `/`
        // to be kept rather than replaced.
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            // Local development APIs are plain HTTP on loopback; a system proxy would only get
            // in the way, as it does for the executor's fetches.
            .no_proxy()
            .user_agent(concat!("ragpool-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Request {
                url: redact(base.as_str()),
                reason: e.to_string(),
            })?;
        let api_key = api_key.filter(|k| !k.trim().is_empty());
        Ok(ApiClient {
            http,
            base,
            api_key,
        })
    }

    /// The API's base URL.
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// `POST /api/async/analyze-image` with the image bytes (sent as base64 JSON).
    pub async fn analyze_image(
        &self,
        image: &[u8],
        prompt: Option<&str>,
        idempotency_key: Option<&str>,
    ) -> Result<Reply, ClientError> {
        use base64::Engine as _;
        let mut body = serde_json::json!({
            "image": base64::engine::general_purpose::STANDARD.encode(image),
        });
        if let Some(p) = prompt {
            body["prompt"] = Value::from(p);
        }
        self.submit(
            TaskKind::AnalyzeImage.descriptor().api_path,
            body,
            idempotency_key,
        )
        .await
    }

    /// `POST /api/async/complete-answer`. `context` is text, or the id of a finished image
    /// analysis task.
    pub async fn complete_answer(
        &self,
        question: &str,
        context: Option<&str>,
        top_k: Option<u32>,
        idempotency_key: Option<&str>,
    ) -> Result<Reply, ClientError> {
        let mut body = serde_json::json!({ "question": question });
        if let Some(c) = context {
            body["context"] = Value::from(c);
        }
        if let Some(k) = top_k {
            body["top_k"] = Value::from(k);
        }
        self.submit(
            TaskKind::CompleteAnswer.descriptor().api_path,
            body,
            idempotency_key,
        )
        .await
    }

    /// `POST /api/async/query`, with an image (sent as base64) when given.
    pub async fn query(
        &self,
        question: &str,
        image: Option<&[u8]>,
        top_k: Option<u32>,
        idempotency_key: Option<&str>,
    ) -> Result<Reply, ClientError> {
        use base64::Engine as _;
        let mut body = serde_json::json!({ "question": question });
        if let Some(bytes) = image {
            body["image"] = Value::from(base64::engine::general_purpose::STANDARD.encode(bytes));
        }
        if let Some(k) = top_k {
            body["top_k"] = Value::from(k);
        }
        self.submit(
            TaskKind::FullQuery.descriptor().api_path,
            body,
            idempotency_key,
        )
        .await
    }

    async fn submit(
        &self,
        endpoint: &str,
        body: Value,
        idempotency_key: Option<&str>,
    ) -> Result<Reply, ClientError> {
        let url = self.url(&["api", "async", endpoint], None);
        let mut request = self.request(Method::POST, url.clone()).json(&body);
        if let Some(key) = idempotency_key {
            request = request.header(IDEMPOTENCY_KEY_HEADER, key);
        }
        self.send(url, request).await
    }

    /// `POST /api/async/batch` with `tasks` (items as the endpoint takes them), all or
    /// nothing: a refusal for bad items is [`ClientError::InvalidBatch`].
    pub async fn batch(&self, tasks: &[Value]) -> Result<Reply, ClientError> {
        let url = self.url(&["api", "async", "batch"], None);
        let request = self
            .request(Method::POST, url.clone())
            .json(&serde_json::json!({ "tasks": tasks }));
        self.send(url, request).await
    }

    /// The most tasks the API takes in one batch: `maxItems` of the batch's `tasks` in its
    /// OpenAPI document, `None` when the document does not say.
    pub async fn max_batch_tasks(&self) -> Result<Option<usize>, ClientError> {
        let url = self.url(&["openapi.json"], None);
        let request = self.request(Method::GET, url.clone());
        let doc = self.send(url, request).await?;
        Ok(doc
            .json
            .pointer("/components/schemas/BatchRequest/properties/tasks/maxItems")
            .and_then(Value::as_u64)
            .and_then(|n| usize::try_from(n).ok()))
    }

    /// `GET /api/async/task/{id}`, held by the API for up to `wait` seconds (at most
    /// [`MAX_WAIT_PER_REQUEST`]) until the task ends.
    pub async fn task(&self, id: &str, wait: Option<u64>) -> Result<Reply, ClientError> {
        let wait = wait.map(|w| w.min(MAX_WAIT_PER_REQUEST));
        let query = wait.map(|w| format!("wait={w}"));
        let url = self.url(&["api", "async", "task", id], query.as_deref());
        let mut request = self.request(Method::GET, url.clone());
        if let Some(w) = wait {
            // The API holds the request for up to `w` seconds; leave room for the answer.
            request = request.timeout(Duration::from_secs(w + 30));
        }
        self.send(url, request).await
    }

    /// Reads the task, holding requests open until it ends or `wait` seconds have passed in
    /// all; returns its last state.
    pub async fn wait_for_task(&self, id: &str, wait: u64) -> Result<Reply, ClientError> {
        let deadline = Instant::now() + Duration::from_secs(wait);
        loop {
            let left = deadline.saturating_duration_since(Instant::now()).as_secs();
            let task = self.task(id, Some(left)).await?;
            if task_has_ended(&task.json) || left == 0 {
                return Ok(task);
            }
        }
    }

    /// `GET /api/async/task/{id}/events`, resuming after `last_event_id` when given: the open
    /// response, whose body is the event stream.
    pub async fn events(
        &self,
        id: &str,
        last_event_id: Option<&str>,
    ) -> Result<reqwest::Response, ClientError> {
        let url = self.url(&["api", "async", "task", id, "events"], None);
        let mut request = self
            .request(Method::GET, url.clone())
            .header(reqwest::header::ACCEPT, "text/event-stream");
        if let Some(last) = last_event_id {
            request = request.header("last-event-id", last);
        }
        let response = request
            .send()
            .await
            .map_err(|e| self.transport_error(&url, e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let text = response
            .text()
            .await
            .map_err(|e| self.transport_error(&url, e))?;
        Err(error_answer(&url, status, &text))
    }

    /// `GET /api/queue/stats`.
    pub async fn stats(&self) -> Result<Reply, ClientError> {
        let url = self.url(&["api", "queue", "stats"], None);
        let request = self.request(Method::GET, url.clone());
        self.send(url, request).await
    }

    /// `DELETE /api/async/task/{id}`: cancel.
    pub async fn cancel(&self, id: &str) -> Result<Reply, ClientError> {
        let url = self.url(&["api", "async", "task", id], None);
        let request = self.request(Method::DELETE, url.clone());
        self.send(url, request).await
    }

    /// `POST /api/async/task/{id}/retry`: requeue a failed task.
    pub async fn retry(&self, id: &str) -> Result<Reply, ClientError> {
        let url = self.url(&["api", "async", "task", id, "retry"], None);
        let request = self.request(Method::POST, url.clone());
        self.send(url, request).await
    }

    /// The base URL with `segments` appended, each percent-encoded, so a task id can never
    /// reach another path.
    fn url(&self, segments: &[&str], query: Option<&str>) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url.set_query(query);
        url
    }

    fn request(&self, method: Method, url: Url) -> reqwest::RequestBuilder {
        // Says this is no cross-site form: a keyless API takes a bodiless retry or cancel
        // only with it (docs/api.md, "Browsers").
        let request = self.http.request(method, url).header(CLIENT_HEADER, "cli");
        match &self.api_key {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
    }

    async fn send(&self, url: Url, request: reqwest::RequestBuilder) -> Result<Reply, ClientError> {
        let response = request
            .send()
            .await
            .map_err(|e| self.transport_error(&url, e))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| self.transport_error(&url, e))?;
        let unexpected = || ClientError::UnexpectedBody {
            url: redact(url.as_str()),
            status,
            body: shorten(&text),
        };
        if status.is_success() {
            if text.trim().is_empty() {
                // 204 No Content and the like: report the status rather than nothing.
                return Reply::parse(format!("{{\"status\": {}}}", status.as_u16()))
                    .map_err(|_| unexpected());
            }
            return Reply::parse(text.clone()).map_err(|_| unexpected());
        }
        Err(error_answer(&url, status, &text))
    }

    fn transport_error(&self, url: &Url, e: reqwest::Error) -> ClientError {
        // reqwest's message repeats the URL as given, password and all.
        let e = e.without_url();
        let reason = error_chain(&e);
        if e.is_connect() {
            ClientError::Unreachable {
                url: redact(self.base.as_str()),
                reason,
            }
        } else {
            ClientError::Request {
                url: redact(url.as_str()),
                reason,
            }
        }
    }
}

/// The error an API answered with `status` and `text`: its `{"error": …}` body, or the body as
/// it came when it is not one.
fn error_answer(url: &Url, status: StatusCode, text: &str) -> ClientError {
    let unexpected = || ClientError::UnexpectedBody {
        url: redact(url.as_str()),
        status,
        body: shorten(text),
    };
    match serde_json::from_str::<ErrorBody>(text) {
        Ok(body) if body.error.code == "invalid_batch" => ClientError::InvalidBatch {
            message: body.error.message,
            items: body
                .errors
                .into_iter()
                .map(|e| (e.index, e.error.code, e.error.message))
                .collect(),
        },
        Ok(body) => ClientError::Api {
            status,
            code: body.error.code,
            message: body.error.message,
        },
        Err(_) => unexpected(),
    }
}

/// Whether a task as the API shows it is finished, failed or canceled.
pub fn task_has_ended(task: &Value) -> bool {
    matches!(
        task.get("status").and_then(Value::as_str),
        Some("finished" | "failed" | "canceled")
    )
}

/// reqwest's own message is "error sending request"; the cause says what went wrong.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

fn shorten(text: &str) -> String {
    const MAX: usize = 300;
    let text = text.trim();
    if text.len() <= MAX {
        return text.to_owned();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_a_base_path() {
        let c = ApiClient::new("http://example.test:8080/ragpool", None).unwrap();
        let url = c.url(&["api", "queue", "stats"], None);
        assert_eq!(
            url.as_str(),
            "http://example.test:8080/ragpool/api/queue/stats"
        );
    }

    #[test]
    fn task_ids_cannot_escape_their_path() {
        let c = ApiClient::new("http://127.0.0.1:8080", None).unwrap();
        let url = c.url(&["api", "async", "task", "../queue/stats"], Some("wait=5"));
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:8080/api/async/task/..%2Fqueue%2Fstats?wait=5"
        );
    }

    #[test]
    fn rejects_urls_that_are_not_http() {
        let err = ApiClient::new("ftp://example.test", None).unwrap_err();
        assert!(err.to_string().contains("--api-url"), "{err}");
        let err = ApiClient::new("127.0.0.1:8080", None).unwrap_err();
        assert!(err.to_string().contains("--api-url"), "{err}");
    }

    #[test]
    fn ended_states() {
        for (status, ended) in [
            ("queued", false),
            ("started", false),
            ("delayed", false),
            ("finished", true),
            ("failed", true),
            ("canceled", true),
        ] {
            assert_eq!(
                task_has_ended(&serde_json::json!({ "status": status })),
                ended,
                "{status}"
            );
        }
    }

    #[test]
    fn pretty_output_keeps_the_key_order() {
        let reply =
            Reply::parse(r#"{"task_id":"x","status":"queued","a":[1,{"z":1,"b":2}]}"#.into())
                .unwrap();
        let pretty = reply.pretty();
        let order: Vec<usize> = ["task_id", "status", "\"a\"", "\"z\"", "\"b\""]
            .iter()
            .map(|k| pretty.find(k).unwrap())
            .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{pretty}");
        assert!(pretty.contains("\n  \"status\": \"queued\""), "{pretty}");
    }

    #[test]
    fn shortens_on_char_boundaries() {
        let long = "é".repeat(400);
        let short = shorten(&long);
        assert!(short.ends_with('…'));
        assert!(short.len() <= 300 + '…'.len_utf8());
    }
}
