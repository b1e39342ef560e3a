//! `ragpool explain`: what the operator's scaling policy would decide for a pool now, and
//! why, step by step.
//!
//! The pool comes from the cluster (kube-rs, `KUBECONFIG` or in-cluster) or from a YAML
//! file; its queues are looked at in Redis the way the operator looks at them
//! (`redis_observer::observe_queues`), and the decision is the operator's own
//! `policy::desired_replicas`. The decision's text is therefore exactly what the operator
//! would put in `status.recentDecisions`. What this cannot see is the operator's memory of
//! the pool (its recent recommendations and scale changes): windows, step limits and the
//! cooldown count from this look, as after an operator restart. The operator's own record,
//! when the pool came from the cluster, is printed below the decision.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use k8s_openapi::api::apps::v1::Deployment;
use kube::{Api, Client, ResourceExt};
use ragpool_operator::crd::{RagWorkerPool, ScalingDecision, ScalingMode};
use ragpool_operator::observe::Observation;
use ragpool_operator::policy::{Decision, History, desired_replicas};
use ragpool_operator::redis_observer::{observe_backend, observe_queues};
use ragpool_operator::redis_url;
use ragpool_operator::resources::{executor_name, with_tls};
use ragpool_queue::{Broker, BrokerConfig};
use ragpool_runtime::PartitionArgs;

/// `ragpool explain`.
#[derive(Debug, Clone, Args)]
pub struct ExplainArgs {
    /// The pool's name, read from the cluster (KUBECONFIG or the in-cluster account).
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    pub name: Option<String>,

    /// The pool's namespace; the kubeconfig context's when unset.
    #[arg(short, long)]
    pub namespace: Option<String>,

    /// Read the pool from this YAML file instead of the cluster.
    #[arg(short, long, value_name = "FILE")]
    pub file: Option<PathBuf>,

    /// Redis holding the pool's queues; default: the pool's own `spec.redis` (its Secrets
    /// read from the cluster).
    #[arg(long, value_name = "URL")]
    pub redis_url: Option<String>,

    /// Replicas the pool has now; default: the executor Deployment's (from the cluster), or
    /// the file's `status.replicas`, else 0.
    #[arg(long, value_name = "N")]
    pub replicas: Option<i32>,

    /// Seconds between two looks at the queues, to measure the arrival rate; 0 looks once.
    #[arg(long, value_name = "SECONDS", default_value_t = 2)]
    pub sample_seconds: u64,

    /// As the operator's: the partition count of a pool that leaves `spec.redis.partitions`
    /// unset.
    #[command(flatten)]
    pub partitions: PartitionArgs,
}

/// A pool as explain sees it: the resource, its replicas now, and where its queues are.
pub struct Target {
    pub pool: RagWorkerPool,
    pub current: i32,
    pub redis_url: String,
}

/// What the policy decided from two looks at the queues.
pub struct Explanation {
    pub observation: Observation,
    pub arrival_rate: Option<f64>,
    pub decision: Decision,
}

/// Runs `ragpool explain`.
pub async fn explain(args: ExplainArgs) -> anyhow::Result<()> {
    let mut target = match &args.file {
        Some(file) => from_file(file, &args)?,
        None => from_cluster(&args).await?,
    };
    let redis = &mut target.pool.spec.redis;
    // As the operator fills it in: a pool without a count gets the operator's, unless that
    // is `auto` too, which the observation resolves as the executors do.
    let count = redis.partition_count(args.partitions.partitions);
    redis.partitions = (count != ragpool_queue::AUTO_PARTITIONS).then_some(i32::from(count));
    if let Err(invalid) = target.pool.spec.validate() {
        bail!("the operator would not scale this pool: {invalid}");
    }
    let explanation = decide(&target, Duration::from_secs(args.sample_seconds)).await?;
    print!("{}", render(&target, &explanation));
    Ok(())
}

