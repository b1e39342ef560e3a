//! Enqueueing: one task or a batch, spread over the partitions, bounded by the payload
//! limits.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{Broker, PayloadLimits, millis, never_ran};
use crate::config::QueueConfig;
use crate::decode;
use crate::error::{PayloadLimit, QueueError, Result};
use crate::keys::Partition;
use crate::payload::{Payload, StoredJson};
use crate::scripts;
use crate::task::{TaskId, TraceContext};

/// A new task to enqueue. Its kind, and so its queue, is its payload's variant.
#[derive(Debug, Clone)]
pub struct NewTask {
    pub payload: Payload,
    /// While a task created with this key is kept, enqueueing with the same key returns it.
    pub idempotency_key: Option<String>,
    /// The API key's name that submits it: claims take turns between owners.
    pub owner: Option<String>,
    /// The owner's share of the queues (ignored without an owner).
    pub share: OwnerShare,
    /// The trace it was submitted under, for the executor's spans (see
    /// [`crate::Claimed::trace`]); `None` when tracing is off.
    pub trace: Option<TraceContext>,
}

impl NewTask {
    pub fn new(payload: impl Into<Payload>) -> Self {
        NewTask {
            payload: payload.into(),
            idempotency_key: None,
            owner: None,
            share: OwnerShare::default(),
            trace: None,
        }
    }

    /// The same task, submitted by `owner` with `share`.
    pub fn owned_by(self, owner: impl Into<String>, share: OwnerShare) -> Self {
        NewTask {
            owner: Some(owner.into()),
            share,
            ..self
        }
    }
}

/// How one owner (API key) shares the queues with the others (see docs/queue.md, "Fair
/// share"). Claims within a queue take turns between the owners that have queued tasks,
/// `weight` tasks of an owner per turn of weight 1; `max_queued` bounds its queued tasks
/// (enqueue refuses past it) and `max_in_flight` its started ones (claims pass it over while
/// it holds that many). An owner with either limit keeps all its tasks in one partition, its
/// home, so that its limits are exact: that owner's tasks are served by one Redis master.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnerShare {
    pub weight: u32,
    pub max_queued: Option<u64>,
    pub max_in_flight: Option<u32>,
}

impl Default for OwnerShare {
    fn default() -> Self {
        OwnerShare {
            weight: 1,
            max_queued: None,
            max_in_flight: None,
        }
    }
}

impl OwnerShare {
    /// True when the owner has a limit, and so a home partition.
    pub fn limited(&self) -> bool {
        self.max_queued.is_some() || self.max_in_flight.is_some()
    }
}

/// What [`Broker::enqueue`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enqueued {
    pub id: TaskId,
    pub queue: String,
    /// False when an idempotency key matched a task that already exists.
    pub created: bool,
}

/// The most tasks one enqueue script call carries. [`Broker::enqueue_many`] splits larger
/// batches, so one call never holds Redis for long (about a millisecond per few hundred
/// tasks) and its argument lists stay well inside Lua's stack.
pub const MAX_ENQUEUE_BATCH: usize = 1000;

/// The largest payload (stored form, in bytes) an enqueue script call carries as an
/// argument; a larger one is staged (see [`Broker::stage`]). Every copy of a script call's
/// arguments (the invocation, its command, the packed command, the socket's buffer) is a copy
/// of the payload, so an image must not travel that way.
pub const INLINE_PAYLOAD_BYTES: usize = 64 * 1024;

/// The largest piece of a staged payload one command carries.
const STAGE_PIECE_BYTES: usize = 256 * 1024;

/// How long a staging key outlives its last piece: long enough for the enqueue script that
/// follows at once, short enough that an enqueue that never comes leaves nothing for long.
const STAGING_TTL: Duration = Duration::from_secs(60);

impl Broker {
    /// Puts a new task on its queue, or returns the task an idempotency key already names.
    pub async fn enqueue(&self, new: NewTask) -> Result<Enqueued> {
        let mut done = self.enqueue_many(vec![new]).await?;
        done.pop()
            .ok_or_else(|| QueueError::Corrupt("enqueue replied with no task".into()))
    }

