//! `ragpool simulate`: replays an arrival trace against a pool's autoscaling policy (the
//! operator's own `desired_replicas`) and, with `--baseline keda`, against a KEDA-style one,
//! and reports queue waits, cost and scale events.
//!
//! - [`trace`]: arrival traces; [`service`]: service-time distributions; [`rng`]: the seeded
//!   generator behind both.
//! - [`engine`]: the discrete-event simulation of queue, pods and autoscaler.
//! - [`scalers`]: the policies ([`scalers::Ragpool`], [`scalers::Keda`]).
//! - [`report`]: table and JSON; [`plot`]: `--plot` charts.
//!
//! [`Scenario`] ties them together for the command, the tests and the benchmark.

pub mod engine;
pub mod plot;
pub mod report;
pub mod rng;
pub mod scalers;
pub mod service;
pub mod trace;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use ragpool_operator::crd::RagWorkerPoolSpec;

use engine::{BackendModel, Outcome, PoolModel, Task};
use rng::Rng;
use scalers::{Keda, KedaSettings, Ragpool};
use service::ServiceTime;

/// `ragpool simulate`.
#[derive(Debug, Clone, Args)]
pub struct SimulateArgs {
    /// The pool: a RagWorkerPool YAML file, as given to kubectl.
    #[arg(long, value_name = "FILE")]
    pub pool: PathBuf,

    /// Arrivals, CSV: rows of `T` (one task), `T,COUNT` (tasks in that second) or
    /// `START,END,COUNT`, times in seconds.
    #[arg(long, value_name = "FILE")]
    pub trace: PathBuf,

    /// How long a task runs: `fixed:S` (or `S`), `exp:MEAN`, `lognormal:MEAN,SIGMA`, or
    /// `file:PATH` (one duration in seconds per line, drawn from).
    #[arg(long, value_name = "DIST", default_value = "exp:3")]
    pub service_time: String,

    /// Seconds from a pod's creation until it claims its first task.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    pub startup_seconds: f64,

    /// Model a backend (model server) that serves this many calls at once at full speed: a
    /// call started while more are running takes longer in proportion. The pool's
    /// `executor.backend.limits.maxConcurrent` then holds calls back as the executors do.
    /// Unset: calls never slow down.
    #[arg(long, value_name = "CALLS")]
    pub backend_capacity: Option<u32>,

    /// Also run the trace through a baseline policy and show both side by side.
    #[arg(long, value_enum)]
    pub baseline: Option<Baseline>,

    /// Seed of the arrival placement and service times: the same seed, the same run.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// Change a field of the pool's spec for this run (repeatable), e.g.
    /// `--set scaling.targetQueueLength=2` or `--set executor.concurrency=8`.
    #[arg(long = "set", value_name = "FIELD=VALUE")]
    pub set: Vec<String>,

    /// Print the report as JSON (with every scale event and the timeline).
    #[arg(long)]
    pub json: bool,

    /// Draw queue depth and replicas over time into FILE (`.svg` or `.png`).
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
}

/// A policy to compare against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Baseline {
    /// KEDA's Redis list scaler with its defaults and the HPA's default behaviour.
    Keda,
}

