//! The two policies a simulation compares: ragpool's operator ([`Ragpool`], the operator's own
//! `desired_replicas` and `History`) and a KEDA-style baseline ([`Keda`]).

use std::collections::VecDeque;

use ragpool_operator::crd::RagWorkerPoolSpec;
use ragpool_operator::observe::Observation;
use ragpool_operator::policy::{Decision, History, desired_replicas};

use super::engine::{Autoscaler, Verdict, Victims};

/// The ragpool operator: every `pollSeconds` it asks the operator's policy for a count and
/// carries it out, remembering the pass in the pool's [`History`] as the controller does.
pub struct Ragpool {
    spec: RagWorkerPoolSpec,
    history: History,
    /// Every observation and the decision taken on it, when asked for.
    log: Option<Vec<(Observation, Decision)>>,
}

impl Ragpool {
    /// The operator for a pool that starts with `replicas`.
    pub fn new(spec: RagWorkerPoolSpec, replicas: i32) -> Self {
        Self {
            spec,
            history: History::new(replicas),
            log: None,
        }
    }

    /// Keeps each observation and decision, for comparing with the operator's.
    pub fn with_log(mut self) -> Self {
        self.log = Some(Vec::new());
        self
    }

    /// The observations and decisions kept by [`with_log`](Self::with_log).
    pub fn log(&self) -> &[(Observation, Decision)] {
        self.log.as_deref().unwrap_or_default()
    }
}

impl Autoscaler for Ragpool {
    fn name(&self) -> &'static str {
        "ragpool"
    }

    fn next_look(&self, now_us: u64) -> u64 {
        now_us + u64::try_from(self.spec.scaling.poll_seconds.max(1)).unwrap_or(1) * 1_000_000
    }

    fn look(&mut self, observation: &Observation, current: i32) -> Verdict {
        // The Deployment is the truth, as in the controller's pass.
        self.history.current_replicas = current;
        let decision = desired_replicas(Some(observation), &self.spec, &self.history);
        // The simulated apiserver never refuses a scale: every decision is carried out.
        self.history
            .record(Some(observation), &self.spec, &decision);
        let verdict = Verdict {
            replicas: decision.replicas,
            cause: decision.cause.name().to_owned(),
            reason: decision.reason.clone(),
        };
        if let Some(log) = &mut self.log {
            log.push((observation.clone(), decision));
        }
        verdict
    }

    fn victims(&self) -> Victims {
        Victims::IdleFirst
    }

    fn idle_replicas(&self) -> i32 {
        let scaling = &self.spec.scaling;
        scaling.idle_replicas.unwrap_or(scaling.min_replicas)
    }
}

/// KEDA's settings for a Redis list scaler and the HorizontalPodAutoscaler it drives, at
/// their defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct KedaSettings {
    /// `listLength`: list items per replica.
    pub list_length: f64,
    /// `activationListLength`: above this the scaler is active (0↔1).
    pub activation_list_length: u64,
    /// `pollingInterval`: how often KEDA checks activity, seconds.
    pub polling_interval: u64,
    /// `cooldownPeriod`: inactive this long before scaling to zero, seconds.
    pub cooldown_period: u64,
    /// The HPA's sync period, seconds.
    pub hpa_sync: u64,
    /// The HPA's tolerance.
    pub tolerance: f64,
    /// The HPA's default scale-down stabilisation window, seconds.
    pub scale_down_window: u64,
    /// The HPA's default scale-up policies: +this many pods or percent per period.
    pub scale_up_pods: i32,
    pub scale_up_percent: i32,
    /// The HPA's policy period, seconds.
    pub period: u64,
    /// `minReplicaCount`, `maxReplicaCount`.
    pub min_replicas: i32,
    pub max_replicas: i32,
}

impl KedaSettings {
    /// KEDA's defaults, with the pool's replica bounds.
    pub fn defaults(min_replicas: i32, max_replicas: i32) -> Self {
        Self {
            list_length: 5.0,
            activation_list_length: 0,
            polling_interval: 30,
            cooldown_period: 300,
            hpa_sync: 15,
            tolerance: 0.1,
            scale_down_window: 300,
            scale_up_pods: 4,
            scale_up_percent: 100,
            period: 15,
            min_replicas,
            max_replicas,
        }
    }
}

/// A KEDA `ScaledObject` on the pool's Redis list: KEDA scales 0↔1 on activity every
/// `pollingInterval` (to zero only after `cooldownPeriod` inactive), and the HPA sizes the
/// pool from one replica up every 15 s on the list length (queued tasks only: KEDA reads
/// `LLEN`, which does not count tasks in flight), with its default behaviour. Its
/// scale-downs pick pods as a plain ReplicaSet does, busy or not.
pub struct Keda {
    settings: KedaSettings,
    next_poll_us: u64,
    next_sync_us: u64,
    last_active_us: Option<u64>,
    /// The HPA's recent recommendations, (time, replicas).
    recommendations: VecDeque<(u64, i32)>,
    /// The HPA's recent scale-ups, (time, pods added).
    scale_ups: VecDeque<(u64, i32)>,
}

