//! The client side of a chaos run: submissions through the API as a careful user makes them
//! (a 503 is retried after its `Retry-After`, a refused connection after a moment, with the same
//! idempotency key when there is one), replays of keyed submissions, and the windows in which
//! the API answered 503 or could not be reached, as the client saw them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

/// The two API keys of a run: fair share between them runs under the chaos.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Owner {
    /// Most of the tasks, submitted faster than the executors drain them, in the first part
    /// of the run; at most `BATCH_MAX_IN_FLIGHT` of them started at once.
    Batch,
    /// Every fifth task, at an even rate over the whole run, with a weight of 2.
    Live,
}

/// `maxInFlight` of the batch key: below the executors' slots, so claims pass it over while
/// it holds that many and serve the live key.
pub const BATCH_MAX_IN_FLIGHT: u32 = 24;

impl Owner {
    pub const ALL: [Owner; 2] = [Owner::Batch, Owner::Live];

    /// The key's name, as tasks and stats carry it.
    pub fn name(self) -> &'static str {
        match self {
            Owner::Batch => "batch",
            Owner::Live => "live",
        }
    }

    /// The key itself.
    fn key(self) -> &'static str {
        match self {
            Owner::Batch => "chaos-batch-key-0123456789",
            Owner::Live => "chaos-live-key-01234567890",
        }
    }

    /// Its options in the key list.
    pub fn options(self) -> String {
        match self {
            Owner::Batch => format!("maxInFlight={BATCH_MAX_IN_FLIGHT}"),
            Owner::Live => "weight=2".to_string(),
        }
    }

    /// The API's key list (`RAGPOOL_API_KEYS`) for both keys.
    pub fn key_list() -> String {
        Owner::ALL
            .iter()
            .map(|o| format!("{}:{}:{}", o.name(), o.key(), o.options()))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// One submission of the run.
#[derive(Debug, Clone)]
pub struct Submission {
    pub n: usize,
    pub owner: Owner,
    pub question: String,
    /// `complete-answer` or `query`.
    pub path: &'static str,
    pub key: Option<String>,
    /// Submitted a second time with the same key once acknowledged.
    pub replay: bool,
}

impl Submission {
    pub fn new(n: usize) -> Submission {
        Submission {
            n,
            owner: if n.is_multiple_of(5) {
                Owner::Live
            } else {
                Owner::Batch
            },
            question: format!("chaos question {n}"),
            path: if n.is_multiple_of(3) {
                "query"
            } else {
                "complete-answer"
            },
            key: n.is_multiple_of(2).then(|| format!("chaos-key-{n}")),
            replay: n.is_multiple_of(10),
        }
    }
}

/// Intervals in which a condition held, from the client's view: opened by the first failure,
/// closed by the first success of a request sent after it opened (a request already in
/// flight when the window opened, e.g. one an API finishes while it shuts down, proves
/// nothing about the window).
#[derive(Debug, Default)]
pub struct Windows {
    open: Option<Instant>,
    last_seen: Option<Instant>,
    pub count: usize,
    pub longest: Duration,
    pub hits: usize,
}

impl Windows {
    fn failure(&mut self, now: Instant) {
        self.hits += 1;
        self.last_seen = Some(now);
        if self.open.is_none() {
            self.open = Some(now);
            self.count += 1;
        }
    }

    fn success(&mut self, sent: Instant, now: Instant) {
        if let Some(start) = self.open
            && sent >= start
        {
            self.open = None;
            self.longest = self.longest.max(now - start);
        }
    }

    /// Closes a window still open at the end of the run at its last failure.
    pub fn close(&mut self) {
        if let (Some(start), Some(last)) = (self.open.take(), self.last_seen) {
            self.longest = self.longest.max(last - start);
        }
    }
}

/// What the client saw over the run.
#[derive(Debug, Default)]
pub struct Seen {
    /// Acknowledged (202) task id → submission number.
    pub acknowledged: HashMap<String, usize>,
    /// When each acknowledged task was first answered 202.
    pub acknowledged_at: HashMap<String, Instant>,
    /// Every 202 (replays too), in the order they arrived: how soon writes resumed after a
    /// failover.
    pub accepted: Vec<Instant>,
    pub unavailable: Windows,
    /// 503 answers without a `Retry-After` header.
    pub without_retry_after: usize,
    pub unreachable: Windows,
    /// Submissions with no answer within the client's 10 s timeout (retried with the same
    /// key, like a refused connection).
    pub timed_out: usize,
    /// Other statuses, which should not happen.
    pub unexpected: Vec<(usize, u16, String)>,
    pub replays: usize,
    pub replays_correct: usize,
    pub replay_failures: Vec<String>,
}

pub type Shared = Arc<Mutex<Seen>>;

fn seen(shared: &Shared) -> std::sync::MutexGuard<'_, Seen> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// How one POST ended after its retries.
enum Answer {
    Accepted {
        id: String,
        replayed: bool,
        at: Instant,
    },
    Refused,
}

/// Submits `s` (and its replay), retrying through outages until the API answers.
pub async fn submit(http: &reqwest::Client, api: &str, s: &Submission, shared: &Shared) {
    let Answer::Accepted { id, at, .. } = post(http, api, s, shared).await else {
        return;
    };
    {
        let mut seen = seen(shared);
        seen.acknowledged.insert(id.clone(), s.n);
        seen.acknowledged_at.entry(id.clone()).or_insert(at);
    }
    if s.replay && s.key.is_some() {
        let outcome = post(http, api, s, shared).await;
        let mut seen = seen(shared);
        seen.replays += 1;
        match outcome {
            Answer::Accepted {
                id: again,
                replayed,
                ..
            } if again == id && replayed => seen.replays_correct += 1,
            Answer::Accepted {
                id: again,
                replayed,
                ..
            } => seen.replay_failures.push(format!(
                "submission {}: first {id}, replay {again} (Idempotent-Replayed: {replayed})",
                s.n
            )),
            Answer::Refused => seen
                .replay_failures
                .push(format!("submission {}: replay refused", s.n)),
        }
    }
}

async fn post(http: &reqwest::Client, api: &str, s: &Submission, shared: &Shared) -> Answer {
    let body = json!({ "question": s.question });
    loop {
        let mut request = http
            .post(format!("{api}/api/async/{}", s.path))
            .bearer_auth(s.owner.key())
            .json(&body)
            .timeout(Duration::from_secs(10));
        if let Some(key) = &s.key {
            request = request.header("Idempotency-Key", key);
        }
        let sent = Instant::now();
        match request.send().await {
            Ok(response) => {
                let now = Instant::now();
                let status = response.status();
                if status == StatusCode::ACCEPTED {
                    let replayed = response
                        .headers()
                        .get("idempotent-replayed")
                        .is_some_and(|v| v == "true");
                    let body: Value = response.json().await.unwrap_or(Value::Null);
                    let mut seen = seen(shared);
                    seen.unavailable.success(sent, now);
                    seen.unreachable.success(sent, now);
                    seen.accepted.push(now);
                    return match body["task_id"].as_str() {
                        Some(id) => Answer::Accepted {
                            id: id.to_owned(),
                            replayed,
                            at: now,
                        },
                        None => {
                            seen.unexpected.push((s.n, 202, body.to_string()));
                            Answer::Refused
                        }
                    };
                }
                if status == StatusCode::SERVICE_UNAVAILABLE {
                    let retry_after = response
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok());
                    {
                        let mut seen = seen(shared);
                        seen.unavailable.failure(now);
                        seen.unreachable.success(sent, now);
                        if retry_after.is_none() {
                            seen.without_retry_after += 1;
                        }
                    }
                    let wait =
                        Duration::from_secs(retry_after.unwrap_or(1)).min(Duration::from_secs(2));
                    tokio::time::sleep(wait).await;
                    continue;
                }
                let text = response.text().await.unwrap_or_default();
                seen(shared).unexpected.push((s.n, status.as_u16(), text));
                return Answer::Refused;
            }
            // No answer in time: the API is slow, not gone; try again with the same key.
            Err(e) if e.is_timeout() => {
                seen(shared).timed_out += 1;
            }
            // The API is restarting (connection refused or reset): try again shortly.
            Err(_) => {
                seen(shared).unreachable.failure(Instant::now());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
