//! `POST /api/async/task/{task_id}/retry`: put a failed task back on its queue with its
//! attempts reset (the dashboard's manual retry).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::extract::TaskIdParam;
use crate::routes::task::{gone, view, visible_task};
use crate::routes::view::TaskView;
use crate::state::AppState;

/// Retry a failed task.
#[utoipa::path(
    post,
    path = "/api/async/task/{task_id}/retry",
    tag = "tasks",
    params(("task_id" = String, Path, format = "uuid", description = "The task id (a UUID)")),
    responses(
        (status = 202, description = "Queued again", body = TaskView),
        (status = 400, description = "Not a valid task id", body = ErrorBody),
        (status = 401, description = "Missing or unknown API key", body = ErrorBody),
        (status = 404, description = "Unknown, expired, or another key's task", body = ErrorBody),
        (status = 409, description = "The task is not failed", body = ErrorBody),
        (status = 503, description = "Redis unreachable; retry after the Retry-After seconds", body = ErrorBody,
            headers(("Retry-After" = u32))),
    ),
    security((), ("bearer" = [])),
)]
pub async fn retry_task(
    caller: Caller,
    State(state): State<AppState>,
    TaskIdParam(id): TaskIdParam,
) -> Result<(StatusCode, Json<TaskView>), ApiError> {
    visible_task(&state, &caller, &id).await?;
    state.broker().retry(&id).await?;
    tracing::info!(task_id = %id, "retried by hand");
    let task = state.broker().get(&id).await?.ok_or_else(|| gone(&id))?;
    Ok((StatusCode::ACCEPTED, Json(view(&state, task).await?)))
}
