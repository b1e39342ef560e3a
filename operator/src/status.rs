//! The pool's conditions: `Ready`, `RedisReachable`, `ScalingActive`, `ScalingLimited`.
//!
//! A condition keeps its `lastTransitionTime` while its status stays the same, so
//! `kubectl describe` shows when it last flipped rather than when it was last written.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::observe::ObserveError;

/// The executor Deployment exists and has every replica the policy wants ready.
pub const READY: &str = "Ready";
/// The last look at the pool's queues succeeded.
pub const REDIS_REACHABLE: &str = "RedisReachable";
/// The policy is computing replica counts (not paused, data available, spec valid).
pub const SCALING_ACTIVE: &str = "ScalingActive";
/// The replica count was held back by minReplicas, maxReplicas or a step limit.
pub const SCALING_LIMITED: &str = "ScalingLimited";

/// The conditions of one status write, keeping transition times from `previous`.
pub struct Conditions<'a> {
    previous: &'a [Condition],
    generation: Option<i64>,
    now: Time,
    list: Vec<Condition>,
}

impl<'a> Conditions<'a> {
    pub fn new(previous: &'a [Condition], generation: Option<i64>, now: Time) -> Self {
        Self {
            previous,
            generation,
            now,
            list: Vec::new(),
        }
    }

    /// Sets condition `type_` to `status` with a CamelCase `reason` and a message.
    pub fn set(
        &mut self,
        type_: &str,
        status: bool,
        reason: &str,
        message: impl Into<String>,
    ) -> &mut Self {
        let status = if status { "True" } else { "False" };
        let since = self
            .previous
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map_or_else(|| self.now.clone(), |c| c.last_transition_time.clone());
        self.list.push(Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            observed_generation: self.generation,
            last_transition_time: since,
        });
        self
    }

    /// `Ready` after a pass: the Deployment `exists` and has `ready` of `desired` replicas
    /// ready.
    pub fn ready(&mut self, exists: bool, ready: i32, desired: i32) -> &mut Self {
        let counts = format!("{ready} of {desired} replicas ready");
        if !exists {
            let message = "the executor Deployment was just created";
            self.set(READY, false, "DeploymentCreated", message)
        } else if ready >= desired {
            self.set(READY, true, "ReplicasReady", counts)
        } else {
            self.set(READY, false, "ReplicasNotReady", counts)
        }
    }

    /// `RedisReachable` after a pass whose look at the queues under `key_prefix` ended in
    /// `failure`, if any.
    pub fn redis_reachable(
        &mut self,
        failure: Option<&ObserveError>,
        key_prefix: &str,
    ) -> &mut Self {
        match failure {
            None => self.set(
                REDIS_REACHABLE,
                true,
                "Observed",
                format!("queue statistics read under key prefix {key_prefix:?}"),
            ),
            Some(e) => self.set(REDIS_REACHABLE, false, e.reason(), e.to_string()),
        }
    }

    /// `ScalingActive` after a pass: false while `paused` or without queue data, else true
    /// with the policy's `reason`.
    pub fn scaling_active(
        &mut self,
        paused: bool,
        failure: Option<&ObserveError>,
        reason: &str,
    ) -> &mut Self {
        match failure {
            _ if paused => self.set(SCALING_ACTIVE, false, "Paused", "scaling.paused is set"),
            Some(e) => {
                let message = "no queue data; replicas kept";
                self.set(SCALING_ACTIVE, false, e.reason(), message)
            }
            None => self.set(SCALING_ACTIVE, true, "Computed", reason),
        }
    }

    /// `ScalingLimited` after a pass: whether the policy's count was `limited`, and why.
    pub fn scaling_limited(&mut self, limited: bool, reason: &str) -> &mut Self {
        if limited {
            self.set(SCALING_LIMITED, true, "Limited", reason)
        } else {
            let message = "the desired count is within bounds and step limits";
            self.set(SCALING_LIMITED, false, "WithinLimits", message)
        }
    }

    /// `Ready` and `ScalingActive` false for a spec that breaks a rule.
    pub fn invalid_spec(&mut self, message: &str) -> &mut Self {
        self.set(READY, false, "InvalidSpec", message).set(
            SCALING_ACTIVE,
            false,
            "InvalidSpec",
            message,
        )
    }

    pub fn into_vec(self) -> Vec<Condition> {
        self.list
    }
}

/// `text` cut to at most `max` bytes, at a character boundary: the API server limits Event
/// notes and the status schema limits decision messages.
pub fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

/// Whether `conditions` hold `type_` with status `False`.
pub fn is_false(conditions: &[Condition], type_: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "False")
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::Timestamp;

    use super::*;

    #[test]
    fn transition_time_moves_only_when_the_status_flips() {
        let t0 = Time(Timestamp::UNIX_EPOCH);
        let t1 = Time(Timestamp::from_second(100).unwrap_or(Timestamp::UNIX_EPOCH));
        let mut first = Conditions::new(&[], Some(1), t0.clone());
        first.set(READY, true, "AllReplicasReady", "ok").set(
            REDIS_REACHABLE,
            true,
            "Observed",
            "ok",
        );
        let first = first.into_vec();
        let mut second = Conditions::new(&first, Some(2), t1.clone());
        second.set(READY, true, "AllReplicasReady", "ok").set(
            REDIS_REACHABLE,
            false,
            "RedisUnreachable",
            "refused",
        );
        let second = second.into_vec();
        assert_eq!(second[0].last_transition_time, t0);
        assert_eq!(second[1].last_transition_time, t1);
        assert_eq!(second[1].observed_generation, Some(2));
        assert!(is_false(&second, REDIS_REACHABLE));
        assert!(!is_false(&second, READY));
    }
}
