//! The `RagWorkerPool` custom resource: what a pool of executors is (spec) and what the
//! operator last saw and decided for it (status).
//!
//! The CRD YAML in `crds/ragworkerpool.yaml` is generated from these types by
//! `ragpool-operator crd`; a test fails when the checked-in file falls behind. Validation
//! lives in the schema (ranges, required fields, CEL rules) so the API server rejects a bad
//! pool at `kubectl apply` time; [`RagWorkerPoolSpec::validate`] repeats the cross-field
//! rules for clusters that do not evaluate CEL.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, EnvVar, LocalObjectReference, ResourceRequirements, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use kube::CustomResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A pool of `ragpool-executor` pods serving some queues, scaled on queue depth or wait.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "ragpool.io",
    version = "v1alpha1",
    kind = "RagWorkerPool",
    namespaced,
    shortname = "rwp",
    status = "RagWorkerPoolStatus",
    derive = "PartialEq",
    doc = "A pool of ragpool executors that the operator scales on the queues it serves.",
    printcolumn = r#"{"name":"Desired","type":"integer","jsonPath":".status.desiredReplicas"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.readyReplicas"}"#,
    printcolumn = r#"{"name":"Queued","type":"integer","jsonPath":".status.queued"}"#,
    printcolumn = r#"{"name":"Started","type":"integer","jsonPath":".status.started"}"#,
    printcolumn = r#"{"name":"Last Scale","type":"date","jsonPath":".status.lastScaleTime"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct RagWorkerPoolSpec {
    /// The queues this pool claims tasks from and how it chooses between them.
    pub queues: QueuesSpec,
    /// Where the task queue lives.
    pub redis: RedisSpec,
    /// The executor pods: image, concurrency, backend and scheduling.
    pub executor: ExecutorSpec,
    /// How the operator sizes the pool.
    pub scaling: ScalingSpec,
}

/// The queues a pool serves.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueuesSpec {
    /// Queue names, highest priority first (for example `image_analysis`,
    /// `answer_generation`, `full_query`).
    #[schemars(length(min = 1, max = 16), extend("x-kubernetes-list-type" = "set"))]
    pub names: Vec<QueueName>,
    /// `strict`: always claim from the first non-empty queue in `names` order.
    /// `weighted`: claim from the non-empty queues in proportion to `weights`.
    #[serde(default)]
    pub priority: PriorityPolicy,
    /// Relative claim weight per queue name when `priority` is `weighted`; a queue missing
    /// here has weight 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<BTreeMap<String, Weight>>,
}

/// A queue name: letters, digits, `_`, `-` and `.`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[serde(transparent)]
pub struct QueueName(
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[A-Za-z0-9_.-]+$"))] pub String,
);

/// A positive claim weight.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(transparent)]
pub struct Weight(#[schemars(range(min = 1, max = 1000))] pub i32);

/// How an executor picks the next queue to claim from.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum PriorityPolicy {
    /// The first non-empty queue in order wins.
    #[default]
    Strict,
    /// Non-empty queues share claims in proportion to their weights.
    Weighted,
}

/// Where the Redis holding the queues is and how to reach it.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "(has(self.url) ? 1 : 0) + (has(self.urlSecretRef) ? 1 : 0) + (has(self.sentinel) ? 1 : 0) == 1", "message": "set exactly one of url, urlSecretRef and sentinel"}
]))]
pub struct RedisSpec {
    /// Redis URL, for example `redis://redis.ragpool.svc:6379/0`. Put a URL that holds a
    /// password in a Secret and use `urlSecretRef` instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub url: Option<String>,
    /// A key of a Secret in the pool's namespace whose value is the Redis URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_secret_ref: Option<SecretKeyRef>,
    /// A key of a Secret in the pool's namespace whose value is the Redis password; it is
    /// put into the URL's userinfo. The password must be URL-safe (otherwise keep the whole
    /// URL in a Secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
    /// Connect with TLS: a `redis://` URL is used as `rediss://` (with `sentinel`, TLS to the
    /// sentinels and the data nodes).
    #[serde(default)]
    pub tls: bool,
    /// A primary watched by Redis Sentinel, found through these sentinels (instead of `url`
    /// or `urlSecretRef`). `passwordSecretRef` is the data nodes' password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sentinel: Option<SentinelSpec>,
    /// When a state change counts as done: `local` (the primary applied it) or `replicated`
    /// (a replica acknowledged it too; survives a failover, costs a round trip per change).
    /// Set the API's `RAGPOOL_DURABILITY` to the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub durability: Option<DurabilitySetting>,
    /// Partitions each queue is split into, each its own Redis Cluster hash slot (1 to 64):
    /// more spreads the load over a cluster's masters, at one round trip per partition for
    /// claims and stats. Every process of the key prefix must use the same count, so set the
    /// API's `RAGPOOL_PARTITIONS` to the same; change it with `ragpool repartition`. Unset:
    /// the operator's own `--partitions`, whose default `auto` takes the key prefix's recorded
    /// count (for a new key prefix: 1 on a single Redis or Sentinel, 2 per master on a
    /// cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub partitions: Option<i32>,
    /// The prefix of every Redis key of the queues (and their Redis Cluster hash tag): the
    /// pool's executors and the operator's observation use it. Must equal the API's
    /// `RAGPOOL_KEY_PREFIX`, or the executors never see the API's tasks. Unset: `ragpool`,
    /// the API's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[A-Za-z0-9._:-]+$"))]
    pub key_prefix: Option<String>,
}

impl RedisSpec {
    /// The partition count the pool's executors use and the operator observes it with:
    /// `partitions`, else `default` (the operator's `--partitions`).
    pub fn partition_count(&self, default: u16) -> u16 {
        self.partitions
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(default)
    }

