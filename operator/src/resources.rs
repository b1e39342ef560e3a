//! The objects a pool owns, rendered from its spec: the executor Deployment and the
//! ConfigMap with the executor's settings.
//!
//! Both are server-side applied under [`MANAGER`] and carry the pool as controller owner,
//! so deleting the pool deletes them. The Deployment's `replicas` is applied as the count it
//! already has; only the scaling step changes it (through the scale subresource).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapEnvSource, ConfigMapVolumeSource, Container, ContainerPort,
    EmptyDirVolumeSource, EnvFromSource, EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector,
    PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    SeccompProfile, SecretKeySelector, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use ragpool_queue::QueueEntry;

use crate::crd::{
    BackendKind, DocsSpec, PriorityPolicy, RagWorkerPool, SecretKeyRef, SentinelSpec,
};

/// The field manager of every write the operator makes.
pub const MANAGER: &str = "ragpool-operator";
/// The label that ties pods and Deployments to their pool (the Deployment's selector).
pub const POOL_LABEL: &str = "ragpool.io/pool";
/// Annotation on the Deployment: hash of everything rendered except `replicas`, so an
/// unchanged pool is not re-applied on every poll.
pub const SPEC_HASH_ANNOTATION: &str = "ragpool.io/spec-hash";
/// Annotation on the pod template: hash of the ConfigMap, so a settings change rolls the pods.
pub const CONFIG_HASH_ANNOTATION: &str = "ragpool.io/config-hash";
/// Port of the executor's `/healthz`, `/readyz` and `/metrics`.
pub const METRICS_PORT: i32 = 9090;
/// Where a pool's docs ConfigMap or claim is mounted (`RAGPOOL_DOCS` then points here, or
/// at the `subPath` folder under it).
pub const DOCS_MOUNT: &str = "/var/lib/ragpool/docs";
/// The uid and gid the executor runs as (the distroless `nonroot` user).
const RUN_AS: i64 = 65532;

/// Name of the executor Deployment and ConfigMap of a pool.
pub fn executor_name(pool: &RagWorkerPool) -> String {
    format!("{}-executor", pool.name_any())
}

/// Labels on the Deployment and its pods.
pub fn labels(pool: &RagWorkerPool) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "ragpool-executor".into()),
        ("app.kubernetes.io/instance".into(), pool.name_any()),
        ("app.kubernetes.io/managed-by".into(), MANAGER.into()),
        (POOL_LABEL.into(), pool.name_any()),
    ])
}

/// The label selector of the pool's pods.
pub fn pod_selector(pool: &RagWorkerPool) -> String {
    format!("{POOL_LABEL}={}", pool.name_any())
}

