//! The discrete-event simulation of one pool: a FIFO queue, executor pods that start, run
//! tasks and drain, and an [`Autoscaler`] that looks at the queue and sets the replicas.
//!
//! Time is integer microseconds from the trace's start, so runs are exact and repeatable.
//! Events are kept in one heap (pod ready, task done, drain deadline); arrivals come from the
//! sorted trace, and the autoscaler's looks and the timeline samples from their own clocks.
//! At equal times pods and tasks move first, then arrivals, then the autoscaler looks (it
//! sees what Redis would hold at that instant), then the timeline is sampled.
//!
//! What is modelled, and what is not:
//! - Free slots claim in the order they became free, as Redis serves blocked `BLMOVE`s, so
//!   work spreads over the pods; a claim takes no time.
//! - A scale-down removes pods that have not started yet first (the ReplicaSet deletes
//!   unready pods first); then [`Victims`] decides: ragpool's deletion costs spare busy pods,
//!   a plain ReplicaSet takes the newest. A removed pod with tasks drains: it claims nothing
//!   more, finishes within `drainSeconds`, and hands back (to the head of the queue) what is
//!   still running then. Every pod costs from creation until it is gone.
//! - Each task's service time is drawn once, at arrival, so two policies run on one seed see
//!   the same tasks; a task handed back starts over.
//! - The operator's observation is what `Observation::from_stats` would give: queued, in
//!   flight, the enqueued counter, the oldest task's age, and the mean processing time (claim
//!   to end) of the last 1000 tasks (the queue keeps that many samples), and the worker
//!   registry: one executor per pod from the moment it is ready until it is gone, marked
//!   draining once removed. Retries (`delayed`) are not modelled.
//! - The backend, when a [`BackendModel`] is given: a model server that serves `capacity`
//!   calls at once at full speed, and a call started while more are running takes longer in
//!   proportion (its drawn service time × calls running / capacity, fixed when it starts).
//!   A pool-wide `limit` on concurrent calls (`executor.backend.limits.maxConcurrent`) holds
//!   a claimed task in its slot until a permit is free, first come first served, as the
//!   executors' gate does; the operator sees the limit and the permits in use.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, VecDeque};

use ragpool_operator::observe::{BackendObservation, Observation};
use ragpool_queue::WorkerInfo;

/// A task of the trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Task {
    /// Arrival, µs from the start.
    pub arrival_us: u64,
    /// Time it runs once claimed, µs.
    pub service_us: u64,
}

/// The pool's shape, as the simulation sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolModel {
    /// Tasks one pod runs at once (`executor.concurrency`).
    pub concurrency: u32,
    /// From a pod's creation until it claims its first task.
    pub startup_us: u64,
    /// How long a removed pod may finish its tasks (`executor.drainSeconds`).
    pub drain_us: u64,
    /// Pods running (and ready) at the start.
    pub start_replicas: i32,
    /// Waits longer than this are counted (`scaling.targetWaitSeconds`).
    pub target_wait_us: u64,
    /// Timeline resolution.
    pub sample_us: u64,
    /// The run stops this long after the last arrival even if the pool never settles.
    pub tail_limit_us: u64,
    /// The model server behind the pool and the pool's limit on calls to it; `None`: calls
    /// never wait and never slow down.
    pub backend: Option<BackendModel>,
}

/// The model server behind a pool, and the pool-wide limit on calls to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendModel {
    /// Calls the server serves at once at full speed; `None`: any number.
    pub capacity: Option<u32>,
    /// Calls running at once across the pool (`maxConcurrent`); `None`: no limit.
    pub limit: Option<u32>,
}

/// Which pods a scale-down removes, after the ones still starting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Victims {
    /// Idle pods first, then the least busy (ragpool's pod-deletion-cost).
    IdleFirst,
    /// The newest pods, busy or not (a ReplicaSet without deletion costs).
    NewestFirst,
}

/// What an autoscaler decided at one look.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub replicas: i32,
    /// The step or rule that settled the count, as a short name.
    pub cause: String,
    /// The reason in words and numbers.
    pub reason: String,
}

/// A policy that sets the replicas of the simulated pool.
pub trait Autoscaler {
    /// Its name in reports.
    fn name(&self) -> &'static str;
    /// When it looks next, after a look at `now_us`.
    fn next_look(&self, now_us: u64) -> u64;
    /// Looks at the queues of a pool of `current` replicas and decides.
    fn look(&mut self, observation: &Observation, current: i32) -> Verdict;
    /// Which pods its scale-downs remove.
    fn victims(&self) -> Victims;
    /// The replicas it settles at once idle: the run is over when the pool is there.
    fn idle_replicas(&self) -> i32;
}

