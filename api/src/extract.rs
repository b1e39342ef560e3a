//! Request extractors whose failures are API errors: a submission's body (admitted to the
//! submission budget, refused at once when its declared length is over the limit, read within
//! the body deadline), a JSON body that tells malformed JSON (400) from a field of the wrong
//! type (422), the task id in the path, and the `Idempotency-Key` header.

use std::time::Duration;

use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use ragpool_queue::TaskId;
use serde::de::{DeserializeOwned, IgnoredAny};

use crate::auth::Caller;
use crate::budget::{COPIES, OverBudget, Reservation};
use crate::error::{ApiError, ExpectedOutage};
use crate::state::AppState;

/// Longest accepted `Idempotency-Key`.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// A JSON request body. Needs `Content-Type: application/json` (or `+json`). Holds its
/// share of the submission budget until dropped: keep it bound (`JsonBody(body, _held)`) for
/// as long as the submission is handled.
pub struct JsonBody<T>(pub T, pub Reservation);

impl<T> FromRequest<AppState> for JsonBody<T>
where
    T: DeserializeOwned,
{
    type Rejection = BodyRejection;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, BodyRejection> {
        let (bytes, held) = json_bytes(req, state).await?;
        Ok(JsonBody(parse_json(&bytes)?, held))
    }
}

/// A JSON request's body, read under its reservation of the submission budget.
async fn json_bytes(
    req: Request,
    state: &AppState,
) -> Result<(Vec<u8>, Reservation), BodyRejection> {
    if !is_json(req.headers()) {
        return Err(unsupported_media_type("application/json").into());
    }
    let held = admit(&req, state, COPIES)?;
    Ok((read_body(req, state).await?, held))
}

/// A request whose JSON may carry a large inline `image` (base64): [`ImageJsonBody`] moves
/// the image out of the body's buffer into this field, rather than copying it.
pub trait InlineImage {
    fn image_mut(&mut self) -> &mut Option<String>;
}

/// [`JsonBody`] for a request with an inline image (see [`parse_json_with_image`]): the
/// image is held once, in the buffer the body was read into.
pub struct ImageJsonBody<T>(pub T, pub Reservation);

impl<T> FromRequest<AppState> for ImageJsonBody<T>
where
    T: DeserializeOwned + InlineImage,
{
    type Rejection = BodyRejection;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, BodyRejection> {
        let (bytes, held) = json_bytes(req, state).await?;
        Ok(ImageJsonBody(parse_json_with_image(bytes)?, held))
    }
}

/// Why a body was not taken: an [`ApiError`], or a budget refusal logged as an outage.
pub struct BodyRejection(Box<Response>);

impl From<ApiError> for BodyRejection {
    fn from(e: ApiError) -> Self {
        BodyRejection(Box::new(e.into_response()))
    }
}

impl IntoResponse for BodyRejection {
    fn into_response(self) -> Response {
        *self.0
    }
}

/// The length a request declares in `Content-Length`; `None` when it declares none (a
/// chunked body). hyper refuses a malformed length before a handler runs.
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Admits a request's body to the submission budget: refuses at once (413) a body declared
/// over `--max-body-bytes`, then reserves `copies` times its declared length (the body limit
/// for a body of unknown length) under the caller's key. Runs after authentication: the
/// `Caller` extractor leaves the caller in the request's extensions.
pub fn admit(req: &Request, state: &AppState, copies: usize) -> Result<Reservation, BodyRejection> {
    let max = state.limits().max_body_bytes;
    let body = match declared_length(req.headers()) {
        Some(n) if n > max as u64 => return Err(body_too_large().into()),
        Some(n) => usize::try_from(n).unwrap_or(max),
        None => max,
    };
    let key = req
        .extensions()
        .get::<Caller>()
        .and_then(|c| c.name.as_deref());
    state
        .submission_budget()
        .try_reserve(body.saturating_mul(copies), key)
        .map_err(refused)
}

/// The answer to a reservation that does not fit, marked as an outage the service chose so
/// it is logged at WARN, rate-limited.
fn refused(over: OverBudget) -> BodyRejection {
    let error = match over {
        OverBudget::Full { .. } => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "over_capacity",
            "too many large submissions are in progress; try again shortly",
        ),
        OverBudget::KeyShare { .. } => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "over_key_share",
            "this key's submissions in progress hold its share of the server's capacity; \
             try again shortly",
        ),
    };
    let mut response = error.into_response();
    response.extensions_mut().insert(ExpectedOutage {
        what: "submission budget full",
        cause: over.to_string(),
    });
    BodyRejection(Box::new(response))
}