    /// The key prefix the pool's executors use and the operator observes: `keyPrefix`, else
    /// the default every component shares.
    pub fn key_prefix(&self) -> &str {
        self.key_prefix
            .as_deref()
            .unwrap_or(ragpool_queue::DEFAULT_KEY_PREFIX)
    }
}

/// Redis Sentinel: where the sentinels are and which primary they watch.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SentinelSpec {
    /// The name the sentinels monitor the primary under (`mymaster` in Bitnami's chart).
    #[schemars(length(min = 1, max = 256), regex(pattern = r"^[A-Za-z0-9._-]+$"))]
    pub master_name: String,
    /// The sentinels, `host:port` each (port 26379 usually); a Service in front of them
    /// works as one address. Any one that answers is enough.
    #[schemars(
        length(min = 1, max = 16),
        inner(
            length(min = 1, max = 512),
            regex(pattern = r"^[A-Za-z0-9.\-\[\]:]+:[0-9]+$")
        )
    )]
    pub addresses: Vec<String>,
    /// A key of a Secret holding the sentinels' own password. Unset: the sentinels get the
    /// data nodes' password (`passwordSecretRef`), as Bitnami's chart configures them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
    /// Sentinels without a password although the data nodes have one.
    #[serde(default)]
    pub no_password: bool,
    /// Database number on the primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 15))]
    pub db: Option<u32>,
}

/// See `RedisSpec::durability`.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum DurabilitySetting {
    #[default]
    Local,
    Replicated,
}

impl DurabilitySetting {
    pub fn as_str(self) -> &'static str {
        match self {
            DurabilitySetting::Local => "local",
            DurabilitySetting::Replicated => "replicated",
        }
    }
}

/// One key of a Secret in the pool's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key within the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// The executor pods.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.docs) || !has(self.backend) || !has(self.backend.builtin) || (!has(self.backend.builtin.docsConfigMap) && !has(self.backend.builtin.docsPath))", "message": "docs replaces backend.builtin.docsConfigMap and docsPath: set only docs"},
    {"rule": "!has(self.docs) || !has(self.backend) || !has(self.backend.type) || self.backend.type != 'http'", "message": "docs needs the builtin or openai backend: the http backend's service retrieves on its own"}
]))]
pub struct ExecutorSpec {
    /// Container image that provides the `ragpool-executor` binary.
    #[schemars(length(min = 1, max = 1024))]
    pub image: String,
    /// When the kubelet pulls the image; the Kubernetes default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<ImagePullPolicy>,
    /// Secrets for pulling the image from a private registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_secrets: Option<Vec<LocalObjectReference>>,
    /// Tasks one pod runs at once.
    #[serde(default = "default_concurrency")]
    #[schemars(range(min = 1, max = 1024))]
    pub concurrency: i32,
    /// On SIGTERM an executor stops claiming and lets tasks in flight finish for up to this
    /// many seconds before handing the rest back to the queue.
    #[serde(default = "default_drain_seconds")]
    #[schemars(range(min = 0, max = 86400))]
    pub drain_seconds: i32,
    /// The pod's termination grace period; defaults to `drainSeconds` + 15 so a drain is
    /// never cut short by SIGKILL. Must be longer than `drainSeconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86415))]
    pub termination_grace_period_seconds: Option<i64>,
    /// How long a claimed task's lease lasts without a heartbeat, i.e. how soon a dead
    /// executor's task is delivered again; the executor's default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub lease_seconds: Option<i32>,
    /// CPU and memory requests and limits of the executor container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Extra environment variables for the executor container (they win over the ones the
    /// operator derives from this spec).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<EnvVar>>,
    /// The RAG backend the executors run tasks against.
    #[serde(default)]
    pub backend: BackendSpec,
    /// The document corpus the executors index at start and retrieve passages from, for the
    /// builtin and the openai backend alike.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docs: Option<DocsSpec>,
    /// Node labels the pods must be scheduled on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Taints the pods tolerate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    /// Node and pod (anti-)affinity of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Service account the pods run as; the namespace's default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Extra annotations on the pods (for example for a metrics scraper).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_annotations: Option<BTreeMap<String, String>>,
    /// Extra labels on the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_labels: Option<BTreeMap<String, String>>,
}

/// When the kubelet pulls the executor image.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ImagePullPolicy {
    /// Pull on every pod start.
    Always,
    /// Pull only when the image is not on the node.
    IfNotPresent,
    /// Never pull.
    Never,
}

/// The RAG backend: which one, and its settings.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.type != 'openai' || has(self.openai)", "message": "type openai needs the openai settings"},
    {"rule": "self.type != 'http' || has(self.http)", "message": "type http needs the http settings"}
]))]
pub struct BackendSpec {
    /// `builtin` (offline retrieval and image analysis), `openai` (an OpenAI-compatible
    /// model server) or `http` (an existing RAG HTTP service).
    #[serde(rename = "type", default)]
    pub kind: BackendKind,
    /// Settings of the builtin backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builtin: Option<BuiltinBackend>,
    /// Settings of the OpenAI-compatible backend; required when `type` is `openai`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub openai: Option<OpenAiBackend>,
    /// Settings of the HTTP backend; required when `type` is `http`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpBackend>,
    /// Pool-wide limits on calls to the backend's server, shared by every executor through
    /// Redis; the autoscaler never runs more replicas than the concurrency limit can keep
    /// busy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<BackendLimitsSpec>,
}

