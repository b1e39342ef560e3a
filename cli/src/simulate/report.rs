//! What a run comes to: wait percentiles, cost and scale events, as a terminal table (runs
//! side by side) or as JSON.

use std::fmt::Write as _;

use serde::Serialize;

use super::engine::{Outcome, Sample, ScaleEvent};

/// Seconds from microseconds.
fn secs(us: u64) -> f64 {
    us as f64 / 1_000_000.0
}

/// Queue-wait statistics, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Waits {
    pub mean: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Waits {
    /// Nearest-rank percentiles of `waits_us`.
    pub fn of(waits_us: &[u64]) -> Self {
        let mut sorted = waits_us.to_vec();
        sorted.sort_unstable();
        let rank = |p: f64| -> f64 {
            if sorted.is_empty() {
                return 0.0;
            }
            let i = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
            secs(sorted[i])
        };
        let mean = if sorted.is_empty() {
            0.0
        } else {
            sorted.iter().map(|w| *w as f64).sum::<f64>() / sorted.len() as f64 / 1_000_000.0
        };
        Self {
            mean,
            p50: rank(0.50),
            p95: rank(0.95),
            p99: rank(0.99),
            max: rank(1.0),
        }
    }
}

/// One run, summed up.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub policy: &'static str,
    pub tasks: usize,
    pub wait_seconds: Waits,
    /// Arrival to end, of the tasks that finished.
    pub latency_seconds: Waits,
    /// Tasks that waited longer than the target.
    pub over_target: u64,
    pub pod_seconds: f64,
    pub peak_replicas: i32,
    /// Tasks a pod handed back when its drain ran out.
    pub released: u64,
    /// When the pool settled (or the run was cut off), seconds from the start.
    pub end_seconds: f64,
    pub scale_event_count: usize,
}

impl Summary {
    pub fn of(outcome: &Outcome) -> Self {
        Self {
            policy: outcome.policy,
            tasks: outcome.waits_us.len(),
            wait_seconds: Waits::of(&outcome.waits_us),
            latency_seconds: Waits::of(&outcome.latencies_us),
            over_target: outcome.over_target,
            pod_seconds: outcome.pod_us as f64 / 1_000_000.0,
            peak_replicas: outcome.peak_replicas,
            released: outcome.released,
            end_seconds: secs(outcome.end_us),
            scale_event_count: outcome.scale_events.len(),
        }
    }
}

/// What the run was given, for the report's header.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Setup {
    pub trace: String,
    pub pool: String,
    pub tasks: usize,
    /// From the first to the last arrival.
    pub span_seconds: f64,
    pub service_time: String,
    pub startup_seconds: f64,
    pub seed: u64,
    pub target_wait_seconds: f64,
    /// The modelled backend, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<BackendSetup>,
}

/// The modelled backend, for the report's header.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BackendSetup {
    /// Calls served at once at full speed (`--backend-capacity`).
    pub capacity: Option<u32>,
    /// The pool's `maxConcurrent`.
    pub limit: Option<u32>,
}

#[derive(Serialize)]
struct JsonEvent<'a> {
    t: f64,
    from: i32,
    to: i32,
    cause: &'a str,
    reason: &'a str,
}

#[derive(Serialize)]
struct JsonSample {
    t: f64,
    queued: u64,
    started: u64,
    replicas: i32,
    ready: i32,
}

#[derive(Serialize)]
struct JsonRun<'a> {
    #[serde(flatten)]
    summary: Summary,
    scale_events: Vec<JsonEvent<'a>>,
    timeline: Vec<JsonSample>,
}

/// The report as JSON: the setup, then each run's summary, scale events and timeline.
pub fn json(setup: &Setup, outcomes: &[Outcome]) -> serde_json::Value {
    let runs: Vec<JsonRun> = outcomes
        .iter()
        .map(|o| JsonRun {
            summary: Summary::of(o),
            scale_events: o.scale_events.iter().map(json_event).collect(),
            timeline: o.timeline.iter().map(json_sample).collect(),
        })
        .collect();
    serde_json::json!({ "setup": setup, "runs": runs })
}