/// Reads a whole body into one buffer sized by its `Content-Length`, within
/// `--max-body-bytes` and the body deadline: the body is held once, not collected in pieces
/// and copied together.
pub async fn read_body(req: Request, state: &AppState) -> Result<Vec<u8>, ApiError> {
    let limits = state.limits();
    let max = limits.max_body_bytes;
    let capacity = declared_capacity(req.headers(), state);
    let mut stream = req.into_body().into_data_stream();
    let read = async {
        let mut bytes = Vec::with_capacity(capacity);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("reading the body failed: {e}"),
                )
            })?;
            if bytes.len() + chunk.len() > max {
                return Err(body_too_large());
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    };
    within_deadline(limits.body_deadline(), read).await?
}

/// The buffer to read a body into: its declared length, within `--max-body-bytes`; none
/// for a body of unknown length.
pub fn declared_capacity(headers: &HeaderMap, state: &AppState) -> usize {
    let max = state.limits().max_body_bytes;
    declared_length(headers).map_or(0, |n| usize::try_from(n).unwrap_or(max).min(max))
}

/// Runs a body read within `deadline`: a body must arrive whole in that time, however
/// steadily it trickles.
pub async fn within_deadline<T>(
    deadline: Duration,
    read: impl Future<Output = T>,
) -> Result<T, ApiError> {
    tokio::time::timeout(deadline, read).await.map_err(|_| {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!(
                "the request body did not arrive within {} s",
                deadline.as_secs()
            ),
        )
    })
}

/// 413 `body_too_large`.
pub fn body_too_large() -> ApiError {
    ApiError::too_large("body_too_large", "the request body is over the limit")
}

/// Parses a JSON object into `T`: bad syntax is 400 `malformed_json`, a value of the wrong
/// type is 422 `invalid_field` naming the field. Straight into `T`, never through a
/// `serde_json::Value`: fields `T` does not have are skipped unread, so a crafted body
/// (`{"pad": [0,0,0,…]}`) cannot become a tree many times its size.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let starts_object = bytes
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|&b| b == b'{');
    if !starts_object {
        return Err(match serde_json::from_slice::<IgnoredAny>(bytes) {
            Ok(_) => ApiError::invalid_field("the body must be a JSON object"),
            Err(e) => malformed_json(e),
        });
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        if e.inner().is_data() {
            ApiError::invalid_field(format!("{}: {}", e.path(), e.inner()))
        } else {
            malformed_json(e.into_inner())
        }
    })?;
    de.end().map_err(malformed_json)?;
    Ok(value)
}

/// Images shorter than this are parsed as any other field; the buffer games below are for
/// the large ones.
const MOVE_IMAGES_FROM: usize = 64 * 1024;

/// [`parse_json`] for a request with an inline image: an image whose JSON text needs no
/// unescaping (base64 never does) is not copied out of the body but becomes the body's own
/// buffer, the rest of the body moved out of its way; the other fields are parsed from a
/// copy of the body without it. Anything else (no image, a short one, an escaped one, a
/// body that does not parse) is parsed as [`parse_json`] does, with the same answers.
pub fn parse_json_with_image<T>(body: Vec<u8>) -> Result<T, ApiError>
where
    T: DeserializeOwned + InlineImage,
{
    #[derive(serde::Deserialize)]
    struct Image<'a> {
        // Only text that needs no unescaping can be borrowed; other text fails here and is
        // parsed the usual way.
        #[serde(borrow, default)]
        image: Option<&'a str>,
    }
    let span = match serde_json::from_slice::<Image<'_>>(&body) {
        Ok(Image { image: Some(text) }) if text.len() >= MOVE_IMAGES_FROM => {
            let start = text.as_ptr() as usize - body.as_ptr() as usize;
            Some(start..start + text.len())
        }
        _ => None,
    };
    let Some(span) = span else {
        return parse_json(&body);
    };
    let mut rest = Vec::with_capacity(body.len() - span.len());
    rest.extend_from_slice(&body[..span.start]);
    rest.extend_from_slice(&body[span.end..]);
    // A refusal is the whole body's, so its positions are the client's.
    let Ok(mut value) = parse_json::<T>(&rest) else {
        drop(rest);
        return parse_json(&body);
    };
    drop(rest);
    let mut image = body;
    image.truncate(span.end);
    image.drain(..span.start);
    // It was a `&str`, so this takes the buffer as it is.
    let image = String::from_utf8(image)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
    *value.image_mut() = Some(image);
    Ok(value)
}

fn malformed_json(e: serde_json::Error) -> ApiError {
    ApiError::malformed_json(format!("the body is not valid JSON: {e}"))
}

/// True for `application/json` and `application/<anything>+json`.
pub fn is_json(headers: &HeaderMap) -> bool {
    media_type(headers).is_some_and(|m| {
        m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
    })
}