/// Pool-wide limits on calls to the backend's server (see `docs/executor.md`).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.adaptive) || !self.adaptive || has(self.maxConcurrent)", "message": "adaptive needs maxConcurrent"},
    {"rule": "!has(self.min) || !has(self.maxConcurrent) || self.min <= self.maxConcurrent", "message": "min must not exceed maxConcurrent"}
]))]
pub struct BackendLimitsSpec {
    /// Calls running at once across every executor sharing the limit key; under `adaptive`
    /// the ceiling of the adaptive limit. Unset: no concurrency limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_concurrent: Option<i32>,
    /// Calls started per minute across every executor sharing the limit key. Unset: no rate
    /// limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000000))]
    pub requests_per_minute: Option<i32>,
    /// Model tokens per minute across every executor sharing the limit key (`openai`
    /// backend): each request's estimate is taken before it starts and corrected by the
    /// response's `usage`. Unset: no token limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 2000000000))]
    pub tokens_per_minute: Option<i32>,
    /// Move the concurrency limit between `min` and `maxConcurrent` by how calls go (AIMD).
    #[serde(default)]
    pub adaptive: bool,
    /// The floor of the adaptive limit; 1 when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub min: Option<i32>,
    /// The Redis name of the limits: pools naming the same key share one set of limits
    /// (one model server). The pool's name when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128), pattern(r"^[A-Za-z0-9._-]+$"))]
    pub key: Option<String>,
}

impl BackendLimitsSpec {
    /// The limit key of pool `pool`.
    pub fn key_for<'a>(&'a self, pool: &'a str) -> &'a str {
        self.key.as_deref().unwrap_or(pool)
    }

    /// The configured concurrency ceiling, if any.
    pub fn max_concurrent(&self) -> Option<u32> {
        self.max_concurrent.and_then(|m| u32::try_from(m).ok())
    }

    /// The adaptive floor, when the limit is adaptive.
    pub fn adaptive_min(&self) -> Option<u32> {
        self.adaptive
            .then(|| self.min.and_then(|m| u32::try_from(m).ok()).unwrap_or(1))
    }
}

/// Which RAG backend the executors use.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum BackendKind {
    /// Built-in retrieval index and image analyser; needs no model server.
    #[default]
    Builtin,
    /// Any OpenAI-compatible chat completions server.
    Openai,
    /// An existing RAG HTTP service.
    Http,
}

/// Where a pool's documents come from: exactly one of a ConfigMap, a PersistentVolumeClaim
/// (either mounted read-only at `/var/lib/ragpool/docs`) or a folder in the image.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "(has(self.configMap) ? 1 : 0) + (has(self.persistentVolumeClaim) ? 1 : 0) + (has(self.path) ? 1 : 0) == 1", "message": "set exactly one of configMap, persistentVolumeClaim and path"},
    {"rule": "!has(self.subPath) || !has(self.path)", "message": "subPath is a folder inside the mounted volume; path names a folder in the image"}
]))]
pub struct DocsSpec {
    /// A ConfigMap in the pool's namespace whose keys are the documents (Markdown or text
    /// files, 1 MiB in all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub config_map: Option<String>,
    /// A PersistentVolumeClaim in the pool's namespace holding the documents, for corpora
    /// beyond a ConfigMap's 1 MiB. Every executor pod mounts it read-only, so with more than
    /// one replica on several nodes it must be ReadOnlyMany or ReadWriteMany.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub persistent_volume_claim: Option<String>,
    /// A folder inside the ConfigMap or claim to index instead of all of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub sub_path: Option<String>,
    /// A folder of documents inside the container image (for an image built with its
    /// corpus).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub path: Option<String>,
}

impl DocsSpec {
    /// The corpus the executors index: `executor.docs`, else the builtin backend's older
    /// `docsConfigMap` or `docsPath` (aliases of `docs.configMap` and `docs.path`), else
    /// none. The http backend indexes nothing.
    pub fn of(executor: &ExecutorSpec) -> Option<DocsSpec> {
        let backend = &executor.backend;
        if backend.kind == BackendKind::Http {
            return None;
        }
        if let Some(docs) = &executor.docs {
            return Some(docs.clone());
        }
        let builtin = backend
            .builtin
            .as_ref()
            .filter(|_| backend.kind == BackendKind::Builtin)?;
        match (&builtin.docs_config_map, &builtin.docs_path) {
            (Some(map), _) => Some(DocsSpec {
                config_map: Some(map.clone()),
                ..DocsSpec::default()
            }),
            (None, Some(path)) => Some(DocsSpec {
                path: Some(path.clone()),
                ..DocsSpec::default()
            }),
            (None, None) => None,
        }
    }
}

/// Settings of the builtin backend.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BuiltinBackend {
    /// Alias of `executor.docs.configMap`, kept for pools written before `executor.docs`:
    /// a ConfigMap whose files form the corpus, mounted at `/var/lib/ragpool/docs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docs_config_map: Option<String>,
    /// Alias of `executor.docs.path`: a folder of documents inside the container. Without
    /// either (and without `executor.docs`) the index is empty and answers use only the
    /// context a task gives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docs_path: Option<String>,
}

/// Settings of the OpenAI-compatible backend.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OpenAiBackend {
    /// Base URL of the server, for example `http://vllm.models:8000/v1`.
    #[schemars(length(min = 1, max = 2048))]
    pub base_url: String,
    /// Model for answers.
    #[schemars(length(min = 1, max = 256))]
    pub model: String,
    /// Model for image analysis; `model` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vision_model: Option<String>,
    /// A Secret key holding the API key, when the server needs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_secret_ref: Option<SecretKeyRef>,
    /// Timeout of one model request in seconds; the executor's default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub timeout_seconds: Option<i32>,
}

/// Settings of the HTTP backend.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpBackend {
    /// Base URL of the RAG service; tasks are POSTed to `{url}/analyze-image`,
    /// `{url}/complete-answer` and `{url}/query`.
    #[schemars(length(min = 1, max = 2048))]
    pub url: String,
    /// Timeout of one request in seconds; the executor's default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub timeout_seconds: Option<i32>,
}

