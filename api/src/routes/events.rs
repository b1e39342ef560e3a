//! `GET /api/async/task/{task_id}/events`: the task's state changes as server-sent events,
//! until it ends, and its answer text as it is generated.
//!
//! The first event is the task's state when the stream opens; each later one is a change
//! read from the queue's events stream. The subscription starts before that first read, so
//! no change falls between the two. A change that repeats the state just sent (and carries
//! no progress) is dropped: it was already in the first event. A stream also ends when the
//! server shuts down or after `--max-stream-seconds`; the client reconnects.
//!
//! Answer text goes out as `delta` events ([`DeltaView`]) while the task runs. A client that
//! arrives while a run is streaming first gets that run's text so far as one `delta`. Each
//! `delta` has the id `delta-<run>-<seq>-<bytes>` (the task's run, the number of its last
//! piece, and the bytes of the run's text up to its end), and once a stream has sent
//! text its state events other than the last carry no id, so a client's `Last-Event-ID` is
//! always the position of the text it has. A client coming back with it gets, from the text
//! so far, exactly what it is missing: nothing lost, nothing repeated. A new run's text starts
//! again at `seq` 1 and `offset` 0 under its own attempt number; the client drops the earlier
//! text whenever a delta's `offset` is 0.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use ragpool_queue::{Broker, Delta, StreamedText, Task, TaskId, TaskState};
use serde::Serialize;
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
    /// The task's state after the change (`queued`, `started`, …), or `delta` for a piece of
    /// answer text.
    #[schema(example = "started")]
    event: String,
    /// An `EventView` as JSON, or a `DeltaView` for `delta`.
    #[schema(content_media_type = "application/json")]
    data: String,
    /// The events stream entry id, or `delta-<run>-<seq>-<bytes>` for `delta`: send it
    /// back as `Last-Event-ID` to resume. Absent on the first event and on state events
    /// after answer text.
    id: Option<String>,
}

/// A piece of the answer text (`data:` of a `delta` event). Joined in order, the pieces of
/// one run are the answer so far; the finished task's result holds the whole answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeltaView {
    pub task_id: String,
    /// The attempt that generated the text (1 for the first).
    pub attempt: u32,
    /// UTF-8 bytes of this run's text before this piece. 0: the text starts here (a new
    /// attempt, or the whole text so far on connecting): drop any text held before.
    pub offset: usize,
    /// The number of the last piece this event includes, from 1 within the attempt. The first
    /// event after (re)connecting may carry several pieces at once.
    pub seq: u64,
    /// The text to append.
    pub text: String,
}

