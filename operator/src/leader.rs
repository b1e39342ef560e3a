//! Leader election with a `coordination.k8s.io/v1` Lease, so only one of several operator
//! replicas reconciles.
//!
//! The holder renews the Lease well within its duration; another replica takes it over only
//! once `renewTime + leaseDurationSeconds` has passed. Every write carries the
//! `resourceVersion` it read, so two replicas racing for an expired Lease cannot both win:
//! the API server rejects the second write with 409 Conflict. A leader that cannot renew in
//! time stops reconciling (the caller exits), and releases the Lease on a clean shutdown so a
//! standby takes over at once.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::PostParams;
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Where Kubernetes mounts the namespace of a pod's ServiceAccount (the pod's namespace).
pub const SERVICE_ACCOUNT_NAMESPACE_FILE: &str =
    "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// The namespace the Lease lives in: the one `given`, else the pod's own (`pod_namespace`
/// from the downward API, then the `service_account` namespace file's content), else
/// `client_default` (the kubeconfig context's namespace when run from outside).
///
/// The operator's RBAC grants Leases in its own namespace only, so falling back to
/// `default` inside a pod would make leader election fail with Forbidden.
pub fn lease_namespace(
    given: Option<&str>,
    pod_namespace: Option<&str>,
    service_account: Option<&str>,
    client_default: &str,
) -> String {
    [given, pod_namespace, service_account]
        .into_iter()
        .flatten()
        .map(str::trim)
        .find(|ns| !ns.is_empty())
        .unwrap_or(client_default)
        .to_owned()
}

/// Who holds the Lease after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseState {
    /// This replica holds it.
    Leader,
    /// Someone else holds it (or won the race for it).
    Follower { holder: Option<String> },
}

/// A Lease-backed lock held by `identity`.
pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

fn conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