const S: u64 = 1_000_000;

impl Keda {
    pub fn new(settings: KedaSettings) -> Self {
        Self {
            settings,
            next_poll_us: 0,
            next_sync_us: 0,
            last_active_us: None,
            recommendations: VecDeque::new(),
            scale_ups: VecDeque::new(),
        }
    }

    /// KEDA's own loop: activation and the cooldown to zero.
    fn poll(&mut self, now: u64, queued: u64, current: i32) -> Option<Verdict> {
        let s = &self.settings;
        if queued > s.activation_list_length {
            self.last_active_us = Some(now);
            if current == 0 {
                let to = s.min_replicas.max(1);
                return Some(Verdict {
                    replicas: to,
                    cause: "Activated".into(),
                    reason: format!(
                        "keda: {queued} in the list > activation {}",
                        s.activation_list_length
                    ),
                });
            }
        } else if current > 0 && s.min_replicas == 0 {
            let since = self.last_active_us.get_or_insert(now);
            if now.saturating_sub(*since) >= s.cooldown_period * S {
                self.recommendations.clear();
                self.scale_ups.clear();
                return Some(Verdict {
                    replicas: 0,
                    cause: "Cooldown".into(),
                    reason: format!("keda: inactive for cooldownPeriod {}s", s.cooldown_period),
                });
            }
        }
        None
    }

    /// The HPA's sync: `ceil(metric / target)` with tolerance, bounds, the scale-down
    /// stabilisation window and the scale-up rate limits.
    fn sync(&mut self, now: u64, queued: u64, current: i32) -> Verdict {
        let s = self.settings.clone();
        let ratio = queued as f64 / (s.list_length * f64::from(current));
        let (raw, mut why) = if (ratio - 1.0).abs() <= s.tolerance {
            (
                current,
                format!("hpa: {queued} in the list within tolerance of {current}"),
            )
        } else {
            let r = (queued as f64 / s.list_length - 1e-9).ceil().max(0.0) as i32;
            (
                r,
                format!("hpa: ceil({queued} in the list / {}) = {r}", s.list_length),
            )
        };
        let floor = s.min_replicas.max(1);
        let bounded = raw.clamp(floor, s.max_replicas.max(floor));
        self.recommendations.push_back((now, bounded));
        self.recommendations
            .retain(|(t, _)| now.saturating_sub(*t) < s.scale_down_window * S);
        let mut desired = bounded;
        let mut cause = "Load";
        if desired < current {
            let held = self
                .recommendations
                .iter()
                .map(|r| r.1)
                .fold(desired, i32::max);
            if held > desired {
                why.push_str(&format!(
                    "; scale-down window {}s holds at {}",
                    s.scale_down_window,
                    held.min(current)
                ));
                desired = held.min(current);
                cause = "ScaleDownWindow";
            }
        }
        if desired > current {
            self.scale_ups
                .retain(|(t, _)| now.saturating_sub(*t) < s.period * S);
            let added: i32 = self.scale_ups.iter().map(|u| u.1).sum();
            let start = current - added;
            let by_percent =
                (f64::from(start) * f64::from(s.scale_up_percent) / 100.0).ceil() as i32;
            let limit = start + s.scale_up_pods.max(by_percent);
            if desired > limit {
                desired = limit.max(current);
                cause = "ScaleUpLimit";
                why.push_str(&format!(
                    "; scale-up limit {} pods or {} % per {}s",
                    s.scale_up_pods, s.scale_up_percent, s.period
                ));
            }
            if desired > current {
                self.scale_ups.push_back((now, desired - current));
            }
        }
        Verdict {
            replicas: desired,
            cause: cause.into(),
            reason: why,
        }
    }
}

impl Autoscaler for Keda {
    fn name(&self) -> &'static str {
        "keda"
    }

    fn next_look(&self, _now_us: u64) -> u64 {
        self.next_poll_us.min(self.next_sync_us)
    }

    fn look(&mut self, observation: &Observation, current: i32) -> Verdict {
        let now = observation.at_ms * 1000;
        let queued = observation.queued;
        let mut verdict = None;
        if now >= self.next_poll_us {
            self.next_poll_us += self.settings.polling_interval * S;
            verdict = self.poll(now, queued, current);
        }
        if now >= self.next_sync_us {
            self.next_sync_us += self.settings.hpa_sync * S;
            // The HPA does not scale a target KEDA has at zero.
            if verdict.is_none() && current > 0 {
                verdict = Some(self.sync(now, queued, current));
            }
        }
        verdict.unwrap_or(Verdict {
            replicas: current,
            cause: "Load".into(),
            reason: String::new(),
        })
    }

    fn victims(&self) -> Victims {
        Victims::NewestFirst
    }

    fn idle_replicas(&self) -> i32 {
        self.settings.min_replicas
    }
}