    /// Puts many tasks on their queues (any mix of kinds), in one script call per
    /// [`MAX_ENQUEUE_BATCH`] tasks, so a batch costs one round trip rather than one per task.
    /// The answers are in the order of `tasks`. Idempotency keys work as in
    /// [`Broker::enqueue`], within the batch too: a second task with a key an earlier one
    /// used gets the earlier one's id, with `created: false`. Tasks of one queue keep their
    /// order in it. A batch of at most [`MAX_ENQUEUE_BATCH`] tasks is written atomically;
    /// nothing is sent for an empty one.
    pub async fn enqueue_many(&self, tasks: Vec<NewTask>) -> Result<Vec<Enqueued>> {
        let mut out = Vec::with_capacity(tasks.len());
        let mut tasks = tasks.into_iter().peekable();
        while tasks.peek().is_some() {
            let chunk: Vec<NewTask> = tasks.by_ref().take(MAX_ENQUEUE_BATCH).collect();
            out.extend(self.enqueue_chunk(chunk).await?);
        }
        Ok(out)
    }

    /// Enqueues a chunk: one script call per partition it touches, run side by side. A task
    /// of an owner with limits goes to the owner's home partition (its idempotency key too);
    /// another task with an idempotency key goes to that key's partition; the others of the
    /// chunk go together to the next partition in turn, so a chunk without keys is one atomic
    /// call.
    async fn enqueue_chunk(&self, tasks: Vec<NewTask>) -> Result<Vec<Enqueued>> {
        self.check_layout().await?;
        let keys = self.keys();
        let parts = keys.partitions();
        if parts.len() == 1 {
            return self.enqueue_in(&parts[0], &tasks).await;
        }
        let turn = self.inner.next_partition.fetch_add(1, Ordering::Relaxed) % parts.len();
        // Per partition the tasks whose key puts them there; last, the tasks without a key,
        // which may go to any partition.
        let mut groups: Vec<(Vec<usize>, Vec<NewTask>)> = vec![Default::default(); parts.len() + 1];
        for (i, new) in tasks.into_iter().enumerate() {
            let g = match (&new.owner, &new.idempotency_key) {
                (Some(owner), _) if new.share.limited() => {
                    usize::from(keys.of_owner(owner).index())
                }
                (_, Some(key)) => usize::from(keys.of_idempotency(key).index()),
                _ => parts.len(),
            };
            groups[g].0.push(i);
            groups[g].1.push(new);
        }
        let calls = groups
            .into_iter()
            .enumerate()
            .filter(|(_, (at, _))| !at.is_empty())
            .map(|(g, (at, tasks))| async move {
                let done = match parts.get(g) {
                    Some(part) => self.enqueue_in(part, &tasks).await,
                    None => self.enqueue_anywhere(turn, &tasks).await,
                };
                done.map(|done| (at, done))
            });
        let mut out: Vec<Option<Enqueued>> = Vec::new();
        for (at, done) in futures::future::try_join_all(calls).await? {
            for (i, e) in at.into_iter().zip(done) {
                if out.len() <= i {
                    out.resize(i + 1, None);
                }
                out[i] = Some(e);
            }
        }
        out.into_iter()
            .map(|e| e.ok_or_else(|| QueueError::Corrupt("enqueue left out a task".into())))
            .collect()
    }

