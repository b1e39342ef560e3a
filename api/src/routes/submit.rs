//! What the three submission endpoints share: field checks, image checks, and enqueueing
//! with the `202 Accepted` answer.

use axum::Json;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ragpool_queue::{Enqueued, NewTask, Payload, TaskKind, TaskState};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::IdempotencyKey;
pub use crate::image::{ImageInput, image_error, image_input};
use crate::routes::view::{Submitted, status_url};
use crate::state::AppState;

/// Set on the answer when an `Idempotency-Key` matched an existing task.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// A required text field: present, not blank, within `max` bytes.
pub fn required_text(value: Option<String>, field: &str, max: usize) -> Result<String, ApiError> {
    let value = value.ok_or_else(|| ApiError::missing_field(field))?;
    if value.trim().is_empty() {
        return Err(ApiError::empty_field(field));
    }
    check_len(&value, field, max)?;
    Ok(value)
}

/// An optional text field: blank counts as absent.
pub fn optional_text(
    value: Option<String>,
    field: &str,
    max: usize,
) -> Result<Option<String>, ApiError> {
    match value {
        Some(v) if !v.trim().is_empty() => {
            check_len(&v, field, max)?;
            Ok(Some(v))
        }
        _ => Ok(None),
    }
}

fn check_len(value: &str, field: &str, max: usize) -> Result<(), ApiError> {
    if value.len() > max {
        return Err(ApiError::too_large(
            "text_too_large",
            format!("{field} is longer than {max} bytes"),
        ));
    }
    Ok(())
}

/// `top_k`, when given, must be 1 to `max`.
pub fn top_k(value: Option<u32>, max: u32) -> Result<Option<u32>, ApiError> {
    match value {
        Some(k) if k == 0 || k > max => Err(ApiError::out_of_range(format!(
            "top_k must be between 1 and {max}"
        ))),
        other => Ok(other),
    }
}

/// Enqueues a checked payload and answers `202 Accepted` with a `Location` header.
pub async fn enqueue(
    state: &AppState,
    caller: &Caller,
    idempotency: IdempotencyKey,
    payload: Payload,
) -> Result<Response, ApiError> {
    let kind = payload.kind();
    let enqueued = state
        .broker()
        .enqueue(NewTask {
            payload,
            idempotency_key: scoped_key(caller, idempotency.0),
            owner: caller.name.clone(),
            share: caller.share,
            trace: ragpool_runtime::telemetry::current_trace(),
        })
        .await
        .map_err(ApiError::enqueue_failed)?;
    tracing::Span::current().record("task_id", enqueued.id.as_str());
    let state = outcome(state, kind, &enqueued).await?;
    let mut headers = HeaderMap::new();
    if let Ok(location) = HeaderValue::from_str(&status_url(&enqueued.id)) {
        headers.insert(header::LOCATION, location);
    }
    if !enqueued.created {
        headers.insert(
            HeaderName::from_static(REPLAYED_HEADER),
            HeaderValue::from_static("true"),
        );
    }
    let body = Submitted::new(&enqueued.id, state, enqueued.queue);
    Ok((StatusCode::ACCEPTED, headers, Json(body)).into_response())
}

/// The key a task is stored under: keys are scoped by owner, so two clients choosing the
/// same key get two tasks.
pub fn scoped_key(caller: &Caller, key: Option<String>) -> Option<String> {
    key.map(|key| match &caller.name {
        Some(owner) => format!("{owner}:{key}"),
        None => key,
    })
}

/// What an enqueue of a `kind` task did, as the state to answer with: `queued` for a new
/// task (counted and logged), the existing task's state for an idempotent replay, or 422
/// `idempotency_key_reused` when the key names a task of another kind.
pub async fn outcome(
    state: &AppState,
    kind: TaskKind,
    enqueued: &Enqueued,
) -> Result<TaskState, ApiError> {
    if enqueued.created {
        state.metrics().submitted(&enqueued.queue);
        tracing::info!(task_id = %enqueued.id, queue = %enqueued.queue, "task queued");
        return Ok(TaskState::Queued);
    }
    match state.broker().get(&enqueued.id).await? {
        Some(existing) if existing.kind() != kind => Err(key_reused(existing.kind())),
        Some(existing) => Ok(existing.state),
        // Expired between the enqueue and this read: it was there a moment ago.
        None => Ok(TaskState::Queued),
    }
}

/// 422 `idempotency_key_reused`: the key already names a task of kind `existing`.
pub fn key_reused(existing: TaskKind) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
        format!("this idempotency key already names a {existing} task"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_checks() {
        assert_eq!(
            required_text(None, "question", 10).unwrap_err().code,
            "missing_field"
        );
        assert_eq!(
            required_text(Some("  ".into()), "question", 10)
                .unwrap_err()
                .code,
            "empty_field"
        );
        let long = required_text(Some("x".repeat(11)), "question", 10).unwrap_err();
        assert_eq!((long.status.as_u16(), long.code), (413, "text_too_large"));
        assert_eq!(required_text(Some("ok".into()), "q", 10).unwrap(), "ok");
        assert_eq!(optional_text(Some(" ".into()), "prompt", 10).unwrap(), None);
    }

    #[test]
    fn top_k_range() {
        assert_eq!(top_k(None, 10).unwrap(), None);
        assert_eq!(top_k(Some(10), 10).unwrap(), Some(10));
        for bad in [0, 11] {
            let e = top_k(Some(bad), 10).unwrap_err();
            assert_eq!((e.status.as_u16(), e.code), (422, "out_of_range"));
        }
    }
}
