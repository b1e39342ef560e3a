//! The job loop: claim, run, heartbeat, report, and drain on shutdown.
//!
//! Up to `concurrency` slots run tasks. A slot that finishes a task claims the next one for
//! itself at once; the claim loop fills the slots that are free (up to all of them in one
//! claim call) and is the one that waits for work when every queue is empty. Each task races
//! the backend call against its heartbeat (which can report a cancel or a lost lease), the
//! task's timeout and the drain deadline, and then reports exactly one outcome to the queue.
//!
//! Shutdown has two steps, each a [`CancellationToken`]: `stop` ends claiming at once; `release`
//! fires `drain` later, and every task still running is then given back to its queue without
//! spending an attempt.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::FutureExt;
use ragpool_queue::payload::Payload;
use ragpool_queue::{
    Broker, Claimed, Consumer, ConsumerConfig, FailOutcome, MAX_CLAIM, QueueError, ReleaseOutcome,
    Retry, TaskError, TaskId, TaskState, WorkerInfo,
};
use ragpool_runtime::telemetry;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::backend::{Backend, BackendError, CallGate, TaskContext, kinds};
use crate::health::{Health, now_ms};
use crate::metrics::Metrics;
use crate::publish::{self, Stop};

/// How the job loop behaves; see [`crate::settings::ExecutorSettings`] for the meaning.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    pub worker_id: String,
    pub pod_name: Option<String>,
    pub consumer: ConsumerConfig,
    pub concurrency: u32,
    pub drain: Duration,
    pub maintenance_interval: Duration,
}

/// Everything a task runner needs, shared.
struct Shared {
    broker: Broker,
    backend: Arc<dyn Backend>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    /// Fired at the drain deadline: give every running task back.
    release: CancellationToken,
    /// The pool-wide limits every call to the backend's server passes, if any.
    gate: Option<Arc<dyn CallGate>>,
}

/// The executor's job loop over one broker and backend.
pub struct Runner {
    config: RunnerConfig,
    shared: Arc<Shared>,
}

impl Runner {
    pub fn new(
        config: RunnerConfig,
        broker: Broker,
        backend: Arc<dyn Backend>,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> Self {
        Runner {
            config,
            shared: Arc::new(Shared {
                broker,
                backend,
                metrics,
                health,
                release: CancellationToken::new(),
                gate: None,
            }),
        }
    }

    /// Sends every task's calls to the backend's server through `gate` (the pool-wide
    /// limits of [`crate::limits`]). Call before [`Runner::run`].
    pub fn with_gate(mut self, gate: Option<Arc<dyn CallGate>>) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.gate = gate;
        }
        self
    }

    /// Runs until `stop` fires, then drains: tasks in flight get `drain` to finish, the rest
    /// are released. Returns once every task is reported and the worker is deregistered.
    pub async fn run(self, stop: CancellationToken) -> Result<(), QueueError> {
        let Runner { config, shared } = self;
        let consumer = Arc::new(shared.broker.consumer(config.consumer.clone()).await?);
        let registry = tokio::spawn(registry_loop(
            shared.clone(),
            config.clone(),
            now_ms(),
            stop.clone(),
        ));
        let maintenance = tokio::spawn(maintenance_loop(
            shared.broker.clone(),
            config.maintenance_interval,
            config.consumer.lease,
            shared.release.clone(),
        ));
        tracing::info!(worker = %config.worker_id, queues = ?config.consumer.queues, "executor started");

        let tasks = claim_loop(&shared, &config, &consumer, &stop).await;
        drain(&shared, config.drain, tasks).await;

        registry.abort();
        maintenance.abort();
        if let Err(e) = shared.broker.deregister_worker(&config.worker_id).await {
            tracing::warn!(error = %e, "could not deregister; the entry expires on its own");
        }
        tracing::info!("executor stopped");
        Ok(())
    }
}

