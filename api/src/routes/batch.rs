//! `POST /api/async/batch`: queue many tasks of any kinds in one request and one Redis round
//! trip.
//!
//! Each item is a single submission's JSON body plus its `kind` (and optionally its own
//! `idempotency_key`), and goes through that endpoint's checks (the same functions, so the
//! same error codes). By default a batch is all or nothing: one bad item and nothing is
//! queued, the answer lists every bad item by index. With `"partial": true` the good items
//! are queued and the bad ones answered with their error, in place.

use std::collections::HashMap;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ragpool_queue::{NewTask, Payload, TaskKind};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody, ErrorDetail};
use crate::extract::{self, JsonBody};
use crate::routes::analyze_image::{self, AnalyzeImageRequest};
use crate::routes::complete_answer::{self, CompleteAnswerRequest};
use crate::routes::query::{self, QueryRequest};
use crate::routes::submit;
use crate::routes::view::Submitted;
use crate::state::AppState;

/// A batch as read: items stay JSON text until each is checked on its own, so one item of
/// the wrong shape is that item's error, not the whole request's. Text, not a parsed
/// `Value`: a parsed tree of a crafted item (`[0,0,0,…]`) takes many times the body's size.
#[derive(Debug, Deserialize)]
pub struct BatchBody {
    tasks: Option<Vec<Box<RawValue>>>,
    partial: Option<bool>,
}

/// A batch submission (the OpenAPI shape; items are read one by one).
#[derive(Debug, ToSchema)]
#[allow(dead_code)] // Documents the body; the handler reads it as `BatchBody`.
pub struct BatchRequest {
    /// The tasks, in order; at most `--max-batch-tasks`.
    tasks: Vec<BatchTaskRequest>,
    /// Queue the good items when some are bad, instead of none.
    #[schema(default = false)]
    partial: Option<bool>,
}

/// One task of a batch: the body of its kind's single endpoint, plus `kind` and an optional
/// idempotency key (the single endpoints' `Idempotency-Key` header).
#[derive(Debug, ToSchema)]
#[allow(dead_code)] // Documents an item; the handler reads it by its kind.
pub struct BatchTaskRequest {
    kind: TaskKind,
    /// Retrying with the same key returns the same task (1 to 255 printable ASCII
    /// characters).
    #[schema(min_length = 1, max_length = 255)]
    idempotency_key: Option<String>,
    /// `complete_answer`, `full_query`: the question.
    question: Option<String>,
    /// `complete_answer`: free text, or the id of an image-analysis task.
    context: Option<String>,
    /// `complete_answer`, `full_query`: passages to retrieve.
    #[schema(minimum = 1)]
    top_k: Option<u32>,
    /// `analyze_image`, `full_query`: the image, standard base64.
    #[schema(content_encoding = "base64")]
    image: Option<String>,
    /// `analyze_image`, `full_query`: an `https` URL of the image.
    image_url: Option<String>,
    /// `analyze_image`: what to look for.
    prompt: Option<String>,
}

/// The answer to an accepted batch: one entry per item, in order.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchAccepted {
    pub tasks: Vec<BatchItem>,
    /// New tasks queued by this request.
    pub queued: usize,
    /// Items whose idempotency key named an existing task.
    pub replayed: usize,
    /// Items refused (only with `partial`).
    pub refused: usize,
}

/// What became of one item.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum BatchItem {
    Queued(BatchSubmitted),
    Refused(ErrorBody),
}

/// A queued item: the single endpoints' answer, and whether it was an idempotent replay.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchSubmitted {
    #[serde(flatten)]
    pub submitted: Submitted,
    /// True when the idempotency key named an existing task (whose state is `status`).
    pub replayed: bool,
}

/// The answer to a refused batch: the error, and each bad item by its index.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchRejected {
    pub error: ErrorDetail,
    /// Every bad item (only when the refusal is about items).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<ItemError>>,
}

/// A bad item of a batch.
#[derive(Debug, Serialize, ToSchema)]
pub struct ItemError {
    /// Its place in `tasks`, from 0.
    pub index: usize,
    pub error: ErrorDetail,
}

