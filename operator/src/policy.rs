//! The scaling policy: a pure function from what the queues look like, the pool's spec and
//! the pool's recent history to a replica count and the reason for it.
//!
//! The steps, in order (see `docs/operator.md` for the formulas):
//! 1. `paused`, or no observation (Redis unreachable): keep the current replicas.
//! 2. A raw recommendation from the mode: `queueLength` or `targetWait` (Little's law).
//! 3. Tolerance: a change within `tolerance` of the current count is noise.
//! 4. Bounds: at most `maxReplicas`; at least `minReplicas` (and 1 while there is work or
//!    was some within the cooldown); `idleReplicas` (or zero) only after the cooldown.
//! 5. Stabilisation windows like the HorizontalPodAutoscaler's: up to the lowest and down to
//!    the highest recommendation within the window.
//! 6. From zero at once: a pool at zero with work skips the scale-up window.
//! 7. Step limits per period, except from zero and for a backlog: a pool at zero has no pods
//!    whose start the limit could pace, and a queue the current pods cannot drain within
//!    `targetWaitSeconds` is work, not noise. Either goes to the whole recommendation in one
//!    pass, once per period. Short of a backlog, a scale-up waits for the pods of the last
//!    one to start while the arrivals keep no more slots busy than the pool will have.
//!
//! [`desired_replicas`] runs steps 2 to 7 as methods of one decision in the making
//! (`raw_recommendation`, `tolerate`, `bound`, `stabilise`, `start_from_zero`,
//! `step_limit`), each adding its part of the reason. The [`Decision`] keeps each step's
//! count and words ([`Step`]), the raw recommendation, and the step that settled the count
//! ([`Cause`], a closed set): the operator's status, metrics and `ragpool explain` all show
//! the same decision.
//!
//! All times come from the observations (the Redis server clock), so the function is
//! deterministic and the same inputs always give the same decision.

use std::collections::VecDeque;

use crate::crd::{DECISION_MESSAGE_MAX, RagWorkerPoolSpec, ScalingMode, ScalingRules, ScalingSpec};
use crate::observe::{ArrivalSample, Observation, arrival_rate};
use crate::status::truncate;

/// Defaults of the scale-up rules.
const UP_WINDOW_SECONDS: i32 = 0;
const UP_MAX_PODS: i32 = 4;
const UP_MAX_PERCENT: i32 = 100;
/// Defaults of the scale-down rules.
const DOWN_WINDOW_SECONDS: i32 = 60;
const DOWN_MAX_PERCENT: i32 = 100;
const PERIOD_SECONDS: i32 = 15;
/// The arrival rate is measured over this span, so one burst between two polls does not
/// swing it.
const ARRIVAL_SPAN_MS: u64 = 30_000;
/// Ceil with slack, so 2.0000000001 replicas' worth of work is 2 and not 3.
const EPSILON: f64 = 1e-9;

/// What the policy decided and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Replicas the Deployment should have.
    pub replicas: i32,
    /// Human-readable reason, in words and numbers, for status, events and logs: the notes of
    /// every step, joined by `; `.
    pub reason: String,
    /// The count was held back by `minReplicas`/`maxReplicas` or a step limit.
    pub limited: bool,
    /// The bounded recommendation this decision started from, remembered for the
    /// stabilisation windows; `None` when no recommendation was computed (paused, no data).
    pub recommendation: Option<i32>,
    /// The raw recommendation in replicas' worth of work, before tolerance, bounds, windows
    /// and limits; `None` when none was computed.
    pub raw: Option<f64>,
    /// The step that settled the count.
    pub cause: Cause,
    /// Each step in order, with the count after it and what it added to the reason.
    pub steps: Vec<Step>,
}

/// One step of a decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The step's name, as `docs/operator.md` numbers them.
    pub name: &'static str,
    /// The count after this step; `None` for the raw recommendation, which is a fraction
    /// ([`Decision::raw`]).
    pub replicas: Option<i32>,
    /// What the step added to the reason; empty when it changed nothing.
    pub notes: Vec<String>,
}

/// The step of the policy that settled a decision's count. A closed set: it labels the
/// operator's decision metrics and names each entry of `status.recentDecisions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cause {
    /// `scaling.paused`: the count is kept.
    Paused,
    /// The queues could not be read: the count is kept.
    NoData,
    /// The count follows the work.
    Load,
    /// The work is within `tolerance` of the current count: kept.
    Tolerance,
    /// Capped at `maxReplicas`.
    MaxReplicas,
    /// Capped at the replicas the backend's concurrency limit keeps busy.
    BackendLimit,
    /// Raised to `minReplicas`.
    MinReplicas,
    /// Raised to one replica because work is queued, delayed or started.
    WorkPending,
    /// Idle, but within `cooldownSeconds` of the last work: kept.
    Cooldown,
    /// Idle past the cooldown: down to `idleReplicas` (or `minReplicas`).
    Idle,
    /// The scale-up stabilisation window held the count down.
    ScaleUpWindow,
    /// The scale-down stabilisation window held the count up.
    ScaleDownWindow,
    /// A pool at zero with work started at once, skipping the scale-up window.
    FromZero,
    /// A backlog the current pods cannot drain within `targetWaitSeconds`: the scale-up step
    /// limit was skipped.
    Backlog,
    /// Pods of the last scale-up have not started yet, the queue is no backlog even counting
    /// their slots, and the tasks arriving keep no more slots busy than the pool will have:
    /// the scale-up waits for them.
    PodsStarting,
    /// The scale-up step limit of the period.
    ScaleUpLimit,
    /// The scale-down step limit of the period.
    ScaleDownLimit,
}

impl Cause {
    /// Every cause, in the order of the policy's steps.
    pub const ALL: [Cause; 17] = [
        Cause::Paused,
        Cause::NoData,
        Cause::Load,
        Cause::Tolerance,
        Cause::MaxReplicas,
        Cause::BackendLimit,
        Cause::MinReplicas,
        Cause::WorkPending,
        Cause::Cooldown,
        Cause::Idle,
        Cause::ScaleUpWindow,
        Cause::ScaleDownWindow,
        Cause::FromZero,
        Cause::Backlog,
        Cause::PodsStarting,
        Cause::ScaleUpLimit,
        Cause::ScaleDownLimit,
    ];

    /// The CamelCase name, as Kubernetes reasons are written (`status.recentDecisions`).
    pub fn name(self) -> &'static str {
        match self {
            Cause::Paused => "Paused",
            Cause::NoData => "NoData",
            Cause::Load => "Load",
            Cause::Tolerance => "Tolerance",
            Cause::MaxReplicas => "MaxReplicas",
            Cause::BackendLimit => "BackendLimit",
            Cause::MinReplicas => "MinReplicas",
            Cause::WorkPending => "WorkPending",
            Cause::Cooldown => "Cooldown",
            Cause::Idle => "Idle",
            Cause::ScaleUpWindow => "ScaleUpWindow",
            Cause::ScaleDownWindow => "ScaleDownWindow",
            Cause::FromZero => "FromZero",
            Cause::Backlog => "Backlog",
            Cause::PodsStarting => "PodsStarting",
            Cause::ScaleUpLimit => "ScaleUpLimit",
            Cause::ScaleDownLimit => "ScaleDownLimit",
        }
    }

    /// The snake_case name, as Prometheus label values are written.
    pub fn label(self) -> &'static str {
        match self {
            Cause::Paused => "paused",
            Cause::NoData => "no_data",
            Cause::Load => "load",
            Cause::Tolerance => "tolerance",
            Cause::MaxReplicas => "max_replicas",
            Cause::BackendLimit => "backend_limit",
            Cause::MinReplicas => "min_replicas",
            Cause::WorkPending => "work_pending",
            Cause::Cooldown => "cooldown",
            Cause::Idle => "idle",
            Cause::ScaleUpWindow => "scale_up_window",
            Cause::ScaleDownWindow => "scale_down_window",
            Cause::FromZero => "from_zero",
            Cause::Backlog => "backlog",
            Cause::PodsStarting => "pods_starting",
            Cause::ScaleUpLimit => "scale_up_limit",
            Cause::ScaleDownLimit => "scale_down_limit",
        }
    }

    /// A bound, window or limit that keeps the count from where the work alone puts it.
    pub fn holds(self) -> bool {
        matches!(
            self,
            Cause::MaxReplicas
                | Cause::BackendLimit
                | Cause::MinReplicas
                | Cause::Cooldown
                | Cause::Idle
                | Cause::ScaleUpWindow
                | Cause::ScaleDownWindow
                | Cause::PodsStarting
                | Cause::ScaleUpLimit
                | Cause::ScaleDownLimit
        )
    }
}