/// Reads the pool from a YAML file; the Redis URL is `--redis-url` or the pool's literal
/// `spec.redis.url`.
pub fn from_file(file: &std::path::Path, args: &ExplainArgs) -> anyhow::Result<Target> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("--file: reading {}", file.display()))?;
    let mut pool: RagWorkerPool = serde_yaml::from_str(&text)
        .with_context(|| format!("--file: {} is not a RagWorkerPool", file.display()))?;
    if let Some(ns) = &args.namespace {
        pool.metadata.namespace = Some(ns.clone());
    }
    let redis = &pool.spec.redis;
    let redis_url = match (&args.redis_url, &redis.url) {
        (Some(url), _) => url.clone(),
        (None, Some(url))
            if redis.url_secret_ref.is_none() && redis.password_secret_ref.is_none() =>
        {
            with_tls(url, redis.tls)
        }
        (None, _) => bail!(
            "--redis-url is needed: the pool's Redis URL or password is in a Secret, which a \
             file cannot hold"
        ),
    };
    let current = args
        .replicas
        .or_else(|| pool.status.as_ref().map(|s| s.replicas))
        .unwrap_or(0);
    Ok(Target {
        pool,
        current,
        redis_url,
    })
}

/// Reads the pool and its executor Deployment from the cluster, and the pool's Redis URL
/// the way the operator resolves it (unless `--redis-url` is given).
pub async fn from_cluster(args: &ExplainArgs) -> anyhow::Result<Target> {
    let name = args
        .name
        .as_deref()
        .context("a pool name or --file is needed")?;
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API (KUBECONFIG or in cluster)")?;
    let ns = args
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    load(client, &ns, name, args).await
}

/// [`from_cluster`] with a given client.
pub async fn load(
    client: Client,
    ns: &str,
    name: &str,
    args: &ExplainArgs,
) -> anyhow::Result<Target> {
    let pool = Api::<RagWorkerPool>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .with_context(|| format!("reading RagWorkerPool {ns}/{name}"))?;
    let exec = executor_name(&pool);
    let deployed = Api::<Deployment>::namespaced(client.clone(), ns)
        .get_opt(&exec)
        .await
        .with_context(|| format!("reading Deployment {ns}/{exec}"))?
        .and_then(|d| d.spec?.replicas)
        .unwrap_or(0);
    let redis_url = match &args.redis_url {
        Some(url) => url.clone(),
        None => redis_url::resolve(&client, &pool)
            .await
            .with_context(|| format!("the Redis URL of {ns}/{name} (or pass --redis-url)"))?,
    };
    Ok(Target {
        current: args.replicas.unwrap_or(deployed),
        pool,
        redis_url,
    })
}

/// Looks at the pool's queues (twice, `sample` apart, when `sample` is not zero, so the
/// arrival rate is known) and asks the operator's policy.
pub async fn decide(target: &Target, sample: Duration) -> anyhow::Result<Explanation> {
    let mut config = BrokerConfig::from_url(&target.redis_url).context("--redis-url")?;
    config.partitions = target.pool.spec.redis.partition_count(1);
    // The queues the operator observes for the pool: those under its key prefix.
    config.key_prefix = target.pool.spec.redis.key_prefix().to_owned();
    let broker = Broker::connect(config)
        .await
        .context("connecting to the pool's Redis")?;
    let queues = target.pool.spec.queue_names();
    let look = || async {
        let mut observation = observe_queues(&broker, &queues)
            .await
            .context("reading the pool's queues")?;
        observation.backend = observe_backend(&broker, &target.pool)
            .await
            .context("reading the pool's backend limits")?;
        anyhow::Ok(observation)
    };
    let mut history = History::new(target.current);
    let mut observation = look().await?;
    if !sample.is_zero() {
        history.sample(&observation);
        tokio::time::sleep(sample).await;
        observation = look().await?;
    }
    let decision = desired_replicas(Some(&observation), &target.pool.spec, &history);
    Ok(Explanation {
        arrival_rate: history.arrival_rate(&observation),
        observation,
        decision,
    })
}