impl LeaseLock {
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
            duration,
        }
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.duration.as_secs())
            .unwrap_or(i32::MAX)
            .max(1)
    }

    /// Takes the Lease if it is free or expired, renews it if held; `now` is the local clock.
    pub async fn try_acquire_or_renew(&self, now: Timestamp) -> Result<LeaseState, kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(self.duration_seconds()),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(LeaseState::Leader),
                Err(e) if conflict(&e) => Ok(LeaseState::Follower { holder: None }),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let mine = holder.as_deref() == Some(self.identity.as_str());
        if !mine {
            let held_for =
                SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(0)));
            let expired = spec
                .renew_time
                .as_ref()
                .is_none_or(|t| t.0.saturating_add(held_for).is_ok_and(|end| end <= now));
            if holder.is_some() && !expired {
                return Ok(LeaseState::Follower { holder });
            }
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.renew_time = Some(MicroTime(now));
        spec.lease_duration_seconds = Some(self.duration_seconds());
        // `replace` sends the resourceVersion we read: a concurrent writer makes this a 409.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(LeaseState::Leader),
            Err(e) if conflict(&e) => Ok(LeaseState::Follower { holder: None }),
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up if this replica holds it, so a standby need not wait for expiry.
    pub async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            // Someone else wrote it meanwhile: it is not ours to release any more.
            Err(e) if conflict(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Waits until this replica holds the Lease, retrying every `retry`; `None` when
    /// `shutdown` fires first.
    pub async fn acquire(&self, retry: Duration, shutdown: &CancellationToken) -> Option<()> {
        loop {
            match self.try_acquire_or_renew(Timestamp::now()).await {
                Ok(LeaseState::Leader) => {
                    info!(lease = %self.name, identity = %self.identity, "acquired leadership");
                    return Some(());
                }
                Ok(LeaseState::Follower { holder }) => {
                    info!(lease = %self.name, holder = ?holder, "standing by");
                }
                Err(e) => warn!(lease = %self.name, error = %e, "cannot read or take the lease"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return None,
                () = tokio::time::sleep(retry) => {}
            }
        }
    }

    /// Renews every `every` until renewal fails for longer than the Lease lasts or someone
    /// else holds it; then cancels `lost`. Returns when `shutdown` fires or leadership is
    /// lost.
    pub async fn keep(
        &self,
        every: Duration,
        shutdown: &CancellationToken,
        lost: &CancellationToken,
    ) {
        let mut last_renewed = tokio::time::Instant::now();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            match self.try_acquire_or_renew(Timestamp::now()).await {
                Ok(LeaseState::Leader) => last_renewed = tokio::time::Instant::now(),
                Ok(LeaseState::Follower { holder }) => {
                    warn!(holder = ?holder, "lost leadership");
                    lost.cancel();
                    return;
                }
                Err(e) => {
                    warn!(error = %e, "cannot renew the lease");
                    // Stop before the Lease can expire under us, so two leaders never overlap.
                    if last_renewed.elapsed() + every >= self.duration {
                        lost.cancel();
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use http::{Method, StatusCode};
    use serde_json::{Value, json};

    use super::*;
    use crate::fixtures::{Exchange, mock_api, not_found};

    const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/ops/leases";
    const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/ops/leases/ragpool-operator";

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    fn lease(holder: Option<&str>, renewed_at: i64, version: &str) -> Value {
        json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "ragpool-operator", "namespace": "ops", "resourceVersion": version},
            "spec": {
                "holderIdentity": holder, "leaseDurationSeconds": 15, "leaseTransitions": 2,
                "renewTime": MicroTime(at(renewed_at)), "acquireTime": MicroTime(at(0)),
            }
        })
    }

    fn lock(client: Client) -> LeaseLock {
        LeaseLock::new(
            client,
            "ops",
            "ragpool-operator",
            "me",
            Duration::from_secs(15),
        )
    }

    #[test]
    fn the_lease_namespace_is_the_given_one_then_the_pods_own() {
        let cases = [
            // (given, POD_NAMESPACE, ServiceAccount file, client default, expected)
            (Some("ops"), Some("pod"), Some("sa"), "default", "ops"),
            (None, Some("pod"), Some("sa"), "default", "pod"),
            (None, None, Some("sa"), "default", "sa"),
            // The file as mounted may end in a newline; empty values count as unset.
            (None, None, Some("sa\n"), "default", "sa"),
            (Some(""), Some(" "), Some(""), "kubeconfig", "kubeconfig"),
            (None, None, None, "default", "default"),
        ];
        for (given, pod, sa, client_default, expected) in cases {
            assert_eq!(
                lease_namespace(given, pod, sa, client_default),
                expected,
                "given {given:?}, POD_NAMESPACE {pod:?}, file {sa:?}"
            );
        }
    }

    #[tokio::test]
    async fn creates_a_missing_lease() {
        let (client, server) = mock_api(vec![
            Exchange::new(Method::GET, LEASE).reply(
                StatusCode::NOT_FOUND,
                not_found("leases", "ragpool-operator"),
            ),
            Exchange::new(Method::POST, LEASES).check(|b| {
                assert_eq!(b["spec"]["holderIdentity"], "me");
                assert_eq!(b["spec"]["leaseDurationSeconds"], 15);
            }),
        ]);
        assert_eq!(
            lock(client).try_acquire_or_renew(at(100)).await.ok(),
            Some(LeaseState::Leader)
        );
        assert_eq!(server.await.map(|s| s.len()).ok(), Some(2));
    }

    #[tokio::test]
    async fn renews_its_own_lease_with_the_read_resource_version() {
        let (client, server) = mock_api(vec![
            Exchange::new(Method::GET, LEASE).reply(StatusCode::OK, lease(Some("me"), 95, "7")),
            Exchange::new(Method::PUT, LEASE).check(|b| {
                assert_eq!(b["metadata"]["resourceVersion"], "7");
                assert_eq!(b["spec"]["renewTime"], json!(MicroTime(at(100))));
                assert_eq!(
                    b["spec"]["leaseTransitions"], 2,
                    "a renewal is no transition"
                );
            }),
        ]);
        assert_eq!(
            lock(client).try_acquire_or_renew(at(100)).await.ok(),
            Some(LeaseState::Leader)
        );
        assert_eq!(server.await.map(|s| s.len()).ok(), Some(2));
    }

    #[tokio::test]
    async fn leaves_a_live_lease_alone() {
        let (client, server) = mock_api(vec![
            Exchange::new(Method::GET, LEASE).reply(StatusCode::OK, lease(Some("other"), 90, "7")),
        ]);
        assert_eq!(
            lock(client).try_acquire_or_renew(at(100)).await.ok(),
            Some(LeaseState::Follower {
                holder: Some("other".into())
            })
        );
        assert_eq!(server.await.map(|s| s.len()).ok(), Some(1));
    }

    #[tokio::test]
    async fn takes_over_an_expired_lease() {
        let (client, server) = mock_api(vec![
            Exchange::new(Method::GET, LEASE).reply(StatusCode::OK, lease(Some("other"), 80, "7")),
            Exchange::new(Method::PUT, LEASE).check(|b| {
                assert_eq!(b["spec"]["holderIdentity"], "me");
                assert_eq!(b["spec"]["leaseTransitions"], 3);
                assert_eq!(b["metadata"]["resourceVersion"], "7");
            }),
        ]);
        assert_eq!(
            lock(client).try_acquire_or_renew(at(100)).await.ok(),
            Some(LeaseState::Leader)
        );
        assert_eq!(server.await.map(|s| s.len()).ok(), Some(2));
    }

    #[tokio::test]
    async fn losing_the_race_for_an_expired_lease_makes_a_follower() {
        let (client, server) = mock_api(vec![
            Exchange::new(Method::GET, LEASE).reply(StatusCode::OK, lease(Some("other"), 80, "7")),
            Exchange::new(Method::PUT, LEASE).reply(
                StatusCode::CONFLICT,
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                       "message": "the object has been modified", "reason": "Conflict", "code": 409}),
            ),
        ]);
        assert_eq!(
            lock(client).try_acquire_or_renew(at(100)).await.ok(),
            Some(LeaseState::Follower { holder: None })
        );
        assert_eq!(server.await.map(|s| s.len()).ok(), Some(2));
    }

    #[tokio::test]
    async fn release_clears_the_holder() {
        let (client, server) = mock_api(vec![
            Exchange::new(Method::GET, LEASE).reply(StatusCode::OK, lease(Some("me"), 95, "7")),
            Exchange::new(Method::PUT, LEASE).check(|b| {
                assert!(b["spec"]["holderIdentity"].is_null());
                assert_eq!(b["spec"]["leaseDurationSeconds"], 1);
            }),
        ]);
        assert!(lock(client).release().await.is_ok());
        assert_eq!(server.await.map(|s| s.len()).ok(), Some(2));
    }

    #[tokio::test]
    async fn release_leaves_someone_elses_lease() {
        let (client, server) = mock_api(vec![
            Exchange::new(Method::GET, LEASE).reply(StatusCode::OK, lease(Some("other"), 95, "7")),
        ]);
        assert!(lock(client).release().await.is_ok());
        assert_eq!(server.await.map(|s| s.len()).ok(), Some(1));
    }
}