/// Turns step rules with unset fields into numbers, per direction.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Rules {
    window_ms: u64,
    max_pods: Option<i32>,
    max_percent: Option<i32>,
    period_ms: u64,
}

impl Rules {
    fn resolve(rules: Option<&ScalingRules>, window: i32, pods: Option<i32>, pct: i32) -> Self {
        let r = rules.cloned().unwrap_or_default();
        let (max_pods, max_percent) = if r.max_pods.is_some() || r.max_percent.is_some() {
            (r.max_pods, r.max_percent)
        } else {
            (pods, Some(pct))
        };
        Self {
            window_ms: seconds_ms(r.stabilization_window_seconds.unwrap_or(window)),
            max_pods,
            max_percent,
            period_ms: seconds_ms(r.period_seconds.unwrap_or(PERIOD_SECONDS)),
        }
    }

    fn up(spec: &RagWorkerPoolSpec) -> Self {
        Self::resolve(
            spec.scaling.scale_up.as_ref(),
            UP_WINDOW_SECONDS,
            Some(UP_MAX_PODS),
            UP_MAX_PERCENT,
        )
    }

    fn down(spec: &RagWorkerPoolSpec) -> Self {
        Self::resolve(
            spec.scaling.scale_down.as_ref(),
            DOWN_WINDOW_SECONDS,
            None,
            DOWN_MAX_PERCENT,
        )
    }

    /// Most pods this direction may move from `start` within one period.
    fn allowance(&self, start: i32) -> i32 {
        let by_pods = self.max_pods.unwrap_or(0);
        let by_percent = self
            .max_percent
            .map(|p| (f64::from(start) * f64::from(p) / 100.0 - EPSILON).ceil() as i32)
            .unwrap_or(0);
        by_pods.max(by_percent)
    }
}

fn seconds_ms(seconds: i32) -> u64 {
    u64::try_from(seconds).unwrap_or(0) * 1000
}

/// A replica change the operator made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ScaleEvent {
    at_ms: u64,
    from: i32,
    to: i32,
}

/// What the policy remembers about one pool between polls.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct History {
    /// Replicas the Deployment has now; the caller keeps this current.
    pub current_replicas: i32,
    /// Bounded recommendations, oldest first, as (time, replicas).
    recommendations: VecDeque<(u64, i32)>,
    /// Replica changes, oldest first, for the step limits.
    scale_events: VecDeque<ScaleEvent>,
    /// The latest scale-up, however old: whether its pods have started is for the
    /// observation's worker registry to say.
    last_scale_up: Option<ScaleEvent>,
    /// When the pool last had anything queued, delayed or started (or was first seen).
    last_busy_ms: Option<u64>,
    /// Enqueued-task counter samples over the last [`ARRIVAL_SPAN_MS`], oldest first.
    arrivals: VecDeque<ArrivalSample>,
}

impl History {
    /// The history of a pool first seen with `current_replicas`.
    pub fn new(current_replicas: i32) -> Self {
        Self {
            current_replicas,
            ..Self::default()
        }
    }

    /// Remembers only the point `observation` saw on the enqueued-tasks counter (and that the
    /// pool was seen), for a decision made without the operator's history, such as
    /// `ragpool explain`'s: windows and step limits stay empty.
    pub fn sample(&mut self, observation: &Observation) {
        if observation.has_work() || self.last_busy_ms.is_none() {
            self.last_busy_ms = Some(observation.at_ms);
        }
        self.arrivals.push_back(observation.arrival_sample());
    }

    /// Tasks per second arriving, from the oldest remembered sample to `observation`.
    pub fn arrival_rate(&self, observation: &Observation) -> Option<f64> {
        let oldest = self.arrivals.front()?;
        arrival_rate(*oldest, observation.arrival_sample())
    }

    /// Remembers an observation and the decision taken on it, with `decision.replicas` as
    /// the count the Deployment has now: a decision that could not be carried out is
    /// recorded with the current count, so its recommendation stays in the windows without
    /// counting as a replica change.
    pub fn record(
        &mut self,
        observation: Option<&Observation>,
        spec: &RagWorkerPoolSpec,
        decision: &Decision,
    ) {
        let Some(obs) = observation else {
            return;
        };
        let now = obs.at_ms;
        if let Some(rec) = decision.recommendation {
            self.recommendations.push_back((now, rec));
        }
        if decision.replicas != self.current_replicas {
            let event = ScaleEvent {
                at_ms: now,
                from: self.current_replicas,
                to: decision.replicas,
            };
            self.scale_events.push_back(event);
            if event.to > event.from {
                self.last_scale_up = Some(event);
            }
            self.current_replicas = decision.replicas;
        }
        if obs.has_work() || self.last_busy_ms.is_none() {
            self.last_busy_ms = Some(now);
        }
        self.arrivals.push_back(obs.arrival_sample());

        let (up, down) = (Rules::up(spec), Rules::down(spec));
        let keep_recs = up.window_ms.max(down.window_ms);
        let keep_events = up.period_ms.max(down.period_ms);
        self.recommendations
            .retain(|(at, _)| now.saturating_sub(*at) <= keep_recs);
        self.scale_events
            .retain(|e| now.saturating_sub(e.at_ms) <= keep_events);
        // Keep one sample at or beyond the span so the rate always covers a full span.
        while self.arrivals.len() > 1
            && self
                .arrivals
                .get(1)
                .is_some_and(|s| now.saturating_sub(s.at_ms) >= ARRIVAL_SPAN_MS)
        {
            self.arrivals.pop_front();
        }
    }

    /// Tasks per second arriving since `at_ms` (or since the oldest sample kept, if later),
    /// up to `observation`.
    fn arrival_rate_since(&self, at_ms: u64, observation: &Observation) -> Option<f64> {
        let since = self
            .arrivals
            .iter()
            .rev()
            .find(|s| s.at_ms <= at_ms)
            .or(self.arrivals.front())?;
        arrival_rate(*since, observation.arrival_sample())
    }

    fn recommendations_within(&self, now: u64, window_ms: u64) -> impl Iterator<Item = i32> + '_ {
        self.recommendations
            .iter()
            .filter(move |(at, _)| now.saturating_sub(*at) < window_ms)
            .map(|(_, r)| *r)
    }

    /// Replicas at the start of the current period: the current count with this period's
    /// changes in the given direction undone.
    fn period_start(&self, now: u64, period_ms: u64, up: bool) -> i32 {
        let moved: i32 = self
            .scale_events
            .iter()
            .filter(|e| now.saturating_sub(e.at_ms) < period_ms)
            .map(|e| e.to - e.from)
            .filter(|d| if up { *d > 0 } else { *d < 0 })
            .sum();
        self.current_replicas - moved
    }
}

/// Where the lower bound of a decision came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Floor {
    MinReplicas,
    /// Work is queued, delayed or started: someone has to run (and reap, and promote) it.
    Work,
    /// Idle, but within the cooldown: keep what is running.
    Cooldown,
    /// Idle past the cooldown.
    Idle,
}

/// The replicas a pool should have now.
///
/// `observation` is `None` when the queues could not be read; the pool then keeps its
/// replicas, because missing data is never a reason to scale (least of all to zero).
pub fn desired_replicas(
    observation: Option<&Observation>,
    spec: &RagWorkerPoolSpec,
    history: &History,
) -> Decision {
    let current = history.current_replicas;
    // 1. Paused, or no data.
    if spec.scaling.paused {
        return Decision::keep(
            current,
            Cause::Paused,
            format!("scaling paused; keeping {current} replicas"),
        );
    }
    let Some(obs) = observation else {
        return Decision::keep(
            current,
            Cause::NoData,
            format!("no queue data; keeping {current} replicas"),
        );
    };
    let mut d = Deciding::new(obs, spec, history);
    let raw = d.raw_recommendation();
    d.end_step("recommend", None);
    let tolerated = d.tolerate(raw);
    d.end_step("tolerance", Some(tolerated));
    let recommendation = d.bound(tolerated);
    d.end_step("bounds", Some(recommendation));
    let stable = d.stabilise(recommendation);
    d.end_step("stabilise", Some(stable));
    let started = d.start_from_zero(stable, recommendation);
    d.end_step("from zero", Some(started));
    let desired = d.step_limit(started);
    d.end_step("step limit", Some(desired));
    d.decide(raw, desired, recommendation)
}

