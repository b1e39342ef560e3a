//! `GET /api/async/task/{task_id}`: a task's state, result or error, and its place in the
//! queue; with `?wait=N`, held until the task ends or N seconds pass, woken by the queue's
//! events rather than by polling Redis.

use std::time::Duration;

use axum::Json;
use axum::extract::{RawQuery, State};
use ragpool_queue::{Task, TaskId, TaskState};

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::extract::TaskIdParam;
use crate::holds::Peer;
use crate::routes::view::TaskView;
use crate::state::AppState;

/// Read a task.
#[utoipa::path(
    get,
    path = "/api/async/task/{task_id}",
    tag = "tasks",
    params(
        ("task_id" = String, Path, format = "uuid", description = "The task id (a UUID)"),
        ("wait" = Option<u64>, Query, minimum = 0, maximum = 60,
            description = "Hold the request up to this many seconds until the task ends"),
    ),
    responses(
        (status = 200, description = "The task", body = TaskView),
        (status = 400, description = "Not a valid task id", body = ErrorBody),
        (status = 401, description = "Missing or unknown API key", body = ErrorBody),
        (status = 404, description = "Unknown, expired, or another key's task", body = ErrorBody),
        (status = 422, description = "wait is not a number of seconds within the limit", body = ErrorBody),
        (status = 429, description = "With ?wait: this key or address holds its most event streams and ?wait \
            requests; retry after the Retry-After seconds", body = ErrorBody, headers(("Retry-After" = u32))),
        (status = 503, description = "Redis unreachable; retry after the Retry-After seconds", body = ErrorBody,
            headers(("Retry-After" = u32))),
    ),
    security((), ("bearer" = [])),
)]
pub async fn get_task(
    caller: Caller,
    peer: Peer,
    State(state): State<AppState>,
    TaskIdParam(id): TaskIdParam,
    RawQuery(query): RawQuery,
) -> Result<Json<TaskView>, ApiError> {
    let wait = parse_wait(query.as_deref(), state.limits().max_wait_seconds)?;
    let mut task = visible_task(&state, &caller, &id).await?;
    if !wait.is_zero() && !task.state.is_terminal() {
        let _hold = state.holds().try_hold(&caller, peer)?;
        let shutdown = state.shutdown_token();
        tokio::select! {
            waited = state.broker().wait_for_end(&id, wait) => {
                task = waited?.ok_or_else(|| gone(&id))?;
            }
            // The server is shutting down: answer with what we have so it can finish.
            () = shutdown.cancelled() => {}
        }
    }
    Ok(Json(view(&state, task).await?))
}

/// Reads `?wait=N`: whole seconds, at most `max`.
fn parse_wait(query: Option<&str>, max: u64) -> Result<Duration, ApiError> {
    let Some(query) = query else {
        return Ok(Duration::ZERO);
    };
    let Some((_, value)) = url::form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "wait")
    else {
        return Ok(Duration::ZERO);
    };
    let secs: u64 = value.trim().parse().map_err(|_| {
        ApiError::invalid_field(format!(
            "wait must be a whole number of seconds, not {value:?}"
        ))
    })?;
    if secs > max {
        return Err(ApiError::out_of_range(format!(
            "wait must be at most {max} seconds"
        )));
    }
    Ok(Duration::from_secs(secs))
}

/// The task, if it exists and the caller may see it; 404 otherwise, so other keys' task ids
/// cannot be probed.
pub async fn visible_task(
    state: &AppState,
    caller: &Caller,
    id: &TaskId,
) -> Result<Task, ApiError> {
    match state.broker().get(id).await? {
        Some(task) if caller.may_see(task.owner.as_deref()) => Ok(task),
        _ => Err(gone(id)),
    }
}

pub fn gone(id: &TaskId) -> ApiError {
    ApiError::not_found(format!("no task {id} (unknown or expired)"))
}

/// The client view of a task, with its queue position while queued.
pub async fn view(state: &AppState, task: Task) -> Result<TaskView, ApiError> {
    let position = if task.state == TaskState::Queued {
        state.broker().position(&task.id, &task.queue).await?
    } else {
        None
    };
    Ok(TaskView::new(task, position))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_parameter() {
        assert_eq!(parse_wait(None, 60).unwrap(), Duration::ZERO);
        assert_eq!(parse_wait(Some("x=1"), 60).unwrap(), Duration::ZERO);
        assert_eq!(
            parse_wait(Some("wait=5"), 60).unwrap(),
            Duration::from_secs(5)
        );
        let e = parse_wait(Some("wait=abc"), 60).unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (422, "invalid_field"));
        let e = parse_wait(Some("wait=-1"), 60).unwrap_err();
        assert_eq!(e.code, "invalid_field");
        let e = parse_wait(Some("wait=61"), 60).unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (422, "out_of_range"));
    }
}