/// A replica change the autoscaler made.
#[derive(Debug, Clone, PartialEq)]
pub struct ScaleEvent {
    pub at_us: u64,
    pub from: i32,
    pub to: i32,
    pub cause: String,
    pub reason: String,
}

/// The pool at one timeline sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub at_us: u64,
    /// The most tasks queued at any moment since the previous sample.
    pub queued_max: u64,
    /// Tasks started and not yet finished, pool-wide.
    pub started: u64,
    /// Replicas the Deployment has (starting or ready).
    pub replicas: i32,
    /// Pods ready to claim.
    pub ready: i32,
}

/// What a run produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub policy: &'static str,
    /// Each task's queue wait (arrival to the claim that finished it), µs, in arrival order.
    pub waits_us: Vec<u64>,
    /// Each finished task's latency (arrival to its end), µs, in the order they finished.
    pub latencies_us: Vec<u64>,
    /// Sum over pods of their lifetime, µs.
    pub pod_us: u128,
    pub scale_events: Vec<ScaleEvent>,
    pub timeline: Vec<Sample>,
    /// When the run ended.
    pub end_us: u64,
    /// Tasks handed back by a pod whose drain ran out.
    pub released: u64,
    /// Tasks that ran to completion.
    pub completed: u64,
    pub peak_replicas: i32,
    /// Replicas at the end.
    pub final_replicas: i32,
    /// Waits above the target.
    pub over_target: u64,
}