/// How the operator sizes a pool.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.minReplicas <= self.maxReplicas", "message": "minReplicas must not exceed maxReplicas"},
    {"rule": "!has(self.idleReplicas) || self.idleReplicas < self.minReplicas", "message": "idleReplicas must be below minReplicas"}
]))]
pub struct ScalingSpec {
    /// Fewest replicas while the pool has work (or had some within `cooldownSeconds`).
    /// 0 allows scaling to zero after the cooldown.
    #[serde(default)]
    #[schemars(range(min = 0, max = 10000))]
    pub min_replicas: i32,
    /// Most replicas.
    #[schemars(range(min = 1, max = 10000))]
    pub max_replicas: i32,
    /// `queueLength`: one replica per `targetQueueLength` tasks queued or started.
    /// `targetWait`: enough replicas that a newly queued task waits about
    /// `targetWaitSeconds`, from the measured processing time and arrival rate.
    #[serde(default)]
    pub mode: ScalingMode,
    /// Tasks (queued + started) per replica in `queueLength` mode.
    #[serde(default = "default_target_queue_length")]
    #[schemars(range(min = 1, max = 1000000))]
    pub target_queue_length: i32,
    /// Target queue wait in seconds in `targetWait` mode.
    #[serde(default = "default_target_wait_seconds")]
    #[schemars(range(min = 0.1, max = 86400.0))]
    pub target_wait_seconds: f64,
    /// Seconds between two looks at the queues.
    #[serde(default = "default_poll_seconds")]
    #[schemars(range(min = 1, max = 300))]
    pub poll_seconds: i32,
    /// Relative change of the recommendation ignored as noise: with 0.1 a pool of 10 stays
    /// at 10 for anything between 9 and 11 replicas' worth of work.
    #[serde(default = "default_tolerance")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub tolerance: f64,
    /// Seconds with nothing queued, delayed or in flight before the pool drops below
    /// `max(minReplicas, 1)` to `idleReplicas` (or zero).
    #[serde(default = "default_cooldown_seconds")]
    #[schemars(range(min = 0, max = 86400))]
    pub cooldown_seconds: i32,
    /// Replicas kept when idle past the cooldown; must be below `minReplicas`. When unset
    /// an idle pool keeps `minReplicas` (so `minReplicas: 0` means scale to zero).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10000))]
    pub idle_replicas: Option<i32>,
    /// Stop changing the replica count (status and events still update).
    #[serde(default)]
    pub paused: bool,
    /// Limits on scaling up. Default: no stabilisation window, up to +4 pods or +100 %
    /// (whichever is more) per 15 s. A pool at zero with work skips both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_up: Option<ScalingRules>,
    /// Limits on scaling down. Default: 60 s stabilisation window (the highest
    /// recommendation of the last 60 s wins), up to -100 % per 15 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down: Option<ScalingRules>,
    /// How many decisions `status.recentDecisions` keeps (0 keeps none).
    #[serde(default = "default_decision_history_limit")]
    #[schemars(range(min = 0, max = 100))]
    pub decision_history_limit: i32,
}

/// Stabilisation and step limits for one direction. A field left unset takes the
/// direction's default; when either `maxPods` or `maxPercent` is set, only the ones set
/// limit the step.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalingRules {
    /// Seconds of past recommendations considered: scaling up goes to the lowest of them,
    /// scaling down to the highest (like the HorizontalPodAutoscaler).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600))]
    pub stabilization_window_seconds: Option<i32>,
    /// Most pods added (or removed) within `periodSeconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_pods: Option<i32>,
    /// Most pods added (or removed) within `periodSeconds`, as a percentage of the replicas
    /// at the start of the period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_percent: Option<i32>,
    /// The period the step limits apply to, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1800))]
    pub period_seconds: Option<i32>,
}

/// What the pool is sized on.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ScalingMode {
    /// Replicas = ceil((queued + started) / targetQueueLength).
    #[default]
    QueueLength,
    /// Replicas sized so the backlog drains within targetWaitSeconds while keeping up with
    /// arrivals (Little's law).
    TargetWait,
}

/// What the operator last saw and decided.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RagWorkerPoolStatus {
    /// Replicas of the executor Deployment.
    #[serde(default)]
    pub replicas: i32,
    /// Ready replicas of the executor Deployment.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Replicas the policy wants now.
    #[serde(default)]
    pub desired_replicas: i32,
    /// The Redis key prefix whose queues the operator observes for this pool (and its
    /// executors serve): compare with the API's `RAGPOOL_KEY_PREFIX`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_prefix: Option<String>,
    /// Tasks waiting in the pool's queues.
    #[serde(default)]
    pub queued: i64,
    /// Tasks started (claimed and running) in the pool's queues, over all its executors.
    #[serde(default)]
    pub started: i64,
    /// Tasks waiting out a retry backoff.
    #[serde(default)]
    pub delayed: i64,
    /// Age of the oldest queued task in seconds.
    #[serde(default)]
    pub oldest_queued_age_seconds: f64,
    /// Tasks arriving per second, measured between the last two looks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arrival_rate: Option<f64>,
    /// Mean time from claim to completion over the recent window, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_processing_seconds: Option<f64>,
    /// The pool-wide limits on backend calls as last read from Redis, when the pool has any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<BackendLimitStatus>,
    /// When the operator last changed the replica count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,
    /// Why the operator last changed the replica count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_reason: Option<String>,
    /// The last decisions that changed the replica count or were held back by a bound, a
    /// window or a step limit, oldest first; at most `scaling.decisionHistoryLimit`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub recent_decisions: Vec<ScalingDecision>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `RedisReachable`, `ScalingActive` and `ScalingLimited`.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// The pool-wide limits on backend calls as last read from Redis.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackendLimitStatus {
    /// The limit key the pool's executors share.
    pub key: String,
    /// The concurrency limit in force (the adaptive limit under `adaptive`); unset without a
    /// concurrency limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
    /// Calls running now across every executor of the key.
    #[serde(default)]
    pub permits_in_use: i64,
    /// Seconds the calls are still paused for after a backend's `Retry-After`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_seconds: Option<f64>,
    /// The most replicas the limit keeps busy: `ceil(limit / concurrency) + 1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_ceiling: Option<i32>,
}

