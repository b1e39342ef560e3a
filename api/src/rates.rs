//! Throughput of each queue, derived from the totals in successive stats snapshots.
//!
//! Redis keeps only running totals, so a rate needs two readings. Each `/api/queue/stats`
//! request records one (at most one per second is kept, for at most five minutes) and the
//! rate is taken against the oldest reading still kept. The first request after start has
//! no rate yet. Each API replica keeps its own window; all read the same totals.

use std::collections::{HashMap, VecDeque};

use ragpool_queue::{QueueStats, WorkerInfo};

/// Readings older than this are dropped.
const WINDOW_MS: u64 = 5 * 60 * 1000;
/// Readings closer together than this are not kept, and a rate needs at least this span.
const MIN_SPAN_MS: u64 = 1000;

/// Running totals of one queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Totals {
    pub enqueued: u64,
    pub finished: u64,
    pub failed: u64,
}

/// Per-second rates over `window_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, utoipa::ToSchema)]
pub struct Rates {
    pub window_seconds: f64,
    pub enqueued_per_second: f64,
    pub finished_per_second: f64,
    pub failed_per_second: f64,
}

#[derive(Debug)]
struct Reading {
    at_ms: u64,
    totals: HashMap<String, Totals>,
}

impl Totals {
    /// Each queue's running totals in a stats reading.
    pub fn of(stats: &[QueueStats]) -> HashMap<String, Totals> {
        stats
            .iter()
            .map(|q| {
                let t = Totals {
                    enqueued: q.total_enqueued,
                    finished: q.total_finished,
                    failed: q.total_failed,
                };
                (q.queue.clone(), t)
            })
            .collect()
    }
}

/// The share of the workers' slots that are busy; `None` when no worker is live.
pub fn utilization(workers: &[WorkerInfo]) -> Option<f64> {
    let capacity: u64 = workers.iter().map(|w| u64::from(w.concurrency)).sum();
    let busy: u64 = workers.iter().map(|w| u64::from(w.in_flight)).sum();
    (capacity > 0).then(|| busy as f64 / capacity as f64)
}

/// The kept readings.
#[derive(Debug, Default)]
pub struct RateWindow {
    readings: VecDeque<Reading>,
}

impl RateWindow {
    /// Records a reading taken at `at_ms` (Redis time) and returns each queue's rates
    /// against the oldest kept reading, for queues that have one at least a second older.
    pub fn record(
        &mut self,
        at_ms: u64,
        totals: HashMap<String, Totals>,
    ) -> HashMap<String, Rates> {
        while self
            .readings
            .front()
            .is_some_and(|r| r.at_ms + WINDOW_MS < at_ms)
        {
            self.readings.pop_front();
        }
        let mut rates = HashMap::new();
        if let Some(oldest) = self.readings.front() {
            let span_ms = at_ms.saturating_sub(oldest.at_ms);
            if span_ms >= MIN_SPAN_MS {
                let secs = span_ms as f64 / 1000.0;
                for (queue, now) in &totals {
                    let Some(then) = oldest.totals.get(queue) else {
                        continue;
                    };
                    // Totals only grow; a drop means Redis lost data, so report zero.
                    let per_s = |now: u64, then: u64| now.saturating_sub(then) as f64 / secs;
                    rates.insert(
                        queue.clone(),
                        Rates {
                            window_seconds: secs,
                            enqueued_per_second: per_s(now.enqueued, then.enqueued),
                            finished_per_second: per_s(now.finished, then.finished),
                            failed_per_second: per_s(now.failed, then.failed),
                        },
                    );
                }
            }
        }
        let newest = self.readings.back().map(|r| r.at_ms);
        if newest.is_none_or(|n| at_ms >= n + MIN_SPAN_MS) {
            self.readings.push_back(Reading { at_ms, totals });
        }
        rates
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(enqueued: u64, finished: u64, failed: u64) -> HashMap<String, Totals> {
        HashMap::from([(
            "q".to_string(),
            Totals {
                enqueued,
                finished,
                failed,
            },
        )])
    }

    #[test]
    fn rates_need_two_readings_a_second_apart() {
        let mut w = RateWindow::default();
        assert!(w.record(10_000, totals(0, 0, 0)).is_empty());
        assert!(w.record(10_500, totals(5, 0, 0)).is_empty());
        let r = w.record(20_000, totals(100, 50, 10))["q"];
        assert_eq!(r.window_seconds, 10.0);
        assert_eq!(r.enqueued_per_second, 10.0);
        assert_eq!(r.finished_per_second, 5.0);
        assert_eq!(r.failed_per_second, 1.0);
    }

    #[test]
    fn old_readings_drop_out_and_drops_read_as_zero() {
        let mut w = RateWindow::default();
        w.record(0, totals(1000, 0, 0));
        w.record(WINDOW_MS - 60_000, totals(10, 0, 0));
        // The first reading is now out of the window; the second is the base.
        let r = w.record(WINDOW_MS + 1, totals(10, 0, 0))["q"];
        assert_eq!(r.window_seconds, 60.001);
        assert_eq!(r.enqueued_per_second, 0.0);
        let mut w = RateWindow::default();
        w.record(0, totals(1000, 0, 0));
        assert_eq!(
            w.record(2000, totals(1, 0, 0))["q"].enqueued_per_second,
            0.0
        );
    }
}