/// The explanation as text: the pool, what the look saw, each step, the decision, and the
/// operator's own recent decisions.
pub fn render(target: &Target, explanation: &Explanation) -> String {
    let (pool, spec) = (&target.pool, &target.pool.spec);
    let (obs, decision) = (&explanation.observation, &explanation.decision);
    let scaling = &spec.scaling;
    let mode = match scaling.mode {
        ScalingMode::QueueLength => {
            format!("queueLength {} per replica", scaling.target_queue_length)
        }
        ScalingMode::TargetWait => format!(
            "targetWait {}s, {} tasks per replica",
            scaling.target_wait_seconds, spec.executor.concurrency
        ),
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Pool {}/{}: {mode}, {}–{} replicas, {} now",
        pool.namespace().unwrap_or_else(|| "default".into()),
        pool.name_any(),
        scaling.min_replicas,
        scaling.max_replicas,
        target.current,
    );
    let rate = explanation
        .arrival_rate
        .map_or("arrival rate not measured (one look)".into(), |r| {
            format!("{r:.2}/s arriving")
        });
    let service = obs
        .mean_processing_ms
        .map_or("no task finished yet".into(), |ms| {
            format!("{:.2}s per task", ms / 1000.0)
        });
    let _ = writeln!(
        out,
        "Queues {}: {} queued, {} started, {} delayed, oldest {:.1}s; {rate}; {service}; {} executors",
        spec.queue_names().join(", "),
        obs.queued,
        obs.started,
        obs.delayed,
        obs.oldest_queued_age_ms as f64 / 1000.0,
        obs.workers.len(),
    );
    if let Some(b) = &obs.backend {
        let limit = b
            .limit
            .map_or("no concurrency limit".into(), |l| format!("limit {l}"));
        let ceiling = b
            .replica_ceiling(spec.executor.concurrency)
            .map_or(String::new(), |c| format!(", at most {c} replicas"));
        let paused = if b.paused_ms > 0 {
            format!(", paused {:.1}s more", b.paused_ms as f64 / 1000.0)
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "Backend limit key {}: {limit}, {} calls running{ceiling}{paused}",
            b.key, b.in_use
        );
    }
    let _ = writeln!(out, "Steps:");
    for step in &decision.steps {
        let count = match (step.replicas, decision.raw) {
            (Some(n), _) => n.to_string(),
            (None, Some(raw)) => format!("{raw:.2}"),
            (None, None) => "-".into(),
        };
        let line = format!("  {:<12}{count:>6}  {}", step.name, step.notes.join("; "));
        let _ = writeln!(out, "{}", line.trim_end());
    }
    let verdict = if decision.replicas != target.current {
        "would scale"
    } else if decision.held(target.current) {
        "held back"
    } else {
        "no change"
    };
    let _ = writeln!(
        out,
        "Decision: {} → {} ({}, {verdict})",
        target.current,
        decision.replicas,
        decision.cause.name()
    );
    let _ = writeln!(out, "  {}", decision.message());
    let _ = writeln!(
        out,
        "Windows, step limits, the cooldown and the wait for pods still starting count from \
         this look; the operator also weighs its recent history."
    );
    let recent = pool
        .status
        .as_ref()
        .map_or(&[][..], |s| s.recent_decisions.as_slice());
    if !recent.is_empty() {
        let _ = writeln!(
            out,
            "Recent decisions of the operator (status.recentDecisions):"
        );
        for d in recent {
            let _ = writeln!(out, "  {}", entry(d));
        }
    }
    out
}

