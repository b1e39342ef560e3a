//! The reconciler: one pass over a pool every `pollSeconds`.
//!
//! [`reconcile`] is the entry point the [`Controller`] calls; it counts, times and reports
//! the pass that `RagWorkerPool::reconcile` runs in named steps:
//!
//! 1. `observe`: read the executor Deployment and look at the queues through the
//!    [`Observer`];
//! 2. `decide`: ask the policy ([`desired_replicas`]) for a replica count, given the pool's
//!    history;
//! 3. `apply_owned`: apply the Deployment and ConfigMap when their rendered spec changed;
//! 4. `scale`: set pod deletion costs before any scale-down, then patch the replicas when
//!    the decision differs from what the Deployment has (and emit an Event);
//! 5. `write_status`: server-side apply the status when it changed.
//!
//! The pool's history is held in [`Context`] between passes and goes back there whether or
//! not steps 3 and 4 succeed. A failed pass becomes an Event and a retry ([`error_policy`]).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use prometheus_client::metrics::family::Family;
use serde_json::json;
use tracing::{debug, info, warn};

use crate::crd::{
    BackendLimitStatus, RagWorkerPool, RagWorkerPoolSpec, RagWorkerPoolStatus, ScalingDecision,
    SpecError,
};
use crate::deletion_cost::{DELETION_COST, cost_changes};
use crate::metrics::{ErrorLabels, FloatGauge, Metrics, PoolLabels};
use crate::observe::{BackendObservation, Observation, ObserveError, Observer};
use crate::policy::{Decision, History, desired_replicas};
use crate::resources::{self, MANAGER, executor_name, pod_selector, spec_hash};
use crate::status::{self, Conditions, truncate};

/// A failed reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("{action}: {source}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },
    /// The pool has no namespace (the CRD is namespaced, so the API server never sends one).
    #[error("RagWorkerPool without a namespace")]
    NoNamespace,
}

impl Error {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Kube { .. } => "kube",
            Self::NoNamespace => "no_namespace",
        }
    }
}

fn kube_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let action = action.into();
    move |source| Error::Kube { action, source }
}

/// What the operator remembers about a pool between passes.
struct Memory {
    /// The pool's uid: a pool deleted and created again under the same name starts afresh.
    uid: Option<String>,
    history: History,
    /// The status this operator last wrote. The controller's cache can hand a pass an older
    /// copy of the pool than that write; building on the copy would put old values back.
    written: Option<RagWorkerPoolStatus>,
    /// The busy pods the deletion costs were last written for; `None` until a scale-down
    /// first needed them.
    costs_written_for: Option<BTreeSet<String>>,
    touched: Instant,
}

impl Memory {
    /// Remembers a pass whether or not its decision was carried out: its recommendation
    /// belongs in the stabilisation windows either way, but only a decision carried out is a
    /// replica change (a phantom one would skew the step limits).
    fn remember(
        &mut self,
        observation: Option<&Observation>,
        spec: &RagWorkerPoolSpec,
        decision: &Decision,
        carried_out: bool,
    ) {
        if carried_out {
            self.history.record(observation, spec, decision);
        } else {
            let kept = Decision {
                replicas: self.history.current_replicas,
                ..decision.clone()
            };
            self.history.record(observation, spec, &kept);
        }
    }
}

/// Memory of a pool not reconciled for this long belongs to a deleted pool.
const FORGET_AFTER: Duration = Duration::from_secs(3600);

/// State shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub observer: Arc<dyn Observer>,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    memory: Mutex<HashMap<String, Memory>>,
    /// The time a pass stamps on conditions and decisions; [`now`] outside tests.
    clock: Box<dyn Fn() -> Time + Send + Sync>,
    /// The partition count of a pool that leaves `spec.redis.partitions` unset (the
    /// operator's `--partitions`; `auto` leaves it to the executors and the observation, which
    /// resolve it the same way).
    default_partitions: u16,
}

impl Context {
    pub fn new(
        client: Client,
        observer: Arc<dyn Observer>,
        metrics: Arc<Metrics>,
        reporter: Reporter,
    ) -> Self {
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            observer,
            metrics,
            memory: Mutex::new(HashMap::new()),
            clock: Box::new(now),
            default_partitions: ragpool_queue::AUTO_PARTITIONS,
        }
    }

    /// Sets the partition count of pools that leave `spec.redis.partitions` unset.
    pub fn with_default_partitions(mut self, partitions: u16) -> Self {
        self.default_partitions = partitions;
        self
    }

    /// The pool as a pass renders and observes it: with the default partition count filled
    /// in when the pool leaves it unset, so its executors and the observation agree.
    fn with_defaults(&self, pool: Arc<RagWorkerPool>) -> Arc<RagWorkerPool> {
        if pool.spec.redis.partitions.is_some()
            || self.default_partitions == ragpool_queue::AUTO_PARTITIONS
        {
            return pool;
        }
        let mut pool = Arc::unwrap_or_clone(pool);
        pool.spec.redis.partitions = Some(i32::from(self.default_partitions));
        Arc::new(pool)
    }

    /// Replaces the clock, so a test's passes can be minutes apart.
    #[cfg(test)]
    fn with_clock(mut self, clock: impl Fn() -> Time + Send + Sync + 'static) -> Self {
        self.clock = Box::new(clock);
        self
    }

    /// Takes a pool's memory out for one pass (a pool is never reconciled twice at once).
    fn take_memory(&self, key: &str, uid: Option<&str>, current: i32) -> Memory {
        let mut all = self
            .memory
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        all.retain(|_, m| m.touched.elapsed() < FORGET_AFTER);
        let mut memory = all
            .remove(key)
            .filter(|m| m.uid.as_deref() == uid)
            .unwrap_or_else(|| Memory {
                uid: uid.map(str::to_owned),
                history: History::new(current),
                written: None,
                costs_written_for: None,
                touched: Instant::now(),
            });
        // The Deployment is the truth: someone may have scaled it by hand.
        memory.history.current_replicas = current;
        memory.touched = Instant::now();
        memory
    }

    /// The status last written for the pool `key` with `uid`, if this operator wrote one.
    fn written_status(&self, key: &str, uid: Option<&str>) -> Option<RagWorkerPoolStatus> {
        let all = self
            .memory
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        all.get(key)
            .filter(|m| m.uid.as_deref() == uid)
            .and_then(|m| m.written.clone())
    }

    /// Records a status written outside a full pass, for a pool already remembered.
    fn note_written(&self, key: &str, uid: Option<&str>, status: RagWorkerPoolStatus) {
        let mut all = self
            .memory
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(m) = all.get_mut(key).filter(|m| m.uid.as_deref() == uid) {
            m.written = Some(status);
        }
    }

    fn put_memory(&self, key: &str, memory: Memory) {
        let mut all = self
            .memory
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        all.insert(key.to_owned(), memory);
    }

    /// Publishes an Event about `pool`; a failure is logged, never fatal.
    async fn publish(&self, pool: &RagWorkerPool, type_: EventType, reason: &str, note: String) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(truncate(note, 1000)),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &pool.object_ref(&())).await {
            let (namespace, name) = (pool.namespace().unwrap_or_default(), pool.name_any());
            warn!(%namespace, pool = %name, error = %e, "cannot publish event {reason}");
        }
    }
}

/// The time now, in whole seconds: what the API server keeps of a `Time`, so the status
/// this operator remembers equals the one it reads back.
fn now() -> Time {
    let now = Timestamp::now();
    Time(Timestamp::from_second(now.as_second()).unwrap_or(now))
}

fn labels(pool: &RagWorkerPool) -> PoolLabels {
    PoolLabels {
        namespace: pool.namespace().unwrap_or_default(),
        pool: pool.name_any(),
    }
}

/// Reconciles one pool; see the module docs for the steps.
pub async fn reconcile(pool: Arc<RagWorkerPool>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let pool = ctx.with_defaults(pool);
    ctx.metrics.reconciles.get_or_create(&labels(&pool)).inc();
    let result = pool.reconcile(&ctx).await;
    ctx.metrics
        .reconcile_seconds
        .observe(started.elapsed().as_secs_f64());
    if let Err(e) = &result {
        ctx.metrics
            .errors
            .get_or_create(&ErrorLabels {
                namespace: pool.namespace().unwrap_or_default(),
                pool: pool.name_any(),
                error: e.kind().into(),
            })
            .inc();
        ctx.publish(&pool, EventType::Warning, "ReconcileFailed", e.to_string())
            .await;
    }
    result
}

/// Retries a failed pool after its poll interval (at least 5 s, so a broken API server is
/// not hammered).
pub fn error_policy(pool: Arc<RagWorkerPool>, error: &Error, _ctx: Arc<Context>) -> Action {
    let (namespace, name) = (pool.namespace().unwrap_or_default(), pool.name_any());
    warn!(%namespace, pool = %name, %error, "reconcile failed");
    let poll = u64::try_from(pool.spec.scaling.poll_seconds).unwrap_or(5);
    Action::requeue(Duration::from_secs(poll.max(5)))
}

/// What a pass found: the executor Deployment and the pool's queues.
struct Seen {
    ns: String,
    /// The pool's name.
    name: String,
    /// `namespace/name`: the pool's key in the operator's memory and in logs.
    key: String,
    /// The name of the executor Deployment and of its ConfigMap.
    exec: String,
    deployment: Option<Deployment>,
    /// The Deployment's replicas; 0 while it does not exist.
    current: i32,
    observed: Result<Observation, ObserveError>,
    /// When the pass began: the time conditions and `lastScaleTime` carry.
    now: Time,
}

impl Seen {
    fn observation(&self) -> Option<&Observation> {
        self.observed.as_ref().ok()
    }
}

/// What a pass decided, and whether it scaled: with [`Seen`], what the status is made of.
struct Plan {
    decision: Decision,
    /// Tasks per second arriving, once the history spans some time.
    arrival_rate: Option<f64>,
    /// The pass changed the Deployment's replicas (or created it with some).
    scaled: bool,
}

impl Plan {
    /// The entry for `status.recentDecisions`, if this pass's decision belongs there: it
    /// changed the replicas, or a bound, window or limit held them back and that is news
    /// (`newest` is not already the same hold, so a hold lasting many passes is one entry).
    fn recent_decision(
        &self,
        seen: &Seen,
        newest: Option<&ScalingDecision>,
    ) -> Option<ScalingDecision> {
        let decision = &self.decision;
        let entry = ScalingDecision {
            time: seen.now.clone(),
            from: seen.current,
            to: if self.scaled {
                decision.replicas
            } else {
                seen.current
            },
            reason: decision.cause.name().to_owned(),
            message: decision.message(),
        };
        if self.scaled {
            return Some(entry);
        }
        let repeated = newest.is_some_and(|n| {
            (n.from, n.to, n.reason.as_str()) == (entry.from, entry.to, entry.reason.as_str())
        });
        (seen.observed.is_ok() && decision.held(seen.current) && !repeated).then_some(entry)
    }
}

