//! Makes the charts and tables of `docs/autoscaling.md`: ragpool against the KEDA-style
//! baseline on every sample trace, and a before/after run for each scaling knob.
//!
//!     cargo run -p ragpool-cli --example autoscaling_charts -- docs/img
//!
//! Charts go to the directory given; the Markdown tables are printed.

use std::path::{Path, PathBuf};

use ragpool_cli::simulate::engine::Outcome;
use ragpool_cli::simulate::plot::{Series, plot};
use ragpool_cli::simulate::report::Summary;
use ragpool_cli::simulate::service::ServiceTime;
use ragpool_cli::simulate::{Scenario, load_pool, load_trace, same_end};

const SEED: u64 = 1;
const STARTUP: f64 = 10.0;

struct Knob {
    file: &'static str,
    knob: &'static str,
    trace: &'static str,
    before: &'static [&'static str],
    after: &'static [&'static str],
}

const KNOBS: &[Knob] = &[
    Knob {
        file: "knob-target-queue-length",
        knob: "targetQueueLength 5 → 2",
        trace: "onoff",
        before: &[],
        after: &["scaling.targetQueueLength=2"],
    },
    Knob {
        file: "knob-mode",
        knob: "mode queueLength → targetWait (10 s)",
        trace: "onoff",
        before: &[],
        after: &["scaling.mode=targetWait"],
    },
    Knob {
        file: "knob-poll-seconds",
        knob: "pollSeconds 2 → 30",
        trace: "burst",
        before: &[],
        after: &["scaling.pollSeconds=30"],
    },
    Knob {
        file: "knob-min-replicas",
        knob: "minReplicas 0 → 1",
        trace: "onoff",
        before: &[],
        after: &["scaling.minReplicas=1"],
    },
    Knob {
        file: "knob-scale-up-step",
        knob: "scaleUp.maxPods 4 → 16 (at minReplicas 2)",
        trace: "burst",
        before: &["scaling.minReplicas=2"],
        after: &["scaling.minReplicas=2", "scaling.scaleUp.maxPods=16"],
    },
    Knob {
        file: "knob-cooldown",
        knob: "cooldownSeconds 300 → 60",
        trace: "onoff",
        before: &[],
        after: &["scaling.cooldownSeconds=60"],
    },
    Knob {
        file: "knob-scale-down-window",
        knob: "scaleDown window 60 s → 300 s",
        trace: "steady",
        before: &[],
        after: &["scaling.scaleDown.stabilizationWindowSeconds=300"],
    },
    Knob {
        file: "knob-scale-up-window",
        knob: "scaleUp window 0 s → 60 s",
        trace: "onoff",
        before: &[],
        after: &["scaling.scaleUp.stabilizationWindowSeconds=60"],
    },
    Knob {
        file: "knob-tolerance",
        knob: "tolerance 0.1 → 0.5",
        trace: "steady",
        before: &[],
        after: &["scaling.tolerance=0.5"],
    },
    Knob {
        file: "knob-max-replicas",
        knob: "maxReplicas 20 → 5",
        trace: "burst",
        before: &[],
        after: &["scaling.maxReplicas=5"],
    },
    Knob {
        file: "knob-concurrency",
        knob: "executor.concurrency 4 → 8",
        trace: "burst",
        before: &[],
        after: &["executor.concurrency=8"],
    },
];

fn scenario(root: &Path, trace: &str, sets: &[&str]) -> anyhow::Result<Scenario> {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    let spec = load_pool(&root.join("examples/traces/pool.yaml"), &sets)?;
    let arrivals = load_trace(&root.join(format!("examples/traces/{trace}.csv")), SEED)?;
    Ok(Scenario::new(
        spec,
        &arrivals,
        &ServiceTime::Exponential { mean: 3.0 },
        STARTUP,
        SEED,
    ))
}

fn cells(o: &Outcome) -> String {
    let s = Summary::of(o);
    format!(
        "{:.1} / {:.1} / {:.1} / {:.1} | {:.0}",
        s.wait_seconds.p50,
        s.wait_seconds.p95,
        s.wait_seconds.p99,
        s.wait_seconds.max,
        s.pod_seconds
    )
}

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = std::env::args()
        .nth(1)
        .map_or_else(|| root.join("docs/img"), PathBuf::from);
    std::fs::create_dir_all(&out)?;

    println!("| trace | policy | wait p50 / p95 / p99 / max (s) | pod-seconds |");
    println!("| --- | --- | --- | --- |");
    for trace in ["steady", "diurnal", "burst", "onoff"] {
        let sc = scenario(&root, trace, &[])?;
        let mut runs = vec![sc.ragpool(), sc.keda()];
        same_end(&mut runs);
        for o in &runs {
            println!("| {trace} | {} | {} |", o.policy, cells(o));
        }
        let series: Vec<Series> = runs
            .iter()
            .map(|o| Series {
                label: o.policy.to_owned(),
                outcome: o,
            })
            .collect();
        plot(
            &out.join(format!("trace-{trace}.svg")),
            &format!("{trace}.csv: ragpool's defaults against KEDA's"),
            &series,
        )?;
    }

    println!();
    println!(
        "| knob | trace | before: p50 / p95 / p99 / max (s) | pod-s | after: p50 / p95 / p99 / max (s) | pod-s |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    for k in KNOBS {
        let mut runs = vec![
            scenario(&root, k.trace, k.before)?.ragpool(),
            scenario(&root, k.trace, k.after)?.ragpool(),
        ];
        same_end(&mut runs);
        println!(
            "| {} | {} | {} | {} |",
            k.knob,
            k.trace,
            cells(&runs[0]),
            cells(&runs[1])
        );
        let series = vec![
            Series {
                label: if k.before.is_empty() {
                    "defaults".into()
                } else {
                    k.before.join(", ").replace("scaling.", "")
                },
                outcome: &runs[0],
            },
            Series {
                label: k.knob.into(),
                outcome: &runs[1],
            },
        ];
        plot(
            &out.join(format!("{}.svg", k.file)),
            &format!("{}.csv: {}", k.trace, k.knob),
            &series,
        )?;
    }
    Ok(())
}
