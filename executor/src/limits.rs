//! The pool-wide limits on calls to the backend's server, as the job loop applies them: the
//! Redis-backed [`CallGate`] over a [`BackendLimiter`] (see `ragpool_queue::limits` and
//! `docs/executor.md`).
//!
//! A call waits for a permit while its task keeps its lease (the job loop's heartbeat runs
//! beside the call), so waiting costs no attempt. The wait does not poll hot: a pause or a
//! spent rate budget is waited out for exactly the time Redis names; a full pool is retried
//! with a jittered backoff from 10 ms to 200 ms, and a permit released in this executor
//! wakes its own waiters at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use clap::Args;
use ragpool_queue::{
    Adaptive, Admission, BackendLimiter, BackendLimits, Broker, Permit, QueueError,
};
use rand::Rng;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::backend::{BackendError, CallGate, CallOutcome, CallPass, CallReport};
use crate::metrics::Metrics;

/// The limit key when none is given; the operator passes the pool's name.
pub const DEFAULT_LIMIT_KEY: &str = "default";

/// The longest wait between two tries for a permit while the pool is full.
const MAX_FULL_BACKOFF: Duration = Duration::from_millis(200);

/// The longest a paused or rate-limited call sleeps before asking again, so that a pause
/// lifted early (or a rate raised) is noticed.
const MAX_TIMED_WAIT: Duration = Duration::from_secs(1);

/// `--backend-*` limit flags.
#[derive(Debug, Clone, Args)]
pub struct LimitSettings {
    /// Calls to the backend's server running at once across every executor sharing the
    /// limit key (0: no limit). With --backend-adaptive, the ceiling of the adaptive limit.
    #[arg(long, env = "RAGPOOL_BACKEND_MAX_CONCURRENT", default_value_t = 0)]
    pub backend_max_concurrent: u32,

    /// Calls to the backend's server started per minute across every executor sharing the
    /// limit key (0: no limit).
    #[arg(long, env = "RAGPOOL_BACKEND_REQUESTS_PER_MINUTE", default_value_t = 0)]
    pub backend_requests_per_minute: u32,

    /// Model tokens per minute across every executor sharing the limit key (openai backend;
    /// 0: no limit): each request's estimate is taken before it starts and corrected by the
    /// response's `usage.total_tokens`.
    #[arg(long, env = "RAGPOOL_BACKEND_TOKENS_PER_MINUTE", default_value_t = 0)]
    pub backend_tokens_per_minute: u32,

    /// Move the concurrency limit between --backend-min-concurrent and
    /// --backend-max-concurrent by how calls go (AIMD: halve on 429/503/timeouts, add one
    /// per limit's worth of successful calls).
    #[arg(long, env = "RAGPOOL_BACKEND_ADAPTIVE")]
    pub backend_adaptive: bool,

    /// The floor of the adaptive limit.
    #[arg(long, env = "RAGPOOL_BACKEND_MIN_CONCURRENT", default_value_t = 1)]
    pub backend_min_concurrent: u32,

    /// Under --backend-adaptive, a call slower than this many times the server's no-load
    /// latency counts as a sign of overload.
    #[arg(long, env = "RAGPOOL_BACKEND_LATENCY_FACTOR", default_value_t = ragpool_queue::limits::DEFAULT_LATENCY_FACTOR)]
    pub backend_latency_factor: f64,

    /// Executors naming the same key share one set of limits (and one pause): pools that
    /// call one model server name one key.
    #[arg(long, env = "RAGPOOL_BACKEND_LIMIT_KEY", default_value = DEFAULT_LIMIT_KEY)]
    pub backend_limit_key: String,
}

impl LimitSettings {
    /// The limits, or `None` when no limit is set (calls then skip Redis).
    pub fn limits(&self, permit_lease: Duration) -> Option<BackendLimits> {
        if self.backend_max_concurrent == 0
            && self.backend_requests_per_minute == 0
            && self.backend_tokens_per_minute == 0
        {
            return None;
        }
        Some(BackendLimits {
            max_concurrent: self.backend_max_concurrent,
            requests_per_minute: self.backend_requests_per_minute,
            tokens_per_minute: self.backend_tokens_per_minute,
            adaptive: self.backend_adaptive.then_some(Adaptive {
                min: self.backend_min_concurrent,
                latency_factor: self.backend_latency_factor,
            }),
            permit_lease,
        })
    }
}

/// The Redis-backed gate of one executor.
pub struct PoolGate {
    limiter: BackendLimiter,
    worker: String,
    /// Fired when a permit of this executor goes back, to wake its own waiters.
    released: Arc<Notify>,
    metrics: Arc<Metrics>,
}