/// `decisions` with `entry` appended, keeping the newest `limit`.
fn push_bounded(
    mut decisions: Vec<ScalingDecision>,
    entry: Option<ScalingDecision>,
    limit: i32,
) -> Vec<ScalingDecision> {
    decisions.extend(entry);
    let limit = usize::try_from(limit.clamp(0, 100)).unwrap_or(0);
    let excess = decisions.len().saturating_sub(limit);
    decisions.drain(..excess);
    decisions
}

impl RagWorkerPool {
    /// One pass: observe → decide → apply owned objects → scale → write status.
    async fn reconcile(&self, ctx: &Context) -> Result<Action, Error> {
        let ns = self.namespace().ok_or(Error::NoNamespace)?;
        if let Err(invalid) = self.spec.validate() {
            self.report_invalid(ctx, &ns, &invalid).await?;
            return Ok(Action::await_change());
        }
        let seen = self.observe(ctx, ns).await?;
        // The memory goes back on every path: a failed call must not forget the
        // stabilisation window.
        let mut memory = ctx.take_memory(&seen.key, self.uid().as_deref(), seen.current);
        let mut plan = self.decide(&seen, &memory.history);
        let acted = self
            .apply_and_scale(ctx, &seen, &mut plan, &mut memory)
            .await;
        memory.remember(
            seen.observation(),
            &self.spec,
            &plan.decision,
            acted.is_ok(),
        );
        let result = match acted {
            Ok(()) => self.write_status(ctx, &seen, &plan, &mut memory).await,
            Err(e) => Err(e),
        };
        ctx.put_memory(&seen.key, memory);
        result.map(|()| Action::requeue(self.poll_interval()))
    }

    fn poll_interval(&self) -> Duration {
        Duration::from_secs(u64::try_from(self.spec.scaling.poll_seconds.max(1)).unwrap_or(2))
    }

    /// The status a pass builds on: what this operator last wrote, or, when it wrote
    /// nothing yet (a new pool, a restart, a new leader), the pool's own.
    fn previous_status(&self, written: Option<&RagWorkerPoolStatus>) -> RagWorkerPoolStatus {
        written
            .or(self.status.as_ref())
            .cloned()
            .unwrap_or_default()
    }

    /// Reports an invalid spec with `InvalidSpec` conditions, and with a Warning Event when
    /// the spec became invalid or changed while invalid. Nothing else is touched until the
    /// pool changes.
    async fn report_invalid(
        &self,
        ctx: &Context,
        ns: &str,
        invalid: &SpecError,
    ) -> Result<(), Error> {
        let (key, uid) = (format!("{ns}/{}", self.name_any()), self.uid());
        let previous = self.previous_status(ctx.written_status(&key, uid.as_deref()).as_ref());
        let generation = self.metadata.generation;
        if !status::is_false(&previous.conditions, status::SCALING_ACTIVE)
            || previous.observed_generation != generation
        {
            ctx.publish(self, EventType::Warning, "InvalidSpec", invalid.to_string())
                .await;
        }
        let mut conditions = Conditions::new(&previous.conditions, generation, (ctx.clock)());
        conditions.invalid_spec(&invalid.to_string());
        let status = RagWorkerPoolStatus {
            observed_generation: generation,
            conditions: conditions.into_vec(),
            ..previous.clone()
        };
        self.apply_status(ctx, ns, status.clone()).await?;
        ctx.note_written(&key, uid.as_deref(), status);
        Ok(())
    }

    /// Observe: reads the executor Deployment and looks at the pool's queues.
    async fn observe(&self, ctx: &Context, ns: String) -> Result<Seen, Error> {
        let now = (ctx.clock)();
        let exec = executor_name(self);
        let deployment = Api::<Deployment>::namespaced(ctx.client.clone(), &ns)
            .get_opt(&exec)
            .await
            .map_err(kube_err(format!("reading Deployment {ns}/{exec}")))?;
        let current = deployment
            .as_ref()
            .and_then(|d| d.spec.as_ref()?.replicas)
            .unwrap_or(0);
        Ok(Seen {
            key: format!("{ns}/{}", self.name_any()),
            name: self.name_any(),
            observed: ctx.observer.observe(self).await,
            ns,
            exec,
            deployment,
            current,
            now,
        })
    }

    /// Decide: asks the policy for a replica count, given the pool's history.
    fn decide(&self, seen: &Seen, history: &History) -> Plan {
        let decision = desired_replicas(seen.observation(), &self.spec, history);
        debug!(
            namespace = %seen.ns,
            pool = %seen.name,
            current = seen.current,
            replicas = decision.replicas,
            cause = decision.cause.label(),
            reason = %decision.reason,
            "decided"
        );
        Plan {
            decision,
            arrival_rate: seen.observation().and_then(|o| history.arrival_rate(o)),
            scaled: false,
        }
    }

    /// The steps that change the cluster, in order; the first failure ends the pass.
    async fn apply_and_scale(
        &self,
        ctx: &Context,
        seen: &Seen,
        plan: &mut Plan,
        memory: &mut Memory,
    ) -> Result<(), Error> {
        self.apply_owned(ctx, seen, &plan.decision).await?;
        let scaled = self.scale(ctx, seen, &plan.decision, memory).await?;
        // A Deployment created at a non-zero size is a scale from nothing.
        let created = seen.deployment.is_none() && plan.decision.replicas != seen.current;
        plan.scaled = scaled || created;
        Ok(())
    }

    /// Apply owned objects: server-side applies the ConfigMap and the Deployment when the
    /// rendered spec changed. A new Deployment starts at the decided size; an existing one
    /// keeps its size here and is resized by [`Self::scale`], after the deletion costs.
    async fn apply_owned(
        &self,
        ctx: &Context,
        seen: &Seen,
        decision: &Decision,
    ) -> Result<(), Error> {
        let replicas = match seen.deployment {
            Some(_) => seen.current,
            None => decision.replicas,
        };
        let rendered = resources::deployment(self, replicas);
        if seen.deployment.as_ref().and_then(spec_hash) == spec_hash(&rendered) {
            return Ok(());
        }
        let (ns, exec) = (&seen.ns, &seen.exec);
        let apply = PatchParams::apply(MANAGER).force();
        Api::<ConfigMap>::namespaced(ctx.client.clone(), ns)
            .patch(exec, &apply, &Patch::Apply(&resources::config_map(self)))
            .await
            .map_err(kube_err(format!("applying ConfigMap {ns}/{exec}")))?;
        Api::<Deployment>::namespaced(ctx.client.clone(), ns)
            .patch(exec, &apply, &Patch::Apply(&rendered))
            .await
            .map_err(kube_err(format!("applying Deployment {ns}/{exec}")))?;
        info!(
            namespace = %seen.ns,
            pool = %seen.name,
            created = seen.deployment.is_none(),
            "applied executor Deployment"
        );
        Ok(())
    }

    /// Scale: moves an existing Deployment to the decided count, writing deletion costs
    /// first on the way down. Without a scale, rewrites the costs when the busy pods changed
    /// since they were last written, so a scale-down made by someone else also spares busy
    /// pods. Returns whether it scaled.
    async fn scale(
        &self,
        ctx: &Context,
        seen: &Seen,
        decision: &Decision,
        memory: &mut Memory,
    ) -> Result<bool, Error> {
        let Ok(obs) = &seen.observed else {
            return Ok(false);
        };
        if seen.deployment.is_some() && decision.replicas != seen.current {
            if decision.replicas < seen.current {
                // Steer the ReplicaSet to idle pods before it picks any.
                self.write_deletion_costs(ctx, &seen.ns, obs, memory)
                    .await?;
            }
            self.patch_replicas(ctx, seen, decision).await?;
            return Ok(true);
        }
        if memory
            .costs_written_for
            .as_ref()
            .is_some_and(|written| *written != obs.busy_pods())
        {
            self.write_deletion_costs(ctx, &seen.ns, obs, memory)
                .await?;
        }
        Ok(false)
    }

    /// Patches the Deployment's replicas through the scale subresource and tells the pool's
    /// Events about it.
    async fn patch_replicas(
        &self,
        ctx: &Context,
        seen: &Seen,
        decision: &Decision,
    ) -> Result<(), Error> {
        let (exec, from, to) = (&seen.exec, seen.current, decision.replicas);
        let params = PatchParams {
            field_manager: Some(MANAGER.into()),
            ..PatchParams::default()
        };
        Api::<Deployment>::namespaced(ctx.client.clone(), &seen.ns)
            .patch_scale(
                exec,
                &params,
                &Patch::Merge(json!({"spec": {"replicas": to}})),
            )
            .await
            .map_err(kube_err(format!("scaling Deployment {exec} to {to}")))?;
        info!(namespace = %seen.ns, pool = %seen.name, from, to, reason = %decision.reason, "scaled");
        ctx.metrics.scale_events.get_or_create(&labels(self)).inc();
        let reason = if to > from { "ScaledUp" } else { "ScaledDown" };
        let note = format!("{from} → {to} replicas: {}", decision.reason);
        ctx.publish(self, EventType::Normal, reason, note).await;
        Ok(())
    }

    /// Sets `pod-deletion-cost` on the pool's pods whose cost changed.
    async fn write_deletion_costs(
        &self,
        ctx: &Context,
        ns: &str,
        obs: &Observation,
        memory: &mut Memory,
    ) -> Result<(), Error> {
        let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
        let list = pods
            .list(&ListParams::default().labels(&pod_selector(self)))
            .await
            .map_err(kube_err(format!(
                "listing pods of pool {ns}/{}",
                self.name_any()
            )))?;
        let params = PatchParams {
            field_manager: Some(MANAGER.into()),
            ..PatchParams::default()
        };
        for (pod, cost) in cost_changes(&list.items, &obs.workers) {
            let patch = json!({"metadata": {"annotations": {DELETION_COST: cost.to_string()}}});
            match pods.patch(&pod, &params, &Patch::Merge(&patch)).await {
                Ok(_) => {
                    debug!(namespace = %ns, pool = %self.name_any(), %pod, cost, "set deletion cost")
                }
                // The pod went away between the list and the patch: nothing to steer.
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(kube_err(format!("annotating pod {ns}/{pod}"))(e)),
            }
        }
        memory.costs_written_for = Some(obs.busy_pods());
        Ok(())
    }

    /// Write status: a Warning Event when the queues became unreadable, the pool's gauges,
    /// and the status, applied only when it differs from the pool's, and remembered.
    async fn write_status(
        &self,
        ctx: &Context,
        seen: &Seen,
        plan: &Plan,
        memory: &mut Memory,
    ) -> Result<(), Error> {
        let previous = self.previous_status(memory.written.as_ref());
        if let Err(e) = &seen.observed
            && !status::is_false(&previous.conditions, status::REDIS_REACHABLE)
        {
            let note = format!("{e}; keeping {} replicas", seen.current);
            ctx.publish(self, EventType::Warning, e.reason(), note)
                .await;
        }
        self.record_metrics(ctx, seen, plan);
        let status = self.next_status(seen, plan, previous);
        if self.status.as_ref() != Some(&status) {
            self.apply_status(ctx, &seen.ns, status.clone()).await?;
        }
        memory.written = Some(status);
        Ok(())
    }