/// Queue many tasks in one request.
#[utoipa::path(
    post,
    path = "/api/async/batch",
    tag = "tasks",
    request_body = BatchRequest,
    responses(
        (status = 202, description = "Queued: each item's task (or, with `partial`, its error), in order", body = BatchAccepted),
        (status = 400, description = "Malformed JSON, or `tasks` missing", body = ErrorBody),
        (status = 401, description = "Missing or unknown API key", body = ErrorBody),
        (status = 408, description = "The body did not arrive whole within the body deadline (`body_timeout`)", body = ErrorBody),
        (status = 413, description = "Body over the limit, or more tasks than `--max-batch-tasks` (`too_many_tasks`)", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "A bad item (`invalid_batch`, each listed in `errors` with its single endpoint's code) and nothing queued, or a field of the wrong type", body = BatchRejected),
        (status = 429, description = "This key holds its share of the reserved submission budget (`over_key_share`); retry after the Retry-After seconds", body = ErrorBody,
            headers(("Retry-After" = u32))),
        (status = 503, description = "Redis unreachable, too many large submissions in progress (`over_capacity`), or Redis did not answer a call that was sent (`outcome_unknown`: the task may exist; retry with the same Idempotency-Key); retry after the Retry-After seconds", body = ErrorBody,
            headers(("Retry-After" = u32))),
    ),
    security((), ("bearer" = [])),
)]
pub async fn batch(
    caller: Caller,
    State(state): State<AppState>,
    JsonBody(body, _held): JsonBody<BatchBody>,
) -> Result<Response, ApiError> {
    let items = body.tasks.ok_or_else(|| ApiError::missing_field("tasks"))?;
    let partial = body.partial.unwrap_or(false);
    let max = state.limits().max_batch_tasks;
    if items.len() as u64 > max {
        return Err(ApiError::too_large(
            "too_many_tasks",
            format!(
                "a batch may carry at most {max} tasks (--max-batch-tasks), this one has {}",
                items.len()
            ),
        ));
    }

    let mut checked = Vec::with_capacity(items.len());
    // The kind of the first item with each key: a later item of another kind is refused
    // here, before anything is queued, as the single endpoints refuse it.
    let mut key_kinds: HashMap<String, TaskKind> = HashMap::new();
    for item in items {
        let result = check_item(&state, &caller, item).await;
        let result = match result {
            Ok((payload, Some(key))) => match key_kinds.get(&key) {
                Some(&first) if first != payload.kind() => Err(submit::key_reused(first)),
                _ => {
                    key_kinds.insert(key.clone(), payload.kind());
                    Ok((payload, Some(key)))
                }
            },
            // Redis went away while checking: the whole request is answered 503.
            Err(e) if e.status == StatusCode::SERVICE_UNAVAILABLE => return Err(e),
            other => other,
        };
        checked.push(result);
    }

    let bad: Vec<ItemError> = checked
        .iter()
        .enumerate()
        .filter_map(|(index, r)| r.as_ref().err().map(|e| (index, e)))
        .map(|(index, e)| ItemError {
            index,
            error: detail(e),
        })
        .collect();
    if !bad.is_empty() && (!partial || bad.len() == checked.len()) {
        return Ok(rejected(bad, checked.len(), partial));
    }

    // Each item becomes its kind (or its error), and the good ones the tasks to queue.
    let mut new = Vec::with_capacity(checked.len() - bad.len());
    let checked: Vec<Result<TaskKind, ApiError>> = checked
        .into_iter()
        .map(|r| {
            r.map(|(payload, key)| {
                let kind = payload.kind();
                new.push(NewTask {
                    payload,
                    idempotency_key: submit::scoped_key(&caller, key),
                    owner: caller.name.clone(),
                    share: caller.share,
                    trace: ragpool_runtime::telemetry::current_trace(),
                });
                kind
            })
        })
        .collect();
    let mut enqueued = state
        .broker()
        .enqueue_many(new)
        .await
        .map_err(ApiError::enqueue_failed)?
        .into_iter();

    let (mut queued, mut replayed) = (0, 0);
    let mut tasks = Vec::with_capacity(checked.len());
    for result in checked {
        let item = match result {
            Err(e) => BatchItem::Refused(ErrorBody { error: detail(&e) }),
            Ok(kind) => {
                let done = enqueued.next().ok_or_else(|| {
                    ApiError::internal("the queue answered fewer tasks than were sent")
                })?;
                // A key that names a live task of another kind is found only here; the
                // item's own task was not created.
                match submit::outcome(&state, kind, &done).await {
                    Ok(task_state) => {
                        if done.created {
                            queued += 1;
                        } else {
                            replayed += 1;
                        }
                        BatchItem::Queued(BatchSubmitted {
                            submitted: Submitted::new(&done.id, task_state, done.queue),
                            replayed: !done.created,
                        })
                    }
                    Err(e) if e.status == StatusCode::SERVICE_UNAVAILABLE => return Err(e),
                    Err(e) => BatchItem::Refused(ErrorBody { error: detail(&e) }),
                }
            }
        };
        tasks.push(item);
    }
    let refused = tasks.len() - queued - replayed;
    tracing::info!(queued, replayed, refused, "batch queued");
    let body = BatchAccepted {
        tasks,
        queued,
        replayed,
        refused,
    };
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// Checks one item as its kind's endpoint checks a body; returns the payload and the
/// item's idempotency key.
async fn check_item(
    state: &AppState,
    caller: &Caller,
    item: Box<RawValue>,
) -> Result<(Payload, Option<String>), ApiError> {
    let json = item.get().as_bytes();
    if json.first() != Some(&b'{') {
        return Err(ApiError::invalid_field("a task must be a JSON object"));
    }
    let head: ItemHead = extract::parse_json(json)?;
    let kind = match text_field(head.kind) {
        Field::Absent => return Err(ApiError::missing_field("kind")),
        Field::Text(k) => k.parse::<TaskKind>().map_err(|_| unknown_kind(&k))?,
        Field::Other => return Err(unknown_kind("(not a string)")),
    };
    let key = match text_field(head.idempotency_key) {
        Field::Absent => None,
        Field::Text(k) => Some(extract::checked_idempotency_key(&k).ok_or_else(|| {
            ApiError::invalid_field(format!(
                "idempotency_key must be 1 to {} printable ASCII characters",
                extract::MAX_IDEMPOTENCY_KEY_LEN
            ))
        })?),
        Field::Other => {
            return Err(ApiError::invalid_field(
                "idempotency_key: expected a string",
            ));
        }
    };
    let payload = match kind {
        // An image is moved out of the item's own buffer, not copied (see
        // `extract::parse_json_with_image`).
        TaskKind::AnalyzeImage => {
            let body: AnalyzeImageRequest = extract::parse_json_with_image(item_bytes(item))?;
            analyze_image::check(state, body.into()).await?
        }
        TaskKind::CompleteAnswer => {
            let body: CompleteAnswerRequest = extract::parse_json(json)?;
            complete_answer::check(state, caller, body).await?
        }
        TaskKind::FullQuery => {
            let body: QueryRequest = extract::parse_json_with_image(item_bytes(item))?;
            query::check(state, body).await?
        }
    };
    Ok((payload, key))
}

/// An item's JSON text as a buffer of its own, taken rather than copied.
fn item_bytes(item: Box<RawValue>) -> Vec<u8> {
    let text: Box<str> = item.into();
    text.into_string().into_bytes()
}

/// The fields of an item that say what it is, read before the item as its kind; each kept
/// as its JSON text, whatever its type.
#[derive(Deserialize)]
struct ItemHead {
    kind: Option<Box<RawValue>>,
    idempotency_key: Option<Box<RawValue>>,
}

/// A field that should be a string.
enum Field {
    Absent,
    Text(String),
    Other,
}

fn text_field(raw: Option<Box<RawValue>>) -> Field {
    match raw {
        // `null` reads as `None`.
        None => Field::Absent,
        Some(raw) => serde_json::from_str(raw.get()).map_or(Field::Other, Field::Text),
    }
}

fn unknown_kind(given: &str) -> ApiError {
    let kinds: Vec<&str> = TaskKind::ALL.iter().map(|k| k.as_str()).collect();
    ApiError::invalid_field(format!(
        "kind must be one of {}, not {given}",
        kinds.join(", ")
    ))
}

fn detail(e: &ApiError) -> ErrorDetail {
    ErrorDetail {
        code: e.code.to_string(),
        message: e.message.clone(),
    }
}

/// 422 `invalid_batch`: nothing was queued; every bad item is listed.
fn rejected(bad: Vec<ItemError>, total: usize, partial: bool) -> Response {
    let first = &bad[0];
    let why = if partial {
        "no task is valid"
    } else {
        "nothing was queued"
    };
    let message = format!(
        "{} of {total} tasks are invalid (tasks[{}]: {}); {why}",
        bad.len(),
        first.index,
        first.error.message
    );
    let body = BatchRejected {
        error: ErrorDetail {
            code: "invalid_batch".into(),
            message,
        },
        errors: Some(bad),
    };
    (StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response()
}