/// Fills free slots until `stop` fires, each slot on a task of its own ([`Slot`]).
/// Returns the slots still going.
///
/// Every free slot is filled in one claim call: with `k` slots free the loop asks for up to
/// `k` tasks at once, so a burst of work reaches all slots in one round trip instead of `k`.
/// When fewer come back every queue is empty, and the loop waits for work.
async fn claim_loop(
    shared: &Arc<Shared>,
    config: &RunnerConfig,
    consumer: &Arc<Consumer>,
    stop: &CancellationToken,
) -> JoinSet<()> {
    let lease = config.consumer.lease;
    let slots = Arc::new(tokio::sync::Semaphore::new(config.concurrency as usize));
    let mut tasks = JoinSet::new();
    shared.health.beat();
    while !stop.is_cancelled() {
        // Reap finished runners so the set does not grow.
        while tasks.try_join_next().is_some() {}
        // Wait for a free slot, turning at least every 2 s so /readyz can tell a busy loop
        // from a stalled one.
        let first = tokio::select! {
            _ = stop.cancelled() => break,
            permit = tokio::time::timeout(Duration::from_secs(2), slots.clone().acquire_owned()) => match permit {
                Ok(Ok(p)) => p,
                Ok(Err(_)) => break,
                Err(_) => {
                    shared.health.beat();
                    continue;
                }
            },
        };
        let mut permits = vec![first];
        while permits.len() < MAX_CLAIM {
            match slots.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        shared.health.beat();
        // The claim itself is never abandoned half-way: a task Redis handed out would
        // otherwise sit under a lease nobody holds. Only the wait for work is cancellable.
        let claim_started = Instant::now();
        let claim = ClaimCall::starting();
        match consumer.try_claim_many(permits.len()).await {
            Ok(claimed) => {
                let claim = claim.ended();
                shared.health.redis_answered(true);
                let asked = permits.len();
                let got = claimed.len();
                // One sample per task claimed: the round trip each of them waited for.
                let took = claim_started.elapsed().as_secs_f64();
                for _ in 0..got {
                    shared.metrics.claim_latency.observe(took);
                }
                for (claimed, permit) in claimed.into_iter().zip(permits.drain(..)) {
                    let slot = Slot {
                        shared: shared.clone(),
                        consumer: consumer.clone(),
                        stop: stop.clone(),
                        lease,
                        _permit: permit,
                    };
                    tasks.spawn(slot.run(claimed, claim));
                }
                // Fewer than asked: every queue is empty now. Slots left over go back.
                drop(permits);
                if got < asked {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        r = consumer.wait_for_work(Duration::from_secs(2)) => {
                            if let Err(e) = r {
                                redis_trouble(shared, &e).await;
                            }
                        }
                    }
                }
            }
            Err(e) => {
                drop(permits);
                redis_trouble(shared, &e).await;
            }
        }
    }
    tasks
}

