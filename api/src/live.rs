//! The dashboard's data: one snapshot of every queue (counts, rates, wait and processing
//! times, a chart's history) and every worker, and the shared reader that keeps it fresh
//! for every open dashboard of this replica.
//!
//! Cost on Redis: a snapshot is one `SMEMBERS`, two script calls per queue (the stats
//! snapshot and the history sample) and one for the worker registry. The [`Live`] reader
//! takes one snapshot per [`SNAPSHOT_EVERY`] while at least one dashboard is subscribed, and
//! none while nobody watches, no matter how many browsers are open: they all receive the same
//! serialized snapshot through one `watch` channel.
//!
//! History: each snapshot offers its queue's running totals as the sample of the current
//! minute, stored in Redis with `HSETNX` (see `queue/lua/history.lua`). Whichever replica is
//! first in a minute writes it, so several replicas (and restarts) share one history, and a
//! minute's throughput is the difference between two samples over their measured time apart.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ragpool_queue::stats::OwnerStats;
use ragpool_queue::{HistorySample, QueueStats, WorkerInfo};
use serde::Serialize;
use tokio::sync::watch;
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::rates::{Rates, Totals, utilization};
use crate::routes::view::rfc3339;
use crate::state::AppState;

/// How often the shared reader takes a snapshot while dashboards are open.
pub const SNAPSHOT_EVERY: Duration = Duration::from_secs(2);

/// Every queue and worker at one moment.
#[derive(Debug, Serialize, ToSchema)]
pub struct DashboardSnapshot {
    /// When it was taken (Redis server clock), RFC 3339 and milliseconds since the epoch.
    pub at: String,
    pub at_ms: u64,
    pub queues: Vec<DashboardQueue>,
    pub workers: Vec<WorkerRow>,
    /// Tasks in flight over the capacity of all live workers (0 to 1); absent with no workers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub utilization: Option<f64>,
    /// Seconds between snapshots of the live stream.
    pub refresh_seconds: f64,
    /// Each API key's queued and started tasks over every queue, by key name (never the
    /// key); keys with neither are left out. Empty when no keys are configured.
    pub owners: Vec<OwnerStats>,
}

/// One queue: its statistics, rates and the last hour's history.
#[derive(Debug, Serialize, ToSchema)]
pub struct DashboardQueue {
    #[serde(flatten)]
    pub stats: QueueStats,
    /// Per-second rates over this replica's recent readings; absent until it has two.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rates: Option<Rates>,
    /// One point per minute of the last hour, oldest first (minutes nobody sampled are
    /// missing).
    pub history: Vec<HistoryPoint>,
}

/// Throughput and wait of one minute.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, ToSchema)]
pub struct HistoryPoint {
    /// Start of the minute, milliseconds since the epoch.
    pub at_ms: u64,
    pub enqueued_per_minute: f64,
    pub finished_per_minute: f64,
    pub failed_per_minute: f64,
    /// Queue wait percentiles of the recent samples at that minute.
    pub wait_p50_ms: f64,
    pub wait_p95_ms: f64,
}

/// A live executor as the dashboard lists it. Differs from the registry record: times
/// are RFC 3339, and utilisation, heartbeat age and the silent flag are added.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkerRow {
    pub id: String,
    pub host: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    pub queues: Vec<String>,
    pub concurrency: u32,
    pub in_flight: u32,
    /// `in_flight / concurrency`, 0 to 1.
    pub utilization: f64,
    pub started_at: String,
    pub last_seen_at: String,
    /// Seconds since its last heartbeat (Redis server clock).
    pub seconds_since_heartbeat: f64,
    /// Not heard from for longer than a third of the worker TTL: stalled, or gone.
    pub silent: bool,
    /// Shutting down: it claims nothing more and finishes what it holds.
    pub draining: bool,
}

/// The workers as dashboard rows, at Redis time `now_ms`.
pub fn worker_rows(workers: Vec<WorkerInfo>, now_ms: u64, worker_ttl: Duration) -> Vec<WorkerRow> {
    let silent_after_ms = (worker_ttl.as_millis() / 3) as u64;
    workers
        .into_iter()
        .map(|w| {
            let age_ms = now_ms.saturating_sub(w.last_seen_ms);
            WorkerRow {
                utilization: if w.concurrency == 0 {
                    0.0
                } else {
                    f64::from(w.in_flight) / f64::from(w.concurrency)
                },
                seconds_since_heartbeat: age_ms as f64 / 1000.0,
                silent: age_ms > silent_after_ms,
                started_at: rfc3339(w.started_at_ms),
                last_seen_at: rfc3339(w.last_seen_ms),
                id: w.id,
                host: w.host,
                pod: w.pod,
                queues: w.queues,
                concurrency: w.concurrency,
                in_flight: w.in_flight,
                draining: w.draining,
            }
        })
        .collect()
}

/// Per-minute points from consecutive samples: the change of each total over the time
/// between the two samples, scaled to a minute.
pub fn history_points(samples: &[HistorySample]) -> Vec<HistoryPoint> {
    samples
        .windows(2)
        .filter_map(|pair| {
            let [a, b] = pair else { return None };
            let span_ms = b.at_ms.checked_sub(a.at_ms).filter(|s| *s > 0)?;
            let per_minute =
                |now: u64, then: u64| now.saturating_sub(then) as f64 * 60_000.0 / span_ms as f64;
            Some(HistoryPoint {
                at_ms: b.minute * 60_000,
                enqueued_per_minute: per_minute(b.enqueued, a.enqueued),
                finished_per_minute: per_minute(b.finished, a.finished),
                failed_per_minute: per_minute(b.failed, a.failed),
                wait_p50_ms: b.wait_p50_ms,
                wait_p95_ms: b.wait_p95_ms,
            })
        })
        .collect()
}