impl Outcome {
    /// Carries a settled run on to `end_us`: nothing happens any more, so only the pods it
    /// kept cost. Runs compared side by side then cover the same time.
    pub fn extend_to(&mut self, end_us: u64) {
        if end_us > self.end_us {
            let more = u128::from(end_us - self.end_us);
            self.pod_us += more * u128::try_from(self.final_replicas.max(0)).unwrap_or(0);
            self.end_us = end_us;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    // Declaration order is the order at equal times.
    Done { pod: usize, task: usize },
    Ready { pod: usize },
    DrainDeadline { pod: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PodState {
    Starting,
    Ready,
    Draining,
    Gone,
}

#[derive(Debug, Clone)]
struct Pod {
    created_us: u64,
    /// When it became ready (its executor registered).
    ready_us: u64,
    state: PodState,
    running: Vec<usize>,
}

/// Mean of the last [`SERVICE_SAMPLES`] processing times, like the queue's `processing_ms`.
const SERVICE_SAMPLES: usize = 1000;

/// Where a claimed task's backend call stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    /// Not claimed, or handed back.
    None,
    /// Claimed, waiting for a permit.
    Waiting,
    /// Calling the backend.
    Running,
}

struct Sim<'a> {
    pool: &'a PoolModel,
    tasks: &'a [Task],
    now: u64,
    events: BinaryHeap<Reverse<(u64, Event)>>,
    pods: Vec<Pod>,
    /// Pods whose executor is registered: ready or draining.
    registered: BTreeSet<usize>,
    /// One entry per free slot of a ready pod, oldest first; entries of pods no longer ready
    /// are skipped when met.
    free_slots: VecDeque<usize>,
    queue: VecDeque<usize>,
    next_arrival: usize,
    started: u64,
    replicas: i32,
    ready: i32,
    service_window: VecDeque<u64>,
    service_sum: u64,
    waits: Vec<u64>,
    latencies: Vec<u64>,
    /// When each task was last claimed, µs.
    claimed_at: Vec<u64>,
    calls: Vec<Call>,
    /// Backend calls running now.
    calls_running: u32,
    /// Claimed tasks waiting for a permit, first come first served; entries no longer
    /// waiting are skipped when met.
    permit_queue: VecDeque<(usize, usize)>,
    pod_us: u128,
    released: u64,
    completed: u64,
    queued_max: u64,
}

/// Runs `tasks` (sorted by arrival) through a pool of shape `pool` scaled by `scaler`.
pub fn run(pool: &PoolModel, tasks: &[Task], scaler: &mut dyn Autoscaler) -> Outcome {
    let mut sim = Sim {
        pool,
        tasks,
        now: 0,
        events: BinaryHeap::new(),
        pods: Vec::new(),
        registered: BTreeSet::new(),
        free_slots: VecDeque::new(),
        queue: VecDeque::new(),
        next_arrival: 0,
        started: 0,
        replicas: 0,
        ready: 0,
        service_window: VecDeque::with_capacity(SERVICE_SAMPLES),
        service_sum: 0,
        waits: vec![0; tasks.len()],
        latencies: Vec::with_capacity(tasks.len()),
        claimed_at: vec![0; tasks.len()],
        calls: vec![Call::None; tasks.len()],
        calls_running: 0,
        permit_queue: VecDeque::new(),
        pod_us: 0,
        released: 0,
        completed: 0,
        queued_max: 0,
    };
    for _ in 0..pool.start_replicas.max(0) {
        let pod = sim.create_pod();
        sim.make_ready(pod);
    }
    let mut scale_events = Vec::new();
    let mut timeline = Vec::new();
    let mut peak = sim.replicas;
    let mut next_look = 0u64;
    let mut next_sample = 0u64;
    let last_arrival = tasks.last().map_or(0, |t| t.arrival_us);
    let hard_end = last_arrival.saturating_add(pool.tail_limit_us);
    loop {
        let event_at = sim.events.peek().map(|Reverse((t, _))| *t);
        let arrival_at = tasks.get(sim.next_arrival).map(|t| t.arrival_us);
        let next = [event_at, arrival_at, Some(next_look), Some(next_sample)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(hard_end);
        if next > hard_end {
            break;
        }
        sim.now = next;
        if event_at == Some(next) {
            if let Some(Reverse((_, event))) = sim.events.pop() {
                sim.handle(event);
            }
        } else if arrival_at == Some(next) {
            sim.queue.push_back(sim.next_arrival);
            sim.next_arrival += 1;
            sim.queued_max = sim.queued_max.max(sim.queue.len() as u64);
            sim.dispatch();
        } else if next_look == next {
            let observation = sim.observation();
            let verdict = scaler.look(&observation, sim.replicas);
            if verdict.replicas != sim.replicas {
                scale_events.push(ScaleEvent {
                    at_us: sim.now,
                    from: sim.replicas,
                    to: verdict.replicas,
                    cause: verdict.cause,
                    reason: verdict.reason,
                });
                sim.scale_to(verdict.replicas, scaler.victims());
                peak = peak.max(sim.replicas);
            }
            next_look = scaler.next_look(sim.now).max(sim.now + 1);
            if sim.settled(scaler.idle_replicas()) {
                break;
            }
        } else {
            timeline.push(Sample {
                at_us: sim.now,
                queued_max: sim.queued_max.max(sim.queue.len() as u64),
                started: sim.started,
                replicas: sim.replicas,
                ready: sim.ready,
            });
            sim.queued_max = sim.queue.len() as u64;
            next_sample += pool.sample_us.max(1);
        }
    }
    let end_us = sim.now;
    // The state the run ended in, so a chart shows the last scale-down.
    timeline.push(Sample {
        at_us: end_us,
        queued_max: sim.queued_max.max(sim.queue.len() as u64),
        started: sim.started,
        replicas: sim.replicas,
        ready: sim.ready,
    });
    for pod in &sim.pods {
        if pod.state != PodState::Gone {
            sim.pod_us += u128::from(end_us - pod.created_us);
        }
    }
    let over_target = sim
        .waits
        .iter()
        .filter(|w| **w > pool.target_wait_us)
        .count() as u64;
    Outcome {
        policy: scaler.name(),
        waits_us: sim.waits,
        latencies_us: sim.latencies,
        pod_us: sim.pod_us,
        scale_events,
        timeline,
        end_us,
        released: sim.released,
        completed: sim.completed,
        peak_replicas: peak,
        final_replicas: sim.replicas,
        over_target,
    }
}

impl Sim<'_> {
    fn schedule(&mut self, at: u64, event: Event) {
        self.events.push(Reverse((at, event)));
    }

    fn create_pod(&mut self) -> usize {
        self.pods.push(Pod {
            created_us: self.now,
            ready_us: 0,
            state: PodState::Starting,
            running: Vec::new(),
        });
        self.replicas += 1;
        self.pods.len() - 1
    }

    fn make_ready(&mut self, pod: usize) {
        self.pods[pod].state = PodState::Ready;
        self.pods[pod].ready_us = self.now;
        self.registered.insert(pod);
        self.ready += 1;
        for _ in 0..self.pool.concurrency.max(1) {
            self.free_slots.push_back(pod);
        }
    }

    fn retire(&mut self, pod: usize) {
        let p = &mut self.pods[pod];
        p.state = PodState::Gone;
        self.pod_us += u128::from(self.now - p.created_us);
        self.registered.remove(&pod);
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Ready { pod } => {
                // A pod removed while starting is gone already.
                if self.pods[pod].state == PodState::Starting {
                    self.make_ready(pod);
                    self.dispatch();
                }
            }
            Event::Done { pod, task } => {
                let p = &mut self.pods[pod];
                // A task handed back at a drain deadline finishes elsewhere.
                let Some(i) = p.running.iter().position(|t| *t == task) else {
                    return;
                };
                p.running.swap_remove(i);
                self.started -= 1;
                self.completed += 1;
                self.latencies.push(self.now - self.tasks[task].arrival_us);
                self.sample_service(self.now - self.claimed_at[task]);
                self.end_call(task);
                match self.pods[pod].state {
                    PodState::Ready => {
                        self.free_slots.push_back(pod);
                        self.dispatch();
                    }
                    PodState::Draining if self.pods[pod].running.is_empty() => self.retire(pod),
                    _ => {}
                }
            }
            Event::DrainDeadline { pod } => {
                if self.pods[pod].state != PodState::Draining {
                    return;
                }
                let handed_back = std::mem::take(&mut self.pods[pod].running);
                self.started -= handed_back.len() as u64;
                self.released += handed_back.len() as u64;
                // Back at their old place: the head of the queue; a running call is given up
                // and its permit freed.
                for task in handed_back.into_iter().rev() {
                    self.end_call(task);
                    self.queue.push_front(task);
                }
                self.retire(pod);
                self.dispatch();
            }
        }
    }

    fn sample_service(&mut self, us: u64) {
        if self.service_window.len() == SERVICE_SAMPLES
            && let Some(old) = self.service_window.pop_front()
        {
            self.service_sum -= old;
        }
        self.service_window.push_back(us);
        self.service_sum += us;
    }

    /// Free slots claim queued tasks, oldest slot first.
    fn dispatch(&mut self) {
        while !self.queue.is_empty() {
            let Some(pod) = self.free_slots.pop_front() else {
                return;
            };
            if self.pods[pod].state != PodState::Ready {
                continue;
            }
            let Some(task) = self.queue.pop_front() else {
                return;
            };
            self.waits[task] = self.now - self.tasks[task].arrival_us;
            self.claimed_at[task] = self.now;
            self.pods[pod].running.push(task);
            self.started += 1;
            self.calls[task] = Call::Waiting;
            self.permit_queue.push_back((pod, task));
            self.start_calls();
        }
    }

    /// Claimed tasks start their backend calls while permits are free.
    fn start_calls(&mut self) {
        let limit = self.pool.backend.and_then(|b| b.limit).unwrap_or(u32::MAX);
        while self.calls_running < limit {
            let Some((pod, task)) = self.permit_queue.pop_front() else {
                return;
            };
            // A task handed back since it asked waits under its new claim, not this one.
            if self.calls[task] != Call::Waiting || !self.pods[pod].running.contains(&task) {
                continue;
            }
            self.calls[task] = Call::Running;
            self.calls_running += 1;
            let service = self.tasks[task].service_us;
            let service = match self.pool.backend.and_then(|b| b.capacity) {
                Some(capacity) if self.calls_running > capacity => {
                    (u128::from(service) * u128::from(self.calls_running)
                        / u128::from(capacity.max(1))) as u64
                }
                _ => service,
            };
            self.schedule(self.now + service, Event::Done { pod, task });
        }
    }

    /// Task `task` no longer calls or waits to call the backend; a permit it held goes to the
    /// next task waiting.
    fn end_call(&mut self, task: usize) {
        if std::mem::replace(&mut self.calls[task], Call::None) == Call::Running {
            self.calls_running -= 1;
            self.start_calls();
        }
    }

    fn observation(&self) -> Observation {
        let at_ms = self.now / 1000;
        Observation {
            queued: self.queue.len() as u64,
            started: self.started,
            delayed: 0,
            oldest_queued_age_ms: self
                .queue
                .front()
                .map_or(0, |t| (self.now - self.tasks[*t].arrival_us) / 1000),
            total_enqueued: self.next_arrival as u64,
            at_ms,
            mean_processing_ms: (!self.service_window.is_empty())
                .then(|| self.service_sum as f64 / self.service_window.len() as f64 / 1000.0),
            workers: self.workers(),
            backend: self
                .pool
                .backend
                .and_then(|b| b.limit)
                .map(|limit| BackendObservation {
                    key: "simulated".into(),
                    limit: Some(limit),
                    in_use: self.calls_running,
                    paused_ms: 0,
                    probing_up_to: None,
                }),
        }
    }

    /// The worker registry: the executor of every pod that has started and is not gone.
    fn workers(&self) -> Vec<WorkerInfo> {
        self.registered
            .iter()
            .map(|&i| {
                let pod = &self.pods[i];
                WorkerInfo {
                    id: format!("executor-{i}"),
                    pod: Some(format!("pod-{i}")),
                    concurrency: self.pool.concurrency,
                    in_flight: u32::try_from(pod.running.len()).unwrap_or(u32::MAX),
                    started_at_ms: pod.ready_us / 1000,
                    last_seen_ms: self.now / 1000,
                    draining: pod.state == PodState::Draining,
                    ..WorkerInfo::default()
                }
            })
            .collect()
    }

    fn scale_to(&mut self, replicas: i32, victims: Victims) {
        let replicas = replicas.max(0);
        while self.replicas < replicas {
            let pod = self.create_pod();
            let at = self.now + self.pool.startup_us;
            if self.pool.startup_us == 0 {
                self.make_ready(pod);
            } else {
                self.schedule(at, Event::Ready { pod });
            }
        }
        if self.replicas > replicas {
            let chosen = self.choose_victims((self.replicas - replicas) as usize, victims);
            for pod in chosen {
                self.remove(pod);
            }
        }
        self.dispatch();
    }

    /// The `n` pods a scale-down removes.
    fn choose_victims(&self, n: usize, victims: Victims) -> Vec<usize> {
        let mut members: Vec<usize> = (0..self.pods.len())
            .filter(|p| matches!(self.pods[*p].state, PodState::Starting | PodState::Ready))
            .collect();
        // Newest first among equals; starting pods before ready ones.
        members.sort_by_key(|p| {
            let pod = &self.pods[*p];
            let busy = match victims {
                Victims::IdleFirst => pod.running.len(),
                Victims::NewestFirst => 0,
            };
            (
                pod.state == PodState::Ready,
                busy,
                Reverse(pod.created_us),
                Reverse(*p),
            )
        });
        members.truncate(n);
        members
    }

    fn remove(&mut self, pod: usize) {
        self.replicas -= 1;
        match self.pods[pod].state {
            PodState::Starting => self.retire(pod),
            PodState::Ready => {
                self.ready -= 1;
                if self.pods[pod].running.is_empty() {
                    self.retire(pod);
                } else {
                    self.pods[pod].state = PodState::Draining;
                    let at = self.now + self.pool.drain_us;
                    self.schedule(at, Event::DrainDeadline { pod });
                }
            }
            PodState::Draining | PodState::Gone => {}
        }
    }

    /// Every task has arrived and finished, nothing drains, and the pool is at its idle size.
    fn settled(&self, idle_replicas: i32) -> bool {
        self.next_arrival == self.tasks.len()
            && self.queue.is_empty()
            && self.started == 0
            && self.replicas == idle_replicas
            && self.pods.iter().all(|p| p.state != PodState::Draining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scales to each count of `plan` at its time (µs), looking every second.
    struct Script {
        plan: Vec<(u64, i32)>,
        victims: Victims,
    }

    impl Autoscaler for Script {
        fn name(&self) -> &'static str {
            "script"
        }
        fn next_look(&self, now_us: u64) -> u64 {
            now_us + 1_000_000
        }
        fn look(&mut self, observation: &Observation, current: i32) -> Verdict {
            let now = observation.at_ms * 1000;
            let replicas = self
                .plan
                .iter()
                .rev()
                .find(|(at, _)| *at <= now)
                .map_or(current, |(_, r)| *r);
            Verdict {
                replicas,
                cause: "Script".into(),
                reason: String::new(),
            }
        }
        fn victims(&self) -> Victims {
            self.victims
        }
        fn idle_replicas(&self) -> i32 {
            0
        }
    }

    fn pool() -> PoolModel {
        PoolModel {
            concurrency: 1,
            startup_us: 0,
            drain_us: 5_000_000,
            start_replicas: 2,
            target_wait_us: 1_000_000,
            sample_us: 1_000_000,
            tail_limit_us: 60_000_000,
            backend: None,
        }
    }

    const S: u64 = 1_000_000;

    /// Two pods; one long task lands on the first (older) pod; at 2 s the pool goes to one.
    fn scale_down_with(victims: Victims) -> Outcome {
        let tasks = [Task {
            arrival_us: 500_000,
            service_us: 20 * S,
        }];
        let mut script = Script {
            plan: vec![(2 * S, 1), (30 * S, 0)],
            victims,
        };
        run(&pool(), &tasks, &mut script)
    }

    #[test]
    fn ragpool_scale_down_spares_the_busy_pod() {
        let o = scale_down_with(Victims::IdleFirst);
        assert_eq!((o.completed, o.released), (1, 0));
        assert_eq!(o.waits_us, [0]);
        // The idle pod goes at 2 s; the busy one runs to 30 s: 2 + 30 pod-seconds.
        assert_eq!(o.pod_us, u128::from(32 * S));
    }

    #[test]
    fn a_plain_replicaset_drains_the_newest_busy_or_not_and_hands_back_at_the_deadline() {
        // The task went to the first free slot (pod 0); the newest (pod 1) is idle, so the
        // ReplicaSet's choice is harmless here: same as sparing busy pods.
        let o = scale_down_with(Victims::NewestFirst);
        assert_eq!((o.completed, o.released), (1, 0));

        // Now the task sits on the newest pod: it drains for 5 s, hands the task back, and
        // the task starts over on the remaining pod.
        let tasks = [
            Task {
                arrival_us: 100_000,
                service_us: 1_000,
            },
            Task {
                arrival_us: 500_000,
                service_us: 20 * S,
            },
        ];
        let mut script = Script {
            plan: vec![(2 * S, 1), (60 * S, 0)],
            victims: Victims::NewestFirst,
        };
        let o = run(&pool(), &tasks, &mut script);
        assert_eq!((o.completed, o.released), (2, 1));
        // Handed back at 7 s, claimed again at once: a wait of 6.5 s from its arrival.
        assert_eq!(o.waits_us[1], 6_500_000);
    }

    #[test]
    fn a_pod_claims_only_after_it_started() {
        let model = PoolModel {
            startup_us: 10 * S,
            start_replicas: 0,
            ..pool()
        };
        let tasks = [Task {
            arrival_us: 0,
            service_us: S,
        }];
        let mut script = Script {
            plan: vec![(0, 1), (20 * S, 0)],
            victims: Victims::IdleFirst,
        };
        let o = run(&model, &tasks, &mut script);
        assert_eq!(o.waits_us, [10 * S]);
        assert_eq!(o.scale_events.len(), 2);
        assert_eq!(o.pod_us, u128::from(20 * S));
    }

    /// One pod of two slots from the start, two tasks of 1 s at 0 s, and `backend`.
    fn two_calls(backend: BackendModel) -> Outcome {
        let model = PoolModel {
            concurrency: 2,
            start_replicas: 1,
            backend: Some(backend),
            ..pool()
        };
        let tasks = [Task {
            arrival_us: 0,
            service_us: S,
        }; 2];
        let mut script = Script {
            plan: vec![(0, 1), (10 * S, 0)],
            victims: Victims::IdleFirst,
        };
        run(&model, &tasks, &mut script)
    }

    #[test]
    fn a_pool_limit_holds_a_claimed_task_until_a_permit_is_free() {
        let o = two_calls(BackendModel {
            capacity: None,
            limit: Some(1),
        });
        // Both are claimed at once; the second calls when the first's permit comes back.
        assert_eq!(o.waits_us, [0, 0]);
        assert_eq!(o.latencies_us, [S, 2 * S]);
        let free = two_calls(BackendModel {
            capacity: None,
            limit: Some(2),
        });
        assert_eq!(free.latencies_us, [S, S]);
    }

    #[test]
    fn a_call_past_the_capacity_takes_longer_in_proportion() {
        let o = two_calls(BackendModel {
            capacity: Some(1),
            limit: None,
        });
        // The second call starts with two running on a server of one: twice as long.
        assert_eq!(o.waits_us, [0, 0]);
        assert_eq!(o.latencies_us, [S, 2 * S]);
    }
}
