//! JSON over HTTP to model and RAG servers, with the retry policy both remote backends share.
//!
//! Classification: 2xx with a JSON body is success; 408, 429 and 5xx, connection errors and
//! timeouts are retried here a bounded number of times (honouring `Retry-After`) and then
//! reported as retryable so the queue can try again later; any other status is permanent and
//! carries the server's own error message.
//!
//! A request may ask for a streamed answer ([`JsonClient::post_streamed`]): a response in a
//! streamed framing is read piece by piece ([`super::streaming`]), any other as JSON. Once a
//! piece of answer text has reached the task, a failure is not retried here: the task's
//! next attempt starts the answer again, under its own attempt number.

use std::time::{Duration, Instant, SystemTime};

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use serde_json::Value;

use super::config::{RetryPolicy, SecretString};
use super::context::TaskContext;
use super::error::{BackendError, BuildError, kinds};
use super::gate::{CallOutcome, CallReport};
use super::streaming::{self, Framing, Shape, StreamError};

/// Longest error body quoted in a message.
const MAX_QUOTED: usize = 500;

/// Posts JSON and reads JSON, retrying what may pass.
#[derive(Debug, Clone)]
pub(crate) struct JsonClient {
    client: reqwest::Client,
    retry: RetryPolicy,
    bearer: Option<SecretString>,
    /// Names the server in messages: "model server", "RAG service".
    peer: &'static str,
}