/// Reads a fresh snapshot from Redis.
pub async fn read(state: &AppState) -> Result<DashboardSnapshot, ApiError> {
    let broker = state.broker();
    let stats = broker.stats().await?;
    let workers = broker.workers(state.worker_ttl()).await?;
    let at_ms = match stats.iter().map(|q| q.at_ms).max() {
        Some(at) => at,
        None => broker.server_time_ms().await?,
    };
    let mut queues = Vec::with_capacity(stats.len());
    for q in &stats {
        let sample = HistorySample {
            minute: q.at_ms / 60_000,
            at_ms: q.at_ms,
            enqueued: q.total_enqueued,
            finished: q.total_finished,
            failed: q.total_failed,
            wait_p50_ms: q.wait.p50_ms,
            wait_p95_ms: q.wait.p95_ms,
            processing_p50_ms: q.processing.p50_ms,
        };
        queues.push(history_points(
            &broker.record_history(&q.queue, &sample).await?,
        ));
    }
    let mut rates = state
        .rates()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .record(at_ms, Totals::of(&stats));
    let busy_share = utilization(&workers);
    let owners = if state.keys().enabled() {
        broker.owner_stats().await?
    } else {
        Vec::new()
    };
    Ok(DashboardSnapshot {
        at: rfc3339(at_ms),
        at_ms,
        queues: stats
            .into_iter()
            .zip(queues)
            .map(|(stats, history)| DashboardQueue {
                rates: rates.remove(&stats.queue),
                stats,
                history,
            })
            .collect(),
        workers: worker_rows(workers, at_ms, state.worker_ttl()),
        utilization: busy_share,
        refresh_seconds: SNAPSHOT_EVERY.as_secs_f64(),
        owners,
    })
}

/// The latest snapshot as the JSON sent to every subscriber, or why it could not be read.
pub type Shared = Option<Arc<Result<String, String>>>;

/// The one snapshot reader of this process, running while anyone subscribes.
#[derive(Default)]
pub struct Live {
    slot: Mutex<Option<watch::Sender<Shared>>>,
}

impl Live {
    /// A receiver of every snapshot from now on; starts the reader when none runs.
    pub fn subscribe(&self, state: &AppState) -> watch::Receiver<Shared> {
        let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(tx) = slot.as_ref() {
            return tx.subscribe();
        }
        let (tx, rx) = watch::channel(None);
        *slot = Some(tx.clone());
        tokio::spawn(run(state.clone(), tx));
        rx
    }

    /// Called by the reader: stop when nobody listens any more. Decided under the lock that
    /// [`Live::subscribe`] takes, so a subscriber never joins a reader that is leaving.
    fn leave_if_unwatched(&self, tx: &watch::Sender<Shared>) -> bool {
        let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        if tx.receiver_count() == 0 {
            *slot = None;
            return true;
        }
        false
    }
}

async fn run(state: AppState, tx: watch::Sender<Shared>) {
    let shutdown = state.shutdown_token();
    let mut tick = tokio::time::interval(SNAPSHOT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => {
                state.live().leave_if_unwatched(&tx);
                return;
            }
        }
        if state.live().leave_if_unwatched(&tx) {
            return;
        }
        let value = match read(&state).await {
            Ok(snapshot) => serde_json::to_string(&snapshot).map_err(|e| e.to_string()),
            Err(e) => Err(e.message),
        };
        tx.send_replace(Some(Arc::new(value)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(minute: u64, at_ms: u64, finished: u64) -> HistorySample {
        HistorySample {
            minute,
            at_ms,
            finished,
            wait_p50_ms: 5.0,
            ..HistorySample::default()
        }
    }

    #[test]
    fn history_is_the_change_between_samples_per_minute() {
        let points = history_points(&[
            sample(10, 600_000, 100),
            // 90 more over 45 s: 120 per minute.
            sample(11, 645_000, 190),
            // A minute nobody sampled, then 60 over two minutes.
            sample(13, 765_000, 250),
        ]);
        assert_eq!(points.len(), 2);
        assert_eq!(points[0].at_ms, 660_000);
        assert_eq!(points[0].finished_per_minute, 120.0);
        assert_eq!(points[1].finished_per_minute, 30.0);
        assert_eq!(points[1].wait_p50_ms, 5.0);
        assert!(history_points(&[sample(1, 60_000, 1)]).is_empty());
    }

    #[test]
    fn silent_workers_are_those_not_heard_from_for_a_third_of_the_ttl() {
        let worker = |id: &str, seen: u64| WorkerInfo {
            id: id.into(),
            concurrency: 4,
            in_flight: 1,
            last_seen_ms: seen,
            ..WorkerInfo::default()
        };
        let rows = worker_rows(
            vec![worker("fresh", 95_000), worker("stale", 80_000)],
            100_000,
            Duration::from_secs(30),
        );
        assert_eq!(rows[0].seconds_since_heartbeat, 5.0);
        assert!(!rows[0].silent);
        assert!(rows[1].silent);
        assert_eq!(rows[1].utilization, 0.25);
    }
}