/// Follow a task's state changes.
#[utoipa::path(
    get,
    path = "/api/async/task/{task_id}/events",
    tag = "tasks",
    params(
        ("task_id" = String, Path, format = "uuid", description = "The task id (a UUID)"),
        ("Last-Event-ID" = Option<String>, Header, description = "The id of the last event received, \
            to resume the answer text after it"),
    ),
    responses(
        (status = 200, description = "Server-sent events: `event:` is the state (`queued`, `started`, …), \
            `data:` an EventView as JSON, or `delta` with a DeltaView: a piece of the answer text as it is \
            generated. A `Last-Event-ID` from a `delta` resumes the text where it stopped; the stream ends \
            after the task ends",
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
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let hold = state.holds().try_hold(&caller, peer)?;
    let mut rx = state.broker().events().await?.subscribe();
    let task = visible_task(&state, &caller, &id).await?;
    let broker = state.broker().clone();
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(Cursor::parse);
    let so_far = match task.state {
        TaskState::Started => broker.streamed_text(&id).await?,
        _ => None,
    };
    let shutdown = state.shutdown_token();
    let deadline =
        tokio::time::Instant::now() + Duration::from_secs(state.limits().max_stream_seconds);
    let stream = async_stream::stream! {
        // Given back when the stream ends or the client goes.
        let _hold = hold;
        let mut last = task.state;
        // A client resuming the text of the run still going needs no state: it has it.
        let mut cursor = resume.filter(|c| so_far.as_ref().is_some_and(|s| s.run == c.run));
        if cursor.is_none() {
            yield Ok(snapshot(&task));
        }
        if last.is_terminal() {
            return;
        }
        if let Some(so_far) = &so_far
            && let Some((event, next)) = catch_up(&id, cursor, so_far)
        {
            cursor = Some(next);
            yield Ok(event);
        }
        loop {
            let received = tokio::select! {
                received = rx.recv() => received,
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep_until(deadline) => break,
            };
            match received {
                Ok(event) if event.task_id == id.as_str() => {
                    if let Some(delta) = &event.delta {
                        let sent = match next_piece(cursor, delta) {
                            Piece::Send(next) => Some((
                                delta_event(&id, delta.attempt, next, next.bytes - delta.text.len(), &delta.text),
                                next,
                            )),
                            Piece::Skip => None,
                            Piece::Reread => reread(&broker, &id, cursor).await,
                        };
                        if let Some((event, next)) = sent {
                            cursor = Some(next);
                            yield Ok(event);
                        }
                        continue;
                    }
                    if event.state == last && !event.details.contains_key("progress") {
                        continue;
                    }
                    last = event.state;
                    // After text, only the last event moves the client's Last-Event-ID.
                    let with_id = cursor.is_none() || last.is_terminal();
                    yield Ok(sse_event(last, &EventView::from_event(&event), with_id));
                    if last.is_terminal() {
                        break;
                    }
                }
                Ok(_) => {}
                // Fell behind the broadcast: the task may have changed unseen, so read it.
                Err(RecvError::Lagged(_)) => {
                  if let Some((event, next)) = reread(&broker, &id, cursor).await {
                    cursor = Some(next);
                    yield Ok(event);
                  }
                  match broker.get(&id).await {
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
                  }
                }
                Err(RecvError::Closed) => break,
            }
        }
    };
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

fn snapshot(task: &Task) -> Event {
    sse_event(task.state, &EventView::snapshot(task), true)
}

fn sse_event(state: TaskState, view: &EventView, with_id: bool) -> Event {
    let event = Event::default().event(state.as_str());
    let event = match &view.event_id {
        Some(id) if with_id => event.id(id),
        _ => event,
    };
    // Serializing a struct of strings and a string map cannot fail; fall back to an empty
    // object rather than dropping the event.
    event
        .json_data(view)
        .unwrap_or_else(|_| Event::default().event(state.as_str()).data("{}"))
}

/// Where a client is in a run's answer text: the run, the number of the last piece it has,
/// and the bytes of text it has. It is the id of the last `delta` sent. (Runs, unlike
/// attempts, never repeat: a retry by hand starts the attempts over.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cursor {
    run: u64,
    seq: u64,
    bytes: usize,
}

impl Cursor {
    fn id(self) -> String {
        format!("delta-{}-{}-{}", self.run, self.seq, self.bytes)
    }

    /// The cursor a `delta` id names; `None` for any other id.
    fn parse(id: &str) -> Option<Cursor> {
        let mut parts = id.strip_prefix("delta-")?.split('-');
        let cursor = Cursor {
            run: parts.next()?.parse().ok()?,
            seq: parts.next()?.parse().ok()?,
            bytes: parts.next()?.parse().ok()?,
        };
        parts.next().is_none().then_some(cursor)
    }
}

/// What to do with a piece read from the events.
#[derive(Debug, PartialEq, Eq)]
enum Piece {
    /// The next piece: send it; the client is then at this cursor.
    Send(Cursor),
    /// Already sent (or of an attempt before the client's).
    Skip,
    /// Some pieces before it were not seen: send what is missing from the text so far.
    Reread,
}

fn next_piece(cursor: Option<Cursor>, delta: &Delta) -> Piece {
    let start = |bytes: usize| Cursor {
        run: delta.run,
        seq: delta.seq,
        bytes: bytes + delta.text.len(),
    };
    match cursor {
        Some(c) if c.run == delta.run => match delta.seq {
            s if s <= c.seq => Piece::Skip,
            s if s == c.seq + 1 => Piece::Send(start(c.bytes)),
            _ => Piece::Reread,
        },
        Some(c) if delta.run < c.run => Piece::Skip,
        _ if delta.seq == 1 => Piece::Send(start(0)),
        _ => Piece::Reread,
    }
}

/// The text of `so_far` the client at `cursor` lacks, as one `delta`, and the cursor after it;
/// `None` when it has it all. A client of another run gets the whole text.
fn catch_up(id: &TaskId, cursor: Option<Cursor>, so_far: &StreamedText) -> Option<(Event, Cursor)> {
    let from = match cursor {
        Some(c) if c.run == so_far.run => {
            if so_far.seq <= c.seq {
                return None;
            }
            // A position that is not in the text (not one this server gave) gets it all.
            if so_far.text.get(c.bytes..).is_some() {
                c.bytes
            } else {
                0
            }
        }
        _ => 0,
    };
    let next = Cursor {
        run: so_far.run,
        seq: so_far.seq,
        bytes: so_far.text.len(),
    };
    Some((
        delta_event(id, so_far.attempt, next, from, &so_far.text[from..]),
        next,
    ))
}

/// [`catch_up`] from the text as it is now; nothing when it cannot be read (the task's end
/// comes as an event, and the next piece tries again).
async fn reread(broker: &Broker, id: &TaskId, cursor: Option<Cursor>) -> Option<(Event, Cursor)> {
    match broker.streamed_text(id).await {
        Ok(so_far) => catch_up(id, cursor, so_far.as_ref()?),
        Err(e) => {
            tracing::warn!(error = %e, "reading a task's answer text failed");
            None
        }
    }
}

/// A `delta` of `attempt` carrying `text`, which starts at `offset` and ends at `cursor`.
fn delta_event(id: &TaskId, attempt: u32, cursor: Cursor, offset: usize, text: &str) -> Event {
    let view = DeltaView {
        task_id: id.to_string(),
        attempt,
        offset,
        seq: cursor.seq,
        text: text.to_owned(),
    };
    let event = Event::default().event("delta").id(cursor.id());
    // A struct of strings and numbers always serializes.
    event
        .json_data(&view)
        .unwrap_or_else(|_| Event::default().event("delta").data("{}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(run: u64, seq: u64, text: &str) -> Delta {
        Delta {
            run,
            attempt: 1,
            seq,
            text: text.into(),
        }
    }

    #[test]
    fn cursors_round_trip_through_their_ids() {
        let c = Cursor {
            run: 2,
            seq: 17,
            bytes: 340,
        };
        assert_eq!(c.id(), "delta-2-17-340");
        assert_eq!(Cursor::parse(&c.id()), Some(c));
        for other in [
            "1700000000000-0",
            "delta-1-2",
            "delta-1-2-3-4",
            "delta-x-1-1",
            "",
        ] {
            assert_eq!(Cursor::parse(other), None, "{other}");
        }
    }

    #[test]
    fn pieces_are_sent_once_in_order() {
        let at = |run, seq, bytes| Some(Cursor { run, seq, bytes });
        let cases = [
            (
                None,
                delta(1, 1, "ab"),
                Piece::Send(Cursor {
                    run: 1,
                    seq: 1,
                    bytes: 2,
                }),
            ),
            (None, delta(1, 3, "ab"), Piece::Reread),
            (
                at(1, 2, 5),
                delta(1, 3, "ab"),
                Piece::Send(Cursor {
                    run: 1,
                    seq: 3,
                    bytes: 7,
                }),
            ),
            (at(1, 2, 5), delta(1, 2, "ab"), Piece::Skip),
            (at(1, 2, 5), delta(1, 4, "ab"), Piece::Reread),
            (at(2, 1, 5), delta(1, 9, "ab"), Piece::Skip),
            (
                at(1, 9, 50),
                delta(2, 1, "ab"),
                Piece::Send(Cursor {
                    run: 2,
                    seq: 1,
                    bytes: 2,
                }),
            ),
            (at(1, 9, 50), delta(2, 2, "ab"), Piece::Reread),
        ];
        for (cursor, delta, expected) in cases {
            assert_eq!(next_piece(cursor, &delta), expected, "{cursor:?} {delta:?}");
        }
    }
}
