//! `GET /api/async/task/{task_id}/events`: the task's state changes as server-sent events,
//! until it ends.
//!
//! The first event is the task's state when the stream opens; each later one is a change
//! read from the queue's events stream. The subscription starts before that first read, so
//! no change falls between the two. A change that repeats the state just sent (and carries
//! no progress) is dropped: it was already in the first event. A stream also ends when the
//! server shuts down or after `--max-stream-seconds`; the client reconnects.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use ragpool_queue::{Task, TaskState};
use tokio::sync::broadcast::error::RecvError;

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::extract::TaskIdParam;
use crate::holds::Peer;
use crate::routes::task::visible_task;
use crate::routes::view::EventView;
use crate::state::AppState;

/// How often an idle stream sends a comment, so proxies keep it open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// One server-sent event, described the way OpenAPI describes event streams: each event an
/// object of its fields.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // Documents the stream; events are built with axum's `Event`.
pub struct SseEvent {
    /// The task's state after the change.
    event: TaskState,
    /// An `EventView` as JSON.
    #[schema(content_media_type = "application/json")]
    data: String,
    /// The events stream entry id; absent on the first event.
    id: Option<String>,
}

/// Follow a task's state changes.
#[utoipa::path(
    get,
    path = "/api/async/task/{task_id}/events",
    tag = "tasks",
    params(("task_id" = String, Path, format = "uuid", description = "The task id (a UUID)")),
    responses(
        (status = 200, description = "Server-sent events: `event:` is the state (`queued`, `started`, …), \
            `data:` an EventView as JSON; the stream ends after the task ends",
            content_type = "text/event-stream", body = SseEvent),
        (status = 400, description = "Not a valid task id", body = ErrorBody),
        (status = 401, description = "Missing or unknown API key", body = ErrorBody),
        (status = 404, description = "Unknown, expired, or another key's task", body = ErrorBody),
        (status = 429, description = "This key or address holds its most event streams and ?wait requests; \
            retry after the Retry-After seconds", body = ErrorBody, headers(("Retry-After" = u32))),
        (status = 503, description = "Redis unreachable; retry after the Retry-After seconds", body = ErrorBody,
            headers(("Retry-After" = u32))),
    ),
    security((), ("bearer" = [])),
)]
pub async fn task_events(
    caller: Caller,
    peer: Peer,
    State(state): State<AppState>,
    TaskIdParam(id): TaskIdParam,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let hold = state.holds().try_hold(&caller, peer)?;
    let mut rx = state.broker().events().await?.subscribe();
    let task = visible_task(&state, &caller, &id).await?;
    let broker = state.broker().clone();
    let shutdown = state.shutdown_token();
    let deadline =
        tokio::time::Instant::now() + Duration::from_secs(state.limits().max_stream_seconds);
    let stream = async_stream::stream! {
        // Given back when the stream ends or the client goes.
        let _hold = hold;
        let mut last = task.state;
        yield Ok(snapshot(&task));
        if last.is_terminal() {
            return;
        }
        loop {
            let received = tokio::select! {
                received = rx.recv() => received,
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep_until(deadline) => break,
            };
            match received {
                Ok(event) if event.task_id == id.as_str() => {
                    if event.state == last && !event.details.contains_key("progress") {
                        continue;
                    }
                    last = event.state;
                    yield Ok(sse_event(last, &EventView::from_event(&event)));
                    if last.is_terminal() {
                        break;
                    }
                }
                Ok(_) => {}
                // Fell behind the broadcast: the task may have changed unseen, so read it.
                Err(RecvError::Lagged(_)) => match broker.get(&id).await {
                    Ok(Some(task)) if task.state != last => {
                        last = task.state;
                        yield Ok(snapshot(&task));
                        if last.is_terminal() {
                            break;
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(e) => tracing::warn!(error = %e, "re-reading a task after lagging failed"),
                },
                Err(RecvError::Closed) => break,
            }
        }
    };
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

fn snapshot(task: &Task) -> Event {
    sse_event(task.state, &EventView::snapshot(task))
}

fn sse_event(state: TaskState, view: &EventView) -> Event {
    let event = Event::default().event(state.as_str());
    let event = match &view.event_id {
        Some(id) => event.id(id),
        None => event,
    };
    // Serializing a struct of strings and a string map cannot fail; fall back to an empty
    // object rather than dropping the event.
    event
        .json_data(view)
        .unwrap_or_else(|_| Event::default().event(state.as_str()).data("{}"))
}
