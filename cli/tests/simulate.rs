//! `ragpool simulate`: the engine against queueing theory, the simulated operator against the
//! operator's policy, every sample trace with both policies, and the command itself.

use std::path::{Path, PathBuf};
use std::process::Command;

use ragpool_cli::simulate::engine::{self, Outcome};
use ragpool_cli::simulate::report::Waits;
use ragpool_cli::simulate::rng::Rng;
use ragpool_cli::simulate::scalers::Ragpool;
use ragpool_cli::simulate::service::ServiceTime;
use ragpool_cli::simulate::{Scenario, load_pool, load_trace, trace};
use ragpool_operator::policy::{History, desired_replicas};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn traces() -> PathBuf {
    repo().join("examples/traces")
}

fn sample_traces() -> Vec<PathBuf> {
    let mut all: Vec<PathBuf> = std::fs::read_dir(traces())
        .expect("examples/traces")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "csv"))
        .collect();
    all.sort();
    all
}

/// Erlang C: the probability that an arrival waits in an M/M/c queue with offered load `a`.
fn erlang_c(c: u32, a: f64) -> f64 {
    let mut term = 1.0;
    let mut sum = 1.0;
    for k in 1..c {
        term *= a / f64::from(k);
        sum += term;
    }
    let last = term * a / f64::from(c);
    let rho = a / f64::from(c);
    let top = last / (1.0 - rho);
    top / (sum + top)
}

#[test]
fn a_fixed_pool_matches_erlang_c() {
    // Three pods of two slots (c = 6), λ = 5/s, exponential service of mean 1 s: ρ = 0.83.
    let (c, lambda, mean) = (6u32, 5.0, 1.0);
    let spec = load_pool(
        &traces().join("pool.yaml"),
        &[
            "scaling.minReplicas=3".into(),
            "scaling.maxReplicas=3".into(),
            "executor.concurrency=2".into(),
        ],
    )
    .expect("pool");
    let seconds = 60_000u64;
    let text = format!("0,{seconds},{}\n", (lambda * seconds as f64) as u64);
    let arrivals = trace::parse(&text, &mut Rng::new(7, 1)).expect("trace");
    let scenario = Scenario::new(spec, &arrivals, &ServiceTime::Exponential { mean }, 0.0, 7);
    let outcome = scenario.ragpool();
    assert!(outcome.scale_events.is_empty(), "a fixed pool never scales");
    assert_eq!(outcome.completed as usize, arrivals.len());

    let a = lambda * mean;
    let p_wait = erlang_c(c, a);
    let decay = f64::from(c) / mean - lambda; // P(W > t) = C·e^(−decay·t)
    let expected_mean = p_wait / decay;
    let expected_p95 = (p_wait / 0.05).ln() / decay;
    let waits = Waits::of(&outcome.waits_us);
    let waited = outcome.waits_us.iter().filter(|w| **w > 0).count() as f64;
    let p_waited = waited / outcome.waits_us.len() as f64;
    assert!(
        (p_waited - p_wait).abs() < 0.02,
        "P(wait) {p_waited:.4} vs Erlang C {p_wait:.4}"
    );
    assert!(
        (waits.mean / expected_mean - 1.0).abs() < 0.06,
        "mean wait {:.4} vs {expected_mean:.4}",
        waits.mean
    );
    assert!(
        (waits.p95 / expected_p95 - 1.0).abs() < 0.06,
        "p95 wait {:.4} vs {expected_p95:.4}",
        waits.p95
    );
}