fn entry(d: &ScalingDecision) -> String {
    format!(
        "{} {} → {} {}: {}",
        d.time.0, d.from, d.to, d.reason, d.message
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_pool_with_its_url_in_a_secret_needs_redis_url() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("pool.yaml");
        std::fs::write(
            &file,
            "apiVersion: ragpool.io/v1alpha1\nkind: RagWorkerPool\nmetadata: {name: p}\n\
             spec:\n  queues: {names: [image_analysis]}\n  redis: {urlSecretRef: {name: s, key: url}}\n\
             \x20 executor: {image: i}\n  scaling: {maxReplicas: 4}\n",
        )
        .expect("write");
        let args = ExplainArgs {
            name: None,
            namespace: None,
            file: Some(file.clone()),
            redis_url: None,
            replicas: None,
            sample_seconds: 0,
            partitions: PartitionArgs::default(),
        };
        let err = from_file(&file, &args).err().map(|e| format!("{e:#}"));
        assert!(
            err.as_deref().is_some_and(|e| e.starts_with("--redis-url")),
            "{err:?}"
        );
        let with_url = ExplainArgs {
            redis_url: Some("redis://127.0.0.1:1".into()),
            ..args
        };
        let target = from_file(&file, &with_url).expect("loads");
        assert_eq!(
            (target.current, target.redis_url.as_str()),
            (0, "redis://127.0.0.1:1")
        );
    }

    #[test]
    fn a_pool_at_its_backend_ceiling_is_explained() {
        let pool: RagWorkerPool = serde_json::from_value(serde_json::json!({
            "apiVersion": "ragpool.io/v1alpha1", "kind": "RagWorkerPool",
            "metadata": {"name": "gpu", "namespace": "rag"},
            "spec": {"queues": {"names": ["answer_generation"]}, "redis": {"url": "redis://r:6379"},
                     "executor": {"image": "i", "concurrency": 4,
                                  "backend": {"limits": {"maxConcurrent": 16}}},
                     "scaling": {"maxReplicas": 20}}
        }))
        .expect("a pool");
        let observation = Observation {
            queued: 300,
            started: 20,
            backend: Some(ragpool_operator::observe::BackendObservation {
                key: "gpu".into(),
                limit: Some(16),
                in_use: 16,
                paused_ms: 0,
                probing_up_to: None,
            }),
            ..Observation::default()
        };
        let target = Target {
            pool,
            current: 5,
            redis_url: "redis://r:6379".into(),
        };
        let decision = desired_replicas(Some(&observation), &target.pool.spec, &History::new(5));
        let text = render(
            &target,
            &Explanation {
                observation,
                arrival_rate: None,
                decision,
            },
        );
        assert!(
            text.contains("Backend limit key gpu: limit 16, 16 calls running, at most 5 replicas"),
            "{text}"
        );
        assert!(text.contains("Decision: 5 → 5 (BackendLimit"), "{text}");
        assert!(
            text.contains("capped at 5 by the backend limit: ceil(16 calls / 4 per replica) + 1"),
            "{text}"
        );
    }

    /// Answers each expected `GET path` with `reply`, in order, and fails on anything else.
    fn mock_api(
        script: Vec<(&'static str, serde_json::Value)>,
    ) -> (Client, tokio::task::JoinHandle<usize>) {
        use http::{Request, Response};
        use kube::client::Body;
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let server = tokio::spawn(async move {
            let mut served = 0;
            for (path, reply) in script {
                let (request, send) = handle.next_request().await.expect("a request");
                assert_eq!(request.method(), http::Method::GET);
                assert_eq!(request.uri().path(), path);
                let status = reply["code"].as_u64().unwrap_or(200) as u16;
                let mut response =
                    Response::new(Body::from(serde_json::to_vec(&reply).unwrap_or_default()));
                *response.status_mut() = http::StatusCode::from_u16(status).unwrap_or_default();
                send.send_response(response);
                served += 1;
            }
            served
        });
        (Client::new(service, "default"), server)
    }

    fn cluster_args() -> ExplainArgs {
        ExplainArgs {
            name: Some("images".into()),
            namespace: Some("rag".into()),
            file: None,
            redis_url: None,
            replicas: None,
            sample_seconds: 0,
            partitions: PartitionArgs::default(),
        }
    }

    #[tokio::test]
    async fn reads_the_pool_its_deployment_and_its_redis_url_from_the_cluster() {
        let pool = serde_json::json!({
            "apiVersion": "ragpool.io/v1alpha1", "kind": "RagWorkerPool",
            "metadata": {"name": "images", "namespace": "rag"},
            "spec": {"queues": {"names": ["image_analysis"]},
                     "redis": {"url": "redis://redis.rag.svc:6379", "tls": true},
                     "executor": {"image": "i"}, "scaling": {"maxReplicas": 8}},
            "status": {"recentDecisions": [{"time": "2026-05-04T10:00:00Z", "from": 1, "to": 3,
                        "reason": "Load", "message": "queueLength: (12 queued + 0 in flight) / 5 per replica = 2.40; → 3"}]}
        });
        let deployment = serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "images-executor", "namespace": "rag"},
            "spec": {"replicas": 3, "selector": {}, "template": {}}
        });
        let (client, server) = mock_api(vec![
            (
                "/apis/ragpool.io/v1alpha1/namespaces/rag/ragworkerpools/images",
                pool,
            ),
            (
                "/apis/apps/v1/namespaces/rag/deployments/images-executor",
                deployment,
            ),
        ]);
        let target = load(client, "rag", "images", &cluster_args())
            .await
            .expect("loads");
        assert_eq!(server.await.ok(), Some(2));
        assert_eq!(target.current, 3);
        assert_eq!(target.redis_url, "rediss://redis.rag.svc:6379");
        let explanation = Explanation {
            observation: Observation {
                queued: 12,
                ..Observation::default()
            },
            arrival_rate: None,
            decision: desired_replicas(
                Some(&Observation {
                    queued: 12,
                    ..Observation::default()
                }),
                &target.pool.spec,
                &History::new(3),
            ),
        };
        let text = render(&target, &explanation);
        assert!(text.contains("Decision: 3 → 3 (Load, no change)"), "{text}");
        assert!(
            text.ends_with(
                "Recent decisions of the operator (status.recentDecisions):\n  \
                 2026-05-04T10:00:00Z 1 → 3 Load: queueLength: (12 queued + 0 in flight) / 5 per replica = 2.40; → 3\n"
            ),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_pool_without_an_executor_deployment_has_no_replicas() {
        let pool = serde_json::json!({
            "apiVersion": "ragpool.io/v1alpha1", "kind": "RagWorkerPool",
            "metadata": {"name": "images", "namespace": "rag"},
            "spec": {"queues": {"names": ["image_analysis"]}, "redis": {"url": "redis://r:6379"},
                     "executor": {"image": "i"}, "scaling": {"maxReplicas": 8}}
        });
        let missing = serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "reason": "NotFound", "code": 404,
            "message": "deployments.apps \"images-executor\" not found"});
        let (client, server) = mock_api(vec![
            (
                "/apis/ragpool.io/v1alpha1/namespaces/rag/ragworkerpools/images",
                pool,
            ),
            (
                "/apis/apps/v1/namespaces/rag/deployments/images-executor",
                missing,
            ),
        ]);
        let args = ExplainArgs {
            redis_url: Some("redis://127.0.0.1:6379".into()),
            ..cluster_args()
        };
        let target = load(client, "rag", "images", &args).await.expect("loads");
        assert_eq!(server.await.ok(), Some(2));
        assert_eq!(
            (target.current, target.redis_url.as_str()),
            (0, "redis://127.0.0.1:6379")
        );
    }

    #[test]
    fn a_missing_file_names_the_flag() {
        let args = ExplainArgs {
            name: None,
            namespace: None,
            file: None,
            redis_url: None,
            replicas: None,
            sample_seconds: 0,
            partitions: PartitionArgs::default(),
        };
        let err = from_file(std::path::Path::new("/nonexistent/pool.yaml"), &args)
            .err()
            .map(|e| e.to_string());
        assert!(
            err.as_deref().is_some_and(|e| e.starts_with("--file")),
            "{err:?}"
        );
    }
}