/// The media type of the `Content-Type` header, lower-cased, without parameters.
pub fn media_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let media = value.split(';').next()?.trim().to_ascii_lowercase();
    (!media.is_empty()).then_some(media)
}

pub fn unsupported_media_type(expected: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        format!("expected Content-Type: {expected}"),
    )
}

/// The `{task_id}` path segment, checked to be a UUID (400 `invalid_task_id` otherwise).
pub struct TaskIdParam(pub TaskId);

impl<S: Send + Sync> FromRequestParts<S> for TaskIdParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_task_id", e.body_text())
            })?;
        let id: TaskId = raw.parse()?;
        tracing::Span::current().record("task_id", id.as_str());
        Ok(TaskIdParam(id))
    }
}

/// The optional `Idempotency-Key` header: 1 to 255 printable ASCII characters.
pub struct IdempotencyKey(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let Some(value) = parts.headers.get("idempotency-key") else {
            return Ok(IdempotencyKey(None));
        };
        let invalid = || {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_header",
                format!(
                    "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} printable ASCII characters"
                ),
            )
        };
        let key = value.to_str().map_err(|_| invalid())?;
        checked_idempotency_key(key)
            .map(|key| IdempotencyKey(Some(key)))
            .ok_or_else(invalid)
    }
}

/// An idempotency key as given (header or batch item), trimmed, when it is 1 to
/// [`MAX_IDEMPOTENCY_KEY_LEN`] printable ASCII characters.
pub fn checked_idempotency_key(key: &str) -> Option<String> {
    let key = key.trim();
    (!key.is_empty()
        && key.len() <= MAX_IDEMPOTENCY_KEY_LEN
        && key.bytes().all(|b| b.is_ascii_graphic() || b == b' '))
    .then(|| key.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    struct Body {
        #[allow(dead_code)]
        question: Option<String>,
        #[allow(dead_code)]
        top_k: Option<u32>,
    }

    #[test]
    fn json_errors_are_told_apart() {
        let e = parse_json::<Body>(b"{not json").unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (400, "malformed_json"));
        let e = parse_json::<Body>(b"").unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (400, "malformed_json"));
        let e = parse_json::<Body>(br#"{"top_k": "five"}"#).unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (422, "invalid_field"));
        assert!(e.message.starts_with("top_k:"), "{}", e.message);
        let e = parse_json::<Body>(b"[1, 2]").unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (422, "invalid_field"));
        assert!(parse_json::<Body>(br#"{"question": "q", "extra": 1}"#).is_ok());
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct WithImage {
        image: Option<String>,
        prompt: Option<String>,
    }

    impl InlineImage for WithImage {
        fn image_mut(&mut self) -> &mut Option<String> {
            &mut self.image
        }
    }

    #[test]
    fn a_large_image_becomes_the_bodys_buffer() {
        let image = "QUJD".repeat(MOVE_IMAGES_FROM);
        let body = format!(r#" {{"prompt": "p\"q", "image": "{image}", "x": [1]}} "#).into_bytes();
        let at = body.as_ptr();
        let parsed: WithImage = parse_json_with_image(body).unwrap();
        assert_eq!(parsed.prompt.as_deref(), Some("p\"q"));
        assert_eq!(parsed.image.as_deref(), Some(image.as_str()));
        let moved = parsed.image.unwrap_or_default();
        assert_eq!(moved.as_ptr(), at, "moved, not copied");
        // The same answers as `parse_json` otherwise.
        let escaped = format!(r#"{{"image": "\/{image}"}}"#);
        let small = r#"{"image": "QUJD", "prompt": null}"#.to_string();
        let bad = [
            format!(r#"{{"image": "{image}", "prompt": 5}}"#),
            format!(r#"{{"image": "{image}""#),
            format!(r#"{{"image": "{image}"}} x"#),
            format!(r#"{{"image": "{image}", "image": "QUJD"}}"#),
            format!(r#"[{{"image": "{image}"}}]"#),
        ];
        for body in [escaped, small] {
            let parsed: WithImage = parse_json_with_image(body.clone().into_bytes()).unwrap();
            assert_eq!(parsed, parse_json::<WithImage>(body.as_bytes()).unwrap());
        }
        for body in bad {
            let e = parse_json_with_image::<WithImage>(body.clone().into_bytes()).unwrap_err();
            let expected = parse_json::<WithImage>(body.as_bytes()).unwrap_err();
            assert_eq!(
                (e.status, e.code, &e.message),
                (expected.status, expected.code, &expected.message)
            );
        }
    }

    #[test]
    fn recognises_json_media_types() {
        let mut h = HeaderMap::new();
        assert!(!is_json(&h));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("Application/JSON; charset=utf-8"),
        );
        assert!(is_json(&h));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/merge-patch+json"),
        );
        assert!(is_json(&h));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert!(!is_json(&h));
    }
}