impl Decision {
    /// Keep the current replicas, for `reason`, without a recommendation.
    fn keep(current: i32, cause: Cause, reason: String) -> Self {
        Self {
            replicas: current,
            steps: vec![Step {
                name: "keep",
                replicas: Some(current),
                notes: vec![reason.clone()],
            }],
            reason,
            limited: false,
            recommendation: None,
            raw: None,
            cause,
        }
    }

    /// The reason as `status.recentDecisions` keeps it (cut to
    /// [`DECISION_MESSAGE_MAX`] bytes).
    pub fn message(&self) -> String {
        truncate(self.reason.clone(), DECISION_MESSAGE_MAX)
    }

    /// A bound, window or limit kept a pool of `current` replicas where it is, although the
    /// work alone would move it.
    pub fn held(&self, current: i32) -> bool {
        self.replicas == current && self.cause.holds()
    }
}

/// One decision in the making: what it is made from, and the reasons and limits found on
/// the way. Each step of [`desired_replicas`] is one method.
struct Deciding<'a> {
    obs: &'a Observation,
    scaling: &'a ScalingSpec,
    /// Tasks one replica runs at once, for `targetWait`.
    per_pod: f64,
    /// `executor.concurrency`, for the backend limit's replica ceiling.
    concurrency: i32,
    history: &'a History,
    current: i32,
    /// The observation's time: the clock every comparison uses.
    now: u64,
    up: Rules,
    down: Rules,
    /// Notes of the step in progress.
    why: Vec<String>,
    steps: Vec<Step>,
    cause: Cause,
    limited: bool,
}

impl<'a> Deciding<'a> {
    fn new(obs: &'a Observation, spec: &'a RagWorkerPoolSpec, history: &'a History) -> Self {
        Self {
            obs,
            scaling: &spec.scaling,
            per_pod: f64::from(spec.executor.concurrency.max(1)),
            concurrency: spec.executor.concurrency,
            history,
            current: history.current_replicas,
            now: obs.at_ms,
            up: Rules::up(spec),
            down: Rules::down(spec),
            why: Vec::new(),
            steps: Vec::new(),
            cause: Cause::Load,
            limited: false,
        }
    }

    /// Closes the step in progress, with the count it left.
    fn end_step(&mut self, name: &'static str, replicas: Option<i32>) {
        self.steps.push(Step {
            name,
            replicas,
            notes: std::mem::take(&mut self.why),
        });
    }

    /// The arrival rate and processing time, for the modes whose formula leaves them out.
    fn context(&self) -> String {
        let rate = self.history.arrival_rate(self.obs);
        let service = self.obs.mean_processing_ms.map(|ms| ms / 1000.0);
        match (rate, service) {
            (Some(l), Some(s)) => format!(" ({l:.2}/s arriving, {s:.2}s per task)"),
            (Some(l), None) => format!(" ({l:.2}/s arriving)"),
            (None, Some(s)) => format!(" ({s:.2}s per task)"),
            (None, None) => String::new(),
        }
    }

    /// Step 2, the raw recommendation, in replicas' worth of work.
    fn raw_recommendation(&mut self) -> f64 {
        match self.scaling.mode {
            ScalingMode::QueueLength => self.by_queue_length(),
            ScalingMode::TargetWait => match self.obs.mean_processing_ms {
                Some(service_ms) if service_ms > 0.0 => self.by_target_wait(service_ms / 1000.0),
                _ => self.by_task_count(),
            },
        }
    }

    fn by_queue_length(&mut self) -> f64 {
        let (queued, started) = (self.obs.queued, self.obs.started);
        let target = self.scaling.target_queue_length.max(1);
        let raw = (queued + started) as f64 / f64::from(target);
        let context = self.context();
        self.why.push(format!(
            "queueLength: ({queued} queued + {started} started) / {target} per replica = {raw:.2}{context}"
        ));
        raw
    }

    /// `targetWait` with a mean processing time of `s` seconds, by Little's law: λ·S slots are
    /// busy keeping up with arrivals; the backlog needs queued/W tasks per second more, each
    /// holding a slot for S.
    fn by_target_wait(&mut self, s: f64) -> f64 {
        let lambda = self.history.arrival_rate(self.obs).unwrap_or(0.0);
        let wait = self.scaling.target_wait_seconds.max(0.001);
        let queued = self.obs.queued;
        let started = self.obs.started;
        let slots = (lambda * s + queued as f64 * s / wait).max(started as f64);
        let per_pod = self.per_pod;
        let raw = slots / per_pod;
        self.why.push(format!(
            "targetWait: max({lambda:.2}/s × {s:.2}s + {queued} queued × {s:.2}s / {wait}s, {started} started) = {slots:.1} slots / {per_pod} per replica = {raw:.2}"
        ));
        raw
    }

    /// `targetWait` before any task finished: one slot per task.
    fn by_task_count(&mut self) -> f64 {
        let (queued, started, per_pod) = (self.obs.queued, self.obs.started, self.per_pod);
        let raw = (queued + started) as f64 / per_pod;
        let context = self.context();
        self.why.push(format!(
            "targetWait (no processing time measured yet): ({queued} queued + {started} started) / {per_pod} per replica = {raw:.2}{context}"
        ));
        raw
    }

    /// Step 3, tolerance: a change within `tolerance` of the current count is noise.
    fn tolerate(&mut self, raw: f64) -> i32 {
        let current = self.current;
        let rec = if current > 0
            && raw > 0.0
            // With slack: 2.2 replicas' worth is 10 % above 2 exactly, though 2.2 / 2 - 1 is
            // 0.10000000000000009 in floating point.
            && (raw / f64::from(current) - 1.0).abs() <= self.scaling.tolerance + EPSILON
        {
            self.why.push(format!(
                "{raw:.2} is within {:.0} % of {current}",
                self.scaling.tolerance * 100.0
            ));
            if (raw - EPSILON).ceil() as i32 != current {
                self.cause = Cause::Tolerance;
            }
            current
        } else {
            (raw - EPSILON).ceil().max(0.0) as i32
        };
        self.why.push(format!("→ {rec}"));
        rec
    }

    /// Milliseconds since the pool last had work.
    fn idle_for(&self) -> u64 {
        self.history
            .last_busy_ms
            .map(|t| self.now.saturating_sub(t))
            .unwrap_or(0)
    }

    /// Idle for the whole cooldown.
    fn cooled(&self) -> bool {
        !self.obs.has_work() && self.idle_for() >= seconds_ms(self.scaling.cooldown_seconds)
    }

    /// The lowest count the pool may have now, and where that comes from.
    fn floor(&self) -> (i32, Floor) {
        let scaling = self.scaling;
        if self.obs.has_work() {
            if scaling.min_replicas >= 1 {
                (scaling.min_replicas, Floor::MinReplicas)
            } else {
                (1, Floor::Work)
            }
        } else if self.cooled() {
            match scaling.idle_replicas {
                Some(idle) => (idle, Floor::Idle),
                None => (scaling.min_replicas, Floor::MinReplicas),
            }
        } else if scaling.min_replicas >= self.current.min(1) {
            (scaling.min_replicas, Floor::MinReplicas)
        } else {
            (1, Floor::Cooldown)
        }
    }

    /// The replicas the backend's concurrency limit keeps busy, and the words for it, when
    /// it is below `maxReplicas`. More pods would only wait for permits.
    fn backend_ceiling(&self) -> Option<(i32, String)> {
        let backend = self.obs.backend.as_ref()?;
        let limit = backend.limit?;
        let ceiling = backend.replica_ceiling(self.concurrency)?;
        (ceiling < self.scaling.max_replicas).then(|| {
            (
                ceiling,
                format!(
                    "capped at {ceiling} by the backend limit: ceil({limit} calls / {} per replica) + 1 ({} in use)",
                    self.concurrency, backend.in_use
                ),
            )
        })
    }