#[test]
fn the_simulated_operator_decides_as_the_operator_does() {
    let spec = load_pool(&traces().join("pool.yaml"), &[]).expect("pool");
    for path in sample_traces() {
        let arrivals = load_trace(&path, 3).expect("trace");
        let scenario = Scenario::new(
            spec.clone(),
            &arrivals,
            &ServiceTime::Exponential { mean: 3.0 },
            10.0,
            3,
        );
        let mut scaler = Ragpool::new(spec.clone(), scenario.model.start_replicas).with_log();
        let outcome = engine::run(&scenario.model, &scenario.tasks, &mut scaler);
        let log = scaler.log();
        assert!(log.len() > 10, "{}: the operator looked", path.display());

        // The operator's pass: the policy on the observation and the history it keeps.
        let mut history = History::new(scenario.model.start_replicas);
        let mut changes = Vec::new();
        for (observation, decision) in log {
            let operator = desired_replicas(Some(observation), &spec, &history);
            assert_eq!(
                &operator,
                decision,
                "{} at {} ms",
                path.display(),
                observation.at_ms
            );
            if operator.replicas != history.current_replicas {
                changes.push((
                    observation.at_ms,
                    history.current_replicas,
                    operator.replicas,
                ));
            }
            history.record(Some(observation), &spec, &operator);
        }
        // And the simulated pool did exactly what was decided.
        let carried_out: Vec<(u64, i32, i32)> = outcome
            .scale_events
            .iter()
            .map(|e| (e.at_us / 1000, e.from, e.to))
            .collect();
        assert_eq!(carried_out, changes, "{}", path.display());
    }
}

fn check_run(path: &Path, outcome: &Outcome, tasks: usize) {
    let name = format!("{} with {}", path.display(), outcome.policy);
    assert_eq!(outcome.waits_us.len(), tasks, "{name}");
    assert_eq!(outcome.completed as usize, tasks, "{name}: every task ran");
    assert_eq!(outcome.final_replicas, 0, "{name}: back to zero at the end");
    assert!(outcome.pod_us > 0, "{name}");
    assert!(
        outcome.peak_replicas >= 1 && outcome.peak_replicas <= 20,
        "{name}"
    );
    assert!(!outcome.timeline.is_empty(), "{name}");
    for e in &outcome.scale_events {
        assert!(e.to >= 0, "{name}: {e:?}");
        if e.cause == "ScaleUpLimit" {
            assert!(
                e.to > e.from,
                "{name}: a scale-up limit lowered the count: {e:?}"
            );
        }
    }
}

#[test]
fn every_sample_trace_runs_with_both_policies() {
    let paths = sample_traces();
    let names: Vec<String> = paths
        .iter()
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect();
    assert_eq!(names, ["burst", "diurnal", "onoff", "steady"]);
    let spec = load_pool(&traces().join("pool.yaml"), &[]).expect("pool");
    for path in &paths {
        let arrivals = load_trace(path, 1).expect("trace");
        let scenario = Scenario::new(
            spec.clone(),
            &arrivals,
            &ServiceTime::Exponential { mean: 3.0 },
            10.0,
            1,
        );
        check_run(path, &scenario.ragpool(), arrivals.len());
        check_run(path, &scenario.keda(), arrivals.len());
    }
}