/// One decision of the operator: a change of the replica count, or a count held back.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalingDecision {
    /// When the operator decided.
    pub time: Time,
    /// Replicas before the decision.
    pub from: i32,
    /// Replicas after it; the same as `from` when a bound, window or limit held the count.
    pub to: i32,
    /// The policy step that settled the count: `Load`, `Tolerance`, `MaxReplicas`,
    /// `BackendLimit`, `MinReplicas`, `WorkPending`, `Cooldown`, `Idle`, `ScaleUpWindow`,
    /// `ScaleDownWindow`, `FromZero`, `Backlog`, `PodsStarting`, `ScaleUpLimit` or
    /// `ScaleDownLimit`.
    #[schemars(length(max = 64))]
    pub reason: String,
    /// The policy's reason in words and numbers: queued, started, arrival rate, service
    /// time, the target, and the bound, window or limit that held the count.
    #[schemars(length(max = 512))]
    pub message: String,
}

/// The longest `ScalingDecision::message` kept.
pub const DECISION_MESSAGE_MAX: usize = 512;

fn default_decision_history_limit() -> i32 {
    10
}
fn default_concurrency() -> i32 {
    4
}
fn default_drain_seconds() -> i32 {
    30
}
fn default_target_queue_length() -> i32 {
    5
}
fn default_target_wait_seconds() -> f64 {
    10.0
}
fn default_poll_seconds() -> i32 {
    2
}
fn default_tolerance() -> f64 {
    0.1
}
fn default_cooldown_seconds() -> i32 {
    300
}

impl ScalingSpec {
    /// Scaling between `min` and `max` replicas with every other setting at its default.
    pub fn between(min_replicas: i32, max_replicas: i32) -> Self {
        Self {
            min_replicas,
            max_replicas,
            mode: ScalingMode::default(),
            target_queue_length: default_target_queue_length(),
            target_wait_seconds: default_target_wait_seconds(),
            poll_seconds: default_poll_seconds(),
            tolerance: default_tolerance(),
            cooldown_seconds: default_cooldown_seconds(),
            idle_replicas: None,
            paused: false,
            scale_up: None,
            scale_down: None,
            decision_history_limit: default_decision_history_limit(),
        }
    }
}

/// Seconds added to `drainSeconds` for the default termination grace period: time for the
/// executor to hand leftover tasks back and deregister after the drain ends.
pub const GRACE_MARGIN_SECONDS: i64 = 15;

impl ExecutorSpec {
    /// A minimal executor spec with the given image and every default.
    pub fn with_image(image: impl Into<String>) -> Self {
        Self {
            image: image.into(),
            image_pull_policy: None,
            image_pull_secrets: None,
            concurrency: default_concurrency(),
            drain_seconds: default_drain_seconds(),
            termination_grace_period_seconds: None,
            lease_seconds: None,
            resources: None,
            env: None,
            backend: BackendSpec::default(),
            docs: None,
            node_selector: None,
            tolerations: None,
            affinity: None,
            service_account_name: None,
            pod_annotations: None,
            pod_labels: None,
        }
    }

    /// The pod's termination grace period: the configured one, or the drain time plus a
    /// margin.
    pub fn termination_grace_period(&self) -> i64 {
        self.termination_grace_period_seconds
            .unwrap_or(i64::from(self.drain_seconds) + GRACE_MARGIN_SECONDS)
    }
}

/// A pool spec that breaks a cross-field rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid RagWorkerPool spec: {0}")]
pub struct SpecError(pub String);

