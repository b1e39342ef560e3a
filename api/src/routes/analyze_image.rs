//! `POST /api/async/analyze-image`: queue an image for analysis (queue `image_analysis`).
//!
//! Takes JSON (`image` as base64, or `image_url`, with an optional `prompt`) or
//! `multipart/form-data` with a file field `image` and an optional text field `prompt`.

use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use ragpool_queue::Payload;
use ragpool_queue::payload::AnalyzeImage;
use serde::Deserialize;
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::budget::{MULTIPART_COPIES, Reservation};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{self, BodyRejection, IdempotencyKey, ImageJsonBody, InlineImage};
use crate::image;
use crate::routes::submit::{self, image_error};
use crate::routes::view::Submitted;
use crate::state::AppState;

/// JSON form of an image-analysis submission: exactly one of `image` and `image_url`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct AnalyzeImageRequest {
    /// The image (PNG, JPEG, WebP or GIF), standard base64; a `data:` URL prefix is accepted.
    #[schema(content_encoding = "base64", example = json!(EXAMPLE_PNG))]
    pub image: Option<String>,
    /// An `https` URL to fetch the image from, when the server allows image URLs.
    pub image_url: Option<String>,
    /// What to look for in the image.
    #[schema(example = "What does the chart show?")]
    pub prompt: Option<String>,
}

impl InlineImage for AnalyzeImageRequest {
    fn image_mut(&mut self) -> &mut Option<String> {
        &mut self.image
    }
}

/// A 1×1 PNG, the example image of the OpenAPI document.
const EXAMPLE_PNG: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAACklEQVR4nGMAAQAABQABDQottAAAAABJRU5ErkJggg==";

/// Multipart form of an image-analysis submission.
#[derive(Debug, ToSchema)]
#[allow(dead_code)] // Documents the form; the handler reads the fields one by one.
pub struct AnalyzeImageForm {
    /// The image file (PNG, JPEG, WebP or GIF).
    #[schema(value_type = String, format = Binary)]
    image: Vec<u8>,
    /// What to look for in the image.
    prompt: Option<String>,
}

/// A submission in either form, before the image is checked.
pub struct Submission {
    image: Option<Vec<u8>>,
    encoded: Option<String>,
    image_url: Option<String>,
    prompt: Option<String>,
}

/// A submission read from a request, with its share of the submission budget.
pub struct Received(Submission, Reservation);

impl FromRequest<AppState> for Received {
    type Rejection = BodyRejection;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, BodyRejection> {
        if extract::media_type(req.headers()).as_deref() == Some("multipart/form-data") {
            let held = extract::admit(&req, state, MULTIPART_COPIES)?;
            let capacity = extract::declared_capacity(req.headers(), state);
            let multipart = Multipart::from_request(req, state).await.map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "malformed_multipart",
                    e.body_text(),
                )
            })?;
            let deadline = state.limits().body_deadline();
            let form = extract::within_deadline(deadline, read_form(multipart, capacity)).await??;
            return Ok(Received(form, held));
        }
        if !extract::is_json(req.headers()) {
            return Err(
                extract::unsupported_media_type("application/json or multipart/form-data").into(),
            );
        }
        let ImageJsonBody(body, held) =
            ImageJsonBody::<AnalyzeImageRequest>::from_request(req, state).await?;
        Ok(Received(body.into(), held))
    }
}

impl From<AnalyzeImageRequest> for Submission {
    fn from(body: AnalyzeImageRequest) -> Self {
        Submission {
            image: None,
            encoded: body.image,
            image_url: body.image_url,
            prompt: body.prompt,
        }
    }
}