    /// The status after a pass, built on `previous`. Queue figures a failed look could not
    /// read keep their last values, flagged by `RedisReachable=False`.
    fn next_status(
        &self,
        seen: &Seen,
        plan: &Plan,
        previous: RagWorkerPoolStatus,
    ) -> RagWorkerPoolStatus {
        let counts = seen
            .deployment
            .as_ref()
            .and_then(|d| d.status.clone())
            .unwrap_or_default();
        let ready = counts.ready_replicas.unwrap_or(0);
        let (last_scale_time, last_scale_reason) = if plan.scaled {
            (Some(seen.now.clone()), Some(plan.decision.reason.clone()))
        } else {
            (
                previous.last_scale_time.clone(),
                previous.last_scale_reason.clone(),
            )
        };
        let entry = plan.recent_decision(seen, previous.recent_decisions.last());
        let recent_decisions = push_bounded(
            previous.recent_decisions.clone(),
            entry,
            self.spec.scaling.decision_history_limit,
        );
        let mut status = RagWorkerPoolStatus {
            recent_decisions,
            replicas: counts.replicas.unwrap_or(0),
            ready_replicas: ready,
            desired_replicas: plan.decision.replicas,
            last_scale_time,
            last_scale_reason,
            observed_generation: self.metadata.generation,
            conditions: self.conditions(seen, plan, ready, &previous.conditions),
            key_prefix: Some(self.spec.redis.key_prefix().to_owned()),
            ..previous
        };
        if let Ok(obs) = &seen.observed {
            set_queue_figures(&mut status, obs, plan.arrival_rate);
            status.backend = obs
                .backend
                .as_ref()
                .map(|b| backend_status(b, self.spec.executor.concurrency));
        }
        status
    }

    /// The four conditions after a pass, `ready` being the Deployment's ready replicas.
    fn conditions(
        &self,
        seen: &Seen,
        plan: &Plan,
        ready: i32,
        previous: &[Condition],
    ) -> Vec<Condition> {
        let decision = &plan.decision;
        let failure = seen.observed.as_ref().err();
        let mut conditions = Conditions::new(previous, self.metadata.generation, seen.now.clone());
        conditions
            .ready(seen.deployment.is_some(), ready, decision.replicas)
            .redis_reachable(failure, self.spec.redis.key_prefix())
            .scaling_active(self.spec.scaling.paused, failure, &decision.reason)
            .scaling_limited(decision.limited, &decision.reason);
        conditions.into_vec()
    }

    /// Sets the pool's gauges to what this pass saw and chose, and counts the decision. A
    /// figure the pass could not read keeps its last value, as in the status.
    fn record_metrics(&self, ctx: &Context, seen: &Seen, plan: &Plan) {
        let (l, decision, m) = (labels(self), &plan.decision, &ctx.metrics);
        m.desired_replicas
            .get_or_create(&l)
            .set(i64::from(decision.replicas));
        let current = if plan.scaled {
            decision.replicas
        } else {
            seen.current
        };
        m.current_replicas.get_or_create(&l).set(i64::from(current));
        m.max_replicas
            .get_or_create(&l)
            .set(i64::from(self.spec.scaling.max_replicas));
        let ready = seen
            .deployment
            .as_ref()
            .and_then(|d| d.status.as_ref())
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0);
        m.ready_replicas.get_or_create(&l).set(i64::from(ready));
        m.redis_reachable
            .get_or_create(&l)
            .set(i64::from(seen.observed.is_ok()));
        m.target_wait_seconds
            .get_or_create(&l)
            .set(self.spec.scaling.target_wait_seconds);
        m.count_decision(&l, decision.cause);
        match decision.raw {
            Some(raw) => {
                m.raw_recommendation.get_or_create(&l).set(raw);
            }
            None => {
                m.raw_recommendation.remove(&l);
            }
        }
        if let Some(obs) = seen.observation() {
            set_or_remove(&m.arrival_rate, &l, plan.arrival_rate);
            let service = obs.mean_processing_ms.map(|ms| ms / 1000.0);
            set_or_remove(&m.mean_processing_seconds, &l, service);
            ctx.metrics
                .queued
                .get_or_create(&l)
                .set(i64::try_from(obs.queued).unwrap_or(i64::MAX));
            ctx.metrics
                .started
                .get_or_create(&l)
                .set(i64::try_from(obs.started).unwrap_or(i64::MAX));
            ctx.metrics
                .oldest_queued_age_seconds
                .get_or_create(&l)
                .set(obs.oldest_queued_age_ms as f64 / 1000.0);
            match &obs.backend {
                Some(b) => {
                    m.backend_permits_in_use
                        .get_or_create(&l)
                        .set(i64::from(b.in_use));
                    match b.limit {
                        Some(limit) => {
                            m.backend_limit.get_or_create(&l).set(i64::from(limit));
                        }
                        None => {
                            m.backend_limit.remove(&l);
                        }
                    }
                }
                None => {
                    m.backend_permits_in_use.remove(&l);
                    m.backend_limit.remove(&l);
                }
            }
        }
    }

    async fn apply_status(
        &self,
        ctx: &Context,
        ns: &str,
        status: RagWorkerPoolStatus,
    ) -> Result<(), Error> {
        let pools: Api<RagWorkerPool> = Api::namespaced(ctx.client.clone(), ns);
        let patch = json!({
            "apiVersion": RagWorkerPool::api_version(&()),
            "kind": RagWorkerPool::kind(&()),
            "status": status,
        });
        pools
            .patch_status(
                &self.name_any(),
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(patch),
            )
            .await
            .map_err(kube_err(format!(
                "writing status of {ns}/{}",
                self.name_any()
            )))?;
        Ok(())
    }
}

/// Sets a pool's float gauge to `value`, or removes the series while there is none.
fn set_or_remove(family: &Family<PoolLabels, FloatGauge>, pool: &PoolLabels, value: Option<f64>) {
    match value {
        Some(v) => {
            family.get_or_create(pool).set(v);
        }
        None => {
            family.remove(pool);
        }
    }
}

/// Copies the queue figures of `obs` into `status`.
fn set_queue_figures(
    status: &mut RagWorkerPoolStatus,
    obs: &Observation,
    arrival_rate: Option<f64>,
) {
    status.queued = i64::try_from(obs.queued).unwrap_or(i64::MAX);
    status.started = i64::try_from(obs.started).unwrap_or(i64::MAX);
    status.delayed = i64::try_from(obs.delayed).unwrap_or(i64::MAX);
    status.oldest_queued_age_seconds = obs.oldest_queued_age_ms as f64 / 1000.0;
    status.arrival_rate = arrival_rate.map(round3);
    status.mean_processing_seconds = obs.mean_processing_ms.map(|ms| round3(ms / 1000.0));
}

/// The pool's limits on backend calls as its status shows them.
fn backend_status(b: &BackendObservation, concurrency: i32) -> BackendLimitStatus {
    BackendLimitStatus {
        key: b.key.clone(),
        limit: b.limit.map(i64::from),
        permits_in_use: i64::from(b.in_use),
        paused_seconds: (b.paused_ms > 0).then(|| round3(b.paused_ms as f64 / 1000.0)),
        replica_ceiling: b.replica_ceiling(concurrency),
    }
}

