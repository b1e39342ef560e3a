//! Which pods a scale-down removes: `controller.kubernetes.io/pod-deletion-cost` from the
//! worker registry, so the ReplicaSet deletes idle executors before busy ones.
//!
//! Lower cost goes first. A pod whose executor is not registered (still starting, or never
//! came up) costs -1, an idle executor 0, a busy one the number of tasks it runs. Costs are
//! best effort (a pod may pick up a task between the patch and the scale-down); the executor's
//! drain on SIGTERM covers the rest.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use ragpool_queue::WorkerInfo;

/// The annotation the ReplicaSet controller reads.
pub const DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";

/// Cost of a pod with no registered executor.
const UNREGISTERED: i32 = -1;

/// The deletion cost of each of `pods`, from the executors' in-flight counts.
pub fn pod_costs(pods: &[String], workers: &[WorkerInfo]) -> BTreeMap<String, i32> {
    pods.iter()
        .map(|pod| {
            let mine: Vec<&WorkerInfo> = workers
                .iter()
                .filter(|w| w.pod.as_deref() == Some(pod.as_str()))
                .collect();
            let cost = if mine.is_empty() {
                UNREGISTERED
            } else {
                let tasks: u64 = mine.iter().map(|w| u64::from(w.in_flight)).sum();
                i32::try_from(tasks).unwrap_or(i32::MAX)
            };
            (pod.clone(), cost)
        })
        .collect()
}

/// The pods whose annotation differs from the cost they should have, with that cost. Pods
/// already being deleted are left alone.
pub fn cost_changes(pods: &[Pod], workers: &[WorkerInfo]) -> Vec<(String, i32)> {
    let live: Vec<&Pod> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    let names: Vec<String> = live.iter().map(|p| p.name_any()).collect();
    let costs = pod_costs(&names, workers);
    live.into_iter()
        .filter_map(|p| {
            let want = *costs.get(&p.name_any())?;
            let have = p
                .annotations()
                .get(DELETION_COST)
                .and_then(|v| v.parse::<i32>().ok());
            (have != Some(want)).then(|| (p.name_any(), want))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::fixtures::worker;

    fn pod(name: &str, cost: Option<i32>) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some(name.into());
        if let Some(c) = cost {
            p.annotations_mut()
                .insert(DELETION_COST.into(), c.to_string());
        }
        p
    }

    #[test]
    fn idle_pods_are_cheapest_and_unregistered_cheaper_still() {
        let pods = ["busy", "idle", "new"].map(String::from);
        let costs = pod_costs(&pods, &[worker("busy", 3), worker("idle", 0)]);
        assert_eq!(costs["new"], -1);
        assert_eq!(costs["idle"], 0);
        assert_eq!(costs["busy"], 3);
    }

    #[test]
    fn only_changed_costs_are_written() {
        let mut gone = pod("gone", None);
        gone.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        let pods = [pod("a", Some(0)), pod("b", Some(0)), pod("c", None), gone];
        let changes = cost_changes(&pods, &[worker("a", 0), worker("b", 2), worker("c", 0)]);
        assert_eq!(changes, [("b".to_string(), 2), ("c".to_string(), 0)]);
    }
}