impl RagWorkerPoolSpec {
    /// Checks the rules the schema's CEL expressions also enforce, plus the ones CEL cannot
    /// express cheaply.
    pub fn validate(&self) -> Result<(), SpecError> {
        let fail = |msg: &str| Err(SpecError(msg.to_owned()));
        if self.queues.names.is_empty() {
            return fail("queues.names must list at least one queue");
        }
        let r = &self.redis;
        let sources = [
            r.url.is_some(),
            r.url_secret_ref.is_some(),
            r.sentinel.is_some(),
        ];
        if sources.iter().filter(|set| **set).count() != 1 {
            return fail("redis: set exactly one of url, urlSecretRef and sentinel");
        }
        if r.partitions
            .is_some_and(|p| p < 1 || p > i32::from(ragpool_queue::keys::MAX_PARTITIONS))
        {
            return fail("redis.partitions must be between 1 and 64");
        }
        let s = &self.scaling;
        if s.max_replicas < 1 {
            return fail("scaling.maxReplicas must be at least 1");
        }
        if s.min_replicas < 0 || s.min_replicas > s.max_replicas {
            return fail("scaling.minReplicas must be between 0 and maxReplicas");
        }
        if let Some(idle) = s.idle_replicas
            && (idle < 0 || idle >= s.min_replicas)
        {
            return fail("scaling.idleReplicas must be at least 0 and below minReplicas");
        }
        if s.target_queue_length < 1 {
            return fail("scaling.targetQueueLength must be at least 1");
        }
        if !(s.target_wait_seconds.is_finite() && s.target_wait_seconds > 0.0) {
            return fail("scaling.targetWaitSeconds must be positive");
        }
        if s.poll_seconds < 1 {
            return fail("scaling.pollSeconds must be at least 1");
        }
        if self.executor.concurrency < 1 {
            return fail("executor.concurrency must be at least 1");
        }
        if self.executor.termination_grace_period() <= i64::from(self.executor.drain_seconds) {
            return fail("executor.terminationGracePeriodSeconds must exceed drainSeconds");
        }
        self.validate_docs()?;
        if let Some(l) = &self.executor.backend.limits {
            if l.max_concurrent.is_some_and(|m| m < 1) || l.min.is_some_and(|m| m < 1) {
                return fail("executor.backend.limits: maxConcurrent and min must be at least 1");
            }
            if l.requests_per_minute.is_some_and(|r| r < 1)
                || l.tokens_per_minute.is_some_and(|t| t < 1)
            {
                return fail(
                    "executor.backend.limits: requestsPerMinute and tokensPerMinute must be at least 1",
                );
            }
            if l.adaptive && l.max_concurrent.is_none() {
                return fail("executor.backend.limits: adaptive needs maxConcurrent");
            }
            if let (Some(min), Some(max)) = (l.min, l.max_concurrent)
                && min > max
            {
                return fail("executor.backend.limits: min must not exceed maxConcurrent");
            }
            if l.key.as_deref().is_some_and(|k| {
                k.is_empty()
                    || !k
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            }) {
                return fail("executor.backend.limits.key: letters, digits, '.', '_' and '-' only");
            }
        }
        match self.executor.backend.kind {
            BackendKind::Openai if self.executor.backend.openai.is_none() => {
                fail("executor.backend: type openai needs the openai settings")
            }
            BackendKind::Http if self.executor.backend.http.is_none() => {
                fail("executor.backend: type http needs the http settings")
            }
            _ => Ok(()),
        }
    }

    /// The rules of `executor.docs`, as its CEL expressions and the executor spec's state
    /// them.
    fn validate_docs(&self) -> Result<(), SpecError> {
        let fail = |msg: &str| Err(SpecError(msg.to_owned()));
        let executor = &self.executor;
        let Some(docs) = &executor.docs else {
            return Ok(());
        };
        let sources = [
            docs.config_map.is_some(),
            docs.persistent_volume_claim.is_some(),
            docs.path.is_some(),
        ];
        if sources.iter().filter(|set| **set).count() != 1 {
            return fail(
                "executor.docs: set exactly one of configMap, persistentVolumeClaim and path",
            );
        }
        if docs.sub_path.is_some() && docs.path.is_some() {
            return fail("executor.docs: subPath is for a mounted volume, not for path");
        }
        if executor
            .backend
            .builtin
            .as_ref()
            .is_some_and(|b| b.docs_config_map.is_some() || b.docs_path.is_some())
        {
            return fail(
                "executor.docs replaces backend.builtin.docsConfigMap and docsPath: set only docs",
            );
        }
        if executor.backend.kind == BackendKind::Http {
            return fail("executor.docs needs the builtin or openai backend");
        }
        Ok(())
    }

    /// The queue names as plain strings, in priority order.
    pub fn queue_names(&self) -> Vec<String> {
        self.queues.names.iter().map(|q| q.0.clone()).collect()
    }
}

