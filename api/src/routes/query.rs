//! `POST /api/async/query`: queue a full query (queue `full_query`): analyse the image when
//! one is given, retrieve, and answer, in one task.

use axum::extract::State;
use axum::response::Response;
use ragpool_queue::Payload;
use ragpool_queue::payload::FullQuery;
use serde::Deserialize;
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{IdempotencyKey, ImageJsonBody, InlineImage};
use crate::routes::submit;
use crate::routes::view::Submitted;
use crate::state::AppState;

/// A full-query submission: a question, optionally with one image.
#[derive(Debug, Deserialize, ToSchema)]
pub struct QueryRequest {
    /// The question to answer.
    #[schema(
        required = true,
        value_type = String,
        min_length = 1,
        example = "When is the task of a dead worker re-delivered?"
    )]
    pub question: Option<String>,
    /// An image (PNG, JPEG, WebP or GIF), standard base64.
    #[schema(content_encoding = "base64")]
    pub image: Option<String>,
    /// An `https` URL of an image, when the server allows image URLs.
    pub image_url: Option<String>,
    /// How many passages to retrieve.
    #[schema(minimum = 1, example = 5)]
    pub top_k: Option<u32>,
}

impl InlineImage for QueryRequest {
    fn image_mut(&mut self) -> &mut Option<String> {
        &mut self.image
    }
}

/// Queue a full query.
#[utoipa::path(
    post,
    path = "/api/async/query",
    tag = "tasks",
    request_body = QueryRequest,
    params(
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, description = "Retrying with the same key returns the same task"),
    ),
    responses(
        (status = 202, description = "Queued", body = Submitted,
            headers(("Location" = String, description = "The task's status URL"))),
        (status = 400, description = "Malformed JSON, bad base64, missing or empty field", body = ErrorBody),
        (status = 401, description = "Missing or unknown API key", body = ErrorBody),
        (status = 408, description = "The body did not arrive whole within the body deadline (`body_timeout`)", body = ErrorBody),
        (status = 413, description = "Body, image or text over the limit", body = ErrorBody),
        (status = 415, description = "Not JSON, or not a PNG, JPEG, WebP or GIF image", body = ErrorBody),
        (status = 422, description = "A field of the wrong type or out of range, or a refused image URL", body = ErrorBody),
        (status = 429, description = "This key holds its share of the reserved submission budget (`over_key_share`); retry after the Retry-After seconds", body = ErrorBody,
            headers(("Retry-After" = u32))),
        (status = 503, description = "Redis unreachable, too many large submissions in progress (`over_capacity`), or Redis did not answer a call that was sent (`outcome_unknown`: the task may exist; retry with the same Idempotency-Key); retry after the Retry-After seconds", body = ErrorBody,
            headers(("Retry-After" = u32))),
    ),
    security((), ("bearer" = [])),
)]
pub async fn query(
    caller: Caller,
    State(state): State<AppState>,
    idempotency: IdempotencyKey,
    ImageJsonBody(body, _held): ImageJsonBody<QueryRequest>,
) -> Result<Response, ApiError> {
    let payload = check(&state, body).await?;
    submit::enqueue(&state, &caller, idempotency, payload).await
}

/// The checks of a full-query submission (also each `full_query` item of a batch): the
/// question, `top_k`, and the optional image or image URL.
pub async fn check(state: &AppState, body: QueryRequest) -> Result<Payload, ApiError> {
    let limits = state.limits();
    let question = submit::required_text(body.question, "question", limits.max_question_bytes)?;
    let top_k = submit::top_k(body.top_k, limits.max_top_k)?;
    let image = submit::image_input(state, body.image, body.image_url, false).await?;
    Ok(FullQuery {
        question,
        image: image.image,
        image_url: image.image_url,
        top_k,
    }
    .into())
}