/// One busy slot: it runs a task, then claims the next one for itself, until there is no more
/// work or `stop` fires; then its permit goes back to the claim loop.
///
/// Claiming from the slot that just freed up costs the same round trip as the claim loop
/// would, without two hand-offs between tasks (slot to loop, loop to a new slot) per task:
/// a busy executor claims the way a plain `claim` → `complete` loop does, once per slot.
struct Slot {
    shared: Arc<Shared>,
    consumer: Arc<Consumer>,
    stop: CancellationToken,
    lease: Duration,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Slot {
    async fn run(self, mut claimed: Claimed, mut claim: ClaimCall) {
        loop {
            run_task(&self.shared, claimed, self.lease, claim).await;
            // Shutdown stops claiming at once; a claim already sent is seen through.
            if self.stop.is_cancelled() {
                return;
            }
            let claim_started = Instant::now();
            claim = ClaimCall::starting();
            match self.consumer.try_claim().await {
                Ok(Some(next)) => {
                    claim = claim.ended();
                    self.shared.health.redis_answered(true);
                    self.shared
                        .metrics
                        .claim_latency
                        .observe(claim_started.elapsed().as_secs_f64());
                    claimed = next;
                }
                // No work: the claim loop waits for it.
                Ok(None) => return,
                // The claim loop retries, with its backoff.
                Err(e) => {
                    self.shared.health.redis_answered(false);
                    tracing::debug!(error = %e, "claiming the next task failed");
                    return;
                }
            }
        }
    }
}

/// Lets the running tasks finish for up to `drain`, then fires `release` so the rest are
/// given back to their queues; returns when every runner has reported.
async fn drain(shared: &Shared, drain: Duration, mut tasks: JoinSet<()>) {
    shared.health.start_draining();
    tracing::info!(
        in_flight = shared.health.in_flight(),
        ?drain,
        "stopped claiming; draining"
    );
    let release = shared.release.clone();
    let deadline = tokio::spawn(async move {
        tokio::time::sleep(drain).await;
        release.cancel();
    });
    while tasks.join_next().await.is_some() {}
    deadline.abort();
    shared.release.cancel();
}

/// Waits before the next claim after `e`. A partition count that differs from the
/// key prefix's does not heal by itself (the process must be restarted with the right
/// count), so it is logged as an error with its whole message, and retried less often.
async fn redis_trouble(shared: &Shared, e: &QueueError) {
    shared.health.redis_answered(false);
    let pause = match e {
        QueueError::Layout { .. } => {
            tracing::error!(error = %e, "claiming refused: wrong partition count; retrying");
            LAYOUT_RETRY
        }
        _ => {
            tracing::warn!(error = %e, "claiming failed; retrying");
            Duration::from_millis(500)
        }
    };
    tokio::time::sleep(pause).await;
}

/// Pause between claims while the partition count is wrong.
const LAYOUT_RETRY: Duration = Duration::from_secs(5);

/// Keeps this executor's registry entry fresh, with its in-flight count for the operator.
async fn registry_loop(
    shared: Arc<Shared>,
    config: RunnerConfig,
    started_at: u64,
    stop: CancellationToken,
) {
    let host = hostname();
    let every = (config.consumer.lease / 3).max(Duration::from_millis(200));
    loop {
        let info = WorkerInfo {
            id: config.worker_id.clone(),
            host: host.clone(),
            pod: config.pod_name.clone(),
            queues: config.consumer.queues.clone(),
            concurrency: config.concurrency,
            in_flight: shared.health.in_flight(),
            started_at_ms: started_at,
            last_seen_ms: 0,
            draining: stop.is_cancelled(),
        };
        if let Err(e) = shared
            .broker
            .beat_worker(&info, config.consumer.lease)
            .await
        {
            tracing::debug!(error = %e, "worker heartbeat failed");
        }
        tokio::time::sleep(every).await;
    }
}

/// Reaps expired leases and promotes due retries. Every executor runs it; the scripts make
/// concurrent passes harmless. Each pass also keeps the outage clock with this executor's
/// lease, so reaping waits after a time when nobody could reach Redis.
async fn maintenance_loop(
    broker: Broker,
    every: Duration,
    lease: Duration,
    done: CancellationToken,
) {
    let mut holding = false;
    loop {
        match broker.maintain_for(lease).await {
            Ok(m) if m.requeued + m.failed > 0 => {
                holding = false;
                tracing::info!(
                    requeued = m.requeued,
                    failed = m.failed,
                    "reaped expired leases"
                )
            }
            Ok(m) if m.held_until_ms.is_some() => {
                if !holding {
                    tracing::info!(
                        until_ms = m.held_until_ms,
                        "nobody reached Redis for a while; reaping waits a lease for executors to heartbeat"
                    );
                }
                holding = true;
            }
            Ok(_) if holding => {
                holding = false;
                tracing::info!("reaping resumed after an outage");
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "maintenance pass failed"),
        }
        tokio::select! {
            _ = done.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// How one run of a task ended, before the queue is told.
enum Outcome {
    /// The backend returned a result.
    Finished(serde_json::Value),
    /// The backend returned an error (or its runner crashed).
    Failed(BackendError),
    /// The task ran past its timeout.
    TimedOut,
    /// A cancel was asked for while it ran.
    Canceled,
    /// Another executor holds the task now; nothing may be reported.
    LeaseLost,
    /// The drain ended before the task did: give it back.
    Released,
}

/// When the claim call that took a task ran: the task's trace shows it as a span.
#[derive(Debug, Clone, Copy)]
struct ClaimCall {
    start: SystemTime,
    end: SystemTime,
}

impl ClaimCall {
    fn starting() -> Self {
        let now = SystemTime::now();
        ClaimCall {
            start: now,
            end: now,
        }
    }

    fn ended(self) -> Self {
        ClaimCall {
            end: SystemTime::now(),
            ..self
        }
    }
}

/// Runs one claimed task to exactly one reported outcome.
///
/// With traces on, the task's span continues the trace the task was submitted under (the
/// time it waited in its queue is the gap after the submission's span), links to the span
/// of its first attempt that was retried, and holds the claim, the backend call and the
/// storing of the outcome.
async fn run_task(shared: &Shared, mut claimed: Claimed, lease_len: Duration, claim: ClaimCall) {
    let span = tracing::info_span!(
        "task",
        otel.kind = "consumer",
        id = %claimed.task.id,
        kind = %claimed.task.kind(),
        attempt = claimed.task.attempts,
        outcome = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    if let Some(trace) = &claimed.trace {
        telemetry::set_parent(&span, trace);
    }
    if let Some(first) = &claimed.first_attempt {
        telemetry::add_link(&span, first);
    }
    claimed.lease.span = telemetry::traceparent_of(&span);
    telemetry::record_child(&span, "claim", claim.start, claim.end);
    run_task_inner(shared, claimed, lease_len)
        .instrument(span)
        .await
}

async fn run_task_inner(shared: &Shared, claimed: Claimed, lease_len: Duration) {
    // The payload is moved into the backend call, not cloned: one copy per task in flight.
    let Claimed {
        task,
        payload,
        lease,
        ..
    } = claimed;
    let kind = task.kind();
    shared.health.task_started();
    shared.metrics.in_flight.inc();
    let started = Instant::now();

    let (cx, mut progress) = TaskContext::for_task(task.id.clone(), task.attempts);
    let cx = cx.with_gate(shared.gate.clone());
    let answer = cx.answer_text();
    let timeout = task.timeout;
    // A panicking backend fails this task instead of the executor. Caught in place rather
    // than on a task of its own: the call is raced below and dropped when it loses, and a
    // spawn would cost a hand-off between threads on every task. The payload moves into the
    // call: an image payload is the task's largest allocation, and one copy of it is enough.
    let work = std::panic::AssertUnwindSafe(
        call_backend(
            &shared.broker,
            shared.backend.as_ref(),
            payload,
            &cx,
            timeout,
        )
        .instrument(tracing::info_span!("backend")),
    )
    .catch_unwind();

    let heartbeat = async {
        let every = (lease_len / 3).max(Duration::from_millis(50));
        let mut wait = every;
        let mut failing = false;
        loop {
            tokio::time::sleep(wait).await;
            let p = progress.borrow_and_update().clone();
            match shared.broker.heartbeat(&lease, Some(&p)).await {
                Ok(hb) if hb.cancel_requested => return Outcome::Canceled,
                Ok(_) => {
                    if failing {
                        tracing::info!("heartbeat renewed the lease after Redis was unreachable");
                    }
                    failing = false;
                    wait = every;
                }
                Err(QueueError::LeaseLost(_)) | Err(QueueError::NotFound(_)) => {
                    return Outcome::LeaseLost;
                }
                // Redis unreachable: keep working; the lease is still ours when it is back
                // (reaping is held after an outage), as long as the first heartbeat after the
                // return comes soon. So retry often, well within a lease, not once a third.
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "heartbeat failed; retrying until Redis answers");
                    }
                    failing = true;
                    wait = heartbeat_retry(lease_len);
                }
            }
        }
    };

    let outcome = tokio::select! {
        r = work => match r {
            Ok(Ok(value)) => Outcome::Finished(value),
            Ok(Err(e)) => Outcome::Failed(e),
            Err(panic) => Outcome::Failed(BackendError::permanent(kinds::INTERNAL, format!("task runner crashed: {}", panic_message(&*panic)))),
        },
        o = heartbeat => o,
        stop = publish::publish_loop(&shared.broker, &lease, &answer) => match stop {
            Stop::Canceled => Outcome::Canceled,
            Stop::LeaseLost => Outcome::LeaseLost,
        },
        _ = tokio::time::sleep(timeout) => Outcome::TimedOut,
        _ = shared.release.cancelled() => Outcome::Released,
    };
    if let Outcome::Finished(_) = outcome {
        // The rest of the answer goes out before the result, so the pieces add up to it
        // by the time the task is seen finished.
        if let Err(e) = publish::publish_pending(&shared.broker, &lease, &answer).await {
            tracing::debug!(error = %e, "publishing the last answer text failed");
        }
    }

    let label = report(shared, &lease, outcome)
        .instrument(tracing::info_span!("store outcome"))
        .await;
    let span = tracing::Span::current();
    span.record("outcome", label);
    if !matches!(label, "finished" | "canceled" | "released") {
        span.record("otel.status_code", "ERROR");
    }
    shared.metrics.record(kind, label, started.elapsed());
    shared.health.task_ended();
    shared.metrics.in_flight.dec();
}

/// How soon a failed heartbeat is tried again: often enough that the first one after Redis
/// returns comes a small fraction of a lease later.
fn heartbeat_retry(lease: Duration) -> Duration {
    (lease / 10).clamp(Duration::from_millis(20), Duration::from_millis(500))
}

/// The message a panic was raised with, when it is text.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic")
}

/// Tells the queue how the task ended; returns the outcome label for metrics.
///
/// The label is where the task went, as the queue decided it: a retryable error on the last
/// attempt is `failed`, not `retried`, and anything stopped after a cancel is `canceled`.
async fn report(shared: &Shared, lease: &ragpool_queue::Lease, outcome: Outcome) -> &'static str {
    let b = &shared.broker;
    let result = match outcome {
        Outcome::Finished(value) => retry_redis(shared, lease, || b.complete(lease, &value))
            .await
            .map(|_| "finished"),
        Outcome::Failed(e) => {
            let retry = match &e {
                BackendError::Retryable { retry_after, .. } => Retry::Retryable(*retry_after),
                BackendError::Permanent { .. } => Retry::Permanent,
            };
            let error = TaskError::new(e.kind(), e.message());
            tracing::warn!(kind = e.kind(), error = e.message(), "task failed");
            retry_redis(shared, lease, || b.fail(lease, &error, retry))
                .await
                .map(|outcome| match outcome {
                    FailOutcome::Delayed { .. } => "retried",
                    FailOutcome::Failed => "failed",
                    FailOutcome::Canceled => "canceled",
                })
        }
        Outcome::TimedOut => {
            let error = TaskError::new("timeout", "the task ran past its timeout");
            retry_redis(shared, lease, || {
                b.fail(lease, &error, Retry::Retryable(None))
            })
            .await
            .map(|outcome| match outcome {
                FailOutcome::Delayed { .. } | FailOutcome::Failed => "timeout",
                FailOutcome::Canceled => "canceled",
            })
        }
        Outcome::Canceled => {
            let error = TaskError::new("canceled", "canceled while running");
            retry_redis(shared, lease, || b.fail(lease, &error, Retry::Permanent))
                .await
                .map(|_| "canceled")
        }
        Outcome::Released => retry_redis(shared, lease, || b.release(lease))
            .await
            .map(|outcome| match outcome {
                ReleaseOutcome::Requeued => "released",
                ReleaseOutcome::Canceled => "canceled",
            }),
        Outcome::LeaseLost => Ok("lease_lost"),
    };
    match result {
        Ok(label) => label,
        Err(QueueError::LeaseLost(_)) => {
            tracing::warn!(
                "lease lost before the outcome was stored; another executor has the task"
            );
            "lease_lost"
        }
        Err(e) => {
            tracing::error!(error = %e, "could not store the outcome; the lease will expire and the task run again");
            "unreported"
        }
    }
}

