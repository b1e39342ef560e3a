//! `--stream`: a task's answer text printed as it is generated, read from the task's event
//! stream (`GET /api/async/task/{id}/events`).
//!
//! Text goes to stdout as each `delta` arrives; notes (a retried attempt starting its answer
//! over, reconnections) go to stderr. A dropped or ended connection is reopened with the last
//! event id, so the API sends exactly the text missed. The stream is read until the task ends
//! or the deadline passes.

use std::io::Write;
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde::Deserialize;
use tokio::time::Instant;

use crate::client::{ApiClient, ClientError};

/// How long to wait before reopening a stream that ended without the task ending.
const REOPEN_AFTER: Duration = Duration::from_millis(200);

/// Consecutive failed attempts to open or read the stream before giving up.
const MAX_FAILURES: u32 = 5;

/// How following a task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Followed {
    /// The task ended (else the deadline passed first).
    pub ended: bool,
    /// Text was printed.
    pub printed: bool,
}

/// `data:` of a `delta` event.
#[derive(Deserialize)]
struct Delta {
    attempt: u32,
    /// 0 when the text starts here (a new attempt, or the text so far on connecting).
    offset: usize,
    text: String,
}

/// Prints task `id`'s answer text to `out` until the task ends or `deadline` passes.
pub async fn follow(
    client: &ApiClient,
    id: &str,
    deadline: Option<Instant>,
    out: &mut impl Write,
) -> Result<Followed, ClientError> {
    let mut last_id: Option<String> = None;
    let mut printed = false;
    let mut failures = 0;
    loop {
        let opened = match deadline {
            Some(at) => {
                match tokio::time::timeout_at(at, client.events(id, last_id.as_deref())).await {
                    Ok(opened) => opened,
                    Err(_) => {
                        return Ok(Followed {
                            ended: false,
                            printed,
                        });
                    }
                }
            }
            None => client.events(id, last_id.as_deref()).await,
        };
        let response = match opened {
            Ok(response) => response,
            // The API's own refusals (404, 401, 429…) are answers, not hiccups.
            Err(e @ (ClientError::Api { .. } | ClientError::UnexpectedBody { .. })) => {
                return Err(e);
            }
            Err(e) => {
                failures += 1;
                if failures >= MAX_FAILURES {
                    return Err(e);
                }
                eprintln!("events stream unavailable ({e}); reconnecting");
                tokio::time::sleep(REOPEN_AFTER).await;
                continue;
            }
        };
        let mut events = response.bytes_stream().eventsource();
        loop {
            let next = match deadline {
                Some(at) => match tokio::time::timeout_at(at, events.next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        return Ok(Followed {
                            ended: false,
                            printed,
                        });
                    }
                },
                None => events.next().await,
            };
            let event = match next {
                Some(Ok(event)) => event,
                Some(Err(e)) => {
                    failures += 1;
                    if failures >= MAX_FAILURES {
                        return Err(ClientError::Request {
                            url: format!("the events of task {id}"),
                            reason: e.to_string(),
                        });
                    }
                    eprintln!("events stream broke off ({e}); reconnecting");
                    break;
                }
                // The API closed the stream (its time limit): reopen where it stopped.
                None => break,
            };
            failures = 0;
            if !event.id.is_empty() {
                last_id = Some(event.id.clone());
            }
            match event.event.as_str() {
                "delta" => {
                    let Ok(delta) = serde_json::from_str::<Delta>(&event.data) else {
                        continue;
                    };
                    if delta.offset == 0 && printed {
                        eprintln!(
                            "\n(attempt {} starts the answer over; the text above was cut off)",
                            delta.attempt
                        );
                    }
                    let written = out
                        .write_all(delta.text.as_bytes())
                        .and_then(|()| out.flush());
                    if written.is_err() {
                        // stdout closed (a pipe's reader went): nobody reads any more.
                        return Ok(Followed {
                            ended: false,
                            printed,
                        });
                    }
                    printed = true;
                }
                "finished" | "failed" | "canceled" => {
                    return Ok(Followed {
                        ended: true,
                        printed,
                    });
                }
                _ => {}
            }
        }
        if deadline.is_some_and(|at| Instant::now() >= at) {
            return Ok(Followed {
                ended: false,
                printed,
            });
        }
        tokio::time::sleep(REOPEN_AFTER).await;
    }
}