fn json_event(e: &ScaleEvent) -> JsonEvent<'_> {
    JsonEvent {
        t: secs(e.at_us),
        from: e.from,
        to: e.to,
        cause: &e.cause,
        reason: &e.reason,
    }
}

fn json_sample(s: &Sample) -> JsonSample {
    JsonSample {
        t: secs(s.at_us),
        queued: s.queued_max,
        started: s.started,
        replicas: s.replicas,
        ready: s.ready,
    }
}

/// Scale events listed per run in the table; `--json` has them all.
const EVENTS_SHOWN: usize = 12;

/// The report as a table: one column per run, then each run's first scale events.
pub fn table(setup: &Setup, outcomes: &[Outcome]) -> String {
    let summaries: Vec<Summary> = outcomes.iter().map(Summary::of).collect();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} ({} tasks over {:.0} s) on {}; service time {}, start-up {} s, seed {}",
        setup.trace,
        setup.tasks,
        setup.span_seconds,
        setup.pool,
        setup.service_time,
        setup.startup_seconds,
        setup.seed
    );
    if let Some(b) = setup.backend {
        let calls =
            |n: Option<u32>, none: &str| n.map_or(none.to_owned(), |n| format!("{n} calls"));
        let _ = writeln!(
            out,
            "backend: serves {} at full speed; pool limit {}",
            calls(b.capacity, "any number of calls"),
            calls(b.limit, "none"),
        );
    }
    let _ = writeln!(out);
    let mut row = |label: &str, cell: &dyn Fn(&Summary) -> String| {
        let _ = write!(out, "{label:<24}");
        for s in &summaries {
            let _ = write!(out, "{:>12}", cell(s));
        }
        let _ = writeln!(out);
    };
    row("", &|s| s.policy.to_owned());
    row("wait p50 (s)", &|s| format!("{:.1}", s.wait_seconds.p50));
    row("wait p95 (s)", &|s| format!("{:.1}", s.wait_seconds.p95));
    row("wait p99 (s)", &|s| format!("{:.1}", s.wait_seconds.p99));
    row("wait max (s)", &|s| format!("{:.1}", s.wait_seconds.max));
    if setup.backend.is_some() {
        // Claimed tasks may wait for a permit and calls slow down: the wait is not all.
        row("latency p50 (s)", &|s| {
            format!("{:.1}", s.latency_seconds.p50)
        });
        row("latency p95 (s)", &|s| {
            format!("{:.1}", s.latency_seconds.p95)
        });
    }
    row(&format!("waited > {} s", setup.target_wait_seconds), &|s| {
        s.over_target.to_string()
    });
    row("pod-seconds", &|s| format!("{:.0}", s.pod_seconds));
    row("peak replicas", &|s| s.peak_replicas.to_string());
    row("scale events", &|s| s.scale_event_count.to_string());
    row("handed back at drain", &|s| s.released.to_string());
    row("settled at (s)", &|s| format!("{:.0}", s.end_seconds));
    for o in outcomes {
        let _ = writeln!(out, "\n{} scale events:", o.policy);
        for e in o.scale_events.iter().take(EVENTS_SHOWN) {
            let _ = writeln!(
                out,
                "  {:>8.1} s  {:>3} → {:<3} {:<16} {}",
                secs(e.at_us),
                e.from,
                e.to,
                e.cause,
                e.reason
            );
        }
        if o.scale_events.len() > EVENTS_SHOWN {
            let _ = writeln!(
                out,
                "  … and {} more (--json lists them all)",
                o.scale_events.len() - EVENTS_SHOWN
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let waits: Vec<u64> = (1..=100).map(|s| s * 1_000_000).collect();
        let w = Waits::of(&waits);
        assert_eq!((w.p50, w.p95, w.p99, w.max), (50.0, 95.0, 99.0, 100.0));
        assert!((w.mean - 50.5).abs() < 1e-9);
        let none = Waits::of(&[]);
        assert_eq!(none.max, 0.0);
    }
}