/// Retries a report while Redis is unreachable: losing a finished result to an outage would
/// mean running the task again. The lease is still ours when Redis is back (reaping is held
/// for a lease after an outage), so the retries go on until Redis answers, each wait well
/// under a lease; only past the drain deadline does the executor give up after a few tries,
/// since it is about to exit and the lease's expiry brings the task back.
async fn retry_redis<T, F, Fut>(
    shared: &Shared,
    lease: &ragpool_queue::Lease,
    mut call: F,
) -> Result<T, QueueError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, QueueError>>,
{
    let cap = (lease.duration / 4).clamp(Duration::from_millis(20), Duration::from_secs(2));
    let mut wait = Duration::from_millis(100).min(cap);
    let mut tries = 0;
    loop {
        match call().await {
            Err(e) if e.is_unavailable() && (tries < 8 || !shared.release.is_cancelled()) => {
                if tries == 0 {
                    tracing::warn!(error = %e, "storing the outcome failed; retrying");
                }
                tries += 1;
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(cap);
            }
            other => return other,
        }
    }
}

/// Calls the backend with the task's payload, after filling an answer's context from the
/// analysis task it names. `timeout` bounds the wait for that task.
async fn call_backend(
    broker: &Broker,
    backend: &dyn Backend,
    payload: Payload,
    cx: &TaskContext,
    timeout: Duration,
) -> Result<serde_json::Value, BackendError> {
    let payload = match payload {
        Payload::CompleteAnswer(mut req) => {
            if let Some(id) = req.context_task_id.clone() {
                let context = context_from_task(broker, &id, cx, timeout).await?;
                req.context = Some(match req.context.take() {
                    Some(own) => format!("{own}\n\n{context}"),
                    None => context,
                });
            }
            Payload::CompleteAnswer(req)
        }
        other => other,
    };
    backend.run(&payload, cx).await
}