    /// Enqueues tasks without idempotency keys in partition `first`, or, while a partition's
    /// server refuses before running anything (a cluster master down: connection refused,
    /// `CLUSTERDOWN`), in the next one: a master away costs its partitions, not submissions.
    /// An error that may come after the script ran is returned, never retried elsewhere,
    /// since that could create the tasks twice. A partition whose share of a payload limit
    /// is full wrote nothing either: the next one is tried, and the first refusal is
    /// returned when every share is full.
    async fn enqueue_anywhere(&self, first: usize, tasks: &[NewTask]) -> Result<Vec<Enqueued>> {
        let parts = self.keys().partitions();
        let (mut unreachable, mut full) = (None, None);
        for p in (0..parts.len()).map(|i| (first + i) % parts.len()) {
            match self.enqueue_in(&parts[p], tasks).await {
                Err(QueueError::Redis(e)) if never_ran(&e) => {
                    tracing::debug!(partition = p, error = %e, "partition unavailable; trying the next");
                    unreachable = Some(QueueError::Redis(e));
                }
                Err(e @ QueueError::PayloadLimit { .. }) => {
                    full.get_or_insert(e);
                }
                done => return done,
            }
        }
        Err(full
            .or(unreachable)
            .unwrap_or_else(|| QueueError::Corrupt("no partition to enqueue in".into())))
    }

    /// One call of the enqueue script in one partition (see `lua/enqueue.lua`). A payload
    /// over [`INLINE_PAYLOAD_BYTES`] is staged first (see [`Broker::stage`]) and the script
    /// renames it into place, so the call carries small payloads only.
    async fn enqueue_in(&self, part: &Partition, tasks: &[NewTask]) -> Result<Vec<Enqueued>> {
        let mut queues: Vec<&QueueConfig> = Vec::new();
        let mut prepared = Vec::with_capacity(tasks.len());
        for new in tasks {
            let q = self.queue(new.payload.kind().queue())?;
            let index = match queues.iter().position(|known| known.name == q.name) {
                Some(i) => i,
                None => {
                    queues.push(q);
                    queues.len() - 1
                }
            };
            prepared.push((
                index + 1,
                part.new_task_id(),
                StoredInput::of(&new.payload)?,
                new,
            ));
        }
        for (_, id, input, _) in &prepared {
            if input.json.len() > INLINE_PAYLOAD_BYTES {
                self.stage(&part.staging(id.as_str()), &input.json).await?;
            }
        }
        let mut owners: Vec<(&str, OwnerShare)> = Vec::new();
        for new in tasks {
            if let Some(owner) = new.owner.as_deref()
                && !owners.iter().any(|(known, _)| *known == owner)
            {
                owners.push((owner, new.share));
            }
        }
        let limits = &self.inner.config.payload_limits;
        let share = |limit| PayloadLimits::share(limit, part.index(), self.keys().count());
        let mut invocation = scripts::ENQUEUE.key(part.events());
        invocation
            .key(part.seq())
            .key(part.queues())
            .key(part.queued_bytes());
        for q in &queues {
            let qk = part.queue(&q.name);
            invocation.key(qk.ready).key(qk.counters).key(qk.signal);
        }
        invocation
            .arg(part.prefix())
            .arg(queues.len())
            .arg(share(limits.total))
            .arg(share(limits.per_key))
            .arg(owners.len());
        for (owner, s) in &owners {
            invocation
                .arg(*owner)
                .arg(s.weight.max(1))
                .arg(s.max_queued.unwrap_or(0))
                .arg(s.max_in_flight.unwrap_or(0));
        }
        for q in &queues {
            invocation
                .arg(&q.name)
                .arg(q.max_attempts)
                .arg(millis(q.timeout))
                .arg(millis(q.result_ttl))
                .arg(millis(q.failure_ttl))
                .arg(millis(q.backoff_base))
                .arg(millis(q.backoff_max))
                .arg(millis(q.keep_payload));
        }
        for (queue, id, input, new) in prepared {
            let idem = new.idempotency_key.as_deref().unwrap_or_default();
            invocation
                .key(part.task(id.as_str()))
                .key(if idem.is_empty() {
                    part.seq()
                } else {
                    part.idempotency(idem)
                })
                .key(part.payload(id.as_str()))
                .key(part.staging(id.as_str()));
            let inline = if input.json.len() > INLINE_PAYLOAD_BYTES {
                String::new()
            } else {
                input.json.to_text()
            };
            invocation
                .arg(id.as_str())
                .arg(queue)
                .arg(new.payload.kind().as_str())
                .arg(inline)
                .arg(idem)
                .arg(new.owner.as_deref().unwrap_or_default())
                .arg(input.summary.bytes)
                .arg(
                    input
                        .summary
                        .image_bytes
                        .map(|n| n.to_string())
                        .unwrap_or_default(),
                )
                .arg(input.summary.image_type.unwrap_or_default())
                .arg(input.summary.sha256)
                .arg(input.brief);
            let trace = new.trace.as_ref();
            invocation
                .arg(trace.map_or("", |t| t.traceparent.as_str()))
                .arg(trace.map_or("", |t| t.tracestate.as_str()));
        }
        let (reply, ack) = self.change(part, &invocation).await?;
        let reply = decode::status(&reply)?;
        if let Some(refused) = self.over_limit(&reply) {
            return Err(refused);
        }
        if let [code, id] = reply.as_slice()
            && code == "staging_lost"
        {
            return Err(QueueError::Corrupt(format!(
                "the staged payload of task {id} expired before its enqueue"
            )));
        }
        ack.require()?;
        reply
            .chunks(3)
            .map(|answer| match answer {
                [created, id, queue] => Ok(Enqueued {
                    id: id.parse()?,
                    queue: queue.clone(),
                    created: created == "1",
                }),
                other => Err(QueueError::Corrupt(format!("enqueue replied {other:?}"))),
            })
            .collect()
    }

