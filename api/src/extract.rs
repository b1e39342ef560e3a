//! Request extractors whose failures are API errors: a JSON body that tells malformed JSON
//! (400) from a field of the wrong type (422), the task id in the path, and the
//! `Idempotency-Key` header.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use ragpool_queue::TaskId;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Longest accepted `Idempotency-Key`.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// A JSON request body. Needs `Content-Type: application/json` (or `+json`).
pub struct JsonBody<T>(pub T);

impl<T, S> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json(req.headers()) {
            return Err(unsupported_media_type("application/json"));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(body_error)?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// Parses a JSON object into `T`: bad syntax is 400 `malformed_json`, a value of the wrong
/// type is 422 `invalid_field` naming the field.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::malformed_json(format!("the body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::invalid_field("the body must be a JSON object"));
    }
    from_value(value)
}

/// Reads an already parsed JSON value into `T`; a value of the wrong type is 422
/// `invalid_field` naming the field.
pub fn from_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value)
        .map_err(|e| ApiError::invalid_field(format!("{}: {}", e.path(), e.inner())))
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

/// Maps a failure to read the body: over the limit is 413, anything else 400.
pub fn body_error(rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::too_large("body_too_large", "the request body is over the limit")
    } else {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("reading the body failed: {}", rejection.body_text()),
        )
    }
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