/// Every sample trace with `minReplicas` 0, 1, 2 and 5: ragpool's p95 wait against the
/// KEDA-style baseline's, and its pod-seconds against the baseline's: ragpool's p95 is at
/// most the first bound times the baseline's, its pod-seconds at most the second times.
#[test]
fn warm_and_cold_pools_beat_the_baseline_on_every_trace() {
    // (trace, minReplicas, bound on the p95 ratio, bound on the pod-seconds ratio)
    let cases: [(&str, i32, f64, f64); 16] = [
        ("steady", 0, 0.5, 1.0),
        ("diurnal", 0, 0.5, 1.0),
        ("burst", 0, 0.5, 1.0),
        ("onoff", 0, 0.5, 1.0),
        ("steady", 1, 0.5, 1.0),
        ("diurnal", 1, 0.5, 1.0),
        ("burst", 1, 0.5, 1.0),
        ("onoff", 1, 0.5, 1.0),
        // Two warm replicas keep up with `steady` and most of `diurnal` on their own; the
        // baseline then only pays for them, while halving their wait takes a third pod most
        // of the time (1.052 and 1.0002 of the baseline's pod-seconds; docs/autoscaling.md).
        ("steady", 2, 0.5, 1.06),
        ("diurnal", 2, 0.5, 1.001),
        ("burst", 2, 0.5, 1.0),
        ("onoff", 2, 0.5, 1.0),
        // Five replicas never scale on these three: both policies run the same pool.
        ("steady", 5, 1.0, 1.0),
        ("diurnal", 5, 1.0, 1.0),
        // Capacity-bound: 20 replicas ready 10 s after the first look drain 500 tasks no
        // faster than this.
        ("burst", 5, 0.56, 1.0),
        ("onoff", 5, 1.0, 1.0),
    ];
    for (name, min, ratio, cost) in cases {
        let spec = load_pool(
            &traces().join("pool.yaml"),
            &[format!("scaling.minReplicas={min}")],
        )
        .expect("pool");
        let arrivals = load_trace(&traces().join(format!("{name}.csv")), 1).expect("trace");
        let scenario = Scenario::new(
            spec,
            &arrivals,
            &ServiceTime::Exponential { mean: 3.0 },
            10.0,
            1,
        );
        let mut runs = vec![scenario.ragpool(), scenario.keda()];
        ragpool_cli::simulate::same_end(&mut runs);
        let (ours, theirs) = (Waits::of(&runs[0].waits_us), Waits::of(&runs[1].waits_us));
        let label = format!(
            "{name} at minReplicas {min}: p95 {:.2} s vs {:.2} s, {} vs {} pod-µs",
            ours.p95, theirs.p95, runs[0].pod_us, runs[1].pod_us
        );
        assert!(ours.p95 <= ratio * theirs.p95, "{label}");
        assert!(
            runs[0].pod_us as f64 <= cost * runs[1].pod_us as f64,
            "{label}"
        );
    }
}

/// A model server that serves 16 calls at full speed behind a burst of 500 tasks: without a
/// limit both policies scale to `maxReplicas` and every call slows down; with
/// `maxConcurrent: 16` ragpool stops at the executors the limit keeps busy (`BackendLimit`)
/// and finishes the burst as fast at a fraction of the pod-seconds, while the baseline, which
/// does not know the limit, still scales to 20 pods that wait for permits.
#[test]
fn a_backend_limit_caps_the_pool_at_no_cost_in_latency() {
    let arrivals = load_trace(&traces().join("burst.csv"), 1).expect("trace");
    let scenario = |sets: &[String]| {
        let spec = load_pool(&traces().join("pool.yaml"), sets).expect("pool");
        Scenario::new(
            spec,
            &arrivals,
            &ServiceTime::Exponential { mean: 3.0 },
            10.0,
            1,
        )
        .with_backend_capacity(Some(16))
    };
    let open = scenario(&[]);
    let limited = scenario(&["executor.backend.limits.maxConcurrent=16".into()]);
    let mut runs = vec![open.ragpool(), limited.ragpool(), limited.keda()];
    ragpool_cli::simulate::same_end(&mut runs);
    let [open, ours, theirs] = &runs[..] else {
        unreachable!()
    };
    assert_eq!(open.peak_replicas, 20);
    // ceil(16 calls / 4 per replica) + 1.
    assert_eq!(ours.peak_replicas, 5);
    assert!(ours.scale_events.iter().any(|e| e.cause == "BackendLimit"));
    assert_eq!(theirs.peak_replicas, 20);
    let p95 = |o: &Outcome| Waits::of(&o.latencies_us).p95;
    let label = format!(
        "latency p95 {:.1} s limited vs {:.1} s open; pod-µs {} limited, {} open, {} baseline",
        p95(ours),
        p95(open),
        ours.pod_us,
        open.pod_us,
        theirs.pod_us
    );
    assert_eq!(ours.completed, 500, "{label}");
    assert!(p95(ours) <= 1.05 * p95(open), "{label}");
    assert!(ours.pod_us * 2 <= open.pod_us, "{label}");
    assert!(ours.pod_us * 4 <= theirs.pod_us, "{label}");
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let spec = load_pool(&traces().join("pool.yaml"), &[]).expect("pool");
    let run = |seed| {
        let arrivals = load_trace(&traces().join("onoff.csv"), seed).expect("trace");
        let service = ServiceTime::LogNormal {
            mean: 3.0,
            sigma: 0.7,
        };
        Scenario::new(spec.clone(), &arrivals, &service, 10.0, seed).ragpool()
    };
    assert_eq!(run(5), run(5));
    assert_ne!(run(5).waits_us, run(6).waits_us);
}