/// The CRD as YAML, exactly what `crds/ragworkerpool.yaml` holds.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    let yaml = serde_yaml::to_string(&RagWorkerPool::crd())?;
    Ok(format!(
        "# Generated by `ragpool-operator crd`; do not edit.\n---\n{yaml}"
    ))
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::fixtures;

    const CHECKED_IN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/ragworkerpool.yaml");

    #[test]
    fn checked_in_crd_is_current() {
        let generated = crd_yaml().expect("CRD serialises");
        let on_disk = std::fs::read_to_string(CHECKED_IN).unwrap_or_default();
        assert!(
            on_disk == generated,
            "crds/ragworkerpool.yaml is stale: run `cargo run -p ragpool-operator -- crd > crds/ragworkerpool.yaml`"
        );
    }

    fn schema() -> Value {
        let crd = serde_json::to_value(RagWorkerPool::crd()).expect("CRD serialises");
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
    }

    /// Walks every node of a schema, with its JSON path, checking Kubernetes' structural
    /// schema rules.
    fn walk(node: &Value, path: &str, problems: &mut Vec<String>) {
        let Some(obj) = node.as_object() else {
            problems.push(format!("{path}: schema is not an object"));
            return;
        };
        for banned in [
            "$ref",
            "$schema",
            "$defs",
            "definitions",
            "oneOf",
            "anyOf",
            "allOf",
            "not",
        ] {
            if obj.contains_key(banned) {
                problems.push(format!("{path}: has {banned}"));
            }
        }
        let int_or_string = obj.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
        let preserve = obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
        match obj.get("type").and_then(Value::as_str) {
            None if int_or_string || preserve => {}
            None => problems.push(format!("{path}: no type")),
            Some("object") => {
                if obj.contains_key("properties") && obj.contains_key("additionalProperties") {
                    problems.push(format!("{path}: both properties and additionalProperties"));
                }
                if obj.contains_key("items") {
                    problems.push(format!("{path}: object with items"));
                }
            }
            Some("array") => match obj.get("items") {
                Some(Value::Object(_)) => {}
                _ => problems.push(format!("{path}: array without a single items schema")),
            },
            Some("string" | "integer" | "number" | "boolean") => {
                if obj.contains_key("properties") || obj.contains_key("items") {
                    problems.push(format!("{path}: scalar with properties or items"));
                }
            }
            Some(other) => problems.push(format!("{path}: unknown type {other}")),
        }
        if let Some(Value::Object(props)) = obj.get("properties") {
            for (name, child) in props {
                walk(child, &format!("{path}.{name}"), problems);
            }
        }
        if let Some(items) = obj.get("items") {
            walk(items, &format!("{path}[]"), problems);
        }
        if let Some(extra @ Value::Object(_)) = obj.get("additionalProperties") {
            walk(extra, &format!("{path}{{}}"), problems);
        }
        if obj.get("x-kubernetes-list-type").and_then(Value::as_str) == Some("map") {
            let keys = obj["x-kubernetes-list-map-keys"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let required = obj["items"]["required"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            for key in keys {
                if !required.contains(&key) {
                    problems.push(format!("{path}: map key {key} is not required"));
                }
            }
        }
    }

    #[test]
    fn schema_is_structural() {
        let root = schema();
        let mut problems = Vec::new();
        walk(&root, "", &mut problems);
        assert!(
            problems.is_empty(),
            "not structural:\n{}",
            problems.join("\n")
        );
        // The root may only describe spec and status (plus apiVersion/kind/metadata, which
        // kube leaves out): metadata constraints beyond name are not allowed.
        let top: Vec<&String> = root["properties"]
            .as_object()
            .map(|p| p.keys().collect())
            .unwrap_or_default();
        assert_eq!(top, ["spec", "status"]);
    }

    /// Every field of our own types is documented; the embedded Kubernetes types bring their
    /// own descriptions.
    #[test]
    fn every_field_is_documented() {
        fn check(node: &Value, path: &str, missing: &mut Vec<String>) {
            let embedded = [
                ".affinity",
                ".tolerations",
                ".resources",
                ".env",
                ".imagePullSecrets",
                ".conditions",
            ];
            if embedded.iter().any(|e| path.ends_with(e)) {
                return;
            }
            if let Some(props) = node["properties"].as_object() {
                for (name, child) in props {
                    let child_path = format!("{path}.{name}");
                    if child.get("description").is_none() {
                        missing.push(child_path.clone());
                    }
                    check(child, &child_path, missing);
                }
            }
            if let Some(items @ Value::Object(_)) = node.get("items") {
                check(items, &format!("{path}[]"), missing);
            }
        }
        let mut missing = Vec::new();
        check(&schema(), "", &mut missing);
        assert!(missing.is_empty(), "undocumented: {missing:?}");
    }

    #[test]
    fn schema_validates_ranges_and_required_fields() {
        let root = schema();
        let spec = &root["properties"]["spec"];
        let required = |node: &Value| -> Vec<String> {
            serde_json::from_value(node["required"].clone()).unwrap_or_default()
        };
        assert_eq!(required(spec), ["executor", "queues", "redis", "scaling"]);
        let scaling = &spec["properties"]["scaling"];
        assert_eq!(required(scaling), ["maxReplicas"]);
        assert_eq!(scaling["properties"]["maxReplicas"]["minimum"], 1.0);
        assert_eq!(scaling["properties"]["pollSeconds"]["default"], 2);
        assert_eq!(scaling["properties"]["minReplicas"]["minimum"], 0.0);
        assert_eq!(required(&spec["properties"]["executor"]), ["image"]);
        assert_eq!(
            spec["properties"]["queues"]["properties"]["names"]["minItems"],
            1
        );
        let rules = scaling["x-kubernetes-validations"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(rules.len(), 2);
        assert!(spec["properties"]["redis"]["x-kubernetes-validations"].is_array());
    }

    #[test]
    fn crd_names_status_subresource_and_columns() {
        let crd = RagWorkerPool::crd();
        assert_eq!(crd.spec.group, "ragpool.io");
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.short_names, Some(vec!["rwp".to_string()]));
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some()
        );
        let columns: Vec<String> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.clone())
            .collect();
        assert_eq!(
            columns,
            ["Desired", "Ready", "Queued", "Started", "Last Scale", "Age"]
        );
        let partitions =
            &schema()["properties"]["spec"]["properties"]["redis"]["properties"]["partitions"];
        assert_eq!(
            (
                partitions["minimum"].as_f64(),
                partitions["maximum"].as_f64()
            ),
            (Some(1.0), Some(64.0))
        );
        let status = &schema()["properties"]["status"]["properties"];
        let decision = &status["recentDecisions"]["items"];
        assert_eq!(status["recentDecisions"]["maxItems"], 100);
        assert_eq!(decision["properties"]["time"]["format"], "date-time");
        assert_eq!(decision["properties"]["message"]["maxLength"], 512);
        let required: Vec<String> =
            serde_json::from_value(decision["required"].clone()).unwrap_or_default();
        assert_eq!(required, ["from", "message", "reason", "time", "to"]);
    }

    #[test]
    fn validate_rejects_what_cel_rejects() {
        let ok = fixtures::spec();
        assert_eq!(ok.validate(), Ok(()));
        let mut both_urls = fixtures::spec();
        both_urls.redis.url_secret_ref = Some(SecretKeyRef {
            name: "s".into(),
            key: "k".into(),
        });
        let mut url_and_sentinel = fixtures::spec();
        url_and_sentinel.redis.sentinel = Some(SentinelSpec {
            master_name: "m".into(),
            addresses: vec!["s:26379".into()],
            ..SentinelSpec::default()
        });
        let mut sentinel_only = url_and_sentinel.clone();
        sentinel_only.redis.url = None;
        assert_eq!(sentinel_only.validate(), Ok(()));
        let mut min_over_max = fixtures::spec();
        min_over_max.scaling.min_replicas = 30;
        let mut idle_not_below_min = fixtures::spec();
        idle_not_below_min.scaling.min_replicas = 2;
        idle_not_below_min.scaling.idle_replicas = Some(2);
        let mut short_grace = fixtures::spec();
        short_grace.executor.termination_grace_period_seconds = Some(30);
        let mut openai_without_settings = fixtures::spec();
        openai_without_settings.executor.backend.kind = BackendKind::Openai;
        let mut docs_and_alias = fixtures::spec();
        docs_and_alias.executor.docs = Some(DocsSpec {
            config_map: Some("a".into()),
            ..DocsSpec::default()
        });
        let mut docs_ok = docs_and_alias.clone();
        assert_eq!(docs_ok.validate(), Ok(()));
        docs_and_alias.executor.backend.builtin = Some(BuiltinBackend {
            docs_config_map: Some("b".into()),
            docs_path: None,
        });
        let mut docs_two_sources = docs_ok.clone();
        docs_two_sources
            .executor
            .docs
            .as_mut()
            .unwrap()
            .persistent_volume_claim = Some("claim".into());
        let mut docs_no_source = docs_ok.clone();
        docs_no_source.executor.docs = Some(DocsSpec::default());
        let mut docs_path_with_sub_path = docs_ok.clone();
        docs_path_with_sub_path.executor.docs = Some(DocsSpec {
            path: Some("/corpus".into()),
            sub_path: Some("en".into()),
            ..DocsSpec::default()
        });
        let limited = |l: BackendLimitsSpec| {
            let mut s = docs_ok.clone();
            s.executor.backend.limits = Some(l);
            s
        };
        let adaptive_without_max = limited(BackendLimitsSpec {
            adaptive: true,
            ..BackendLimitsSpec::default()
        });
        let floor_above_max = limited(BackendLimitsSpec {
            max_concurrent: Some(4),
            adaptive: true,
            min: Some(8),
            ..BackendLimitsSpec::default()
        });
        let zero_rate = limited(BackendLimitsSpec {
            requests_per_minute: Some(0),
            ..BackendLimitsSpec::default()
        });
        let braced_key = limited(BackendLimitsSpec {
            max_concurrent: Some(4),
            key: Some("a{b}".into()),
            ..BackendLimitsSpec::default()
        });
        assert!(
            limited(BackendLimitsSpec {
                max_concurrent: Some(16),
                adaptive: true,
                min: Some(2),
                key: Some("vllm.gpu-1".into()),
                ..BackendLimitsSpec::default()
            })
            .validate()
            .is_ok()
        );
        let mut docs_for_http = docs_ok.clone();
        docs_for_http.executor.backend.kind = BackendKind::Http;
        docs_for_http.executor.backend.http = Some(HttpBackend {
            url: "http://rag:8000".into(),
            timeout_seconds: None,
        });
        docs_ok.executor.docs = Some(DocsSpec {
            persistent_volume_claim: Some("claim".into()),
            sub_path: Some("en".into()),
            ..DocsSpec::default()
        });
        assert_eq!(docs_ok.validate(), Ok(()));
        let mut too_many_partitions = fixtures::spec();
        too_many_partitions.redis.partitions = Some(65);
        let mut no_partitions = fixtures::spec();
        no_partitions.redis.partitions = Some(0);
        for (name, spec) in [
            ("65 partitions", too_many_partitions),
            ("0 partitions", no_partitions),
            ("both urls", both_urls),
            ("url and sentinel", url_and_sentinel),
            ("min over max", min_over_max),
            ("idle not below min", idle_not_below_min),
            ("grace not above drain", short_grace),
            ("openai without settings", openai_without_settings),
            ("docs and its alias", docs_and_alias),
            ("docs from two sources", docs_two_sources),
            ("docs from no source", docs_no_source),
            ("docs path with subPath", docs_path_with_sub_path),
            ("docs for the http backend", docs_for_http),
            ("adaptive limit without maxConcurrent", adaptive_without_max),
            ("adaptive floor above maxConcurrent", floor_above_max),
            ("requestsPerMinute 0", zero_rate),
            ("limit key with braces", braced_key),
        ] {
            assert!(spec.validate().is_err(), "{name} passed validation");
        }
    }

    #[test]
    fn grace_period_defaults_to_drain_plus_margin() {
        let mut executor = ExecutorSpec::with_image("i");
        executor.drain_seconds = 45;
        assert_eq!(executor.termination_grace_period(), 60);
        executor.termination_grace_period_seconds = Some(100);
        assert_eq!(executor.termination_grace_period(), 100);
    }

    #[test]
    fn examples_parse_and_validate() {
        for file in ["pool.yaml", "pool-full.yaml"] {
            let path = format!("{}/../examples/{file}", env!("CARGO_MANIFEST_DIR"));
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let pool: RagWorkerPool =
                serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(pool.spec.validate(), Ok(()), "{file}");
            // Serde ignores unknown keys; the schema does not, so check every key against it.
            let value: Value = serde_yaml::from_str(&text).unwrap_or_default();
            let mut unknown = Vec::new();
            known_keys(
                &value["spec"],
                &schema()["properties"]["spec"],
                "spec",
                &mut unknown,
            );
            assert!(unknown.is_empty(), "{file}: unknown fields {unknown:?}");
        }
    }

    fn known_keys(value: &Value, schema: &Value, path: &str, unknown: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, child) in map {
                    let child_schema = schema["properties"]
                        .get(key)
                        .or_else(|| schema.get("additionalProperties"));
                    match child_schema {
                        Some(s) => known_keys(child, s, &format!("{path}.{key}"), unknown),
                        None => unknown.push(format!("{path}.{key}")),
                    }
                }
            }
            Value::Array(items) => {
                for item in items {
                    known_keys(item, &schema["items"], &format!("{path}[]"), unknown);
                }
            }
            _ => {}
        }
    }
}