fn meta(pool: &RagWorkerPool) -> ObjectMeta {
    ObjectMeta {
        name: Some(executor_name(pool)),
        namespace: pool.namespace(),
        labels: Some(labels(pool)),
        owner_references: pool.controller_owner_ref(&()).map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

/// The executor's non-secret settings, as environment variables.
pub fn settings(pool: &RagWorkerPool) -> BTreeMap<String, String> {
    let spec = &pool.spec;
    let executor = &spec.executor;
    let priority = match spec.queues.priority {
        PriorityPolicy::Strict => "strict",
        PriorityPolicy::Weighted => "weighted",
    };
    let mut env = BTreeMap::new();
    let mut set = |k: &str, v: String| {
        env.insert(k.to_owned(), v);
    };
    set("RAGPOOL_QUEUES", queue_list(pool));
    set("RAGPOOL_PRIORITY", priority.into());
    set("RAGPOOL_CONCURRENCY", executor.concurrency.to_string());
    set("RAGPOOL_DRAIN_SECONDS", executor.drain_seconds.to_string());
    set("RAGPOOL_METRICS_LISTEN", format!("0.0.0.0:{METRICS_PORT}"));
    if let Some(lease) = executor.lease_seconds {
        set("RAGPOOL_LEASE_SECONDS", lease.to_string());
    }
    if let Some(durability) = spec.redis.durability {
        set("RAGPOOL_DURABILITY", durability.as_str().into());
    }
    // Only a count the pool (or the operator's `--partitions`) gives is written; without
    // one the executors use `auto`, as the operator's observation does, so pools that never
    // set one keep their settings (and their pods) as they were.
    let partitions = spec.redis.partition_count(ragpool_queue::AUTO_PARTITIONS);
    if partitions != ragpool_queue::AUTO_PARTITIONS {
        set("RAGPOOL_PARTITIONS", partitions.to_string());
    }
    // Written only when the pool names a prefix, so pools that never set one keep their
    // settings (and their pods) as they were.
    if let Some(prefix) = &spec.redis.key_prefix {
        set(KEY_PREFIX_ENV, prefix.clone());
    }
    env.extend(backend_settings(pool));
    if let Some(docs) = DocsSpec::of(executor) {
        env.insert("RAGPOOL_DOCS".into(), docs_folder(&docs));
    }
    env
}

/// `RAGPOOL_DOCS`: the image's folder for `path`, else the mount (or `subPath` under it).
/// The volume is mounted whole and `subPath` only narrows what is indexed: a subPath mount
/// would keep a ConfigMap's updates from reaching the pod.
fn docs_folder(docs: &DocsSpec) -> String {
    match (&docs.path, &docs.sub_path) {
        (Some(path), _) => path.clone(),
        (None, Some(sub)) => format!("{DOCS_MOUNT}/{}", sub.trim_matches('/')),
        (None, None) => DOCS_MOUNT.into(),
    }
}

/// The executor's setting for the key prefix (`RAGPOOL_KEY_PREFIX`; the executor still reads
/// the older `RAGPOOL_NAMESPACE` when it is unset, which the operator no longer writes).
pub use ragpool_runtime::args::KEY_PREFIX_ENV;

/// `RAGPOOL_QUEUES`: the queue names, highest priority first; weighted, each as
/// `name=weight` (1 when the spec gives none).
fn queue_list(pool: &RagWorkerPool) -> String {
    let queues = &pool.spec.queues;
    let entries: Vec<QueueEntry> = queues
        .names
        .iter()
        .map(|q| QueueEntry {
            name: q.0.clone(),
            weight: match queues.priority {
                PriorityPolicy::Strict => None,
                // The CRD admits weights of 1 to 1000 only.
                PriorityPolicy::Weighted => Some(
                    queues
                        .weights
                        .as_ref()
                        .and_then(|w| w.get(&q.0))
                        .map_or(1, |w| u32::try_from(w.0).unwrap_or(1)),
                ),
            },
        })
        .collect();
    QueueEntry::format_list(&entries)
}

/// `RAGPOOL_BACKEND` and the settings of the chosen backend.
fn backend_settings(pool: &RagWorkerPool) -> Vec<(String, String)> {
    let backend = &pool.spec.executor.backend;
    let mut env = Vec::new();
    let mut set = |k: &str, v: String| env.push((k.to_owned(), v));
    match backend.kind {
        BackendKind::Builtin => set("RAGPOOL_BACKEND", "builtin".into()),
        BackendKind::Openai => {
            set("RAGPOOL_BACKEND", "openai".into());
            if let Some(openai) = &backend.openai {
                set("RAGPOOL_OPENAI_BASE_URL", openai.base_url.clone());
                set("RAGPOOL_OPENAI_MODEL", openai.model.clone());
                if let Some(vision) = &openai.vision_model {
                    set("RAGPOOL_OPENAI_VISION_MODEL", vision.clone());
                }
                if let Some(t) = openai.timeout_seconds {
                    set("RAGPOOL_REQUEST_TIMEOUT_SECONDS", t.to_string());
                }
            }
        }
        BackendKind::Http => {
            set("RAGPOOL_BACKEND", "http".into());
            if let Some(http) = &backend.http {
                set("RAGPOOL_HTTP_URL", http.url.clone());
                if let Some(t) = http.timeout_seconds {
                    set("RAGPOOL_REQUEST_TIMEOUT_SECONDS", t.to_string());
                }
            }
        }
    }
    // Written only when the pool sets limits, so pools without them keep their pods.
    if let Some(limits) = &backend.limits {
        set(
            "RAGPOOL_BACKEND_LIMIT_KEY",
            limits.key_for(&pool.name_any()).to_owned(),
        );
        if let Some(max) = limits.max_concurrent {
            set("RAGPOOL_BACKEND_MAX_CONCURRENT", max.to_string());
        }
        if let Some(rpm) = limits.requests_per_minute {
            set("RAGPOOL_BACKEND_REQUESTS_PER_MINUTE", rpm.to_string());
        }
        if let Some(tpm) = limits.tokens_per_minute {
            set("RAGPOOL_BACKEND_TOKENS_PER_MINUTE", tpm.to_string());
        }
        if let Some(min) = limits.adaptive_min() {
            set("RAGPOOL_BACKEND_ADAPTIVE", "true".into());
            set("RAGPOOL_BACKEND_MIN_CONCURRENT", min.to_string());
        }
    }
    env
}

/// The ConfigMap the executor reads its settings from (`envFrom`).
pub fn config_map(pool: &RagWorkerPool) -> ConfigMap {
    ConfigMap {
        metadata: meta(pool),
        data: Some(settings(pool)),
        ..ConfigMap::default()
    }
}

fn secret_env(name: &str, secret: &SecretKeyRef) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.name.clone(),
                key: secret.key.clone(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn value_env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

/// The Redis URL with `tls` applied (`redis://` becomes `rediss://`).
pub fn with_tls(url: &str, tls: bool) -> String {
    match url.strip_prefix("redis://") {
        Some(rest) if tls => format!("rediss://{rest}"),
        _ => url.to_owned(),
    }
}

/// Puts `userinfo` (for example `:secret`) into a URL that has none; `None` when the URL has
/// no `scheme://` or already carries userinfo.
pub fn with_userinfo(url: &str, userinfo: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.contains('@') {
        return None;
    }
    Some(format!("{scheme}://{userinfo}@{rest}"))
}

/// The `redis+sentinel://` URL (see `ragpool_queue::SentinelTarget`) for `sentinel`, with
/// the data nodes' and the sentinels' passwords as given: the values themselves (the
/// operator's own connection) or `$(VAR)` references (the pods').
pub fn sentinel_url(
    sentinel: &SentinelSpec,
    tls: bool,
    password: Option<&str>,
    sentinel_password: Option<&str>,
) -> String {
    let scheme = if tls {
        "rediss+sentinel"
    } else {
        "redis+sentinel"
    };
    let userinfo = password.map(|p| format!(":{p}@")).unwrap_or_default();
    let mut url = format!(
        "{scheme}://{userinfo}{}/{}",
        sentinel.addresses.join(","),
        sentinel.master_name
    );
    if let Some(db) = sentinel.db {
        url.push_str(&format!("/{db}"));
    }
    if sentinel.no_password {
        url.push_str("?sentinel_password=");
    } else if let Some(p) = sentinel_password {
        url.push_str(&format!("?sentinel_password={p}"));
    }
    url
}

/// Environment variables that do not fit a ConfigMap: the pod name, the Redis URL (which may
/// come from a Secret) and secrets by reference, then the user's own (which win).
fn env(pool: &RagWorkerPool) -> Vec<EnvVar> {
    let redis = &pool.spec.redis;
    let mut env = vec![EnvVar {
        name: "RAGPOOL_POD_NAME".into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: "metadata.name".into(),
                api_version: None,
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }];
    if let Some(password) = &redis.password_secret_ref {
        env.push(secret_env("RAGPOOL_REDIS_PASSWORD", password));
    }
    if let Some(sentinel) = &redis.sentinel {
        if let Some(password) = &sentinel.password_secret_ref {
            env.push(secret_env("RAGPOOL_REDIS_SENTINEL_PASSWORD", password));
        }
        // Both passwords by $(VAR) reference, defined above, as for a plain URL.
        let url = sentinel_url(
            sentinel,
            redis.tls,
            redis
                .password_secret_ref
                .as_ref()
                .map(|_| "$(RAGPOOL_REDIS_PASSWORD)"),
            sentinel
                .password_secret_ref
                .as_ref()
                .map(|_| "$(RAGPOOL_REDIS_SENTINEL_PASSWORD)"),
        );
        env.push(value_env("RAGPOOL_REDIS_URL", url));
    }
    match (&redis.url, &redis.url_secret_ref) {
        _ if redis.sentinel.is_some() => {}
        (Some(url), _) => {
            let url = with_tls(url, redis.tls);
            // Kubernetes expands $(VAR) from variables defined earlier in the list, so the
            // password never appears in the Deployment.
            let url = match &redis.password_secret_ref {
                Some(_) => with_userinfo(&url, ":$(RAGPOOL_REDIS_PASSWORD)").unwrap_or(url),
                None => url,
            };
            env.push(value_env("RAGPOOL_REDIS_URL", url));
        }
        (None, Some(secret)) => env.push(secret_env("RAGPOOL_REDIS_URL", secret)),
        (None, None) => {}
    }
    if let Some(key) = pool
        .spec
        .executor
        .backend
        .openai
        .as_ref()
        .and_then(|o| o.api_key_secret_ref.as_ref())
    {
        env.push(secret_env("RAGPOOL_OPENAI_API_KEY", key));
    }
    env.extend(pool.spec.executor.env.iter().flatten().cloned());
    env
}

fn probe(path: &str, period: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("metrics".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(3),
        ..Probe::default()
    }
}

/// The executor Deployment with `replicas` replicas.
pub fn deployment(pool: &RagWorkerPool, replicas: i32) -> Deployment {
    let spec = DeploymentSpec {
        replicas: Some(replicas),
        selector: LabelSelector {
            match_labels: Some(BTreeMap::from([(POOL_LABEL.into(), pool.name_any())])),
            match_expressions: None,
        },
        template: pod_template(pool),
        ..DeploymentSpec::default()
    };
    // Everything but `replicas` goes into the hash: a scale is not a spec change.
    let hash = fnv1a(&format!("{:?}{:?}", spec.template, spec.selector));
    let mut metadata = meta(pool);
    metadata.annotations = Some(BTreeMap::from([(
        SPEC_HASH_ANNOTATION.into(),
        format!("{hash:016x}"),
    )]));
    Deployment {
        metadata,
        spec: Some(spec),
        ..Deployment::default()
    }
}

/// The executor pods: the user's labels and annotations, the pool's labels, and a hash of
/// the settings so a changed ConfigMap rolls the pods.
fn pod_template(pool: &RagWorkerPool) -> PodTemplateSpec {
    let executor = &pool.spec.executor;
    let mut pod_labels = executor.pod_labels.clone().unwrap_or_default();
    pod_labels.extend(labels(pool));
    let mut pod_annotations = executor.pod_annotations.clone().unwrap_or_default();
    pod_annotations.insert(
        CONFIG_HASH_ANNOTATION.into(),
        format!("{:016x}", fnv1a(&format!("{:?}", settings(pool)))),
    );
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(pod_labels),
            annotations: Some(pod_annotations),
            ..ObjectMeta::default()
        }),
        spec: Some(pod_spec(pool)),
    }
}

