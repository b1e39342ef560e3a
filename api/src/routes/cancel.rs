//! `DELETE /api/async/task/{task_id}`: cancel a task — at once while it waits, at the
//! worker's next heartbeat while it runs.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use ragpool_queue::CancelOutcome;

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::extract::TaskIdParam;
use crate::routes::task::{gone, view, visible_task};
use crate::routes::view::TaskView;
use crate::state::AppState;

/// Cancel a task.
#[utoipa::path(
    delete,
    path = "/api/async/task/{task_id}",
    tag = "tasks",
    params(("task_id" = String, Path, format = "uuid", description = "The task id (a UUID)")),
    responses(
        (status = 200, description = "Canceled (it was waiting)", body = TaskView),
        (status = 202, description = "Cancel requested: the running task stops at its worker's next heartbeat", body = TaskView),
        (status = 400, description = "Not a valid task id", body = ErrorBody),
        (status = 401, description = "Missing or unknown API key", body = ErrorBody),
        (status = 404, description = "Unknown, expired, or another key's task", body = ErrorBody),
        (status = 409, description = "The task has already ended", body = ErrorBody),
        (status = 503, description = "Redis unreachable; retry after the Retry-After seconds", body = ErrorBody,
            headers(("Retry-After" = u32))),
    ),
    security((), ("bearer" = [])),
)]
pub async fn cancel_task(
    caller: Caller,
    State(state): State<AppState>,
    TaskIdParam(id): TaskIdParam,
) -> Result<(StatusCode, Json<TaskView>), ApiError> {
    visible_task(&state, &caller, &id).await?;
    let outcome = state.broker().cancel(&id).await?;
    tracing::info!(task_id = %id, ?outcome, "cancel");
    let task = state.broker().get(&id).await?.ok_or_else(|| gone(&id))?;
    let status = match outcome {
        CancelOutcome::Canceled => StatusCode::OK,
        CancelOutcome::Requested => StatusCode::ACCEPTED,
    };
    Ok((status, Json(view(&state, task).await?)))
}
