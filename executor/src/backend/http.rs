//! A backend that forwards each task to an existing RAG HTTP service.
//!
//! This is the "slow synchronous endpoint made asynchronous" case: the task's payload JSON is
//! POSTed and the service's JSON response becomes the task's result. What the queue adds is
//! durability, retries and scaling; the service's contract stays its own.
//!
//! One field is changed on the way: an `image_url` was chosen by the submitter, and a service
//! that fetched it would do so from inside the cluster with no checks. So by default the
//! executor fetches it itself ([`super::fetch`]: public addresses only, pinned, redirects
//! re-checked, capped) and sends the bytes as `image` (base64) instead;
//! [`HttpConfig::forward_image_urls`] sends the URL as it is, for a service that checks URLs
//! itself.
//!
//! Answers (`complete_answer` and `full_query`) may come as a stream: the request accepts
//! `text/event-stream` and `application/x-ndjson`, and each event is a JSON object —
//! `{"delta": "…"}` appends answer text (passed on to the task as it arrives),
//! `{"result": {…}}` is the task's result, `{"error": "…"}` fails the attempt. Without a
//! `result` the result is `{"answer": <the deltas joined, trimmed>}`. A plain JSON response is
//! the result, as before.
//!
//! A task may run more than once (its executor died after the service answered, or the answer
//! could not be stored), so each request names the task and attempt in [`TASK_ID_HEADER`] and
//! [`ATTEMPT_HEADER`]: a service with side effects can deduplicate on the task id.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use ragpool_queue::TaskKind;
use ragpool_queue::payload::{AnalyzeImage, CompleteAnswer, FullQuery};
use serde::Serialize;
use serde_json::Value;

use super::Backend;
use super::config::HttpConfig;
use super::context::TaskContext;
use super::error::{BackendError, BuildError};
use super::fetch::ImageFetcher;
use super::input;
use super::streaming::Shape;
use super::transport::JsonClient;

/// The id of the task a request runs.
pub const TASK_ID_HEADER: &str = "x-ragpool-task-id";
/// The attempt of that task, 1 for the first; a higher one is a re-delivery.
pub const ATTEMPT_HEADER: &str = "x-ragpool-attempt";

/// See the module documentation.
#[derive(Debug)]
pub struct HttpBackend {
    client: JsonClient,
    /// Where each kind's tasks go, one URL per kind.
    urls: HashMap<TaskKind, String>,
    /// `None` when `image_url` is forwarded as it is.
    fetcher: Option<ImageFetcher>,
}

impl HttpBackend {
    pub fn new(config: &HttpConfig) -> Result<Self, BuildError> {
        let base = configured_url("the RAG service's base URL", &config.base_url)?;
        let mut urls = HashMap::new();
        for kind in TaskKind::ALL {
            let path = kind.descriptor().backend_path;
            let url = match config.url_override(kind) {
                Some(u) => configured_url(&format!("the RAG service's {path} URL"), u)?.to_owned(),
                None => format!("{base}/{path}"),
            };
            urls.insert(kind, url);
        }
        Ok(Self {
            urls,
            fetcher: (!config.forward_image_urls).then(|| ImageFetcher::new(&config.fetch)),
            client: JsonClient::new(
                "RAG service",
                Duration::from_secs(config.timeout_secs),
                config.retry.clone(),
                None,
            )?,
        })
    }

    /// The `(image, image_url)` to send: an `image_url` is fetched and inlined unless URLs
    /// are forwarded.
    async fn image_fields(
        &self,
        image: &Option<String>,
        image_url: &Option<String>,
    ) -> Result<(Option<String>, Option<String>), BackendError> {
        match (&self.fetcher, image_url) {
            (Some(fetcher), Some(_)) => {
                let bytes =
                    input::image_bytes(image.as_deref(), image_url.as_deref(), fetcher).await?;
                let encoded = bytes.map(|b| base64::engine::general_purpose::STANDARD.encode(b));
                Ok((encoded, None))
            }
            _ => Ok((image.clone(), image_url.clone())),
        }
    }

    /// POSTs a task of `kind` to that kind's URL; with `stream` the answer may come as a
    /// stream.
    async fn forward(
        &self,
        kind: TaskKind,
        payload: &impl Serialize,
        stream: bool,
        cx: &TaskContext,
    ) -> Result<Value, BackendError> {
        let url = &self.urls[&kind];
        let body = serde_json::to_value(payload)
            .map_err(|e| BackendError::internal(format!("encoding the payload: {e}")))?;
        let headers: Vec<(&'static str, String)> = match cx.task() {
            Some((id, attempt)) => vec![
                (TASK_ID_HEADER, id.to_string()),
                (ATTEMPT_HEADER, attempt.to_string()),
            ],
            None => Vec::new(),
        };
        if stream {
            self.client
                .post_streamed(url, &body, &headers, cx, 0, Shape::Rag)
                .await
        } else {
            self.client
                .post_with_headers(url, &body, &headers, cx)
                .await
        }
    }
}

#[async_trait]
impl Backend for HttpBackend {
    async fn analyze_image(
        &self,
        req: &AnalyzeImage,
        cx: &TaskContext,
    ) -> Result<Value, BackendError> {
        let (image, image_url) = self.image_fields(&req.image, &req.image_url).await?;
        let req = AnalyzeImage {
            image,
            image_url,
            prompt: req.prompt.clone(),
        };
        self.forward(TaskKind::AnalyzeImage, &req, false, cx).await
    }

    async fn complete_answer(
        &self,
        req: &CompleteAnswer,
        cx: &TaskContext,
    ) -> Result<Value, BackendError> {
        self.forward(TaskKind::CompleteAnswer, req, true, cx).await
    }

    async fn full_query(&self, req: &FullQuery, cx: &TaskContext) -> Result<Value, BackendError> {
        let (image, image_url) = self.image_fields(&req.image, &req.image_url).await?;
        let req = FullQuery {
            image,
            image_url,
            ..req.clone()
        };
        cx.progress(10, "forwarded to the RAG service");
        let result = self.forward(TaskKind::FullQuery, &req, true, cx).await?;
        cx.progress(100, "done");
        Ok(result)
    }
}

/// `url` without a trailing slash, if it is an absolute http(s) URL. The error says what is
/// wrong without repeating any of the URL: it may carry credentials, and even a scheme or a
/// fragment of a mistyped one can be a password.
pub(crate) fn checked_base_url(url: &str) -> Result<&str, String> {
    let trimmed = url.trim().trim_end_matches('/');
    let parsed = reqwest::Url::parse(trimmed).map_err(|e| format!("is not a URL ({e})"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("must be an http or https URL".into());
    }
    Ok(trimmed)
}

/// [`checked_base_url`] for one of the backend's URLs, named in the error as `what`.
pub(crate) fn configured_url<'a>(what: &str, url: &'a str) -> Result<&'a str, BuildError> {
    checked_base_url(url).map_err(|why| BuildError::Config(format!("{what} {why}")))
}