    /// Step 4, bounds: at most `maxReplicas` and the backend limit's ceiling, at least the
    /// [floor](Self::floor) (which wins over the ceiling: `minReplicas` was asked for).
    fn bound(&mut self, rec: i32) -> i32 {
        let max = self.scaling.max_replicas;
        let (floor, source) = self.floor();
        if let Some((ceiling, mut why)) = self.backend_ceiling()
            && rec > ceiling.max(floor)
        {
            if floor > ceiling {
                why.push_str(&format!(", raised to the floor {floor}"));
            }
            self.limited = true;
            self.cause = Cause::BackendLimit;
            self.why.push(why);
            return ceiling.max(floor);
        }
        if rec > max {
            self.limited = true;
            self.cause = Cause::MaxReplicas;
            self.why.push(format!("capped at maxReplicas {max}"));
            return max;
        }
        if rec < floor {
            let (cause, why) = match source {
                Floor::MinReplicas => {
                    self.limited = true;
                    (Cause::MinReplicas, format!("raised to minReplicas {floor}"))
                }
                Floor::Work => (Cause::WorkPending, "work pending needs a replica".into()),
                Floor::Cooldown => (
                    Cause::Cooldown,
                    format!(
                        "idle {}s of {}s cooldown; keeping {floor}",
                        self.idle_for() / 1000,
                        self.scaling.cooldown_seconds
                    ),
                ),
                Floor::Idle => (
                    Cause::Idle,
                    format!("idle past cooldown; idleReplicas {floor}"),
                ),
            };
            self.cause = cause;
            self.why.push(why);
            return floor;
        }
        if self.cooled() && source == Floor::MinReplicas && rec == floor && self.current > floor {
            self.cause = Cause::Idle;
            self.why.push(format!(
                "idle past {}s cooldown",
                self.scaling.cooldown_seconds
            ));
        }
        rec
    }

    /// Step 5, stabilisation windows: up to the lowest and down to the highest recommendation
    /// within each direction's window.
    fn stabilise(&mut self, rec: i32) -> i32 {
        let (now, current) = (self.now, self.current);
        let up_rec = self
            .history
            .recommendations_within(now, self.up.window_ms)
            .fold(rec, i32::min);
        // Past the cooldown the idle drop has already waited long enough; the scale-down
        // window would only add to it.
        let down_rec = if self.cooled() {
            rec
        } else {
            self.history
                .recommendations_within(now, self.down.window_ms)
                .fold(rec, i32::max)
        };
        let desired = current.max(up_rec).min(down_rec);
        if desired < rec && current < rec {
            self.cause = Cause::ScaleUpWindow;
            self.why.push(format!(
                "scale-up window {}s holds at {desired}",
                self.up.window_ms / 1000
            ));
        }
        if desired > rec && current > rec {
            self.cause = Cause::ScaleDownWindow;
            self.why.push(format!(
                "scale-down window {}s holds at {desired}",
                self.down.window_ms / 1000
            ));
        }
        desired
    }

    /// Step 6, from zero at once: a pool at zero with work skips the scale-up window.
    fn start_from_zero(&mut self, desired: i32, rec: i32) -> i32 {
        if self.current == 0 && self.obs.has_work() && desired < rec.max(1) {
            self.cause = Cause::FromZero;
            self.why.push("from zero at once".into());
            return rec.max(1);
        }
        desired
    }

    /// Why the queue is a backlog, if it is one: the oldest task has waited longer than
    /// `targetWaitSeconds`, or the queued tasks would take longer than that to drain through
    /// the current pods' slots. Before any processing time is measured, each queued task
    /// counts as `targetWaitSeconds` of work for one slot (as `targetWait` sizes on one slot
    /// per task), so the queue is a backlog when it holds more tasks than the pool has slots.
    fn backlog(&self) -> Option<String> {
        let target = self.scaling.target_wait_seconds;
        let oldest = self.obs.oldest_queued_age_ms as f64 / 1000.0;
        if oldest > target {
            return Some(format!(
                "backlog: oldest task waited {oldest:.1}s > targetWait {target}s"
            ));
        }
        let queued = self.obs.queued;
        let slots = f64::from(self.current) * self.per_pod;
        match self.obs.mean_processing_ms {
            Some(ms) if ms > 0.0 => {
                let s = ms / 1000.0;
                let drain = queued as f64 * s / slots.max(1.0);
                (drain > target).then(|| {
                    format!(
                        "backlog: {queued} queued × {s:.2}s / {slots} slots = {drain:.1}s > targetWait {target}s"
                    )
                })
            }
            _ => {
                (queued as f64 > slots).then(|| format!("backlog: {queued} queued > {slots} slots"))
            }
        }
    }

    /// Why a scale-up should wait for the pods of the last one, if it should: some of them
    /// have not started (the replicas beyond the executors registered and not draining, at
    /// most the pods it added), every pod the pool had before it runs and serves the queue
    /// meanwhile, and the tasks arriving since that scale-up keep no more slots busy than the
    /// pool has with them (`λ × S ≤ replicas × concurrency`). A pool still starting the pods
    /// of a jump from zero or of an earlier round is ramping up, and without a measured
    /// processing time nothing says the pods coming are enough: no wait for either.
    fn wait_for_starting_pods(&self) -> Option<String> {
        let up = self.history.last_scale_up?;
        let live = i32::try_from(self.obs.live_workers()).unwrap_or(i32::MAX);
        let starting = self.current.saturating_sub(live).min(up.to - up.from);
        if starting <= 0 || live < up.from.max(1) {
            return None;
        }
        let rate = self.history.arrival_rate_since(up.at_ms, self.obs)?;
        let s = self.obs.mean_processing_ms.filter(|ms| *ms > 0.0)? / 1000.0;
        let busy = rate * s;
        let slots = f64::from(self.current) * self.per_pod;
        (busy <= slots).then(|| {
            format!(
                "{starting} of the {} pods added {}s ago not started yet; {rate:.2}/s arriving × {s:.2}s = {busy:.1} slots ≤ {slots} with them, no backlog",
                up.to - up.from,
                self.now.saturating_sub(up.at_ms) / 1000
            )
        })
    }

    /// Step 7, step limits: how far the count may move within one period.
    fn step_limit(&mut self, desired: i32) -> i32 {
        let current = self.current;
        // From zero at once: the whole recommendation, so a burst on an idle pool starts
        // every pod it needs in one pass instead of four pods per period.
        if current == 0 && self.obs.has_work() {
            return desired;
        }
        let (limit, rules, direction, cause) = if desired > current {
            let start = self.history.period_start(self.now, self.up.period_ms, true);
            // At least one pod per period, or a pool whose limits are all percentages could
            // never leave zero. A limit only holds a scale-up back, never lowers the count: a
            // jump from zero earlier in the period may have gone past it.
            let limit = (start + self.up.allowance(start).max(1)).max(current);
            // A backlog is work the pool already has, not a noisy metric: a warm pool goes to
            // the whole recommendation at once, as a pool at zero does. Once per period, like
            // the jump from zero, so a queue that is still there two seconds later cannot
            // double the pool again before the new pods have started.
            let backlog = self.backlog();
            if limit < desired
                && start == current
                && let Some(why) = &backlog
            {
                self.cause = Cause::Backlog;
                self.why
                    .push(format!("{why}; scale-up step limit {limit} skipped"));
                return desired;
            }
            // Pods still starting are capacity on its way. The queue that asked for them has
            // not seen them yet: while the pods already running serve it, it keeps growing
            // until the new ones are up, and each look would ask for more. So a scale-up
            // waits for them, unless the queue is a backlog even counting their slots or the
            // tasks arriving since would keep more slots busy than the pool will have.
            if backlog.is_none()
                && let Some(why) = self.wait_for_starting_pods()
            {
                self.limited = true;
                self.cause = Cause::PodsStarting;
                self.why.push(format!("{why}; holding at {current}"));
                return current;
            }
            (limit.min(desired), self.up, "up", Cause::ScaleUpLimit)
        } else if desired < current {
            let start = self
                .history
                .period_start(self.now, self.down.period_ms, false);
            let limit = (start - self.down.allowance(start)).min(current);
            (limit.max(desired), self.down, "down", Cause::ScaleDownLimit)
        } else {
            return desired;
        };
        if limit != desired {
            self.limited = true;
            self.cause = cause;
            self.why.push(format!(
                "scale-{direction} step limit {limit} per {}s",
                rules.period_ms / 1000
            ));
        }
        limit
    }