    /// Writes a large payload to `key` in pieces of at most [`STAGE_PIECE_BYTES`], one
    /// round trip each, so neither this process nor Redis's client buffers ever hold the
    /// payload whole a second time. Every piece renews the key's [`STAGING_TTL`]: a staging
    /// key whose enqueue never comes (the process died, the script was refused, Redis
    /// failed in between) is gone soon after, and a task was never acknowledged for it.
    async fn stage(&self, key: &str, json: &StoredJson<'_>) -> Result<()> {
        let mut conn = self.conn();
        for piece in json
            .pieces()
            .into_iter()
            .flat_map(|p| p.chunks(STAGE_PIECE_BYTES))
        {
            redis::pipe()
                .cmd("APPEND")
                .arg(key)
                .arg(piece)
                .ignore()
                .cmd("PEXPIRE")
                .arg(key)
                .arg(millis(STAGING_TTL))
                .ignore()
                .query_async::<()>(&mut conn)
                .await?;
        }
        Ok(())
    }

    /// The enqueue script's refusal `{'over_limit', which, share, queued, asked}`, if that is
    /// what it replied.
    fn over_limit(&self, reply: &[String]) -> Option<QueueError> {
        let [code, which, share, queued, asked] = reply else {
            return None;
        };
        if code != "over_limit" {
            return None;
        }
        let limits = &self.inner.config.payload_limits;
        let num = |v: &String| v.parse().unwrap_or(0);
        if which == "owner_tasks" {
            return Some(QueueError::OwnerQueued {
                max: num(share),
                queued: num(queued),
                asked: num(asked),
            });
        }
        Some(QueueError::PayloadLimit {
            limit: if which == "owner" {
                PayloadLimit::PerKey(limits.per_key)
            } else {
                PayloadLimit::Total(limits.total)
            },
            share: num(share),
            shares: self.keys().count(),
            queued: num(queued),
            asked: num(asked),
        })
    }
}

/// A payload in the forms the enqueue script stores: the payload (in pieces that borrow its
/// image), its brief and its summary.
struct StoredInput<'a> {
    json: StoredJson<'a>,
    brief: String,
    summary: crate::payload::InputSummary,
}

impl StoredInput<'_> {
    fn of(payload: &Payload) -> Result<StoredInput<'_>> {
        let corrupt =
            |e: serde_json::Error| QueueError::Corrupt(format!("payload does not serialize: {e}"));
        let json = payload.stored().map_err(corrupt)?;
        Ok(StoredInput {
            brief: payload.brief().to_json().map_err(corrupt)?,
            summary: json.summary(payload),
            json,
        })
    }
}
