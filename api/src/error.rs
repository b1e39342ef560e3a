//! Every failure the API answers with: a status, a stable machine-readable `code` and a
//! message, always sent as `{"error": {"code": "...", "message": "..."}}`.
//!
//! A `503` is an answer the service chose (Redis is unreachable, the client should retry), not
//! a fault in the service: its response carries an [`ExpectedOutage`] so the request trace
//! neither reports it as a failure nor logs it once per request (see `server.rs`).

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ragpool_queue::QueueError;
use serde::Serialize;
use utoipa::ToSchema;

/// Seconds a client is told to wait before retrying when Redis is unreachable. The broker
/// reconnects within about a second, so a short hint avoids idle clients.
pub const RETRY_AFTER_SECONDS: u32 = 1;

/// Seconds a client over one of its own caps (`429`) is told to wait: what it holds lasts
/// seconds to minutes, so an earlier retry would only be refused again.
pub const RETRY_AFTER_TOO_MANY_SECONDS: u32 = 5;

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `malformed_json`, `missing_field`, `not_found`, … (see
    /// docs/api.md for the full table).
    pub code: String,
    /// For people; wording may change.
    pub message: String,
}

/// An error response. Construct with the named constructors so codes stay consistent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// What the operator should see and the client should not (the Redis error).
    cause: Option<String>,
}

/// Set on a `503` response: the outage it reports, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedOutage {
    /// What is unavailable, the log line's message.
    pub what: &'static str,
    pub cause: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            cause: None,
        }
    }

    pub fn malformed_json(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "malformed_json", message)
    }

    pub fn missing_field(field: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "missing_field",
            format!("{field} is required"),
        )
    }

    pub fn empty_field(field: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "empty_field",
            format!("{field} must not be empty"),
        )
    }

    pub fn invalid_field(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", message)
    }

    pub fn out_of_range(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "out_of_range", message)
    }

    pub fn too_large(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, code, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> Self {
        match &e {
            QueueError::Redis(_) => {
                // Logged with the response, at most every few seconds: an outage fails every
                // request at once.
                ApiError {
                    cause: Some(e.to_string()),
                    ..ApiError::unavailable("the task store is unreachable; try again shortly")
                }
            }
            QueueError::NotReplicated { .. } => ApiError {
                cause: Some(e.to_string()),
                ..ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not_replicated",
                    "the change was not confirmed by a Redis replica in time and may be lost \
                     in a failover; try again (with the same Idempotency-Key for a submission)",
                )
            },
            QueueError::InvalidTaskId(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_task_id", e.to_string())
            }
            QueueError::NotFound(id) => {
                ApiError::not_found(format!("no task {id} (unknown or expired)"))
            }
            QueueError::WrongState { .. } => {
                ApiError::new(StatusCode::CONFLICT, "wrong_state", e.to_string())
            }
            QueueError::InputGone(_) => {
                ApiError::new(StatusCode::GONE, "input_gone", e.to_string())
            }
            // The code names the limit (its flag, in snake case).
            QueueError::PayloadLimit { limit, .. } => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, limit.flag(), e.to_string())
            }
            QueueError::OwnerQueued { .. } => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "max_queued", e.to_string())
            }
            QueueError::Layout { .. } => {
                // The operator's mistake, not the client's: say what is wrong, in the log and
                // in the answer, since every request fails the same way until it is fixed.
                tracing::error!(error = %e, "partition count mismatch");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "misconfigured",
                    format!("the service is misconfigured: {e}"),
                )
            }
            QueueError::LeaseLost(_)
            | QueueError::UnknownQueue(_)
            | QueueError::Config(_)
            | QueueError::Corrupt(_) => {
                tracing::error!(error = %e, "queue error");
                ApiError::internal("internal error")
            }
        }
    }
}

impl ApiError {
    /// The error for a submission whose enqueue failed. When Redis may have run the script
    /// (it was reached but its answer never came), the task may exist: say so (503
    /// `outcome_unknown`) rather than answer as if nothing happened. Otherwise as any queue
    /// error.
    pub fn enqueue_failed(e: QueueError) -> Self {
        if !e.outcome_unknown() {
            return e.into();
        }
        ApiError {
            cause: Some(e.to_string()),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "outcome_unknown",
                "the task store did not confirm the submission: the task may have been \
                 created. Retry with the same Idempotency-Key to get that task rather than a \
                 second one; without a key a retry may create a second task",
            )
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let outage = (self.status == StatusCode::SERVICE_UNAVAILABLE).then(|| ExpectedOutage {
            what: "redis unavailable",
            cause: self.cause.unwrap_or_else(|| self.message.clone()),
        });
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(outage) = outage {
            response.extensions_mut().insert(outage);
        }
        let headers = response.headers_mut();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
        }
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from(RETRY_AFTER_TOO_MANY_SECONDS),
            );
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"ragpool\""),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_errors_map_to_statuses() {
        let cases = [
            (
                QueueError::InvalidTaskId("x".into()),
                400,
                "invalid_task_id",
            ),
            (QueueError::NotFound("x".into()), 404, "not_found"),
            (
                QueueError::WrongState {
                    id: "x".into(),
                    state: "queued".into(),
                    action: "retry",
                },
                409,
                "wrong_state",
            ),
            (QueueError::Corrupt("x".into()), 500, "internal"),
            (QueueError::InputGone("x".into()), 410, "input_gone"),
            (
                QueueError::PayloadLimit {
                    limit: ragpool_queue::PayloadLimit::PerKey(10),
                    share: 10,
                    shares: 1,
                    queued: 8,
                    asked: 4,
                },
                429,
                "max_queued_payload_bytes_per_key",
            ),
            (
                QueueError::NotReplicated {
                    timeout: std::time::Duration::from_secs(1),
                },
                503,
                "not_replicated",
            ),
        ];
        for (err, status, code) in cases {
            let api = ApiError::from(err);
            assert_eq!(api.status.as_u16(), status);
            assert_eq!(api.code, code);
        }
    }

    #[test]
    fn unavailable_carries_retry_after() {
        let response = ApiError::unavailable("down").into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    }

    #[test]
    fn an_outage_is_marked_for_the_log_but_not_told_to_the_client() {
        let redis = redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connection refused",
        ));
        let api = ApiError::from(QueueError::Redis(redis));
        assert_eq!((api.status.as_u16(), api.code), (503, "unavailable"));
        assert!(!api.message.contains("refused"), "{}", api.message);
        let response = api.into_response();
        let outage = response.extensions().get::<ExpectedOutage>().unwrap();
        assert!(outage.cause.contains("connection refused"), "{outage:?}");
        let response = ApiError::internal("boom").into_response();
        assert!(response.extensions().get::<ExpectedOutage>().is_none());
    }
}