    /// The decision: `desired`, except that a lowered `maxReplicas` applies at once, step
    /// limits or not.
    fn decide(mut self, raw: f64, desired: i32, recommendation: i32) -> Decision {
        let max = self.scaling.max_replicas;
        let replicas = if desired > max {
            self.limited = true;
            self.cause = Cause::MaxReplicas;
            self.why.push(format!("maxReplicas {max} applies at once"));
            max
        } else {
            desired
        };
        self.end_step("maxReplicas", Some(replicas));
        let reason = self
            .steps
            .iter()
            .flat_map(|s| s.notes.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join("; ");
        Decision {
            replicas,
            reason,
            limited: self.limited,
            recommendation: Some(recommendation),
            raw: Some(raw),
            cause: self.cause,
            steps: self.steps,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ScalingRules, ScalingSpec};
    use crate::fixtures::{obs, spec};

    fn with(f: impl FnOnce(&mut ScalingSpec)) -> RagWorkerPoolSpec {
        let mut s = spec();
        f(&mut s.scaling);
        s
    }

    /// `observation` with tasks measured at `seconds` each.
    fn taking(seconds: f64, observation: Observation) -> Observation {
        Observation {
            mean_processing_ms: Some(seconds * 1000.0),
            ..observation
        }
    }

    /// One decision from a fresh history.
    struct Case {
        name: &'static str,
        spec: RagWorkerPoolSpec,
        current: i32,
        observation: Option<Observation>,
        replicas: i32,
        limited: bool,
        reason: &'static str,
    }

    #[test]
    fn single_decisions() {
        let delayed_only = Observation {
            delayed: 2,
            ..obs(0, 0, 0)
        };
        let cases = vec![
            Case {
                name: "queueLength: ceil((queued + started) / target)",
                spec: spec(),
                current: 2,
                observation: Some(obs(0, 18, 5)),
                replicas: 5,
                limited: false,
                reason: "queueLength: (18 queued + 5 started) / 5 per replica",
            },
            Case {
                name: "queueLength: an exact multiple needs no extra replica",
                spec: spec(),
                current: 3,
                observation: Some(obs(0, 10, 0)),
                replicas: 2,
                limited: false,
                reason: "→ 2",
            },
            Case {
                name: "capped at maxReplicas",
                spec: with(|s| s.max_replicas = 8),
                current: 8,
                observation: Some(obs(0, 100, 0)),
                replicas: 8,
                limited: true,
                reason: "capped at maxReplicas 8",
            },
            Case {
                name: "raised to minReplicas",
                spec: with(|s| s.min_replicas = 3),
                current: 3,
                observation: Some(obs(0, 1, 0)),
                replicas: 3,
                limited: true,
                reason: "raised to minReplicas 3",
            },
            Case {
                name: "a lowered maxReplicas applies at once",
                spec: with(|s| s.max_replicas = 4),
                current: 10,
                observation: Some(obs(0, 100, 0)),
                replicas: 4,
                limited: true,
                reason: "capped at maxReplicas 4",
            },
            Case {
                name: "from zero as soon as one task is queued",
                spec: spec(),
                current: 0,
                observation: Some(obs(0, 1, 0)),
                replicas: 1,
                limited: false,
                reason: "→ 1",
            },
            Case {
                name: "from zero skips a scale-up window",
                spec: with(|s| {
                    s.scale_up = Some(ScalingRules {
                        stabilization_window_seconds: Some(120),
                        ..ScalingRules::default()
                    })
                }),
                current: 0,
                observation: Some(obs(0, 3, 0)),
                replicas: 1,
                limited: false,
                // A fresh history has nothing in the window to hold the count at zero.
                reason: "queueLength: (3 queued + 0 started) / 5 per replica = 0.60; → 1",
            },
            Case {
                name: "from zero goes to the recommendation at once, step limits or not",
                spec: spec(),
                current: 0,
                observation: Some(obs(0, 40, 0)),
                replicas: 8,
                limited: false,
                reason: "= 8.00; → 8",
            },
            Case {
                name: "from one replica the step limit applies (4 pods per period by default)",
                spec: spec(),
                current: 1,
                // 40 tasks of 1 s drain through 4 slots in 10 s: within targetWait.
                observation: Some(taking(1.0, obs(0, 40, 0))),
                replicas: 5,
                limited: true,
                reason: "scale-up step limit 5",
            },
            Case {
                name: "a backlog skips the step limit: more queued than slots, no time measured",
                spec: spec(),
                current: 2,
                observation: Some(obs(0, 40, 0)),
                replicas: 8,
                limited: false,
                reason: "backlog: 40 queued > 8 slots; scale-up step limit 6 skipped",
            },
            Case {
                name: "a backlog skips the step limit: the queue drains slower than targetWait",
                spec: spec(),
                current: 2,
                observation: Some(taking(3.0, obs(0, 30, 8))),
                replicas: 8,
                limited: false,
                reason: "backlog: 30 queued × 3.00s / 8 slots = 11.2s > targetWait 10s; \
                         scale-up step limit 6 skipped",
            },
            Case {
                name: "a backlog skips the step limit: the oldest task is late",
                spec: spec(),
                current: 2,
                observation: Some(Observation {
                    oldest_queued_age_ms: 12_000,
                    ..taking(1.0, obs(0, 30, 8))
                }),
                replicas: 8,
                limited: false,
                reason: "backlog: oldest task waited 12.0s > targetWait 10s",
            },
            Case {
                name: "a queue the pods drain within targetWait is paced by the step limit",
                spec: spec(),
                current: 2,
                observation: Some(taking(1.0, obs(0, 30, 8))),
                replicas: 6,
                limited: true,
                reason: "→ 8; scale-up step limit 6 per 15s",
            },
            Case {
                name: "delayed retries keep one replica to promote them",
                spec: spec(),
                current: 0,
                observation: Some(delayed_only),
                replicas: 1,
                limited: false,
                reason: "work pending needs a replica",
            },
            Case {
                name: "a new idle pool with minReplicas 0 starts at zero",
                spec: spec(),
                current: 0,
                observation: Some(obs(0, 0, 0)),
                replicas: 0,
                limited: false,
                reason: "→ 0",
            },
            Case {
                name: "paused keeps the replicas whatever the queue",
                spec: with(|s| s.paused = true),
                current: 2,
                observation: Some(obs(0, 100, 0)),
                replicas: 2,
                limited: false,
                reason: "scaling paused",
            },
            Case {
                name: "Redis down keeps the replicas",
                spec: spec(),
                current: 5,
                observation: None,
                replicas: 5,
                limited: false,
                reason: "no queue data; keeping 5 replicas",
            },
            Case {
                name: "Redis down never scales to zero",
                spec: with(|s| s.cooldown_seconds = 0),
                current: 3,
                observation: None,
                replicas: 3,
                limited: false,
                reason: "no queue data",
            },
            Case {
                name: "tolerance: 10.4 replicas' worth stays at 10",
                spec: spec(),
                current: 10,
                observation: Some(obs(0, 52, 0)),
                replicas: 10,
                limited: false,
                reason: "within 10 % of 10",
            },
            Case {
                name: "tolerance: 11 replicas' worth is 10 % exactly and stays at 10",
                spec: spec(),
                current: 10,
                observation: Some(obs(0, 55, 0)),
                replicas: 10,
                limited: false,
                reason: "within 10 % of 10",
            },
            Case {
                name: "tolerance: 2.2 replicas' worth is 10 % above 2 exactly and stays at 2",
                spec: spec(),
                current: 2,
                observation: Some(obs(0, 3, 8)),
                replicas: 2,
                limited: false,
                reason: "2.20 is within 10 % of 2",
            },
            Case {
                name: "tolerance: 11.2 replicas' worth is outside 10 %",
                spec: spec(),
                current: 10,
                observation: Some(obs(0, 56, 0)),
                replicas: 12,
                limited: false,
                reason: "→ 12",
            },
            Case {
                name: "targetWait without a measured processing time: one slot per task",
                spec: with(|s| s.mode = ScalingMode::TargetWait),
                current: 1,
                observation: Some(obs(0, 8, 4)),
                replicas: 3,
                limited: false,
                reason: "no processing time measured yet",
            },
            Case {
                name: "targetWait keeps the slots in use",
                spec: with(|s| s.mode = ScalingMode::TargetWait),
                current: 2,
                observation: Some(Observation {
                    mean_processing_ms: Some(15_000.0),
                    ..obs(0, 0, 8)
                }),
                replicas: 2,
                limited: false,
                reason: "= 8.0 slots / 4 per replica",
            },
        ];
        for case in cases {
            let history = History::new(case.current);
            let d = desired_replicas(case.observation.as_ref(), &case.spec, &history);
            assert_eq!(d.replicas, case.replicas, "{}: {}", case.name, d.reason);
            assert_eq!(d.limited, case.limited, "{}: {}", case.name, d.reason);
            assert!(
                d.reason.contains(case.reason),
                "{}: reason {:?} lacks {:?}",
                case.name,
                d.reason,
                case.reason
            );
        }
    }

    /// `observation` with the backend limit key at `limit` calls (`None`: no concurrency
    /// limit) and `in_use` of them running.
    fn at_backend(limit: Option<u32>, in_use: u32, observation: Observation) -> Observation {
        Observation {
            backend: Some(crate::observe::BackendObservation {
                key: "pool".into(),
                limit,
                in_use,
                paused_ms: 0,
                probing_up_to: None,
            }),
            ..observation
        }
    }

    #[test]
    fn the_backend_limit_caps_the_pool() {
        // Concurrency 4 (the fixture's): a limit of 16 calls keeps ceil(16 / 4) + 1 = 5 busy.
        // (name, spec, current, observation, replicas, cause, reason)
        let cases = vec![
            (
                "at the ceiling with a growing queue: no scale-up",
                spec(),
                5,
                at_backend(Some(16), 16, obs(0, 100, 20)),
                5,
                Cause::BackendLimit,
                "capped at 5 by the backend limit: ceil(16 calls / 4 per replica) + 1 (16 in use)",
            ),
            (
                "below the ceiling the pool grows to it, not past it",
                spec(),
                2,
                at_backend(Some(16), 8, obs(0, 100, 8)),
                5,
                Cause::BackendLimit,
                "capped at 5 by the backend limit",
            ),
            (
                "an adaptive limit that fell lowers the ceiling",
                with(|s| s.scale_down = None),
                5,
                at_backend(Some(6), 6, obs(0, 100, 20)),
                3,
                Cause::BackendLimit,
                "capped at 3 by the backend limit: ceil(6 calls / 4 per replica) + 1",
            ),
            (
                "work below the ceiling follows the load",
                spec(),
                1,
                at_backend(Some(16), 2, obs(0, 8, 2)),
                2,
                Cause::Load,
                "→ 2",
            ),
            (
                "a ceiling above maxReplicas leaves maxReplicas in charge",
                with(|s| s.max_replicas = 4),
                4,
                at_backend(Some(64), 16, obs(0, 100, 16)),
                4,
                Cause::MaxReplicas,
                "capped at maxReplicas 4",
            ),
            (
                "minReplicas above the ceiling wins: it was asked for",
                with(|s| s.min_replicas = 8),
                8,
                at_backend(Some(4), 4, obs(0, 100, 4)),
                8,
                Cause::BackendLimit,
                "capped at 2 by the backend limit: ceil(4 calls / 4 per replica) + 1 (4 in use), raised to the floor 8",
            ),
            (
                "a rate limit alone sets no ceiling",
                spec(),
                5,
                at_backend(None, 3, taking(1.0, obs(0, 40, 20))),
                10,
                Cause::ScaleUpLimit,
                "scale-up step limit 10",
            ),
        ];
        for (name, spec, current, observation, replicas, cause, reason) in cases {
            let d = desired_replicas(Some(&observation), &spec, &History::new(current));
            assert_eq!(d.replicas, replicas, "{name}: {}", d.reason);
            assert_eq!(d.cause, cause, "{name}: {}", d.reason);
            assert!(d.reason.contains(reason), "{name}: {}", d.reason);
            if cause == Cause::BackendLimit {
                assert!(d.limited, "{name}");
            }
        }
        // Held at its count by the ceiling: recorded as a held decision.
        let d = desired_replicas(
            Some(&at_backend(Some(16), 16, obs(0, 100, 20))),
            &spec(),
            &History::new(5),
        );
        assert!(d.held(5));
    }

    #[test]
    fn each_decision_names_the_step_that_settled_it() {
        let delayed_only = Observation {
            delayed: 2,
            ..obs(0, 0, 0)
        };
        // (name, spec, current, observation, cause, held at the current count)
        let cases = vec![
            (
                "the work",
                spec(),
                2,
                Some(obs(0, 18, 5)),
                Cause::Load,
                false,
            ),
            (
                "noise",
                spec(),
                10,
                Some(obs(0, 52, 0)),
                Cause::Tolerance,
                false,
            ),
            (
                "maxReplicas",
                with(|s| s.max_replicas = 8),
                8,
                Some(obs(0, 100, 0)),
                Cause::MaxReplicas,
                true,
            ),
            (
                "minReplicas",
                with(|s| s.min_replicas = 3),
                3,
                Some(obs(0, 1, 0)),
                Cause::MinReplicas,
                true,
            ),
            (
                "retries",
                spec(),
                0,
                Some(delayed_only),
                Cause::WorkPending,
                false,
            ),
            (
                "cooldown",
                spec(),
                1,
                Some(obs(0, 0, 0)),
                Cause::Cooldown,
                true,
            ),
            (
                "idle",
                with(|s| s.cooldown_seconds = 0),
                2,
                Some(obs(0, 0, 0)),
                Cause::Idle,
                false,
            ),
            (
                "step",
                spec(),
                1,
                Some(taking(1.0, obs(0, 40, 0))),
                Cause::ScaleUpLimit,
                false,
            ),
            (
                "backlog",
                spec(),
                2,
                Some(obs(0, 40, 0)),
                Cause::Backlog,
                false,
            ),
            (
                "paused",
                with(|s| s.paused = true),
                2,
                Some(obs(0, 9, 0)),
                Cause::Paused,
                false,
            ),
            ("no data", spec(), 2, None, Cause::NoData, false),
        ];
        for (name, spec, current, observation, cause, held) in cases {
            let d = desired_replicas(observation.as_ref(), &spec, &History::new(current));
            assert_eq!(d.cause, cause, "{name}: {}", d.reason);
            assert_eq!(d.held(current), held, "{name}: {}", d.reason);
        }
        let labels: std::collections::BTreeSet<&str> =
            Cause::ALL.iter().map(|c| c.label()).collect();
        assert_eq!(labels.len(), Cause::ALL.len(), "labels are distinct");
    }

    #[test]
    fn a_decision_keeps_each_step_and_the_raw_recommendation() {
        // 40 tasks / 5 per replica = 8 from one, but at most 4 pods per 15 s.
        let d = desired_replicas(Some(&taking(1.0, obs(0, 40, 0))), &spec(), &History::new(1));
        assert_eq!(d.raw, Some(8.0));
        let steps: Vec<(&str, Option<i32>)> =
            d.steps.iter().map(|s| (s.name, s.replicas)).collect();
        assert_eq!(
            steps,
            [
                ("recommend", None),
                ("tolerance", Some(8)),
                ("bounds", Some(8)),
                ("stabilise", Some(8)),
                ("from zero", Some(8)),
                ("step limit", Some(5)),
                ("maxReplicas", Some(5)),
            ]
        );
        let notes: Vec<&str> = d
            .steps
            .iter()
            .flat_map(|s| s.notes.iter().map(String::as_str))
            .collect();
        assert_eq!(notes.join("; "), d.reason);
        assert_eq!(
            d.reason,
            "queueLength: (40 queued + 0 started) / 5 per replica = 8.00 (1.00s per task); → 8; \
             scale-up step limit 5 per 15s"
        );
    }

    #[test]
    fn a_window_that_holds_the_count_is_the_cause() {
        let spec = spec();
        let mut history = History::new(10);
        let busy = obs(0, 50, 0);
        let first = desired_replicas(Some(&busy), &spec, &history);
        history.record(Some(&busy), &spec, &first);
        let d = desired_replicas(Some(&obs(10, 10, 0)), &spec, &history);
        assert_eq!(
            (d.replicas, d.cause),
            (10, Cause::ScaleDownWindow),
            "{}",
            d.reason
        );
        assert!(d.held(10));
        assert!(
            d.reason.ends_with("scale-down window 60s holds at 10"),
            "{}",
            d.reason
        );
    }

    /// Runs the policy over observations, carrying out every decision, and returns the
    /// replica counts.
    fn run(spec: &RagWorkerPoolSpec, start: i32, steps: &[Observation]) -> Vec<i32> {
        let mut history = History::new(start);
        steps
            .iter()
            .map(|o| {
                let d = desired_replicas(Some(o), spec, &history);
                history.record(Some(o), spec, &d);
                d.replicas
            })
            .collect()
    }

    /// `(second, queued, started)` triples as observations.
    fn timeline(points: &[(u64, u64, u64)]) -> Vec<Observation> {
        points.iter().map(|&(t, q, f)| obs(t, q, f)).collect()
    }

    /// [`timeline`] with tasks measured at one second each.
    fn timeline_1s(points: &[(u64, u64, u64)]) -> Vec<Observation> {
        timeline(points)
            .into_iter()
            .map(|o| taking(1.0, o))
            .collect()
    }

    struct Sequence {
        name: &'static str,
        spec: RagWorkerPoolSpec,
        start: i32,
        steps: Vec<Observation>,
        replicas: Vec<i32>,
    }

    #[test]
    fn sequences() {
        let no_down_window = |s: &mut ScalingSpec| {
            s.scale_down = Some(ScalingRules {
                stabilization_window_seconds: Some(0),
                ..ScalingRules::default()
            })
        };
        let cases = vec![
            Sequence {
                name: "flapping input is held by the 60 s scale-down window",
                spec: spec(),
                start: 10,
                steps: timeline(&[(0, 50, 0), (2, 40, 0), (4, 50, 0), (6, 40, 0), (8, 50, 0)]),
                replicas: vec![10, 10, 10, 10, 10],
            },
            Sequence {
                name: "the same input flaps without the window",
                spec: with(no_down_window),
                start: 10,
                steps: timeline(&[(0, 50, 0), (2, 40, 0), (4, 50, 0), (6, 40, 0), (8, 50, 0)]),
                replicas: vec![10, 8, 10, 8, 10],
            },
            Sequence {
                name: "jitter within the tolerance never moves the count",
                spec: with(no_down_window),
                start: 10,
                steps: timeline(&[(0, 50, 0), (2, 46, 0), (4, 54, 0), (6, 47, 0)]),
                replicas: vec![10, 10, 10, 10],
            },
            Sequence {
                name: "scale down to the highest recommendation of the last 60 s",
                spec: spec(),
                start: 10,
                steps: timeline(&[
                    (0, 50, 0),
                    (10, 10, 0),
                    (30, 30, 0),
                    (50, 10, 0),
                    (60, 10, 0),
                    (89, 10, 0),
                    (90, 10, 0),
                ]),
                // The 10 from t=0 holds until t=60, the 6 from t=30 until t=90.
                replicas: vec![10, 10, 10, 10, 6, 6, 2],
            },
            Sequence {
                name: "a scale-up window scales up to the lowest recent recommendation",
                spec: with(|s| {
                    s.scale_up = Some(ScalingRules {
                        stabilization_window_seconds: Some(30),
                        max_percent: Some(1000),
                        ..ScalingRules::default()
                    })
                }),
                start: 2,
                steps: timeline(&[(0, 10, 0), (10, 50, 0), (20, 50, 0), (30, 50, 0)]),
                replicas: vec![2, 2, 2, 10],
            },
            Sequence {
                name: "scale-up step limit: +4 pods or +100 % per 15 s",
                spec: with(|s| s.target_queue_length = 1),
                start: 2,
                steps: timeline_1s(&[(0, 20, 0), (2, 20, 0), (16, 20, 0), (31, 20, 0)]),
                replicas: vec![6, 6, 12, 20],
            },
            Sequence {
                name: "a backlog on a warm pool: the whole recommendation in one pass",
                spec: with(|s| s.min_replicas = 2),
                start: 2,
                steps: timeline(&[(46, 500, 0), (48, 492, 8), (62, 400, 80)]),
                replicas: vec![20, 20, 20],
            },
            Sequence {
                name: "a backlog skips the limit once per period, as a jump from zero does",
                spec: spec(),
                start: 2,
                // 2 → 8 at once; 2 s later 100 tasks want 20, but the period has had its
                // jump; a period later, the backlog is still there: to 20.
                steps: timeline(&[(0, 40, 0), (2, 100, 0), (16, 100, 0)]),
                replicas: vec![8, 8, 20],
            },
            Sequence {
                name: "a short spike the pods drain within targetWait doubles the pool once",
                spec: spec(),
                start: 4,
                // 40 queued of 1 s on 16 slots drain in 2.5 s: paced, +100 % to 8, and the
                // spike still there 2 s later cannot double it again within the period.
                steps: timeline_1s(&[(0, 40, 16), (2, 40, 16), (4, 0, 10), (16, 0, 8)]),
                replicas: vec![8, 8, 8, 8],
            },
            Sequence {
                name: "a jump from zero counts against the period's step limit, never lowers",
                spec: spec(),
                start: 0,
                // 0 → 5 at once; within the period the limit from 0 (+4) holds at 5; once the
                // jump is a period old, +100 % of 5.
                steps: timeline_1s(&[(0, 25, 0), (2, 60, 0), (4, 60, 0), (15, 60, 0)]),
                replicas: vec![5, 5, 5, 10],
            },
            Sequence {
                name: "scale-down step limit of one pod per 30 s",
                spec: with(|s| {
                    no_down_window(s);
                    s.scale_down = Some(ScalingRules {
                        stabilization_window_seconds: Some(0),
                        max_pods: Some(1),
                        period_seconds: Some(30),
                        ..ScalingRules::default()
                    });
                }),
                start: 5,
                steps: timeline(&[(0, 5, 0), (10, 5, 0), (30, 5, 0), (60, 5, 0)]),
                replicas: vec![4, 4, 3, 2],
            },
            Sequence {
                name: "idle: hold one replica through the cooldown, then scale to zero",
                spec: with(|s| s.cooldown_seconds = 300),
                start: 2,
                steps: timeline(&[
                    (0, 6, 4),
                    (100, 0, 0),
                    (299, 0, 0),
                    (300, 0, 0),
                    (302, 0, 0),
                ]),
                replicas: vec![2, 1, 1, 0, 0],
            },
            Sequence {
                name: "idle: work within the cooldown restarts it",
                spec: with(|s| s.cooldown_seconds = 300),
                start: 1,
                steps: timeline(&[
                    (0, 1, 0),
                    (200, 0, 1),
                    (300, 0, 0),
                    (499, 0, 0),
                    (500, 0, 0),
                ]),
                replicas: vec![1, 1, 1, 1, 0],
            },
            Sequence {
                name: "idle: to idleReplicas after the cooldown, minReplicas before it",
                spec: with(|s| {
                    s.min_replicas = 3;
                    s.idle_replicas = Some(1);
                    s.cooldown_seconds = 60;
                }),
                start: 3,
                steps: timeline(&[(0, 0, 2), (30, 0, 0), (60, 0, 0), (62, 4, 0)]),
                replicas: vec![3, 3, 1, 3],
            },
            Sequence {
                name: "idle with minReplicas and no idleReplicas stays at minReplicas",
                spec: with(|s| {
                    s.min_replicas = 2;
                    s.cooldown_seconds = 0;
                }),
                start: 2,
                steps: timeline(&[(0, 0, 0), (100, 0, 0)]),
                replicas: vec![2, 2],
            },
            Sequence {
                name: "a restarted operator waits a full cooldown before dropping to zero",
                spec: with(|s| s.cooldown_seconds = 60),
                start: 2,
                steps: timeline(&[(1000, 0, 0), (1030, 0, 0), (1060, 0, 0)]),
                replicas: vec![1, 1, 0],
            },
        ];
        for case in cases {
            assert_eq!(
                run(&case.spec, case.start, &case.steps),
                case.replicas,
                "{}",
                case.name
            );
        }
    }

    /// `observation` on a pool whose executors run in `live` pods, with tasks measured at 3 s
    /// each and `enqueued` tasks ever enqueued.
    fn on_pods(live: usize, enqueued: u64, observation: Observation) -> Observation {
        Observation {
            workers: (0..live)
                .map(|i| crate::fixtures::worker(&format!("pod-{i}"), 0))
                .collect(),
            total_enqueued: enqueued,
            ..taking(3.0, observation)
        }
    }

    /// Runs the policy over observations, carrying out every decision, and returns each
    /// count with its cause.
    fn run_causes(
        spec: &RagWorkerPoolSpec,
        start: i32,
        steps: &[Observation],
    ) -> Vec<(i32, Cause)> {
        let mut history = History::new(start);
        steps
            .iter()
            .map(|o| {
                let d = desired_replicas(Some(o), spec, &history);
                history.record(Some(o), spec, &d);
                (d.replicas, d.cause)
            })
            .collect()
    }

    #[test]
    fn a_scale_up_waits_for_the_pods_it_started() {
        use Cause::{Backlog, Load, PodsStarting, ScaleDownWindow, ScaleUpLimit};
        let spec = spec();
        // Two pods (8 slots) at 2 tasks/s of 3 s: a short spike queues 6 behind 8 started, and
        // the pool goes to 3. Two seconds later the queue has grown to 12, as it does until
        // the new pod is up: 4 replicas' worth, but 3 tasks/s arrived since, 9 slots' worth,
        // which the 12 slots of 3 pods keep up with, and 12 queued drain through them in
        // 3 s: held at 3. Once the pod runs the queue is gone: still 3.
        let spike = [
            on_pods(2, 0, obs(0, 0, 6)),
            on_pods(2, 6, obs(2, 6, 8)),
            on_pods(2, 12, obs(4, 12, 8)),
            on_pods(2, 16, obs(8, 10, 8)),
            on_pods(3, 32, obs(12, 1, 11)),
        ];
        assert_eq!(
            run_causes(&spec, 2, &spike),
            [
                (2, Load),
                (3, Load),
                (3, PodsStarting),
                (3, PodsStarting),
                (3, Load)
            ]
        );
        let mut history = History::new(2);
        for o in &spike[..2] {
            let d = desired_replicas(Some(o), &spec, &history);
            history.record(Some(o), &spec, &d);
        }
        let held = desired_replicas(Some(&spike[2]), &spec, &history);
        assert!(held.held(3) && held.limited, "{}", held.reason);
        assert_eq!(
            held.reason,
            "queueLength: (12 queued + 8 started) / 5 per replica = 4.00 (3.00/s arriving, \
             3.00s per task); → 4; 1 of the 1 pods added 2s ago not started yet; \
             3.00/s arriving × 3.00s = 9.0 slots ≤ 12 with them, no backlog; holding at 3"
        );

        // The hold lifts once the pod runs: a queue still there is more work than 3 pods.
        let started = [&spike[..3], &[on_pods(3, 24, obs(8, 14, 12))]].concat();
        assert_eq!(run_causes(&spec, 2, &started)[3], (6, Load));
        // ... when the queue is a backlog even counting the pod coming: 60 × 3 s / 12 slots
        // is 15 s (the jump was this period's: the step limit applies).
        let backlog = [&spike[..2], &[on_pods(2, 60, obs(4, 60, 8))]].concat();
        assert_eq!(run_causes(&spec, 2, &backlog)[2], (6, ScaleUpLimit));
        // ... when the tasks arriving since keep more slots busy than the pool will have:
        // 10/s × 3 s = 30 slots against 12.
        let ramp = [&spike[..2], &[on_pods(2, 26, obs(4, 12, 8))]].concat();
        assert_eq!(run_causes(&spec, 2, &ramp)[2], (4, Load));
        // ... when no pod runs yet (a jump from zero): the queue's growth says the first
        // pods were too few, and the step limit paces it.
        let from_zero = [on_pods(0, 15, obs(0, 15, 0)), on_pods(0, 25, obs(2, 25, 0))];
        assert_eq!(
            run_causes(&spec, 0, &from_zero),
            [(3, Load), (4, ScaleUpLimit)]
        );
        // ... when pods of a round before it are still starting too: the pool is ramping up.
        // (A backlog at 4 s adds 3 pods more; at 20 s none of the 4 new pods runs yet.)
        let rounds = [
            on_pods(2, 0, obs(0, 0, 6)),
            on_pods(2, 6, obs(2, 6, 8)),
            on_pods(2, 70, obs(4, 60, 8)),
            on_pods(2, 102, obs(20, 40, 8)),
        ];
        assert_eq!(
            run_causes(&spec, 2, &rounds),
            [(2, Load), (3, Load), (6, ScaleUpLimit), (10, Load)]
        );
        // ... and without a measured processing time to tell how busy the arrivals keep it.
        let unmeasured: Vec<Observation> = spike
            .iter()
            .map(|o| Observation {
                mean_processing_ms: None,
                ..o.clone()
            })
            .collect();
        assert_eq!(run_causes(&spec, 2, &unmeasured)[2], (4, Load));

        // A warm pool with a backlog still goes to its recommendation in one pass, pods
        // starting from an earlier period or not: a pod slow to start holds nothing then.
        let slow = [
            on_pods(2, 0, obs(0, 0, 6)),
            on_pods(2, 6, obs(2, 6, 8)),
            on_pods(2, 100, obs(20, 90, 8)),
        ];
        assert_eq!(
            run_causes(&spec, 2, &slow),
            [(2, Load), (3, Load), (20, Backlog)]
        );

        // A short spike doubles the pool once, and not again while the pods it started are
        // still starting, within the period or after it (slow nodes: 20 s).
        let doubling = [
            on_pods(4, 0, obs(0, 30, 16)),
            on_pods(4, 6, obs(2, 30, 16)),
            on_pods(4, 30, obs(16, 40, 16)),
            on_pods(8, 40, obs(22, 2, 30)),
        ];
        assert_eq!(
            run_causes(&spec, 4, &doubling),
            [
                (8, ScaleUpLimit),
                (8, PodsStarting),
                (8, PodsStarting),
                (8, ScaleDownWindow)
            ]
        );
    }

    #[test]
    fn from_zero_at_once_overrides_a_zero_in_the_scale_up_window() {
        let spec = with(|s| {
            s.scale_up = Some(ScalingRules {
                stabilization_window_seconds: Some(120),
                ..ScalingRules::default()
            })
        });
        let mut history = History::new(0);
        let idle = obs(0, 0, 0);
        let first = desired_replicas(Some(&idle), &spec, &history);
        assert_eq!((first.replicas, first.recommendation), (0, Some(0)));
        history.record(Some(&idle), &spec, &first);
        // The 0 from 10 s ago is within the window, which alone would hold the pool at zero.
        let d = desired_replicas(Some(&obs(10, 3, 0)), &spec, &history);
        assert_eq!(d.replicas, 1, "{}", d.reason);
        assert_eq!(
            d.reason,
            "queueLength: (3 queued + 0 started) / 5 per replica = 0.60 (0.00/s arriving); \
             → 1; scale-up window 120s holds at 0; from zero at once"
        );
        assert_eq!(d.cause, Cause::FromZero);
    }

    #[test]
    fn target_wait_uses_littles_law() {
        // λ = 1 task/s measured over 10 s, S = 15 s, W = 30 s, 100 queued, 4 per pod:
        // slots = 1 × 15 + 100 × 15 / 30 = 65, replicas = ceil(65 / 4) = 17.
        let spec = with(|s| {
            s.mode = ScalingMode::TargetWait;
            s.target_wait_seconds = 30.0;
            s.max_replicas = 50;
        });
        let at = |t: u64, total: u64| Observation {
            total_enqueued: total,
            mean_processing_ms: Some(15_000.0),
            ..obs(t, 100, 0)
        };
        let mut history = History::new(13);
        let first = desired_replicas(Some(&at(0, 0)), &spec, &history);
        // Without an arrival rate yet: 100 × 15 / 30 = 50 slots → 13 replicas.
        assert_eq!(first.replicas, 13, "{}", first.reason);
        history.record(Some(&at(0, 0)), &spec, &first);
        let second = at(10, 10);
        assert_eq!(history.arrival_rate(&second), Some(1.0));
        let d = desired_replicas(Some(&second), &spec, &history);
        assert_eq!(d.replicas, 17, "{}", d.reason);
        assert!(d.reason.contains("= 65.0 slots"), "{}", d.reason);
    }

    #[test]
    fn arrival_rate_spans_thirty_seconds() {
        let spec = spec();
        let mut history = History::new(1);
        for t in 0..=40u64 {
            let o = Observation {
                total_enqueued: t * 2,
                ..obs(t, 1, 0)
            };
            let d = desired_replicas(Some(&o), &spec, &history);
            history.record(Some(&o), &spec, &d);
        }
        // The oldest sample kept (t = 10 s, 20 tasks) is about 30 s old, so a burst of 60
        // tasks in the last second adds 60/31 per second, not 60.
        let burst = Observation {
            total_enqueued: 80 + 2 + 60,
            ..obs(41, 1, 0)
        };
        let rate = history.arrival_rate(&burst).unwrap_or_default();
        assert!((rate - 122.0 / 31.0).abs() < 1e-9, "rate {rate}");
    }
}