/// Reads the form's fields; the image into one buffer of `capacity` (the body's declared
/// length), not collected in pieces and copied together, with room to become its base64 in
/// place.
async fn read_form(mut multipart: Multipart, capacity: usize) -> Result<Submission, ApiError> {
    let mut image = None;
    let mut prompt = None;
    while let Some(mut field) = multipart.next_field().await.map_err(multipart_error)? {
        match field.name() {
            Some("image") => {
                if image.is_some() {
                    return Err(ApiError::invalid_field("the image field is given twice"));
                }
                let mut bytes = Vec::with_capacity(capacity / 3 * 4 + 4);
                while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
                    bytes.extend_from_slice(&chunk);
                }
                image = Some(bytes);
            }
            Some("prompt") => {
                // `Field::text` would replace invalid UTF-8 silently; JSON refuses it.
                let bytes = field.bytes().await.map_err(multipart_error)?;
                let text = String::from_utf8(bytes.to_vec()).map_err(|_| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "malformed_multipart",
                        "the prompt field is not valid UTF-8",
                    )
                })?;
                prompt = Some(text);
            }
            // Unknown fields are skipped; reading the next field discards this one.
            _ => {}
        }
    }
    Ok(Submission {
        image: Some(image.ok_or_else(|| ApiError::missing_field("image"))?),
        encoded: None,
        image_url: None,
        prompt,
    })
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        extract::body_too_large()
    } else {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_multipart",
            e.body_text(),
        )
    }
}

/// Queue an image for analysis.
#[utoipa::path(
    post,
    path = "/api/async/analyze-image",
    tag = "tasks",
    request_body(
        description = "JSON with `image` (base64) or `image_url`, or a multipart form with an `image` file",
        content(
            (AnalyzeImageRequest = "application/json"),
            (AnalyzeImageForm = "multipart/form-data"),
        ),
    ),
    params(
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, description = "Retrying with the same key returns the same task"),
    ),
    responses(
        (status = 202, description = "Queued", body = Submitted,
            headers(("Location" = String, description = "The task's status URL"))),
        (status = 400, description = "Malformed body, bad base64, missing or empty field", body = ErrorBody),
        (status = 401, description = "Missing or unknown API key", body = ErrorBody),
        (status = 408, description = "The body did not arrive whole within the body deadline (`body_timeout`)", body = ErrorBody),
        (status = 413, description = "Body, image or text over the limit", body = ErrorBody),
        (status = 415, description = "Not JSON or multipart, or not a PNG, JPEG, WebP or GIF image", body = ErrorBody),
        (status = 422, description = "A field of the wrong type, or a refused image URL", body = ErrorBody),
        (status = 429, description = "This key holds its share of the reserved submission budget (`over_key_share`); retry after the Retry-After seconds", body = ErrorBody,
            headers(("Retry-After" = u32))),
        (status = 503, description = "Redis unreachable, too many large submissions in progress (`over_capacity`), or Redis did not answer a call that was sent (`outcome_unknown`: the task may exist; retry with the same Idempotency-Key); retry after the Retry-After seconds", body = ErrorBody,
            headers(("Retry-After" = u32))),
    ),
    security((), ("bearer" = [])),
)]
pub async fn analyze_image(
    caller: Caller,
    State(state): State<AppState>,
    idempotency: IdempotencyKey,
    Received(submission, _held): Received,
) -> Result<Response, ApiError> {
    let payload = check(&state, submission).await?;
    submit::enqueue(&state, &caller, idempotency, payload).await
}

/// The checks of an image-analysis submission (also each `analyze_image` item of a batch):
/// the prompt's length, and the image's presence, size, type, or URL.
pub async fn check(state: &AppState, submission: Submission) -> Result<Payload, ApiError> {
    let limits = state.limits();
    let prompt = submit::optional_text(submission.prompt, "prompt", limits.max_question_bytes)?;
    let checked = match submission.image {
        Some(bytes) => {
            image::check_bytes(&bytes, limits.max_image_bytes)
                .map_err(|e| image_error(e, "image"))?;
            submit::ImageInput {
                image: Some(image::encode_in_place(bytes)),
                image_url: None,
            }
        }
        None => submit::image_input(state, submission.encoded, submission.image_url, true).await?,
    };
    Ok(AnalyzeImage {
        image: checked.image,
        image_url: checked.image_url,
        prompt,
    }
    .into())
}