/// Three decimals are plenty for rates and seconds, and keep the status from changing on
/// every float wobble.
fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Runs the controller over every pool in the cluster until `shutdown` resolves.
pub async fn run(ctx: Arc<Context>, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
    let pools: Api<RagWorkerPool> = Api::all(ctx.client.clone());
    let deployments: Api<Deployment> = Api::all(ctx.client.clone());
    let owned =
        watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGER}"));
    Controller::new(pools, watcher::Config::default().any_semantic())
        .owns(deployments, owned)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((pool, _)) => {
                    let namespace = pool.namespace.as_deref().unwrap_or_default();
                    debug!(namespace, pool = %pool.name, "reconciled");
                }
                // error_policy has logged a failed reconcile with its pool.
                Err(kube::runtime::controller::Error::ReconcilerFailed(..)) => {}
                Err(kube::runtime::controller::Error::ObjectNotFound(pool)) => {
                    let namespace = pool.namespace.as_deref().unwrap_or_default();
                    debug!(namespace, pool = %pool.name, "pool gone before its reconcile");
                }
                Err(e) => warn!(error = %e, "reconcile stream"),
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;

    use http::{Method, StatusCode};
    use serde_json::{Value, json};

    use super::*;
    use crate::fixtures::{Exchange, FakeObserver, mock_api, not_found, obs, pool, spec, worker};

    const DEPLOYMENT: &str = "/apis/apps/v1/namespaces/ns/deployments/pool-executor";
    const CONFIG_MAP: &str = "/api/v1/namespaces/ns/configmaps/pool-executor";
    const STATUS: &str = "/apis/ragpool.io/v1alpha1/namespaces/ns/ragworkerpools/pool/status";
    const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/ns/events";
    const SCALE: &str = "/apis/apps/v1/namespaces/ns/deployments/pool-executor/scale";
    const PODS: &str = "/api/v1/namespaces/ns/pods";
    const FM: &str = "fieldManager=ragpool-operator";

    fn context(client: Client, script: Vec<Result<Observation, ObserveError>>) -> Arc<Context> {
        Arc::new(Context::new(
            client,
            Arc::new(FakeObserver::new(script)),
            Arc::new(Metrics::default()),
            Reporter {
                controller: MANAGER.into(),
                instance: None,
            },
        ))
    }

    /// The Deployment as the API server would return it: rendered for `replicas`, all ready.
    fn existing(pool: &RagWorkerPool, replicas: i32) -> Value {
        let mut d = resources::deployment(pool, replicas);
        d.status = Some(k8s_openapi::api::apps::v1::DeploymentStatus {
            replicas: Some(replicas),
            ready_replicas: Some(replicas),
            ..Default::default()
        });
        serde_json::to_value(d).unwrap_or_default()
    }

    fn get_deployment(reply: Value) -> Exchange {
        let status = if reply["kind"] == "Status" {
            StatusCode::NOT_FOUND
        } else {
            StatusCode::OK
        };
        Exchange::new(Method::GET, DEPLOYMENT).reply(status, reply)
    }

    /// The status apply; the reply is the pool (the reconciler ignores it).
    fn status_patch() -> Exchange {
        Exchange::new(Method::PATCH, STATUS).reply(
            StatusCode::OK,
            serde_json::to_value(pool(spec())).unwrap_or_default(),
        )
    }

    fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
        status["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
            .unwrap_or(&Value::Null)
    }

    /// The scale subresource set to `to` replicas.
    fn scale(to: i32) -> Exchange {
        Exchange::new(Method::PATCH, SCALE)
            .check(move |body| assert_eq!(body["spec"]["replicas"], to))
    }

    /// Each kept decision as (from, to, reason).
    fn decision_reasons(status: &RagWorkerPoolStatus) -> Vec<(i32, i32, &str)> {
        status
            .recent_decisions
            .iter()
            .map(|d| (d.from, d.to, d.reason.as_str()))
            .collect()
    }

    fn event(reason: &'static str, type_: &'static str, note: &'static str) -> Exchange {
        Exchange::new(Method::POST, EVENTS).check(move |body| {
            assert_eq!(body["reason"], reason, "{body}");
            assert_eq!(body["type"], type_, "{body}");
            assert_eq!(body["regarding"]["kind"], "RagWorkerPool");
            assert_eq!(body["regarding"]["name"], "pool");
            assert_eq!(body["reportingController"], "ragpool-operator");
            let text = body["note"].as_str().unwrap_or_default();
            assert!(text.contains(note), "note {text:?} lacks {note:?}");
        })
    }

    async fn run(
        pool: RagWorkerPool,
        script: Vec<Exchange>,
        observed: Vec<Result<Observation, ObserveError>>,
    ) -> Vec<String> {
        let (client, server) = mock_api(script);
        let ctx = context(client, observed);
        let action = reconcile(Arc::new(pool), ctx).await;
        assert!(action.is_ok(), "reconcile failed: {action:?}");
        assert_eq!(action.ok(), Some(Action::requeue(Duration::from_secs(2))));
        server.await.unwrap_or_default()
    }

    #[tokio::test]
    async fn first_pass_applies_config_map_and_deployment_then_status() {
        let p = pool(spec());
        let seen = run(
            p,
            vec![
                get_deployment(not_found("deployments.apps", "pool-executor")),
                Exchange::new(Method::PATCH, CONFIG_MAP)
                    .query(FM)
                    .query("force=true")
                    .check(|body| {
                        assert_eq!(body["kind"], "ConfigMap");
                        assert_eq!(body["data"]["RAGPOOL_QUEUES"], "image_analysis");
                        assert_eq!(body["data"]["RAGPOOL_CONCURRENCY"], "4");
                        assert_eq!(body["data"]["RAGPOOL_BACKEND"], "builtin");
                        assert_eq!(body["data"]["RAGPOOL_DRAIN_SECONDS"], "30");
                        assert_eq!(
                            body["metadata"]["ownerReferences"][0]["kind"],
                            "RagWorkerPool"
                        );
                    }),
                Exchange::new(Method::PATCH, DEPLOYMENT)
                    .query(FM)
                    .query("force=true")
                    .check(|body| {
                        assert_eq!(body["kind"], "Deployment");
                        // Created at the decided size: ceil(3 / 5) = 1.
                        assert_eq!(body["spec"]["replicas"], 1);
                        assert_eq!(body["metadata"]["ownerReferences"][0]["controller"], true);
                        let pod = &body["spec"]["template"]["spec"];
                        assert_eq!(pod["containers"][0]["command"][0], "ragpool-executor");
                        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
                        assert_eq!(pod["terminationGracePeriodSeconds"], 45);
                        assert_eq!(
                            pod["containers"][0]["envFrom"][0]["configMapRef"]["name"],
                            "pool-executor"
                        );
                    }),
                status_patch().query(FM).query("force=true").check(|body| {
                    assert_eq!(body["kind"], "RagWorkerPool");
                    assert_eq!(body["status"]["desiredReplicas"], 1);
                    assert_eq!(body["status"]["queued"], 3);
                    assert_eq!(body["status"]["observedGeneration"], 1);
                    assert_eq!(condition(body, "Ready")["reason"], "DeploymentCreated");
                    assert_eq!(condition(body, "RedisReachable")["status"], "True");
                    assert_eq!(condition(body, "ScalingActive")["status"], "True");
                    assert_eq!(condition(body, "ScalingLimited")["status"], "False");
                }),
            ],
            vec![Ok(obs(100, 3, 0))],
        )
        .await;
        assert_eq!(seen.len(), 4);
    }

    #[tokio::test]
    async fn an_openai_pool_mounts_and_indexes_its_docs_config_map() {
        let mut s = spec();
        s.executor.backend.kind = crate::crd::BackendKind::Openai;
        s.executor.backend.openai = Some(crate::crd::OpenAiBackend {
            base_url: "http://vllm.models:8000/v1".into(),
            model: "qwen".into(),
            ..Default::default()
        });
        s.executor.docs = Some(crate::crd::DocsSpec {
            config_map: Some("handbook".into()),
            ..Default::default()
        });
        let seen = run(
            pool(s),
            vec![
                get_deployment(not_found("deployments.apps", "pool-executor")),
                Exchange::new(Method::PATCH, CONFIG_MAP)
                    .query(FM)
                    .check(|body| {
                        let data = &body["data"];
                        assert_eq!(data["RAGPOOL_BACKEND"], "openai");
                        assert_eq!(data["RAGPOOL_OPENAI_BASE_URL"], "http://vllm.models:8000/v1");
                        assert_eq!(data["RAGPOOL_DOCS"], resources::DOCS_MOUNT);
                    }),
                Exchange::new(Method::PATCH, DEPLOYMENT)
                    .query(FM)
                    .check(|body| {
                        let pod = &body["spec"]["template"]["spec"];
                        assert_eq!(
                            pod["volumes"],
                            json!([
                                {"name": "tmp", "emptyDir": {}},
                                {"name": "docs", "configMap": {"name": "handbook"}},
                            ])
                        );
                        let container = &pod["containers"][0];
                        assert_eq!(
                            container["volumeMounts"],
                            json!([
                                {"name": "tmp", "mountPath": "/tmp"},
                                {"name": "docs", "mountPath": resources::DOCS_MOUNT, "readOnly": true},
                            ])
                        );
                        // RAGPOOL_DOCS reaches the container through the ConfigMap above.
                        assert_eq!(
                            container["envFrom"],
                            json!([{"configMapRef": {"name": "pool-executor", "optional": false}}])
                        );
                    }),
                status_patch().query(FM),
            ],
            vec![Ok(obs(100, 3, 0))],
        )
        .await;
        assert_eq!(seen.len(), 4);
    }

    /// A pass over a new pool with the operator's default partition count `default`: the
    /// count the executors get (`RAGPOOL_PARTITIONS` in the ConfigMap, `None` when not
    /// written) and the one the pool was observed with.
    async fn partitions_of_a_new_pool(
        pool: RagWorkerPool,
        default: u16,
    ) -> (Option<String>, Vec<u16>) {
        let written = Arc::new(Mutex::new(None));
        let script = vec![
            get_deployment(not_found("deployments.apps", "pool-executor")),
            Exchange::new(Method::PATCH, CONFIG_MAP).check({
                let written = written.clone();
                move |body| {
                    *written.lock().unwrap() = body["data"]["RAGPOOL_PARTITIONS"]
                        .as_str()
                        .map(str::to_owned);
                }
            }),
            Exchange::new(Method::PATCH, DEPLOYMENT),
            status_patch(),
        ];
        let (client, server) = mock_api(script);
        let observer = Arc::new(FakeObserver::new(vec![Ok(obs(100, 3, 0))]));
        let ctx = Arc::new(
            Context::new(
                client,
                observer.clone(),
                Arc::new(Metrics::default()),
                Reporter {
                    controller: MANAGER.into(),
                    instance: None,
                },
            )
            .with_default_partitions(default),
        );
        assert!(reconcile(Arc::new(pool), ctx).await.is_ok());
        assert_eq!(server.await.unwrap_or_default().len(), 4);
        let written = written.lock().unwrap().clone();
        (written, observer.partitions())
    }

    #[tokio::test]
    async fn executors_and_status_name_the_pools_key_prefix() {
        let mut s = spec();
        s.redis.key_prefix = Some("tenant-a".into());
        let seen = run(
            pool(s),
            vec![
                get_deployment(not_found("deployments.apps", "pool-executor")),
                Exchange::new(Method::PATCH, CONFIG_MAP).check(|body| {
                    assert_eq!(body["data"]["RAGPOOL_KEY_PREFIX"], "tenant-a");
                    assert!(body["data"]["RAGPOOL_NAMESPACE"].is_null(), "{body}");
                }),
                Exchange::new(Method::PATCH, DEPLOYMENT),
                status_patch().check(|body| {
                    assert_eq!(body["status"]["keyPrefix"], "tenant-a");
                    let message = condition(body, "RedisReachable")["message"].to_string();
                    assert!(message.contains("tenant-a"), "{message}");
                }),
            ],
            vec![Ok(obs(100, 3, 0))],
        )
        .await;
        assert_eq!(seen.len(), 4);

        // A pool that sets none leaves the executors' default alone and reports it.
        let seen = run(
            pool(spec()),
            vec![
                get_deployment(not_found("deployments.apps", "pool-executor")),
                Exchange::new(Method::PATCH, CONFIG_MAP).check(|body| {
                    assert!(body["data"][resources::KEY_PREFIX_ENV].is_null(), "{body}");
                }),
                Exchange::new(Method::PATCH, DEPLOYMENT),
                status_patch().check(|body| {
                    assert_eq!(
                        body["status"]["keyPrefix"],
                        ragpool_queue::DEFAULT_KEY_PREFIX
                    );
                }),
            ],
            vec![Ok(obs(100, 3, 0))],
        )
        .await;
        assert_eq!(seen.len(), 4);
    }

    #[tokio::test]
    async fn executors_get_the_partition_count_the_pool_is_observed_with() {
        // Neither the pool nor the operator sets one: nothing is written, and the executors
        // and the observation both resolve `auto` (0) themselves.
        let auto = ragpool_queue::AUTO_PARTITIONS;
        assert_eq!(
            partitions_of_a_new_pool(pool(spec()), auto).await,
            (None, vec![auto])
        );
        // An operator set to 1 writes it: the executors' own default is `auto`.
        assert_eq!(
            partitions_of_a_new_pool(pool(spec()), 1).await,
            (Some("1".into()), vec![1])
        );
        // The pool's own count wins over the operator's.
        let mut s = spec();
        s.redis.partitions = Some(3);
        assert_eq!(
            partitions_of_a_new_pool(pool(s), 6).await,
            (Some("3".into()), vec![3])
        );
        // A pool without one gets the operator's `--partitions`.
        assert_eq!(
            partitions_of_a_new_pool(pool(spec()), 6).await,
            (Some("6".into()), vec![6])
        );
    }

    #[tokio::test]
    async fn scale_up_patches_replicas_emits_an_event_and_writes_status() {
        let p = pool(spec());
        let seen = run(
            p.clone(),
            vec![
                get_deployment(existing(&p, 1)),
                Exchange::new(Method::PATCH, SCALE).query(FM).check(|body| {
                    assert_eq!(body, &json!({"spec": {"replicas": 5}}));
                }),
                event("ScaledUp", "Normal", "1 → 5 replicas"),
                status_patch().query(FM).check(|body| {
                    assert_eq!(body["status"]["desiredReplicas"], 5);
                    assert_eq!(body["status"]["started"], 5);
                    let reason = body["status"]["lastScaleReason"]
                        .as_str()
                        .unwrap_or_default();
                    assert!(reason.contains("queueLength"), "{reason}");
                    assert!(body["status"]["lastScaleTime"].is_string());
                    let recent = &body["status"]["recentDecisions"];
                    assert_eq!(recent.as_array().map(Vec::len), Some(1), "{recent}");
                    assert_eq!(recent[0]["from"], 1);
                    assert_eq!(recent[0]["to"], 5);
                    assert_eq!(recent[0]["reason"], "Load");
                    assert_eq!(recent[0]["time"], body["status"]["lastScaleTime"]);
                    assert_eq!(
                        recent[0]["message"],
                        "queueLength: (18 queued + 5 started) / 5 per replica = 4.60; → 5"
                    );
                }),
            ],
            vec![Ok(obs(100, 18, 5))],
        )
        .await;
        assert_eq!(seen.len(), 4);
    }

    #[tokio::test]
    async fn scale_down_sets_deletion_costs_first() {
        let p = pool(spec());
        let pod = |name: &str| json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "ns"}});
        let list = json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [pod("busy"), pod("idle-1"), pod("idle-2")]});
        let cost = |expected: &'static str| {
            move |body: &Value| {
                assert_eq!(
                    body["metadata"]["annotations"]["controller.kubernetes.io/pod-deletion-cost"],
                    expected
                );
            }
        };
        let observation = Observation {
            workers: vec![worker("busy", 1), worker("idle-1", 0), worker("idle-2", 0)],
            ..obs(100, 0, 1)
        };
        let seen = run(
            p.clone(),
            vec![
                get_deployment(existing(&p, 3)),
                Exchange::new(Method::GET, PODS)
                    .query("labelSelector=ragpool.io%2Fpool%3Dpool")
                    .reply(StatusCode::OK, list),
                Exchange::new(Method::PATCH, &format!("{PODS}/busy"))
                    .query(FM)
                    .check(cost("1")),
                Exchange::new(Method::PATCH, &format!("{PODS}/idle-1"))
                    .query(FM)
                    .check(cost("0")),
                Exchange::new(Method::PATCH, &format!("{PODS}/idle-2"))
                    .query(FM)
                    .check(cost("0")),
                Exchange::new(Method::PATCH, SCALE)
                    .check(|body| assert_eq!(body["spec"]["replicas"], 1)),
                event("ScaledDown", "Normal", "3 → 1 replicas"),
                status_patch().check(|body| {
                    assert_eq!(body["status"]["desiredReplicas"], 1);
                }),
            ],
            vec![Ok(observation)],
        )
        .await;
        assert_eq!(seen.len(), 8);
    }

    #[tokio::test]
    async fn redis_down_keeps_replicas_and_reports_it() {
        let p = pool(spec());
        let seen = run(
            p.clone(),
            vec![
                get_deployment(existing(&p, 3)),
                event("RedisUnreachable", "Warning", "keeping 3 replicas"),
                status_patch().check(|body| {
                    assert_eq!(body["status"]["desiredReplicas"], 3);
                    assert_eq!(condition(body, "RedisReachable")["status"], "False");
                    assert_eq!(
                        condition(body, "RedisReachable")["reason"],
                        "RedisUnreachable"
                    );
                    assert_eq!(condition(body, "ScalingActive")["status"], "False");
                }),
            ],
            vec![Err(ObserveError::Unreachable("connection refused".into()))],
        )
        .await;
        // No scale patch between the read and the event.
        assert_eq!(seen.len(), 3);
    }

    #[tokio::test]
    async fn capped_at_max_reports_scaling_limited() {
        let mut s: RagWorkerPoolSpec = spec();
        s.scaling.max_replicas = 3;
        let p = pool(s);
        run(
            p.clone(),
            vec![
                get_deployment(existing(&p, 3)),
                status_patch().check(|body| {
                    assert_eq!(body["status"]["desiredReplicas"], 3);
                    assert_eq!(condition(body, "ScalingLimited")["status"], "True");
                    // Held back, not scaled: an entry from 3 to 3, and no lastScaleTime.
                    let recent = &body["status"]["recentDecisions"][0];
                    assert_eq!((&recent["from"], &recent["to"]), (&json!(3), &json!(3)));
                    assert_eq!(recent["reason"], "MaxReplicas");
                    let message = recent["message"].as_str().unwrap_or_default();
                    assert!(
                        message.starts_with(
                            "queueLength: (100 queued + 0 started) / 5 per replica = 20.00"
                        ) && message.ends_with("capped at maxReplicas 3"),
                        "{message}"
                    );
                    assert!(body["status"].get("lastScaleTime").is_none());
                }),
            ],
            vec![Ok(obs(100, 100, 0))],
        )
        .await;
    }

    #[tokio::test]
    async fn a_pool_at_its_backend_ceiling_does_not_scale_up_and_says_backend_limit() {
        let mut s: RagWorkerPoolSpec = spec();
        s.executor.backend.limits = Some(crate::crd::BackendLimitsSpec {
            max_concurrent: Some(16),
            ..Default::default()
        });
        let p = pool(s);
        // Four slots a pod: 16 calls keep ceil(16 / 4) + 1 = 5 pods busy, and 5 run.
        let growing = Observation {
            backend: Some(BackendObservation {
                key: "pool".into(),
                limit: Some(16),
                in_use: 16,
                paused_ms: 0,
                probing_up_to: None,
            }),
            ..obs(100, 400, 20)
        };
        run(
            p.clone(),
            vec![
                get_deployment(existing(&p, 5)),
                status_patch().check(|body| {
                    let status = &body["status"];
                    assert_eq!(status["desiredReplicas"], 5);
                    assert_eq!(condition(body, "ScalingLimited")["status"], "True");
                    let recent = &status["recentDecisions"][0];
                    assert_eq!((&recent["from"], &recent["to"]), (&json!(5), &json!(5)));
                    assert_eq!(recent["reason"], "BackendLimit");
                    let message = recent["message"].as_str().unwrap_or_default();
                    assert!(
                        message.contains(
                            "capped at 5 by the backend limit: ceil(16 calls / 4 per replica) + 1 (16 in use)"
                        ),
                        "{message}"
                    );
                    assert_eq!(
                        status["backend"],
                        json!({"key": "pool", "limit": 16, "permitsInUse": 16, "replicaCeiling": 5})
                    );
                    assert!(status.get("lastScaleTime").is_none());
                }),
            ],
            vec![Ok(growing)],
        )
        .await;
    }

    #[tokio::test]
    async fn backend_limits_reach_the_executors_settings() {
        let mut s: RagWorkerPoolSpec = spec();
        s.executor.backend.limits = Some(crate::crd::BackendLimitsSpec {
            max_concurrent: Some(16),
            requests_per_minute: Some(600),
            tokens_per_minute: Some(90000),
            adaptive: true,
            min: Some(2),
            key: Some("vllm-a".into()),
        });
        let settings = crate::resources::settings(&pool(s));
        for (k, v) in [
            ("RAGPOOL_BACKEND_LIMIT_KEY", "vllm-a"),
            ("RAGPOOL_BACKEND_MAX_CONCURRENT", "16"),
            ("RAGPOOL_BACKEND_REQUESTS_PER_MINUTE", "600"),
            ("RAGPOOL_BACKEND_TOKENS_PER_MINUTE", "90000"),
            ("RAGPOOL_BACKEND_ADAPTIVE", "true"),
            ("RAGPOOL_BACKEND_MIN_CONCURRENT", "2"),
        ] {
            assert_eq!(settings.get(k).map(String::as_str), Some(v), "{k}");
        }
        // Without limits nothing is written, so existing pools keep their pods.
        let plain = crate::resources::settings(&pool(spec()));
        assert!(
            plain.keys().all(|k| !k.starts_with("RAGPOOL_BACKEND_")),
            "{plain:?}"
        );
    }

    #[tokio::test]
    async fn invalid_spec_is_reported_and_not_acted_on() {
        let mut s = spec();
        s.scaling.min_replicas = 50;
        let p = pool(s);
        let (client, server) = mock_api(vec![
            event("InvalidSpec", "Warning", "minReplicas"),
            status_patch().check(|body| {
                assert_eq!(condition(body, "Ready")["reason"], "InvalidSpec");
            }),
        ]);
        let action = reconcile(Arc::new(p), context(client, vec![Ok(obs(0, 0, 0))])).await;
        assert_eq!(action.ok(), Some(Action::await_change()));
        assert_eq!(server.await.map(|s| s.len()).ok(), Some(2));
    }

    #[tokio::test]
    async fn steady_state_writes_nothing() {
        let p = pool(spec());
        let written = Arc::new(StdMutex::new(Value::Null));
        let capture = |into: Arc<StdMutex<Value>>| {
            move |body: &Value| {
                if let Ok(mut w) = into.lock() {
                    *w = body["status"].clone();
                }
            }
        };
        let (client, server) = mock_api(vec![
            get_deployment(existing(&p, 2)),
            status_patch().check(capture(written.clone())),
            // The second look adds the arrival rate (0/s) to the status.
            get_deployment(existing(&p, 2)),
            status_patch().check(capture(written.clone())),
            // The third changes nothing: no scale, no apply, no status write.
            get_deployment(existing(&p, 2)),
        ]);
        let ctx = context(
            client,
            vec![
                Ok(obs(100, 10, 0)),
                Ok(obs(102, 10, 0)),
                Ok(obs(104, 10, 0)),
            ],
        );
        let mut current = p;
        for pass in 0..3 {
            assert!(
                reconcile(Arc::new(current.clone()), ctx.clone())
                    .await
                    .is_ok(),
                "pass {pass}"
            );
            let status: RagWorkerPoolStatus =
                serde_json::from_value(written.lock().map(|w| w.clone()).unwrap_or_default())
                    .unwrap_or_default();
            assert_eq!(status.desired_replicas, 2);
            current.status = Some(status);
        }
        assert_eq!(current.status.and_then(|s| s.arrival_rate), Some(0.0));
        assert_eq!(server.await.map(|s| s.len()).ok(), Some(5));
    }

    /// The controller's cache can hand a pass a pool older than the operator's own last
    /// status write; the status must not go back to what that old copy says.
    #[tokio::test]
    async fn a_stale_cached_status_does_not_undo_the_last_write() {
        let mut s = spec();
        s.scaling.cooldown_seconds = 0;
        let mut p = pool(s);
        let long_ago = Time(Timestamp::UNIX_EPOCH);
        p.status = Some(RagWorkerPoolStatus {
            desired_replicas: 1,
            last_scale_time: Some(long_ago.clone()),
            last_scale_reason: Some("an older scale-up".into()),
            ..RagWorkerPoolStatus::default()
        });
        let written = Arc::new(StdMutex::new(Vec::<Value>::new()));
        let capture = |into: Arc<StdMutex<Vec<Value>>>| {
            move |body: &Value| {
                if let Ok(mut w) = into.lock() {
                    w.push(body["status"].clone());
                }
            }
        };
        let (client, server) = mock_api(vec![
            // Idle past the cooldown: 1 → 0.
            get_deployment(existing(&p, 1)),
            Exchange::new(Method::GET, PODS).reply(
                StatusCode::OK,
                json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": []}),
            ),
            Exchange::new(Method::PATCH, SCALE)
                .check(|body| assert_eq!(body["spec"]["replicas"], 0)),
            event("ScaledDown", "Normal", "1 → 0 replicas"),
            status_patch().check(capture(written.clone())),
            // The next pass is handed the same old copy of the pool: nothing to scale.
            get_deployment(existing(&p, 0)),
            status_patch().check(capture(written.clone())),
        ]);
        let ctx = context(client, vec![Ok(obs(100, 0, 0)), Ok(obs(102, 0, 0))]);
        for pass in 0..2 {
            let result = reconcile(Arc::new(p.clone()), ctx.clone()).await;
            assert!(result.is_ok(), "pass {pass}: {result:?}");
        }
        assert_eq!(server.await.map(|s| s.len()).ok(), Some(7));
        let written = written.lock().map(|w| w.clone()).unwrap_or_default();
        let (scaled, after) = (&written[0], &written[1]);
        assert_ne!(scaled["lastScaleTime"], json!(long_ago), "{scaled}");
        assert_eq!(after["lastScaleTime"], scaled["lastScaleTime"], "{after}");
        assert_eq!(
            after["lastScaleReason"], scaled["lastScaleReason"],
            "{after}"
        );
        assert_eq!(after["desiredReplicas"], 0);
    }

    /// Runs one pass per observation with the pool carrying the status the previous pass
    /// wrote, and returns every status written.
    async fn statuses(
        pool: &RagWorkerPool,
        script: impl FnOnce(&dyn Fn() -> Exchange) -> Vec<Exchange>,
        observed: Vec<Result<Observation, ObserveError>>,
    ) -> Vec<RagWorkerPoolStatus> {
        statuses_at(pool, script, observed, now).await
    }

    /// [`statuses`] with the passes stamped by `clock`.
    async fn statuses_at(
        pool: &RagWorkerPool,
        script: impl FnOnce(&dyn Fn() -> Exchange) -> Vec<Exchange>,
        observed: Vec<Result<Observation, ObserveError>>,
        clock: impl Fn() -> Time + Send + Sync + 'static,
    ) -> Vec<RagWorkerPoolStatus> {
        let written = Arc::new(StdMutex::new(Vec::<Value>::new()));
        let capture = {
            let written = written.clone();
            move || {
                let into = written.clone();
                status_patch().check(move |body| {
                    if let Ok(mut w) = into.lock() {
                        w.push(body["status"].clone());
                    }
                })
            }
        };
        let passes = observed.len();
        let (client, server) = mock_api(script(&capture));
        let ctx = Arc::new(
            Context::new(
                client,
                Arc::new(FakeObserver::new(observed)),
                Arc::new(Metrics::default()),
                Reporter {
                    controller: MANAGER.into(),
                    instance: None,
                },
            )
            .with_clock(clock),
        );
        let mut current = pool.clone();
        for pass in 0..passes {
            let result = reconcile(Arc::new(current.clone()), ctx.clone()).await;
            assert!(result.is_ok(), "pass {pass}: {result:?}");
            let last = written.lock().ok().and_then(|w| w.last().cloned());
            current.status = last.and_then(|s| serde_json::from_value(s).ok());
        }
        assert!(server.await.is_ok(), "the API server saw other requests");
        let all = written.lock().map(|w| w.clone()).unwrap_or_default();
        all.into_iter()
            .filter_map(|s| serde_json::from_value(s).ok())
            .collect()
    }

    #[tokio::test]
    async fn recent_decisions_keep_scales_and_new_holds_up_to_the_limit() {
        let mut s = spec();
        s.scaling.max_replicas = 6;
        s.scaling.decision_history_limit = 2;
        let p = pool(s);
        let written = statuses(
            &p,
            |status| {
                vec![
                    // 40 tasks want 8, capped at 6; +4 pods per 15 s: 1 → 5.
                    get_deployment(existing(&p, 1)),
                    scale(5),
                    event("ScaledUp", "Normal", "1 → 5 replicas"),
                    status(),
                    // Still within the period: held at 5 by the step limit.
                    get_deployment(existing(&p, 5)),
                    status(),
                    // The same hold again: no new entry, so nothing to write.
                    get_deployment(existing(&p, 5)),
                    // A new period: up to maxReplicas.
                    get_deployment(existing(&p, 5)),
                    scale(6),
                    // The recorder makes a repeated Event a series: a patch of the first.
                    Exchange::new(Method::PATCH, &format!("{EVENTS}/")).prefix(),
                    status(),
                ]
            },
            // Tasks of 1 s: 40 drain through one replica's 4 slots within targetWait, so the
            // step limit paces the scale-up.
            [100, 102, 104, 120]
                .into_iter()
                .map(|t| {
                    Ok(Observation {
                        mean_processing_ms: Some(1_000.0),
                        ..obs(t, 40, 0)
                    })
                })
                .collect(),
        )
        .await;
        let summary = |s: &RagWorkerPoolStatus| -> Vec<(i32, i32, String)> {
            s.recent_decisions
                .iter()
                .map(|d| (d.from, d.to, d.reason.clone()))
                .collect()
        };
        let lists: Vec<_> = written.iter().map(summary).collect();
        assert_eq!(
            lists,
            [
                vec![(1, 5, "ScaleUpLimit".to_string())],
                vec![
                    (1, 5, "ScaleUpLimit".to_string()),
                    (5, 5, "ScaleUpLimit".to_string())
                ],
                vec![
                    (5, 5, "ScaleUpLimit".to_string()),
                    (5, 6, "MaxReplicas".to_string())
                ],
            ]
        );
        let last = &written[2];
        assert_eq!(
            last.recent_decisions[1].message,
            "queueLength: (40 queued + 0 started) / 5 per replica = 8.00 (0.00/s arriving, 1.00s per task); → 8; capped at maxReplicas 6"
        );
        assert_eq!(
            last.last_scale_time.as_ref(),
            Some(&last.recent_decisions[1].time)
        );
    }

    #[tokio::test]
    async fn a_warm_pool_with_a_backlog_scales_to_its_recommendation_in_one_pass() {
        let mut s = spec();
        s.scaling.min_replicas = 2;
        let p = pool(s);
        let written = statuses(
            &p,
            |status| {
                vec![
                    // 500 tasks on two warm replicas: to maxReplicas at once, not 2 → 6.
                    get_deployment(existing(&p, 2)),
                    Exchange::new(Method::PATCH, SCALE)
                        .check(|body| assert_eq!(body, &json!({"spec": {"replicas": 20}}))),
                    event("ScaledUp", "Normal", "2 → 20 replicas"),
                    status(),
                ]
            },
            vec![Ok(Observation {
                mean_processing_ms: Some(3_000.0),
                ..obs(100, 500, 8)
            })],
        )
        .await;
        let decisions = &written[0].recent_decisions;
        assert_eq!(decisions.len(), 1, "{decisions:?}");
        assert_eq!((decisions[0].from, decisions[0].to), (2, 20));
        assert_eq!(decisions[0].reason, "Backlog");
        assert_eq!(
            decisions[0].message,
            "queueLength: (500 queued + 8 started) / 5 per replica = 101.60 (3.00s per task); \
             → 102; capped at maxReplicas 20; \
             backlog: 500 queued × 3.00s / 8 slots = 187.5s > targetWait 10s; \
             scale-up step limit 6 skipped"
        );
    }

    #[tokio::test]
    async fn a_short_spike_doubles_a_warm_pool_once() {
        let p = pool(spec());
        let at = |t: u64, queued: u64, started: u64| {
            Ok(Observation {
                mean_processing_ms: Some(1_000.0),
                ..obs(t, queued, started)
            })
        };
        let written = statuses(
            &p,
            |status| {
                vec![
                    // 40 tasks of 1 s on four replicas drain in 2.5 s: paced, +100 % to 8.
                    get_deployment(existing(&p, 4)),
                    scale(8),
                    event("ScaledUp", "Normal", "4 → 8 replicas"),
                    status(),
                    // Still there 2 s later: held at 8 for the rest of the period.
                    get_deployment(existing(&p, 8)),
                    status(),
                    // Gone: the scale-down window keeps 8; no second doubling, no scale call.
                    get_deployment(existing(&p, 8)),
                    status(),
                ]
            },
            vec![at(100, 40, 16), at(102, 40, 16), at(104, 0, 10)],
        )
        .await;
        let last = written.last().cloned().unwrap_or_default();
        let reasons = decision_reasons(&last);
        assert_eq!(
            reasons,
            [
                (4, 8, "ScaleUpLimit"),
                (8, 8, "ScaleUpLimit"),
                (8, 8, "ScaleDownWindow"),
            ]
        );
    }

    #[tokio::test]
    async fn a_warm_pool_waits_for_the_pods_it_started_before_adding_more() {
        let p = pool(spec());
        // Tasks of 3 s, 2 per second, on pods whose executors have registered.
        let at = |t: u64, pods: usize, queued: u64, started: u64, enqueued: u64| {
            Ok(Observation {
                mean_processing_ms: Some(3_000.0),
                total_enqueued: enqueued,
                workers: (0..pods).map(|i| worker(&format!("pod-{i}"), 2)).collect(),
                ..obs(t, queued, started)
            })
        };
        let written = statuses(
            &p,
            |status| {
                vec![
                    // 6 queued behind 8 started on two pods: 2 → 3.
                    get_deployment(existing(&p, 2)),
                    scale(3),
                    event("ScaledUp", "Normal", "2 → 3 replicas"),
                    status(),
                    // The queue grew to 12 while the third pod starts: 4 replicas' worth, but
                    // the arrivals keep 9 slots busy and 3 pods have 12: held, no scale call.
                    get_deployment(existing(&p, 3)),
                    status(),
                    // The pod runs and the queue is still there: more work than 3 pods.
                    get_deployment(existing(&p, 3)),
                    scale(5),
                    Exchange::new(Method::PATCH, &format!("{EVENTS}/")).prefix(),
                    status(),
                ]
            },
            vec![
                at(100, 2, 6, 8, 0),
                at(102, 2, 12, 8, 6),
                at(110, 3, 12, 12, 22),
            ],
        )
        .await;
        let last = written.last().cloned().unwrap_or_default();
        let reasons = decision_reasons(&last);
        assert_eq!(
            reasons,
            [(2, 3, "Load"), (3, 3, "PodsStarting"), (3, 5, "Load")]
        );
        assert_eq!(
            last.recent_decisions[1].message,
            "queueLength: (12 queued + 8 started) / 5 per replica = 4.00 (3.00/s arriving, \
             3.00s per task); → 4; 1 of the 1 pods added 2s ago not started yet; \
             3.00/s arriving × 3.00s = 9.0 slots ≤ 12 with them, no backlog; holding at 3"
        );
    }

    #[tokio::test]
    async fn metrics_show_what_the_operator_saw_and_chose() {
        let p = pool(spec());
        let busy = Observation {
            total_enqueued: 10,
            mean_processing_ms: Some(2_500.0),
            ..obs(102, 18, 5)
        };
        let (client, server) = mock_api(vec![
            // 10 tasks at 2 replicas: exactly 2, nothing to do.
            get_deployment(existing(&p, 2)),
            status_patch(),
            // 10 tasks arrived in 2 s; 23 tasks want 4.6 replicas: 2 → 5.
            get_deployment(existing(&p, 2)),
            Exchange::new(Method::PATCH, SCALE),
            event("ScaledUp", "Normal", "2 → 5 replicas"),
            status_patch(),
        ]);
        let ctx = context(client, vec![Ok(obs(100, 10, 0)), Ok(busy)]);
        for pass in 0..2 {
            let result = reconcile(Arc::new(p.clone()), ctx.clone()).await;
            assert!(result.is_ok(), "pass {pass}: {result:?}");
        }
        assert_eq!(server.await.map(|s| s.len()).ok(), Some(6));
        let text = ctx.metrics.encode().unwrap_or_default();
        let pool = r#"{namespace="ns",pool="pool"}"#;
        for (name, value) in [
            ("desired_replicas", "5"),
            ("current_replicas", "5"),
            ("raw_recommended_replicas", "4.6"),
            ("queue_depth", "18"),
            ("started", "5"),
            ("arrival_rate", "5.0"),
            ("mean_processing_seconds", "2.5"),
            ("scale_events_total", "1"),
        ] {
            let line = format!("ragpool_operator_{name}{pool} {value}");
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        for (reason, count) in [("load", 2), ("tolerance", 0), ("scale_up_limit", 0)] {
            let line = format!(
                r#"ragpool_operator_decisions_total{{namespace="ns",pool="pool",reason="{reason}"}} {count}"#
            );
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }

    /// Renders a JSON object the way `kubectl describe` prints a custom resource: keys
    /// sorted, camelCase turned into words, nested objects indented, list items one after
    /// the other, and the values of each run of plain fields aligned two spaces apart.
    fn describe(field: &str, value: &Value) -> String {
        fn label(key: &str) -> String {
            let mut out = String::new();
            for (i, c) in key.chars().enumerate() {
                if i == 0 {
                    out.extend(c.to_uppercase());
                } else if c.is_uppercase() {
                    out.push(' ');
                    out.push(c);
                } else {
                    out.push(c);
                }
            }
            out
        }
        fn walk(
            indent: usize,
            key: &str,
            value: &Value,
            lines: &mut Vec<(String, Option<String>)>,
        ) {
            let head = format!("{}{}:", "  ".repeat(indent), label(key));
            match value {
                Value::Object(map) => {
                    lines.push((head, None));
                    for (k, v) in map {
                        walk(indent + 1, k, v, lines);
                    }
                }
                Value::Array(items) => {
                    lines.push((head, None));
                    for item in items {
                        match item {
                            Value::Object(map) => {
                                for (k, v) in map {
                                    walk(indent + 1, k, v, lines);
                                }
                            }
                            other => {
                                lines.push((format!("{}{other}", "  ".repeat(indent + 1)), None))
                            }
                        }
                    }
                }
                Value::String(text) => lines.push((head, Some(text.clone()))),
                other => lines.push((head, Some(other.to_string()))),
            }
        }
        let mut lines = Vec::new();
        walk(0, field, value, &mut lines);
        let mut out = String::new();
        let mut i = 0;
        while i < lines.len() {
            let run = lines[i..].iter().take_while(|(_, v)| v.is_some()).count();
            if run == 0 {
                out.push_str(&lines[i].0);
                out.push('\n');
                i += 1;
                continue;
            }
            let width = lines[i..i + run]
                .iter()
                .map(|(k, _)| k.chars().count())
                .max()
                .unwrap_or(0)
                + 2;
            for (k, v) in &lines[i..i + run] {
                let pad = width - k.chars().count();
                out.push_str(&format!(
                    "{k}{}{}\n",
                    " ".repeat(pad),
                    v.as_deref().unwrap_or_default()
                ));
            }
            i += run;
        }
        out
    }

    /// A burst and its end, pass by pass, as `kubectl describe rwp` shows it afterwards
    /// (`cargo test -p ragpool-operator describe -- --nocapture` prints it; docs/operator.md
    /// quotes it).
    #[tokio::test]
    async fn describe_shows_the_recent_decisions_of_a_burst() {
        let p = pool(spec());
        let pods = || {
            Exchange::new(Method::GET, PODS).reply(
                StatusCode::OK,
                json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": []}),
            )
        };
        let series = || Exchange::new(Method::PATCH, &format!("{EVENTS}/")).prefix();
        let at = |t: u64, queued: u64, started: u64, total: u64| {
            Ok(Observation {
                total_enqueued: total,
                mean_processing_ms: Some(1_000.0),
                ..obs(t, queued, started)
            })
        };
        // The passes' wall-clock times follow the observations' Redis clock.
        let times = [100, 102, 116, 130, 200, 500];
        let pass = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let clock = move || {
            let i = pass.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let base = Timestamp::from_second(1_777_888_800).unwrap_or(Timestamp::UNIX_EPOCH);
            let t = times.get(i).copied().unwrap_or(0);
            Time(base + k8s_openapi::jiff::SignedDuration::from_secs(t))
        };
        let written = statuses_at(
            &p,
            |status| {
                vec![
                    // 40 tasks of 1 s land on one replica: they drain within targetWait, so
                    // +4 pods per 15 s.
                    get_deployment(existing(&p, 1)),
                    scale(5),
                    event("ScaledUp", "Normal", "1 → 5 replicas"),
                    status(),
                    // The next pass wants 8 but the period's step is used up.
                    get_deployment(existing(&p, 5)),
                    status(),
                    // A new period: to 8.
                    get_deployment(existing(&p, 5)),
                    scale(8),
                    series(),
                    status(),
                    // Four tasks left: the 60 s scale-down window keeps 8.
                    get_deployment(existing(&p, 8)),
                    status(),
                    // Idle, the window passed: one replica through the cooldown.
                    get_deployment(existing(&p, 8)),
                    pods(),
                    scale(1),
                    event("ScaledDown", "Normal", "8 → 1 replicas"),
                    status(),
                    // Idle past the 300 s cooldown: to zero.
                    get_deployment(existing(&p, 1)),
                    pods(),
                    scale(0),
                    series(),
                    status(),
                ]
            },
            vec![
                at(100, 40, 0, 40),
                at(102, 36, 4, 40),
                at(116, 20, 16, 40),
                at(130, 0, 4, 40),
                at(200, 0, 0, 40),
                at(500, 0, 0, 40),
            ],
            clock,
        )
        .await;
        let last = written.last().cloned().unwrap_or_default();
        let reasons = decision_reasons(&last);
        assert_eq!(
            reasons,
            [
                (1, 5, "ScaleUpLimit"),
                (5, 5, "ScaleUpLimit"),
                (5, 8, "Load"),
                (8, 8, "ScaleDownWindow"),
                (8, 1, "Cooldown"),
                (1, 0, "Idle"),
            ]
        );
        let mut status = serde_json::to_value(&last).unwrap_or_default();
        // kubectl describe shows the whole status; the excerpt leaves the conditions out.
        if let Some(map) = status.as_object_mut() {
            map.remove("conditions");
        }
        let text = describe("status", &status);
        println!("{text}");
        assert!(
            text.contains("  Recent Decisions:\n    From:     1\n"),
            "{text}"
        );
        assert!(text.contains("    Reason:   ScaleDownWindow\n"), "{text}");
        assert!(
            text.contains(
                "    Message:  queueLength: (0 queued + 4 started) / 5 per replica = 0.80"
            ),
            "{text}"
        );
        assert!(text.contains("  Last Scale Reason:"), "{text}");
    }

    /// The thread that logged, the message and the names of its fields.
    type Logged = (std::thread::ThreadId, String, Vec<String>);

    /// Records the message and field names of every event this crate logs.
    #[derive(Clone, Default)]
    struct LogFields(Arc<StdMutex<Vec<Logged>>>);

    /// The log capture of this test binary: one global subscriber, installed once. A
    /// thread-local subscriber (`set_default`) races with other tests registering the same
    /// callsites at the same moment and can miss events; a test reads only the events of its
    /// own thread (`#[tokio::test]` runs everything on the test's thread).
    fn captured_logs() -> &'static LogFields {
        use tracing_subscriber::layer::SubscriberExt;
        static LOGS: std::sync::OnceLock<LogFields> = std::sync::OnceLock::new();
        LOGS.get_or_init(|| {
            let logs = LogFields::default();
            let subscriber = tracing_subscriber::registry().with(logs.clone());
            // Another global subscriber would make the capture empty, and the test fail.
            let _ = tracing::subscriber::set_global_default(subscriber);
            logs
        })
    }

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for LogFields {
        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            struct Visit(String, Vec<String>);
            impl tracing::field::Visit for Visit {
                fn record_debug(
                    &mut self,
                    field: &tracing::field::Field,
                    value: &dyn std::fmt::Debug,
                ) {
                    if field.name() == "message" {
                        self.0 = format!("{value:?}");
                    } else {
                        self.1.push(field.name().to_owned());
                    }
                }
            }
            if !event.metadata().target().starts_with("ragpool_operator") {
                return;
            }
            let mut visit = Visit(String::new(), Vec::new());
            event.record(&mut visit);
            if let Ok(mut all) = self.0.lock() {
                all.push((std::thread::current().id(), visit.0, visit.1));
            }
        }
    }

    #[tokio::test]
    async fn every_log_line_about_a_pool_names_its_namespace_and_pool() {
        let logs = captured_logs();
        let this_thread = std::thread::current().id();
        let p = pool(spec());
        let pod = |name: &str| json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "ns"}});
        let list = json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [pod("a"), pod("b")]});
        let winding_down = Observation {
            workers: vec![worker("a", 1), worker("b", 0)],
            ..obs(102, 0, 1)
        };
        let (client, server) = mock_api(vec![
            // Created at 1 replica.
            get_deployment(not_found("deployments.apps", "pool-executor")),
            Exchange::new(Method::PATCH, CONFIG_MAP),
            Exchange::new(Method::PATCH, DEPLOYMENT),
            status_patch(),
            // Scaled to 3 by hand, back to 1 with deletion costs; the Event fails.
            get_deployment(existing(&p, 3)),
            Exchange::new(Method::GET, PODS).reply(StatusCode::OK, list),
            Exchange::new(Method::PATCH, &format!("{PODS}/a")),
            Exchange::new(Method::PATCH, &format!("{PODS}/b")),
            Exchange::new(Method::PATCH, SCALE),
            Exchange::new(Method::POST, EVENTS).reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                server_error("etcd timeout"),
            ),
            status_patch(),
        ]);
        let ctx = context(client, vec![Ok(obs(100, 3, 0)), Ok(winding_down)]);
        for pass in 0..2 {
            let result = reconcile(Arc::new(p.clone()), ctx.clone()).await;
            assert!(result.is_ok(), "pass {pass}: {result:?}");
        }
        error_policy(Arc::new(p), &Error::NoNamespace, ctx);
        assert_eq!(server.await.map(|s| s.len()).ok(), Some(11));
        let logged: Vec<(String, Vec<String>)> = logs
            .0
            .lock()
            .map(|l| {
                l.iter()
                    .filter(|(thread, _, _)| *thread == this_thread)
                    .map(|(_, m, f)| (m.clone(), f.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let messages: Vec<&str> = logged.iter().map(|(m, _)| m.as_str()).collect();
        for expected in [
            "decided",
            "applied executor Deployment",
            "set deletion cost",
            "scaled",
            "cannot publish event ScaledDown",
            "reconcile failed",
        ] {
            assert!(
                messages.contains(&expected),
                "no {expected:?} in {messages:?}"
            );
        }
        for (message, fields) in &logged {
            assert!(
                fields.iter().any(|f| f == "namespace") && fields.iter().any(|f| f == "pool"),
                "{message:?} has only {fields:?}"
            );
        }
    }

    #[tokio::test]
    async fn redis_still_down_adds_no_event() {
        let mut p = pool(spec());
        let mut conditions = Conditions::new(&[], Some(1), Time(Timestamp::UNIX_EPOCH));
        conditions.set(
            status::REDIS_REACHABLE,
            false,
            "RedisUnreachable",
            "refused",
        );
        p.status = Some(RagWorkerPoolStatus {
            conditions: conditions.into_vec(),
            ..RagWorkerPoolStatus::default()
        });
        let seen = run(
            p.clone(),
            vec![
                get_deployment(existing(&p, 3)),
                status_patch().check(|body| {
                    assert_eq!(condition(body, "RedisReachable")["status"], "False");
                    assert_eq!(body["status"]["desiredReplicas"], 3);
                }),
            ],
            vec![Err(ObserveError::Unreachable("connection refused".into()))],
        )
        .await;
        assert_eq!(seen.len(), 2);
    }

    #[tokio::test]
    async fn a_changed_spec_is_reapplied_keeping_the_replicas() {
        let p = pool(spec());
        let mut old = spec();
        old.executor.concurrency = 2;
        let seen = run(
            p.clone(),
            vec![
                get_deployment(existing(&pool(old), 4)),
                Exchange::new(Method::PATCH, CONFIG_MAP).check(|body| {
                    assert_eq!(body["data"]["RAGPOOL_CONCURRENCY"], "4");
                }),
                Exchange::new(Method::PATCH, DEPLOYMENT).check(|body| {
                    // The apply keeps the count; only the scale step changes it.
                    assert_eq!(body["spec"]["replicas"], 4);
                }),
                status_patch(),
            ],
            // 20 tasks / 5 = 4: no scale.
            vec![Ok(obs(100, 20, 0))],
        )
        .await;
        assert_eq!(seen.len(), 4);
    }

    #[tokio::test]
    async fn deletion_costs_follow_the_busy_set_after_a_scale_down() {
        let p = pool(spec());
        let pod = |name: &str, cost: &str| {
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "ns",
                   "annotations": {"controller.kubernetes.io/pod-deletion-cost": cost}}})
        };
        let list = |a: &str, b: &str| json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [pod("a", a), pod("b", b)]});
        let first = Observation {
            workers: vec![worker("a", 2), worker("b", 0)],
            ..obs(100, 0, 2)
        };
        // Same load, but now b is the busy one: costs must swap, without any scale.
        let second = Observation {
            workers: vec![worker("a", 0), worker("b", 2)],
            ..obs(102, 0, 2)
        };
        let (client, server) = mock_api(vec![
            get_deployment(existing(&p, 3)),
            Exchange::new(Method::GET, PODS).reply(StatusCode::OK, list("5", "5")),
            Exchange::new(Method::PATCH, &format!("{PODS}/a")),
            Exchange::new(Method::PATCH, &format!("{PODS}/b")),
            Exchange::new(Method::PATCH, SCALE)
                .check(|body| assert_eq!(body["spec"]["replicas"], 1)),
            event("ScaledDown", "Normal", "3 → 1"),
            status_patch(),
            get_deployment(existing(&p, 1)),
            Exchange::new(Method::GET, PODS).reply(StatusCode::OK, list("2", "0")),
            Exchange::new(Method::PATCH, &format!("{PODS}/a")).check(|body| {
                assert_eq!(
                    body["metadata"]["annotations"]["controller.kubernetes.io/pod-deletion-cost"],
                    "0"
                );
            }),
            Exchange::new(Method::PATCH, &format!("{PODS}/b")).check(|body| {
                assert_eq!(
                    body["metadata"]["annotations"]["controller.kubernetes.io/pod-deletion-cost"],
                    "2"
                );
            }),
            status_patch(),
        ]);
        let ctx = context(client, vec![Ok(first), Ok(second)]);
        assert!(reconcile(Arc::new(p.clone()), ctx.clone()).await.is_ok());
        assert!(reconcile(Arc::new(p), ctx).await.is_ok());
        assert_eq!(server.await.map(|s| s.len()).ok(), Some(12));
    }

    /// An API server error reply.
    fn server_error(message: &str) -> Value {
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": message, "reason": "InternalError", "code": 500})
    }

    /// Runs one pass per observation against one scripted API server and returns each
    /// pass's result.
    async fn passes(
        pool: &RagWorkerPool,
        script: Vec<Exchange>,
        observed: Vec<Result<Observation, ObserveError>>,
    ) -> (Vec<Result<Action, Error>>, Option<Vec<String>>) {
        let count = observed.len();
        let (client, server) = mock_api(script);
        let ctx = context(client, observed);
        let mut results = Vec::new();
        for _ in 0..count {
            results.push(reconcile(Arc::new(pool.clone()), ctx.clone()).await);
        }
        (results, server.await.ok())
    }

    #[tokio::test]
    async fn a_failed_scale_call_keeps_the_scale_down_window() {
        let p = pool(spec());
        let (results, seen) = passes(
            &p,
            vec![
                // 40 tasks at 4 replicas: up to 8, but the scale call fails.
                get_deployment(existing(&p, 4)),
                Exchange::new(Method::PATCH, SCALE)
                    .check(|body| assert_eq!(body["spec"]["replicas"], 8))
                    .reply(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        server_error("etcd timeout"),
                    ),
                event(
                    "ReconcileFailed",
                    "Warning",
                    "scaling Deployment pool-executor to 8",
                ),
                // 2 s later 10 tasks recommend 2, but the 60 s scale-down window still
                // holds the 8 of the failed pass: no deletion costs, no scale, only status.
                get_deployment(existing(&p, 4)),
                status_patch().check(|body| {
                    assert_eq!(body["status"]["desiredReplicas"], 4);
                    let active = condition(body, "ScalingActive")["message"]
                        .as_str()
                        .unwrap_or_default();
                    assert!(
                        active.contains("scale-down window 60s holds at 4"),
                        "{active}"
                    );
                }),
            ],
            vec![Ok(obs(100, 40, 0)), Ok(obs(102, 10, 0))],
        )
        .await;
        assert!(matches!(results[0], Err(Error::Kube { .. })), "{results:?}");
        assert!(results[1].is_ok(), "{results:?}");
        assert_eq!(seen.map(|s| s.len()), Some(5));
    }

    #[tokio::test]
    async fn a_failed_deletion_cost_patch_keeps_the_scale_down_window() {
        let p = pool(spec());
        let pod = |name: &str| json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "ns"}});
        let list = json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [pod("a"), pod("b")]});
        let idle = Observation {
            workers: vec![worker("a", 0), worker("b", 0)],
            ..obs(100, 20, 0)
        };
        let (results, seen) = passes(
            &p,
            vec![
                // 20 tasks at 8 replicas recommend 4; the first deletion cost fails.
                get_deployment(existing(&p, 8)),
                Exchange::new(Method::GET, PODS).reply(StatusCode::OK, list.clone()),
                Exchange::new(Method::PATCH, &format!("{PODS}/a")).reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    server_error("etcd timeout"),
                ),
                event("ReconcileFailed", "Warning", "annotating pod ns/a"),
                // 2 s later 5 tasks recommend 1, but the window still holds the failed
                // pass's 4: down to 4, not to 1.
                get_deployment(existing(&p, 8)),
                Exchange::new(Method::GET, PODS).reply(StatusCode::OK, list),
                Exchange::new(Method::PATCH, &format!("{PODS}/a")),
                Exchange::new(Method::PATCH, &format!("{PODS}/b")),
                Exchange::new(Method::PATCH, SCALE)
                    .check(|body| assert_eq!(body["spec"]["replicas"], 4)),
                event("ScaledDown", "Normal", "8 → 4 replicas"),
                status_patch().check(|body| {
                    assert_eq!(body["status"]["desiredReplicas"], 4);
                }),
            ],
            vec![
                Ok(idle.clone()),
                Ok(Observation {
                    at_ms: 102_000,
                    queued: 5,
                    ..idle
                }),
            ],
        )
        .await;
        assert!(matches!(results[0], Err(Error::Kube { .. })), "{results:?}");
        assert!(results[1].is_ok(), "{results:?}");
        assert_eq!(seen.map(|s| s.len()), Some(11));
    }

    #[tokio::test]
    async fn api_errors_fail_the_pass_with_an_event() {
        let p = pool(spec());
        let (client, server) =
            mock_api(vec![
            Exchange::new(Method::GET, DEPLOYMENT).reply(
                StatusCode::FORBIDDEN,
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                       "message": "forbidden", "reason": "Forbidden", "code": 403}),
            ),
            event("ReconcileFailed", "Warning", "reading Deployment ns/pool-executor"),
        ]);
        let ctx = context(client, vec![Ok(obs(0, 0, 0))]);
        let result = reconcile(Arc::new(p.clone()), ctx.clone()).await;
        assert!(matches!(result, Err(Error::Kube { .. })), "{result:?}");
        assert_eq!(server.await.map(|s| s.len()).ok(), Some(2));
        let text = ctx.metrics.encode().unwrap_or_default();
        assert!(text.contains(r#"ragpool_operator_reconcile_errors_total{namespace="ns",pool="pool",error="kube"} 1"#), "{text}");
    }
}
