//! Real-cluster tests: they need `KUBECONFIG` pointing at a disposable cluster (kind, k3d,
//! minikube) and run with `cargo test -p ragpool-operator -- --ignored`.
//!
//! The queues are played by a scripted observer here; the Redis-backed observer's own test
//! pushes real tasks.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::events::Reporter;
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client, CustomResourceExt};
use ragpool_operator::controller::{self, Context};
use ragpool_operator::crd::RagWorkerPool;
use ragpool_operator::metrics::Metrics;
use ragpool_operator::observe::{Observation, ObserveError, Observer};
use ragpool_operator::resources::MANAGER;
use tokio_util::sync::CancellationToken;

/// Reports `queued` tasks, settable from the test.
struct Queue {
    queued: AtomicU64,
    started_ms: u64,
    polls: AtomicU64,
}

#[async_trait]
impl Observer for Queue {
    async fn observe(&self, _pool: &RagWorkerPool) -> Result<Observation, ObserveError> {
        let poll = self.polls.fetch_add(1, Ordering::SeqCst);
        Ok(Observation {
            queued: self.queued.load(Ordering::SeqCst),
            // A simulated clock: two seconds per poll, so cooldowns pass without waiting.
            at_ms: self.started_ms + poll * 2_000,
            ..Observation::default()
        })
    }
}

const POOL: &str = r#"
apiVersion: ragpool.io/v1alpha1
kind: RagWorkerPool
metadata:
  name: scaled
spec:
  queues:
    names: [image_analysis]
  redis:
    url: redis://redis:6379
  executor:
    image: registry.k8s.io/pause:3.10
  scaling:
    maxReplicas: 4
    pollSeconds: 1
    cooldownSeconds: 10
    scaleDown:
      stabilizationWindowSeconds: 0
"#;

async fn install_crd(client: &Client) -> anyhow::Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        "ragworkerpools.ragpool.io",
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(RagWorkerPool::crd()),
    )
    .await?;
    let established = await_condition(
        crds,
        "ragworkerpools.ragpool.io",
        conditions::is_crd_established(),
    );
    tokio::time::timeout(Duration::from_secs(30), established).await??;
    Ok(())
}

async fn replicas(deployments: &Api<Deployment>, want: i32) -> anyhow::Result<()> {
    let reached = await_condition(
        deployments.clone(),
        "scaled-executor",
        move |d: Option<&Deployment>| d.and_then(|d| d.spec.as_ref()?.replicas) == Some(want),
    );
    tokio::time::timeout(Duration::from_secs(60), reached).await??;
    Ok(())
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster via KUBECONFIG"]
async fn crd_is_accepted_and_a_pool_scales_up_and_down() -> anyhow::Result<()> {
    let client = Client::try_default().await?;
    install_crd(&client).await?;

    let ns_name = format!("ragpool-test-{}", std::process::id());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut ns = Namespace::default();
    ns.metadata.name = Some(ns_name.clone());
    namespaces.create(&PostParams::default(), &ns).await?;

    let result = async {
        let pools: Api<RagWorkerPool> = Api::namespaced(client.clone(), &ns_name);
        let pool: RagWorkerPool = serde_yaml::from_str(POOL)?;
        pools
            .patch(
                "scaled",
                &PatchParams::apply("test").force(),
                &Patch::Apply(&pool),
            )
            .await?;

        let queue = Arc::new(Queue {
            queued: AtomicU64::new(12),
            started_ms: 1_000_000,
            polls: AtomicU64::new(0),
        });
        let ctx = Arc::new(Context::new(
            client.clone(),
            queue.clone(),
            Arc::new(Metrics::default()),
            Reporter {
                controller: MANAGER.into(),
                instance: None,
            },
        ));
        let stop = CancellationToken::new();
        let running = tokio::spawn(controller::run(ctx, stop.clone().cancelled_owned()));

        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns_name);
        // ceil(12 / 5) = 3.
        replicas(&deployments, 3).await?;
        queue.queued.store(0, Ordering::SeqCst);
        // Idle past the 10 s (simulated) cooldown: to zero.
        replicas(&deployments, 0).await?;

        let status = pools.get_status("scaled").await?.status.unwrap_or_default();
        assert_eq!(status.desired_replicas, 0);
        assert!(
            status
                .conditions
                .iter()
                .any(|c| c.type_ == "RedisReachable" && c.status == "True")
        );
        stop.cancel();
        running.await?;
        anyhow::Ok(())
    }
    .await;
    namespaces
        .delete(&ns_name, &DeleteParams::default())
        .await?;
    result
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster via KUBECONFIG"]
async fn api_server_rejects_invalid_pools() -> anyhow::Result<()> {
    let client = Client::try_default().await?;
    install_crd(&client).await?;
    let pools: Api<RagWorkerPool> = Api::namespaced(client.clone(), "default");
    let mut pool: RagWorkerPool = serde_yaml::from_str(POOL)?;
    pool.metadata.name = Some("invalid".into());
    pool.spec.scaling.min_replicas = 10;
    let rejected = pools
        .patch(
            "invalid",
            &PatchParams::apply("test").dry_run(),
            &Patch::Apply(&pool),
        )
        .await;
    let Err(kube::Error::Api(status)) = rejected else {
        anyhow::bail!("minReplicas > maxReplicas was accepted: {rejected:?}");
    };
    assert_eq!(status.code, 422, "{status:?}");
    assert!(
        status
            .message
            .contains("minReplicas must not exceed maxReplicas"),
        "{}",
        status.message
    );
    Ok(())
}
