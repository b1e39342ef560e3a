//! `POST /api/async/complete-answer`: queue an answer to a question (queue
//! `answer_generation`), optionally from given context or from the result of an
//! image-analysis task.

use axum::extract::State;
use axum::response::Response;
use ragpool_queue::payload::CompleteAnswer;
use ragpool_queue::{Payload, TaskId, TaskKind, TaskState};
use serde::Deserialize;
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{IdempotencyKey, JsonBody};
use crate::routes::submit;
use crate::routes::view::Submitted;
use crate::state::AppState;

/// An answer submission.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CompleteAnswerRequest {
    /// The question to answer.
    #[schema(
        required = true,
        value_type = String,
        min_length = 1,
        example = "Which region grew fastest?"
    )]
    pub question: Option<String>,
    /// Free text to answer from, or the id of an image-analysis task (created with the same
    /// key) whose result is the context.
    #[schema(example = "Revenue by region: north +12 %, south +3 %.")]
    pub context: Option<String>,
    /// How many passages to retrieve.
    #[schema(minimum = 1, example = 5)]
    pub top_k: Option<u32>,
}

/// Queue an answer to a question.
#[utoipa::path(
    post,
    path = "/api/async/complete-answer",
    tag = "tasks",
    request_body = CompleteAnswerRequest,
    params(
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, description = "Retrying with the same key returns the same task"),
    ),
    responses(
        (status = 202, description = "Queued", body = Submitted,
            headers(("Location" = String, description = "The task's status URL"))),
        (status = 400, description = "Malformed JSON, missing or empty field", body = ErrorBody),
        (status = 401, description = "Missing or unknown API key", body = ErrorBody),
        (status = 408, description = "The body did not arrive whole within the body deadline (`body_timeout`)", body = ErrorBody),
        (status = 413, description = "Body or text over the limit", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "A field of the wrong type or out of range, or a context task that is not an image analysis", body = ErrorBody),
        (status = 429, description = "This key holds its share of the reserved submission budget (`over_key_share`); retry after the Retry-After seconds", body = ErrorBody,
            headers(("Retry-After" = u32))),
        (status = 503, description = "Redis unreachable, too many large submissions in progress (`over_capacity`), or Redis did not answer a call that was sent (`outcome_unknown`: the task may exist; retry with the same Idempotency-Key); retry after the Retry-After seconds", body = ErrorBody,
            headers(("Retry-After" = u32))),
    ),
    security((), ("bearer" = [])),
)]
pub async fn complete_answer(
    caller: Caller,
    State(state): State<AppState>,
    idempotency: IdempotencyKey,
    JsonBody(body, _held): JsonBody<CompleteAnswerRequest>,
) -> Result<Response, ApiError> {
    let payload = check(&state, &caller, body).await?;
    submit::enqueue(&state, &caller, idempotency, payload).await
}

/// The checks of an answer submission (also each `complete_answer` item of a batch): the
/// question, `top_k`, and a context that is text or a usable image-analysis task.
pub async fn check(
    state: &AppState,
    caller: &Caller,
    body: CompleteAnswerRequest,
) -> Result<Payload, ApiError> {
    let limits = state.limits();
    let question = submit::required_text(body.question, "question", limits.max_question_bytes)?;
    let top_k = submit::top_k(body.top_k, limits.max_top_k)?;
    let context = submit::optional_text(body.context, "context", limits.max_question_bytes)?;
    let (context, context_task_id) = match context {
        Some(text) => match text.trim().parse::<TaskId>() {
            Ok(id) => (None, Some(context_task(state, caller, &id).await?)),
            Err(_) => (Some(text), None),
        },
        None => (None, None),
    };
    Ok(CompleteAnswer {
        question,
        context,
        context_task_id,
        top_k,
    }
    .into())
}

/// Checks that a context given as a task id names an image-analysis task this caller may
/// see and that has not failed or been canceled. It need not have finished yet: the
/// executor reads its result when the answer task runs.
async fn context_task(state: &AppState, caller: &Caller, id: &TaskId) -> Result<String, ApiError> {
    let unusable = |why: &str| {
        ApiError::new(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_context",
            format!("context names task {id}, which {why}"),
        )
    };
    match state.broker().get(id).await? {
        Some(task) if caller.may_see(task.owner.as_deref()) => {
            if task.kind() != TaskKind::AnalyzeImage {
                return Err(unusable("is not an image analysis"));
            }
            match task.state {
                TaskState::Failed | TaskState::Canceled => {
                    Err(unusable(&format!("has ended {}", task.state)))
                }
                _ => Ok(id.to_string()),
            }
        }
        _ => Err(unusable("does not exist or has expired")),
    }
}