impl JsonClient {
    pub fn new(
        peer: &'static str,
        timeout: Duration,
        retry: RetryPolicy,
        bearer: Option<SecretString>,
    ) -> Result<Self, BuildError> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(BuildError::Client)?;
        Ok(Self {
            client,
            retry,
            bearer,
            peer,
        })
    }

    /// POSTs a model request estimated to use `tokens` model tokens (for the pool's
    /// tokens-per-minute budget) and returns the JSON response. Each request, retries
    /// included, passes the task's call gate, if it has one.
    pub async fn post_metered(
        &self,
        url: &str,
        body: &Value,
        cx: &TaskContext,
        tokens: u32,
    ) -> Result<Value, BackendError> {
        self.send(url, body, &[], cx, tokens, None).await
    }

    /// [`JsonClient::post_with_headers`] for a request whose answer may come as a stream of
    /// `shape` pieces; returns the JSON the pieces add up to (or the JSON answer, when the
    /// server did not stream). `tokens` as for [`JsonClient::post_metered`].
    pub async fn post_streamed(
        &self,
        url: &str,
        body: &Value,
        headers: &[(&'static str, String)],
        cx: &TaskContext,
        tokens: u32,
        shape: Shape,
    ) -> Result<Value, BackendError> {
        self.send(url, body, headers, cx, tokens, Some(shape)).await
    }

    /// POSTs `body` to `url` with extra request headers and returns the JSON response,
    /// through the task's call gate like [`JsonClient::post_metered`].
    pub async fn post_with_headers(
        &self,
        url: &str,
        body: &Value,
        headers: &[(&'static str, String)],
        cx: &TaskContext,
    ) -> Result<Value, BackendError> {
        self.send(url, body, headers, cx, 0, None).await
    }

    /// Posts with retries, each request through the task's call gate.
    async fn send(
        &self,
        url: &str,
        body: &Value,
        headers: &[(&'static str, String)],
        cx: &TaskContext,
        tokens: u32,
        shape: Option<Shape>,
    ) -> Result<Value, BackendError> {
        let mut retries = 0;
        loop {
            let received = cx.answer_text().received();
            let err = match self.gated_post(url, body, headers, cx, tokens, shape).await {
                Ok(value) => return Ok(value),
                Err(err) => err,
            };
            if cx.answer_text().received() != received {
                // Part of an answer went out already: the queue's next attempt starts over.
                return Err(err);
            }
            let BackendError::Retryable {
                kind,
                message,
                retry_after,
            } = err
            else {
                return Err(err);
            };
            let wait = retry_after.unwrap_or_else(|| self.backoff(retries));
            let max_wait = Duration::from_secs(self.retry.max_wait_secs);
            if retries >= self.retry.max_retries || wait > max_wait {
                // Give the wait to the queue rather than sleeping on a leased slot.
                return Err(BackendError::Retryable {
                    kind,
                    message,
                    retry_after,
                });
            }
            retries += 1;
            // The URL stays out of the log like out of the task: the peer's name says which.
            tracing::debug!(peer = self.peer, %kind, %message, ?wait, retries, "retrying request");
            // A server's Retry-After paused the whole pool through the gate, which waits it
            // out before the next call; waiting here as well would wait twice.
            if !(cx.gate().is_some() && retry_after.is_some()) {
                tokio::time::sleep(wait).await;
            }
        }
    }

    /// One request, through the task's call gate when it has one.
    async fn gated_post(
        &self,
        url: &str,
        body: &Value,
        headers: &[(&'static str, String)],
        cx: &TaskContext,
        tokens: u32,
        shape: Option<Shape>,
    ) -> Result<Value, BackendError> {
        let Some(gate) = cx.gate() else {
            return self.post_once(url, body, headers, cx, shape).await.0;
        };
        let pass = gate.enter(tokens).await?;
        let started = Instant::now();
        let (result, outcome) = self.post_once(url, body, headers, cx, shape).await;
        let pause = match (&result, outcome) {
            (Err(e), CallOutcome::Overloaded) => e.retry_after(),
            _ => None,
        };
        let tokens_used = result
            .as_ref()
            .ok()
            .and_then(|v| v["usage"]["total_tokens"].as_u64())
            .map(|t| u32::try_from(t).unwrap_or(u32::MAX));
        pass.finish(CallReport {
            outcome,
            latency: started.elapsed(),
            pause,
            tokens_used,
        })
        .await;
        result
    }

    fn backoff(&self, retries: u32) -> Duration {
        Duration::from_millis(self.retry.backoff_ms.saturating_mul(1 << retries.min(16)))
    }

    /// One request and what it says about the server's load: a 429, 503 or 504 or a timeout
    /// is [`CallOutcome::Overloaded`].
    async fn post_once(
        &self,
        url: &str,
        body: &Value,
        headers: &[(&'static str, String)],
        cx: &TaskContext,
        shape: Option<Shape>,
    ) -> (Result<Value, BackendError>, CallOutcome) {
        // One span per request, retries included; the server receives it as `traceparent`.
        let span = tracing::info_span!("backend request", otel.kind = "client", peer = self.peer);
        match tracing::Instrument::instrument(self.request(url, body, headers, cx, shape), span)
            .await
        {
            Ok(value) => (Ok(value), CallOutcome::Succeeded),
            Err((e, overloaded)) => {
                let outcome = if overloaded {
                    CallOutcome::Overloaded
                } else {
                    CallOutcome::Other
                };
                (Err(e), outcome)
            }
        }
    }

    /// One request; a failure says whether it was a sign of overload.
    async fn request(
        &self,
        url: &str,
        body: &Value,
        headers: &[(&'static str, String)],
        cx: &TaskContext,
        shape: Option<Shape>,
    ) -> Result<Value, (BackendError, bool)> {
        let mut request = self.client.post(url).json(body);
        if shape.is_some() {
            request = request.header(reqwest::header::ACCEPT, streaming::ACCEPT_STREAM);
        }
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        // The server joins the task's trace, as a child of this request's span.
        let mut trace = HeaderMap::new();
        ragpool_runtime::telemetry::inject_headers(&mut trace);
        if !trace.is_empty() {
            request = request.headers(trace);
        }
        if let Some(key) = &self.bearer {
            request = request.bearer_auth(key.expose());
        }
        let failed = |what, e: reqwest::Error| {
            let overloaded = e.is_timeout();
            (self.unavailable(what, e), overloaded)
        };
        let response = request
            .send()
            .await
            .map_err(|e| failed("could not be reached", e))?;
        let status = response.status();
        let retry_after = retry_after(response.headers());
        if let (true, Some(shape), Some(framing)) =
            (status.is_success(), shape, Framing::of(response.headers()))
        {
            return streaming::read(response.bytes_stream(), framing, shape, self.peer, cx)
                .await
                .map_err(|e| match e {
                    StreamError::Transfer(e) => failed("did not send its whole answer", e),
                    StreamError::Backend(e) => (e, false),
                });
        }
        let text = response
            .text()
            .await
            .map_err(|e| failed("did not send its whole answer", e))?;
        if status.is_success() {
            return serde_json::from_str(&text).map_err(|e| {
                let e = BackendError::permanent(
                    kinds::MODEL_ERROR,
                    format!(
                        "the {} answered {status} with a body that is not JSON ({e}): {}",
                        self.peer,
                        quote(&text)
                    ),
                );
                (e, false)
            });
        }
        let message = format!(
            "the {} answered {status}: {}",
            self.peer,
            error_message(&text)
        );
        let overloaded = matches!(
            status,
            StatusCode::TOO_MANY_REQUESTS
                | StatusCode::SERVICE_UNAVAILABLE
                | StatusCode::GATEWAY_TIMEOUT
        );
        let e = match status {
            StatusCode::TOO_MANY_REQUESTS => {
                BackendError::retryable(kinds::RATE_LIMITED, message, retry_after)
            }
            StatusCode::REQUEST_TIMEOUT => {
                BackendError::retryable(kinds::BACKEND_UNAVAILABLE, message, retry_after)
            }
            s if s.is_server_error() => {
                BackendError::retryable(kinds::BACKEND_UNAVAILABLE, message, retry_after)
            }
            StatusCode::BAD_REQUEST
            | StatusCode::PAYLOAD_TOO_LARGE
            | StatusCode::UNPROCESSABLE_ENTITY => BackendError::bad_input(message),
            _ => BackendError::permanent(kinds::MODEL_ERROR, message),
        };
        Err((e, overloaded))
    }
}

impl JsonClient {
    /// A transfer that failed, for the task: the kind of failure, never the server's URL,
    /// host or credentials (a submitter reads task errors). The log keeps the cause in full,
    /// still without the URL.
    fn unavailable(&self, what: &str, e: reqwest::Error) -> BackendError {
        let e = e.without_url();
        let message = format!("the {} {what}: {}", self.peer, transfer_cause(&e));
        tracing::debug!(cause = %error_chain(&e), "{message}");
        BackendError::retryable(kinds::BACKEND_UNAVAILABLE, message, None)
    }
}

/// Why a transfer failed, in words that name no address: `timed out`, the I/O error's kind
/// (`connection refused`, `connection reset`…) or a plain description.
pub(crate) fn transfer_cause(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out".into();
    }
    let mut io_kind = None;
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            io_kind = Some(io.kind());
        }
        source = s.source();
    }
    match io_kind {
        Some(kind) if kind != std::io::ErrorKind::Other => kind.to_string(),
        _ if e.is_connect() => "the connection failed".into(),
        _ if e.is_body() || e.is_decode() => "the response was cut off".into(),
        _ => "the request failed".into(),
    }
}

/// `Retry-After` as delay-seconds or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// The human part of an error body: OpenAI's `error.message`, FastAPI's `detail`, or the text.
fn error_message(body: &str) -> String {
    let from_json = serde_json::from_str::<Value>(body).ok().and_then(|v| {
        let candidates = [
            v.pointer("/error/message"),
            v.get("error"),
            v.get("message"),
            v.get("detail"),
            v.pointer("/detail/0/msg"),
        ];
        candidates
            .into_iter()
            .flatten()
            .find_map(|m| m.as_str().map(str::to_owned))
    });
    match from_json {
        Some(m) => quote(&m),
        None if body.trim().is_empty() => "(empty body)".to_owned(),
        None => quote(body),
    }
}

fn quote(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(MAX_QUOTED) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// reqwest's top-level message is often just "error sending request"; the cause says why.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(
            retry_after(&h),
            Some(Duration::ZERO),
            "a past date means now"
        );
        h.insert(RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn error_messages_come_from_common_shapes() {
        assert_eq!(
            error_message(r#"{"error":{"message":"model not found"}}"#),
            "model not found"
        );
        assert_eq!(error_message(r#"{"detail":"bad field"}"#), "bad field");
        assert_eq!(
            error_message(r#"{"detail":[{"msg":"x required"}]}"#),
            "x required"
        );
        assert_eq!(error_message("plain words"), "plain words");
        assert_eq!(error_message(""), "(empty body)");
    }
}