/// Why `ragpool simulate` could not run.
#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    /// A flag's value (or the file it names) is unusable.
    #[error("{flag}: {message}")]
    Flag { flag: &'static str, message: String },
    #[error("cannot read {what} {path}: {source}")]
    File {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Printing the report failed (stdout closed).
    #[error("writing the report: {0}")]
    Output(#[source] std::io::Error),
}

fn flag(flag: &'static str, message: impl Into<String>) -> SimulateError {
    SimulateError::Flag {
        flag,
        message: message.into(),
    }
}

/// Reads a pool file (a whole RagWorkerPool or only its spec) and applies `sets`.
pub fn load_pool(path: &Path, sets: &[String]) -> Result<RagWorkerPoolSpec, SimulateError> {
    let text = std::fs::read_to_string(path).map_err(|source| SimulateError::File {
        what: "the --pool file",
        path: path.to_path_buf(),
        source,
    })?;
    let pool_error = |e: &dyn std::fmt::Display| flag("--pool", format!("{}: {e}", path.display()));
    let mut doc: serde_yaml::Value = serde_yaml::from_str(&text).map_err(|e| pool_error(&e))?;
    let mut spec = match doc.get_mut("spec") {
        Some(spec) => std::mem::take(spec),
        None => doc,
    };
    for set in sets {
        apply_set(&mut spec, set)?;
    }
    let spec: RagWorkerPoolSpec = serde_yaml::from_value(spec).map_err(|e| pool_error(&e))?;
    spec.validate().map_err(|e| pool_error(&e))?;
    // A misspelt field would be dropped without a word and the run would not be the one
    // asked for: every field set must be one the spec kept.
    let kept = serde_yaml::to_value(&spec).map_err(|e| pool_error(&e))?;
    for set in sets {
        if let Some((path, value)) = set.split_once('=')
            && value.trim() != "null"
            && !has_field(&kept, path)
        {
            return Err(flag(
                "--set",
                format!("{set:?}: {path} is not a field of a RagWorkerPool's spec"),
            ));
        }
    }
    Ok(spec)
}

/// The value has a field at the dotted `path`.
fn has_field(value: &serde_yaml::Value, path: &str) -> bool {
    path.split('.')
        .try_fold(value, |node, key| node.get(key))
        .is_some()
}

/// Sets the field at a dotted path (`scaling.targetQueueLength=2`), the value read as YAML.
fn apply_set(spec: &mut serde_yaml::Value, set: &str) -> Result<(), SimulateError> {
    let (path, value) = set
        .split_once('=')
        .ok_or_else(|| flag("--set", format!("{set:?} is not FIELD=VALUE")))?;
    let value: serde_yaml::Value = serde_yaml::from_str(value)
        .map_err(|e| flag("--set", format!("{set:?}: the value is not YAML: {e}")))?;
    let mut node = spec;
    for key in path.split('.') {
        if key.is_empty() {
            return Err(flag("--set", format!("{set:?}: empty field name")));
        }
        if node.is_null() {
            *node = serde_yaml::Value::Mapping(serde_yaml::Mapping::new());
        }
        let map = node.as_mapping_mut().ok_or_else(|| {
            flag(
                "--set",
                format!("{set:?}: {key} is inside a value that is not a map"),
            )
        })?;
        node = map
            .entry(serde_yaml::Value::String(key.to_owned()))
            .or_insert(serde_yaml::Value::Null);
    }
    *node = value;
    Ok(())
}

/// Reads a trace file into arrival times (µs from its start).
pub fn load_trace(path: &Path, seed: u64) -> Result<Vec<u64>, SimulateError> {
    let text = std::fs::read_to_string(path).map_err(|source| SimulateError::File {
        what: "the --trace file",
        path: path.to_path_buf(),
        source,
    })?;
    let arrivals = trace::parse(&text, &mut Rng::new(seed, ARRIVAL_STREAM))
        .map_err(|e| flag("--trace", format!("{}: {e}", path.display())))?;
    if arrivals.is_empty() {
        return Err(flag("--trace", format!("{}: no arrivals", path.display())));
    }
    Ok(arrivals)
}

const ARRIVAL_STREAM: u64 = 1;
const SERVICE_STREAM: u64 = 2;
/// Timeline samples a run aims for (at least one a second).
const SAMPLES: u64 = 1500;
/// How long past the last arrival a run that never settles goes on.
const TAIL_LIMIT_US: u64 = 4 * 3600 * 1_000_000;

/// One pool and one trace, ready to run through any policy.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub spec: RagWorkerPoolSpec,
    pub tasks: Vec<Task>,
    pub model: PoolModel,
}

impl Scenario {
    /// Draws each task's service time (seeded) and sizes the pool model from `spec`.
    pub fn new(
        spec: RagWorkerPoolSpec,
        arrivals_us: &[u64],
        service: &ServiceTime,
        startup_seconds: f64,
        seed: u64,
    ) -> Self {
        let mut rng = Rng::new(seed, SERVICE_STREAM);
        let tasks: Vec<Task> = arrivals_us
            .iter()
            .map(|&arrival_us| Task {
                arrival_us,
                service_us: (service.sample(&mut rng) * trace::US).round() as u64,
            })
            .collect();
        let span = arrivals_us.last().copied().unwrap_or(0);
        let sample_us = (span / SAMPLES).div_ceil(1_000_000).max(1) * 1_000_000;
        let scaling = &spec.scaling;
        let model = PoolModel {
            concurrency: u32::try_from(spec.executor.concurrency.max(1)).unwrap_or(1),
            startup_us: (startup_seconds.max(0.0) * trace::US) as u64,
            drain_us: u64::try_from(spec.executor.drain_seconds.max(0)).unwrap_or(0) * 1_000_000,
            start_replicas: scaling.idle_replicas.unwrap_or(scaling.min_replicas),
            target_wait_us: (scaling.target_wait_seconds * trace::US) as u64,
            sample_us,
            tail_limit_us: TAIL_LIMIT_US,
            backend: None,
        };
        let mut scenario = Self { spec, tasks, model };
        scenario.set_backend(None);
        scenario
    }

    /// Models a backend that serves `capacity` calls at once at full speed (`None`: any
    /// number) behind the pool's own limit on concurrent calls, if it has one. An adaptive
    /// limit is modelled at its ceiling, `maxConcurrent`.
    pub fn with_backend_capacity(mut self, capacity: Option<u32>) -> Self {
        self.set_backend(capacity);
        self
    }

    fn set_backend(&mut self, capacity: Option<u32>) {
        let limit = self
            .spec
            .executor
            .backend
            .limits
            .as_ref()
            .and_then(|l| l.max_concurrent());
        self.model.backend =
            (capacity.is_some() || limit.is_some()).then_some(BackendModel { capacity, limit });
    }

    /// The run with ragpool's operator.
    pub fn ragpool(&self) -> Outcome {
        let mut scaler = Ragpool::new(self.spec.clone(), self.model.start_replicas);
        engine::run(&self.model, &self.tasks, &mut scaler)
    }

    /// The run with the KEDA-style baseline.
    pub fn keda(&self) -> Outcome {
        let scaling = &self.spec.scaling;
        let mut scaler = Keda::new(KedaSettings::defaults(
            scaling.min_replicas,
            scaling.max_replicas,
        ));
        engine::run(&self.model, &self.tasks, &mut scaler)
    }
}

/// Carries every run on to the latest end, so their costs cover the same time.
pub fn same_end(outcomes: &mut [Outcome]) {
    let end = outcomes.iter().map(|o| o.end_us).max().unwrap_or(0);
    for o in outcomes {
        o.extend_to(end);
    }
}

/// Runs `ragpool simulate`.
pub fn run(args: SimulateArgs) -> Result<ExitCode, SimulateError> {
    if !(args.startup_seconds.is_finite() && args.startup_seconds >= 0.0) {
        return Err(flag("--startup-seconds", "must be a number of seconds ≥ 0"));
    }
    let spec = load_pool(&args.pool, &args.set)?;
    let service = ServiceTime::parse(&args.service_time)?;
    let arrivals = load_trace(&args.trace, args.seed)?;
    if args.backend_capacity == Some(0) {
        return Err(flag("--backend-capacity", "must be at least 1 call"));
    }
    let scenario = Scenario::new(spec, &arrivals, &service, args.startup_seconds, args.seed)
        .with_backend_capacity(args.backend_capacity);
    let mut outcomes = vec![scenario.ragpool()];
    if args.baseline == Some(Baseline::Keda) {
        outcomes.push(scenario.keda());
    }
    same_end(&mut outcomes);
    let setup = report::Setup {
        trace: args.trace.display().to_string(),
        pool: args.pool.display().to_string(),
        tasks: arrivals.len(),
        span_seconds: arrivals.last().copied().unwrap_or(0) as f64 / trace::US,
        service_time: service.to_string(),
        startup_seconds: args.startup_seconds,
        seed: args.seed,
        target_wait_seconds: scenario.spec.scaling.target_wait_seconds,
        backend: scenario.model.backend.map(|b| report::BackendSetup {
            capacity: b.capacity,
            limit: b.limit,
        }),
    };
    if let Some(path) = &args.plot {
        let series: Vec<plot::Series> = outcomes
            .iter()
            .map(|o| plot::Series {
                label: o.policy.to_owned(),
                outcome: o,
            })
            .collect();
        let name = args
            .trace
            .file_name()
            .map_or_else(|| setup.trace.clone(), |n| n.to_string_lossy().into_owned());
        plot::plot(path, &format!("{name}: queue and replicas"), &series)?;
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        let json = report::json(&setup, &outcomes);
        let text = serde_json::to_string_pretty(&json).unwrap_or_else(|_| json.to_string());
        writeln!(out, "{text}").map_err(SimulateError::Output)?;
    } else {
        write!(out, "{}", report::table(&setup, &outcomes)).map_err(SimulateError::Output)?;
    }
    Ok(ExitCode::SUCCESS)
}