impl PoolGate {
    /// The gate of limit key `key` under `limits`, for executor `worker`.
    pub fn new(
        broker: &Broker,
        key: &str,
        limits: BackendLimits,
        worker: &str,
        metrics: Arc<Metrics>,
    ) -> Result<PoolGate, QueueError> {
        Ok(PoolGate {
            limiter: broker.backend_limiter(key, limits)?,
            worker: worker.to_owned(),
            released: Arc::new(Notify::new()),
            metrics,
        })
    }
}

/// A wait of about `d`, spread by up to a tenth so waiters do not return in step.
fn jittered(d: Duration) -> Duration {
    let spread = (d / 10).max(Duration::from_millis(1));
    d + rand::rng().random_range(Duration::ZERO..=spread)
}

#[async_trait]
impl CallGate for PoolGate {
    async fn enter(&self, tokens: u32) -> Result<Box<dyn CallPass>, BackendError> {
        let id = format!(
            "{}:{}",
            self.worker,
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let started = Instant::now();
        let mut backoff = Duration::from_millis(10);
        let mut failing = false;
        let mut paused = false;
        loop {
            let wait = match self.limiter.try_acquire_tokens(&id, tokens).await {
                Ok(Admission::Granted(permit)) => {
                    self.metrics
                        .backend_granted(started.elapsed(), permit.limit, permit.in_use);
                    return Ok(Box::new(Pass::start(self, permit)));
                }
                Ok(Admission::Paused(d)) => {
                    if !paused {
                        tracing::info!(
                            wait_ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
                            "calls to the backend paused"
                        );
                    }
                    paused = true;
                    jittered(d.min(MAX_TIMED_WAIT))
                }
                Ok(Admission::RateLimited(d)) => jittered(d.min(MAX_TIMED_WAIT)),
                Ok(Admission::Full { .. }) => {
                    let wait = jittered(backoff);
                    backoff = (backoff * 2).min(MAX_FULL_BACKOFF);
                    tokio::select! {
                        _ = self.released.notified() => continue,
                        _ = tokio::time::sleep(wait) => continue,
                    }
                }
                // Without Redis no permit can be counted: calls wait rather than storm the
                // server, within the task's own timeout.
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "cannot reach the backend limits; calls wait");
                    }
                    failing = true;
                    Duration::from_millis(500)
                }
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// A held permit: renewed while the call runs, given back when it ends.
struct Pass {
    limiter: BackendLimiter,
    permit: Option<Permit>,
    released: Arc<Notify>,
    metrics: Arc<Metrics>,
    started: Instant,
    renewal: JoinHandle<()>,
}

impl Pass {
    fn start(gate: &PoolGate, permit: Permit) -> Pass {
        let renewal = {
            let (limiter, permit) = (gate.limiter.clone(), permit.clone());
            let every = (limiter.limits().permit_lease / 3).max(Duration::from_millis(30));
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    match limiter.renew(&permit).await {
                        Ok(true) => {}
                        Ok(false) => tracing::info!("a backend permit had expired; held again"),
                        Err(e) => tracing::debug!(error = %e, "renewing a backend permit failed"),
                    }
                }
            })
        };
        Pass {
            limiter: gate.limiter.clone(),
            permit: Some(permit),
            released: gate.released.clone(),
            metrics: gate.metrics.clone(),
            started: Instant::now(),
            renewal,
        }
    }
}

async fn give_back(
    limiter: &BackendLimiter,
    permit: &Permit,
    report: CallReport,
    released: &Notify,
    metrics: &Metrics,
) {
    match limiter
        .release_used(
            permit,
            report.outcome,
            report.latency,
            report.pause,
            report.tokens_used,
        )
        .await
    {
        Ok(r) => metrics.backend_released(r.limit, r.in_use, report.pause.is_some()),
        Err(e) => {
            tracing::debug!(error = %e, "releasing a backend permit failed; its lease expires")
        }
    }
    released.notify_waiters();
}

#[async_trait]
impl CallPass for Pass {
    async fn finish(mut self: Box<Self>, report: CallReport) {
        self.renewal.abort();
        if let Some(permit) = self.permit.take() {
            if report.pause.is_some() {
                tracing::warn!(pause = ?report.pause, "the backend asked to wait; pausing the pool's calls");
            }
            give_back(
                &self.limiter,
                &permit,
                report,
                &self.released,
                &self.metrics,
            )
            .await;
        }
    }
}

impl Drop for Pass {
    /// A call abandoned mid-way (timeout, cancel, drain) gives its permit back too.
    fn drop(&mut self) {
        self.renewal.abort();
        if let Some(permit) = self.permit.take() {
            let (limiter, released, metrics) = (
                self.limiter.clone(),
                self.released.clone(),
                self.metrics.clone(),
            );
            let report = CallReport {
                outcome: CallOutcome::Other,
                latency: self.started.elapsed(),
                pause: None,
                tokens_used: None,
            };
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    give_back(&limiter, &permit, report, &released, &metrics).await;
                });
            }
        }
    }
}