fn ragpool_bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ragpool"));
    cmd.current_dir(repo());
    cmd
}

#[test]
fn the_command_prints_a_table_json_and_charts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = [
        "simulate",
        "--pool",
        "examples/traces/pool.yaml",
        "--trace",
        "examples/traces/burst.csv",
        "--baseline",
        "keda",
    ];
    let out = ragpool_bin().args(base).output().expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    for row in [
        "wait p95 (s)",
        "pod-seconds",
        "ragpool",
        "keda",
        "scale events:",
    ] {
        assert!(table.contains(row), "{row} missing from\n{table}");
    }

    let svg = dir.path().join("burst.svg");
    let png = dir.path().join("burst.png");
    for chart in [&svg, &png] {
        let out = ragpool_bin()
            .args(base)
            .arg("--json")
            .arg("--plot")
            .arg(chart)
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        let runs = json["runs"].as_array().expect("runs");
        let policies: Vec<&str> = runs.iter().filter_map(|r| r["policy"].as_str()).collect();
        assert_eq!(policies, ["ragpool", "keda"]);
        assert_eq!(json["setup"]["tasks"], 500);
        for run in runs {
            assert_eq!(run["tasks"], 500);
            assert!(run["wait_seconds"]["p95"].as_f64().is_some());
            assert!(!run["scale_events"].as_array().expect("events").is_empty());
            let timeline = run["timeline"].as_array().expect("timeline");
            assert!(
                timeline
                    .iter()
                    .all(|s| s["started"].is_u64() && s.get("in_flight").is_none())
            );
            assert!(timeline.iter().any(|s| s["started"].as_u64() > Some(0)));
        }
    }
    let svg_text = std::fs::read_to_string(&svg).expect("svg");
    assert!(svg_text.contains("<svg") && svg_text.contains("replicas"));
    let png_image = image::open(&png).expect("a PNG");
    assert_eq!((png_image.width(), png_image.height()), (1000, 640));
}

#[test]
fn bad_flags_are_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad_trace = dir.path().join("bad.csv");
    std::fs::write(&bad_trace, "0,1\n1,many\n").expect("write");
    let bad_trace = bad_trace.display().to_string();
    let cases: [(&[&str], &str); 7] = [
        (&["--service-time", "gamma:2"], "--service-time"),
        (&["--backend-capacity", "0"], "--backend-capacity"),
        (
            &["--set", "scaling.scaleUp.windowSeconds=15"],
            "scaling.scaleUp.windowSeconds is not a field",
        ),
        (&["--trace", &bad_trace], "--trace"),
        (&["--set", "scaling.maxReplicas"], "--set"),
        (&["--set", "scaling.maxReplicas=-1"], "--pool"),
        (&["--plot", "chart.pdf"], "--plot"),
    ];
    for (extra, flag) in cases {
        let mut args = vec![
            "simulate",
            "--pool",
            "examples/traces/pool.yaml",
            "--trace",
            "examples/traces/burst.csv",
        ];
        args.extend_from_slice(extra);
        let out = ragpool_bin().args(&args).output().expect("run");
        assert!(!out.status.success(), "{extra:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(flag), "{extra:?}: {stderr}");
    }
}