/// The text of an image-analysis task, used as an answer's context.
///
/// An analysis that is still queued or running is waited for (woken by its events, not by
/// polling) while this task keeps its lease. Retrying instead would spend this task's attempts
/// on the analysis's running time, and the API accepts answers whose analysis has not
/// finished. The task's own timeout, a cancel and a drain stop the wait like any backend call.
async fn context_from_task(
    broker: &Broker,
    id: &str,
    cx: &TaskContext,
    wait: Duration,
) -> Result<String, BackendError> {
    let id: TaskId = id
        .parse()
        .map_err(|_| BackendError::bad_input(format!("context task id {id:?} is not a task id")))?;
    let unavailable = |e: QueueError| {
        BackendError::retryable(
            kinds::BACKEND_UNAVAILABLE,
            format!("reading context task {id}: {e}"),
            None,
        )
    };
    let missing =
        || BackendError::bad_input(format!("context task {id} does not exist or has expired"));
    let mut task = broker
        .get(&id)
        .await
        .map_err(unavailable)?
        .ok_or_else(missing)?;
    if !task.state.is_terminal() {
        cx.progress(0, &format!("waiting for image analysis {id}"));
        task = broker
            .wait_for_end(&id, wait)
            .await
            .map_err(unavailable)?
            .ok_or_else(missing)?;
    }
    match task.state {
        TaskState::Finished => {
            let result = task.result.unwrap_or_default();
            Ok(result
                .get("summary")
                .and_then(|s| s.as_str())
                .map(str::to_owned)
                .unwrap_or_else(|| result.to_string()))
        }
        TaskState::Failed | TaskState::Canceled => Err(BackendError::permanent(
            "dependency_failed",
            format!("context task {id} ended {}", task.state),
        )),
        _ => Err(BackendError::retryable(
            "dependency_pending",
            format!("context task {id} did not finish within this task's timeout"),
            None,
        )),
    }
}

/// This machine's name, for the worker registry.
pub fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}