/// One executor container, non-root, with the pod-wide settings the spec asks for.
fn pod_spec(pool: &RagWorkerPool) -> PodSpec {
    let executor = &pool.spec.executor;
    let (volumes, mounts) = volumes(pool);
    PodSpec {
        containers: vec![container(pool, mounts)],
        termination_grace_period_seconds: Some(executor.termination_grace_period()),
        // Executors talk to Redis and model servers, never to the Kubernetes API.
        automount_service_account_token: Some(false),
        service_account_name: executor.service_account_name.clone(),
        image_pull_secrets: executor.image_pull_secrets.clone(),
        node_selector: executor.node_selector.clone(),
        tolerations: executor.tolerations.clone(),
        affinity: executor.affinity.clone(),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS),
            run_as_group: Some(RUN_AS),
            fs_group: Some(RUN_AS),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..PodSecurityContext::default()
        }),
        volumes: Some(volumes),
        ..PodSpec::default()
    }
}

/// The pod's volumes and the executor's mounts of them: a writable `/tmp` (the root
/// filesystem is read-only) and the pool's documents, when a ConfigMap or a claim holds them.
fn volumes(pool: &RagWorkerPool) -> (Vec<Volume>, Vec<VolumeMount>) {
    let mut volumes = vec![Volume {
        name: "tmp".into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }];
    let mut mounts = vec![VolumeMount {
        name: "tmp".into(),
        mount_path: "/tmp".into(),
        ..VolumeMount::default()
    }];
    if let Some(volume) = DocsSpec::of(&pool.spec.executor).and_then(|d| docs_volume(&d)) {
        volumes.push(volume);
        mounts.push(VolumeMount {
            name: "docs".into(),
            mount_path: DOCS_MOUNT.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    (volumes, mounts)
}

/// The volume holding the documents; `None` when they are a folder in the image.
fn docs_volume(docs: &DocsSpec) -> Option<Volume> {
    let volume = Volume {
        name: "docs".into(),
        ..Volume::default()
    };
    if let Some(name) = &docs.config_map {
        return Some(Volume {
            config_map: Some(ConfigMapVolumeSource {
                name: name.clone(),
                ..ConfigMapVolumeSource::default()
            }),
            ..volume
        });
    }
    let claim = docs.persistent_volume_claim.as_ref()?;
    Some(Volume {
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: claim.clone(),
            read_only: Some(true),
        }),
        ..volume
    })
}

/// The `ragpool-executor` container: settings from the pool's ConfigMap, secrets and the
/// user's variables in `env`, probes on the metrics port, no privileges.
fn container(pool: &RagWorkerPool, mounts: Vec<VolumeMount>) -> Container {
    let executor = &pool.spec.executor;
    Container {
        name: "executor".into(),
        image: Some(executor.image.clone()),
        image_pull_policy: executor.image_pull_policy.map(|p| format!("{p:?}")),
        command: Some(vec!["ragpool-executor".into()]),
        env_from: Some(vec![EnvFromSource {
            config_map_ref: Some(ConfigMapEnvSource {
                name: executor_name(pool),
                optional: Some(false),
            }),
            ..EnvFromSource::default()
        }]),
        env: Some(env(pool)),
        ports: Some(vec![ContainerPort {
            name: Some("metrics".into()),
            container_port: METRICS_PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        liveness_probe: Some(probe("/healthz", 10)),
        readiness_probe: Some(probe("/readyz", 5)),
        resources: executor.resources.clone(),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(mounts),
        ..Container::default()
    }
}

/// The spec hash a rendered Deployment carries.
pub fn spec_hash(deployment: &Deployment) -> Option<&str> {
    deployment
        .metadata
        .annotations
        .as_ref()?
        .get(SPEC_HASH_ANNOTATION)
        .map(String::as_str)
}

/// 64-bit FNV-1a: stable across Rust releases, unlike `DefaultHasher`.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::crd::{
        BuiltinBackend, HttpBackend, OpenAiBackend, QueueName, RagWorkerPoolSpec, Weight,
    };
    use crate::fixtures::{pool, spec};

    fn env_of(d: &Deployment) -> Vec<EnvVar> {
        d.spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .map(|p| p.containers[0].env.clone().unwrap_or_default())
            .unwrap_or_default()
    }

    fn pod(d: &Deployment) -> PodSpec {
        d.spec
            .as_ref()
            .and_then(|s| s.template.spec.clone())
            .unwrap_or_default()
    }

    #[test]
    fn deployment_runs_the_executor_non_root_with_probes() {
        let p = pool(spec());
        let d = deployment(&p, 3);
        assert_eq!(d.metadata.name.as_deref(), Some("pool-executor"));
        assert_eq!(d.metadata.namespace.as_deref(), Some("ns"));
        let owner = &d.metadata.owner_references.clone().unwrap_or_default()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.controller),
            ("RagWorkerPool", "pool", Some(true))
        );
        let spec = d.spec.clone().unwrap_or_default();
        assert_eq!(spec.replicas, Some(3));
        assert_eq!(
            spec.selector.match_labels,
            Some(BTreeMap::from([(
                POOL_LABEL.to_string(),
                "pool".to_string()
            )]))
        );
        let pod = pod(&d);
        assert_eq!(pod.termination_grace_period_seconds, Some(45));
        assert_eq!(pod.automount_service_account_token, Some(false));
        let psc = pod.security_context.clone().unwrap_or_default();
        assert_eq!(
            (psc.run_as_non_root, psc.run_as_user),
            (Some(true), Some(65532))
        );
        let c = &pod.containers[0];
        assert_eq!(c.command, Some(vec!["ragpool-executor".to_string()]));
        let sc = c.security_context.clone().unwrap_or_default();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        let path = |p: &Option<Probe>| {
            p.as_ref()
                .and_then(|p| p.http_get.as_ref())
                .and_then(|h| h.path.clone())
        };
        assert_eq!(path(&c.liveness_probe).as_deref(), Some("/healthz"));
        assert_eq!(path(&c.readiness_probe).as_deref(), Some("/readyz"));
        assert_eq!(c.ports.clone().unwrap_or_default()[0].container_port, 9090);
        let env = env_of(&d);
        assert_eq!(env[0].name, "RAGPOOL_POD_NAME");
        assert_eq!(
            env[0]
                .value_from
                .as_ref()
                .and_then(|v| v.field_ref.as_ref())
                .map(|f| f.field_path.as_str()),
            Some("metadata.name")
        );
        assert!(
            env.iter().any(|e| e.name == "RAGPOOL_REDIS_URL"
                && e.value.as_deref() == Some("redis://redis:6379"))
        );
    }

    #[test]
    fn settings_carry_queues_concurrency_backend_and_drain() {
        let mut s = spec();
        s.queues.names = vec![QueueName("a".into()), QueueName("b".into())];
        s.queues.priority = PriorityPolicy::Weighted;
        s.queues.weights = Some(BTreeMap::from([("a".to_string(), Weight(5))]));
        s.executor.concurrency = 8;
        s.executor.drain_seconds = 20;
        s.executor.backend.kind = BackendKind::Http;
        s.executor.backend.http = Some(HttpBackend {
            url: "http://rag:8000".into(),
            timeout_seconds: Some(60),
        });
        let cm = config_map(&pool(s));
        let data = cm.data.unwrap_or_default();
        let get = |k: &str| data.get(k).cloned().unwrap_or_default();
        assert_eq!(get("RAGPOOL_QUEUES"), "a=5,b=1");
        assert_eq!(get("RAGPOOL_PRIORITY"), "weighted");
        assert_eq!(get("RAGPOOL_CONCURRENCY"), "8");
        assert_eq!(get("RAGPOOL_DRAIN_SECONDS"), "20");
        assert_eq!(get("RAGPOOL_BACKEND"), "http");
        assert_eq!(get("RAGPOOL_HTTP_URL"), "http://rag:8000");
        assert_eq!(get("RAGPOOL_REQUEST_TIMEOUT_SECONDS"), "60");
        assert_eq!(get("RAGPOOL_METRICS_LISTEN"), "0.0.0.0:9090");
    }

    #[test]
    fn a_sentinel_pool_gets_a_sentinel_url_and_its_durability() {
        let mut s = spec();
        s.redis.url = None;
        s.redis.password_secret_ref = Some(SecretKeyRef {
            name: "redis".into(),
            key: "password".into(),
        });
        s.redis.sentinel = Some(SentinelSpec {
            master_name: "mymaster".into(),
            addresses: vec![
                "redis-node-0.redis-headless:26379".into(),
                "redis:26379".into(),
            ],
            password_secret_ref: Some(SecretKeyRef {
                name: "sentinel".into(),
                key: "password".into(),
            }),
            db: Some(2),
            ..SentinelSpec::default()
        });
        s.redis.durability = Some(crate::crd::DurabilitySetting::Replicated);
        let p = pool(s.clone());
        let env = env_of(&deployment(&p, 1));
        let position = |name: &str| env.iter().position(|e| e.name == name);
        let url = env
            .iter()
            .find(|e| e.name == "RAGPOOL_REDIS_URL")
            .and_then(|e| e.value.clone());
        assert_eq!(
            url.as_deref(),
            Some(
                "redis+sentinel://:$(RAGPOOL_REDIS_PASSWORD)@redis-node-0.redis-headless:26379,\
                 redis:26379/mymaster/2?sentinel_password=$(RAGPOOL_REDIS_SENTINEL_PASSWORD)"
            )
        );
        assert!(position("RAGPOOL_REDIS_PASSWORD") < position("RAGPOOL_REDIS_URL"));
        assert!(position("RAGPOOL_REDIS_SENTINEL_PASSWORD") < position("RAGPOOL_REDIS_URL"));
        assert_eq!(
            env.iter().filter(|e| e.name == "RAGPOOL_REDIS_URL").count(),
            1
        );
        let data = config_map(&p).data.unwrap_or_default();
        assert_eq!(
            data.get("RAGPOOL_DURABILITY").map(String::as_str),
            Some("replicated")
        );

        // TLS, and sentinels without a password although the data nodes have one.
        let sentinel = s.redis.sentinel.as_mut().unwrap();
        sentinel.password_secret_ref = None;
        sentinel.no_password = true;
        sentinel.db = None;
        assert_eq!(
            sentinel_url(sentinel, true, Some("pw"), None),
            "rediss+sentinel://:pw@redis-node-0.redis-headless:26379,redis:26379/mymaster\
             ?sentinel_password="
        );
        // The URL is one the queue parses the same way.
        let target: ragpool_queue::RedisTarget = sentinel_url(sentinel, false, Some("pw"), None)
            .parse()
            .unwrap();
        let parsed = target.sentinel.unwrap();
        assert_eq!(parsed.master_name, "mymaster");
        assert_eq!(parsed.password.as_deref(), Some("pw"));
        assert_eq!(parsed.sentinel_password, None);
        assert!(
            !config_map(&pool(spec()))
                .data
                .unwrap_or_default()
                .contains_key("RAGPOOL_DURABILITY")
        );
    }

    #[test]
    fn a_partition_count_reaches_the_executors_and_rolls_them() {
        let one = pool(spec());
        assert!(
            !settings(&one).contains_key("RAGPOOL_PARTITIONS"),
            "unset: the executors resolve `auto` themselves"
        );
        let mut s = spec();
        s.redis.partitions = Some(1);
        assert_eq!(
            settings(&pool(s.clone())).get("RAGPOOL_PARTITIONS"),
            Some(&"1".to_string()),
            "an explicit 1 is written: the executors' default is `auto`"
        );
        s.redis.partitions = Some(6);
        let six = pool(s);
        let data = config_map(&six).data.unwrap_or_default();
        assert_eq!(
            data.get("RAGPOOL_PARTITIONS").map(String::as_str),
            Some("6")
        );
        // The executors only read it at start: a new count must roll the pods.
        assert_ne!(
            spec_hash(&deployment(&six, 1)),
            spec_hash(&deployment(&one, 1))
        );
    }

    #[test]
    fn secrets_are_referenced_never_copied() {
        let mut s = spec();
        s.redis.password_secret_ref = Some(SecretKeyRef {
            name: "redis".into(),
            key: "password".into(),
        });
        s.redis.tls = true;
        let env = env_of(&deployment(&pool(s.clone()), 1));
        let url = env
            .iter()
            .find(|e| e.name == "RAGPOOL_REDIS_URL")
            .and_then(|e| e.value.clone());
        assert_eq!(
            url.as_deref(),
            Some("rediss://:$(RAGPOOL_REDIS_PASSWORD)@redis:6379")
        );
        let pw = env.iter().position(|e| e.name == "RAGPOOL_REDIS_PASSWORD");
        let url_at = env.iter().position(|e| e.name == "RAGPOOL_REDIS_URL");
        assert!(
            pw < url_at,
            "the password must be defined before the URL that expands it"
        );

        s.redis.url = None;
        s.redis.url_secret_ref = Some(SecretKeyRef {
            name: "redis".into(),
            key: "url".into(),
        });
        let env = env_of(&deployment(&pool(s), 1));
        let from = env
            .iter()
            .find(|e| e.name == "RAGPOOL_REDIS_URL")
            .and_then(|e| e.value_from.clone())
            .and_then(|v| v.secret_key_ref);
        assert_eq!(
            from.map(|r| (r.name, r.key)),
            Some(("redis".to_string(), "url".to_string()))
        );
    }

    #[test]
    fn user_env_comes_last_so_it_wins() {
        let mut s = spec();
        s.executor.env = Some(vec![value_env("RAGPOOL_REDIS_URL", "redis://other:6379")]);
        let env = env_of(&deployment(&pool(s), 1));
        let last = env
            .iter()
            .rev()
            .find(|e| e.name == "RAGPOOL_REDIS_URL")
            .and_then(|e| e.value.clone());
        assert_eq!(last.as_deref(), Some("redis://other:6379"));
    }

    /// A pool spec, and the `RAGPOOL_DOCS`, mounted ConfigMap and mounted claim it should get.
    type DocsCase<'a> = (
        &'a str,
        RagWorkerPoolSpec,
        Option<&'a str>,
        Option<&'a str>,
        Option<&'a str>,
    );

    /// The docs volume of a Deployment's pods and the executor's mount of it.
    fn docs_of(d: &Deployment) -> (Option<Volume>, Option<VolumeMount>) {
        let pod = pod(d);
        let volume = pod
            .volumes
            .unwrap_or_default()
            .into_iter()
            .find(|v| v.name == "docs");
        let mount = pod.containers[0]
            .volume_mounts
            .clone()
            .unwrap_or_default()
            .into_iter()
            .find(|m| m.name == "docs");
        (volume, mount)
    }

    #[test]
    fn docs_are_mounted_and_named_for_builtin_and_openai_alike() {
        let openai = || {
            let mut s = spec();
            s.executor.backend.kind = BackendKind::Openai;
            s.executor.backend.openai = Some(OpenAiBackend {
                base_url: "http://vllm:8000/v1".into(),
                model: "m".into(),
                ..OpenAiBackend::default()
            });
            s
        };
        let config_map = |name: &str| DocsSpec {
            config_map: Some(name.into()),
            ..DocsSpec::default()
        };
        let claim = DocsSpec {
            persistent_volume_claim: Some("corpus".into()),
            sub_path: Some("/en/".into()),
            ..DocsSpec::default()
        };
        let in_image = DocsSpec {
            path: Some("/corpus".into()),
            ..DocsSpec::default()
        };
        let alias = |map: Option<&str>, path: Option<&str>| {
            let mut s = spec();
            s.executor.backend.builtin = Some(BuiltinBackend {
                docs_config_map: map.map(Into::into),
                docs_path: path.map(Into::into),
            });
            s
        };
        let with_docs = |mut s: RagWorkerPoolSpec, docs: DocsSpec| {
            s.executor.docs = Some(docs);
            s
        };
        let mut http = with_docs(spec(), config_map("docs"));
        http.executor.backend.kind = BackendKind::Http;
        http.executor.backend.http = Some(HttpBackend {
            url: "http://rag:8000".into(),
            timeout_seconds: None,
        });
        let sub_folder = format!("{DOCS_MOUNT}/en");
        let cases: Vec<DocsCase> = vec![
            ("no docs", spec(), None, None, None),
            ("openai, no docs", openai(), None, None, None),
            (
                "builtin, docs.configMap",
                with_docs(spec(), config_map("docs")),
                Some(DOCS_MOUNT),
                Some("docs"),
                None,
            ),
            (
                "openai, docs.configMap",
                with_docs(openai(), config_map("docs")),
                Some(DOCS_MOUNT),
                Some("docs"),
                None,
            ),
            (
                "openai, docs.persistentVolumeClaim with subPath",
                with_docs(openai(), claim),
                Some(&sub_folder),
                None,
                Some("corpus"),
            ),
            (
                "openai, docs.path",
                with_docs(openai(), in_image),
                Some("/corpus"),
                None,
                None,
            ),
            (
                "builtin.docsConfigMap alias",
                alias(Some("old"), None),
                Some(DOCS_MOUNT),
                Some("old"),
                None,
            ),
            (
                "builtin.docsPath alias",
                alias(None, Some("/d")),
                Some("/d"),
                None,
                None,
            ),
            ("http ignores docs", http, None, None, None),
        ];
        for (case, s, folder, map, claim) in cases {
            let p = pool(s);
            assert_eq!(
                settings(&p).get("RAGPOOL_DOCS").map(String::as_str),
                folder,
                "{case}"
            );
            let (volume, mount) = docs_of(&deployment(&p, 1));
            let mounted_map = volume
                .as_ref()
                .and_then(|v| v.config_map.as_ref())
                .map(|c| c.name.as_str());
            let mounted_claim = volume
                .as_ref()
                .and_then(|v| v.persistent_volume_claim.as_ref())
                .map(|c| (c.claim_name.as_str(), c.read_only));
            assert_eq!(mounted_map, map, "{case}");
            assert_eq!(mounted_claim, claim.map(|c| (c, Some(true))), "{case}");
            let expected_mount = (map.is_some() || claim.is_some())
                .then(|| (DOCS_MOUNT.to_string(), Some(true), None));
            assert_eq!(
                mount.map(|m| (m.mount_path, m.read_only, m.sub_path)),
                expected_mount,
                "{case}"
            );
        }
    }

    #[test]
    fn spec_hash_ignores_replicas_and_follows_settings() {
        let p = pool(spec());
        let a = deployment(&p, 1);
        assert_eq!(spec_hash(&a), spec_hash(&deployment(&p, 7)));
        let mut s = spec();
        s.executor.concurrency = 9;
        let changed = deployment(&pool(s), 1);
        assert_ne!(spec_hash(&a), spec_hash(&changed));
    }

    #[test]
    fn userinfo_goes_only_where_there_is_none() {
        assert_eq!(
            with_userinfo("redis://h:6379/0", ":pw").as_deref(),
            Some("redis://:pw@h:6379/0")
        );
        assert_eq!(with_userinfo("redis://u:x@h:6379", ":pw"), None);
        assert_eq!(with_userinfo("h:6379", ":pw"), None);
        assert_eq!(with_tls("redis://h", true), "rediss://h");
        assert_eq!(with_tls("redis://h", false), "redis://h");
        assert_eq!(with_tls("rediss://h", true), "rediss://h");
    }
}
