//! The executor's configuration: command-line flags with `RAGPOOL_*` environment fallbacks.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use ragpool_queue::{ClaimPolicy, QueueConfig, QueueEntry, QueueSettings, TaskKind};
use ragpool_runtime::DurabilityArgs;
use ragpool_runtime::KeyPrefixArgs;
use ragpool_runtime::PartitionArgs;
use ragpool_runtime::http_server::ServerArgs;

use crate::backend::http::checked_base_url;
use crate::backend::{BackendConfig, BuiltinConfig, HttpConfig, OpenAiConfig, SecretString};

/// Everything `ragpool-executor` can be told.
#[derive(Debug, Clone, Args)]
pub struct ExecutorSettings {
    /// Redis URL: redis://, rediss:// (TLS), a comma-separated list of cluster seeds, or
    /// redis+sentinel://[[user]:password@]host:port[,host:port…]/<master-name>[/<db>].
    #[arg(
        long,
        env = "RAGPOOL_REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true
    )]
    pub redis_url: String,

    /// PEM file of the CA that signed the Redis server's TLS certificate (for rediss:// with
    /// a private CA).
    #[arg(long, env = "RAGPOOL_REDIS_CA_FILE")]
    pub redis_ca_file: Option<PathBuf>,

    /// When a task's claim and outcome count as stored: see `--durability`. Under
    /// `replicated` an outcome no replica acknowledged is retried.
    #[command(flatten)]
    pub durability: DurabilityArgs,

    /// Key prefix of every queue key, shared with the API: see `--key-prefix`.
    #[command(flatten)]
    pub key_prefix: KeyPrefixArgs,

    /// How many partitions the key prefix's queues are split into: see `--partitions`. The
    /// API's and the operator's must be the same.
    #[command(flatten)]
    pub partitions: PartitionArgs,

    /// Queues to claim from, highest priority first, each optionally with a weight for the
    /// weighted policy: `image_analysis=6,answer_generation=3,full_query=1` (`:` works too).
    #[arg(
        long,
        env = "RAGPOOL_QUEUES",
        default_value = TaskKind::default_queue_list(),
        value_delimiter = ','
    )]
    pub queues: Vec<String>,

    /// How to order the queues when claiming: `strict` or `weighted`.
    #[arg(long, env = "RAGPOOL_PRIORITY", default_value = "strict")]
    pub priority: ClaimPolicy,

    /// Tasks run at once by this executor.
    #[arg(long, env = "RAGPOOL_CONCURRENCY", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub concurrency: u32,

    /// Lease length: a task of a dead executor is re-delivered this long after its last
    /// heartbeat. Heartbeats go out at a third of it.
    #[arg(long, env = "RAGPOOL_LEASE_SECONDS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub lease_seconds: u64,

    /// On SIGTERM, how long tasks in flight may finish before they are released back to the
    /// queue. Keep it inside the pod's terminationGracePeriodSeconds.
    #[arg(long, env = "RAGPOOL_DRAIN_SECONDS", default_value_t = 30)]
    pub drain_seconds: u64,

    /// How often this executor reaps expired leases and promotes due retries.
    #[arg(long, env = "RAGPOOL_MAINTENANCE_SECONDS", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub maintenance_seconds: u64,

    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "RAGPOOL_METRICS_LISTEN", default_value = "127.0.0.1:9090")]
    pub metrics_listen: SocketAddr,

    /// Header and body timeouts and the connection limit of the /metrics listener.
    #[command(flatten)]
    pub server: ServerArgs,

    /// This executor's id in the worker registry (default: host, pid and a random suffix).
    #[arg(long, env = "RAGPOOL_WORKER_ID")]
    pub worker_id: Option<String>,

    /// The Kubernetes pod this executor runs in (from the downward API).
    #[arg(long, env = "RAGPOOL_POD_NAME")]
    pub pod_name: Option<String>,

    #[command(flatten)]
    pub backend: BackendSettings,

    /// Pool-wide limits on calls to the backend's server, shared through Redis.
    #[command(flatten)]
    pub limits: crate::limits::LimitSettings,
}

/// Which RAG backend runs the tasks, and its settings.
#[derive(Debug, Clone, Args)]
pub struct BackendSettings {
    /// `builtin` (offline retrieval and image analysis), `openai` (an OpenAI-compatible model
    /// server) or `http` (an existing RAG HTTP service).
    #[arg(long, env = "RAGPOOL_BACKEND", default_value = "builtin", value_parser = ["builtin", "openai", "http"])]
    pub backend: String,

    /// Folder of Markdown/text documents to retrieve from (builtin, and openai for answers).
    #[arg(long, env = "RAGPOOL_DOCS")]
    pub docs: Option<PathBuf>,

    /// Memory for decoding images (builtin backend), shared by every task at once: each
    /// image's need is estimated from its header before decoding; one that alone needs more
    /// is refused, others wait for room.
    #[arg(long, env = "RAGPOOL_IMAGE_MEMORY_BYTES", default_value_t = crate::backend::DEFAULT_IMAGE_MEMORY_BYTES)]
    pub image_memory_bytes: u64,

    /// Base URL of the OpenAI-compatible API, e.g. http://vllm:8000/v1.
    #[arg(long, env = "RAGPOOL_OPENAI_BASE_URL", hide_env_values = true)]
    pub openai_base_url: Option<String>,

    /// Model for answers.
    #[arg(long, env = "RAGPOOL_OPENAI_MODEL")]
    pub openai_model: Option<String>,

    /// Model for image analysis (default: the answer model).
    #[arg(long, env = "RAGPOOL_OPENAI_VISION_MODEL")]
    pub openai_vision_model: Option<String>,

    /// API key sent as a bearer token.
    #[arg(long, env = "RAGPOOL_OPENAI_API_KEY", hide_env_values = true)]
    pub openai_api_key: Option<String>,

    /// File holding the API key (e.g. a mounted Secret).
    #[arg(long, env = "RAGPOOL_OPENAI_API_KEY_FILE")]
    pub openai_api_key_file: Option<PathBuf>,

    /// Base URL of the RAG HTTP service; tasks go to {base}/analyze-image, /complete-answer
    /// and /query.
    #[arg(long, env = "RAGPOOL_HTTP_URL", hide_env_values = true)]
    pub http_url: Option<String>,

    #[arg(long, env = "RAGPOOL_HTTP_ANALYZE_IMAGE_URL", hide_env_values = true)]
    pub http_analyze_image_url: Option<String>,

    #[arg(long, env = "RAGPOOL_HTTP_COMPLETE_ANSWER_URL", hide_env_values = true)]
    pub http_complete_answer_url: Option<String>,

    #[arg(long, env = "RAGPOOL_HTTP_QUERY_URL", hide_env_values = true)]
    pub http_query_url: Option<String>,

    /// Send a task's image_url to the RAG HTTP service as it is, for the service to fetch.
    /// Off by default: the executor fetches the image itself (https, public addresses only,
    /// redirects re-checked) and sends it inline as `image`.
    #[arg(long, env = "RAGPOOL_HTTP_FORWARD_IMAGE_URLS")]
    pub http_forward_image_urls: bool,

    /// Timeout of one request to a model server or RAG service.
    #[arg(long, env = "RAGPOOL_REQUEST_TIMEOUT_SECONDS", default_value_t = 300)]
    pub request_timeout_seconds: u64,
}

impl BackendSettings {
    /// The backend configuration, or a message naming the missing setting.
    pub fn to_config(&self) -> Result<BackendConfig, String> {
        match self.backend.as_str() {
            "builtin" => Ok(BackendConfig::Builtin(BuiltinConfig {
                docs: self.docs.clone(),
                image_memory_bytes: self.image_memory_bytes,
                ..BuiltinConfig::default()
            })),
            "openai" => {
                let base = url_flag(
                    "--openai-base-url (RAGPOOL_OPENAI_BASE_URL)",
                    &self.openai_base_url,
                )?
                .ok_or("--backend openai needs --openai-base-url (RAGPOOL_OPENAI_BASE_URL)")?;
                let model = self
                    .openai_model
                    .clone()
                    .ok_or("--backend openai needs --openai-model (RAGPOOL_OPENAI_MODEL)")?;
                let mut c = OpenAiConfig::new(base, model);
                c.vision_model = self.openai_vision_model.clone();
                c.api_key = self.openai_api_key.clone().map(SecretString::new);
                c.api_key_file = self.openai_api_key_file.clone();
                c.timeout_secs = self.request_timeout_seconds;
                c.docs = self.docs.clone();
                Ok(BackendConfig::OpenAi(c))
            }
            "http" => {
                let base = url_flag("--http-url (RAGPOOL_HTTP_URL)", &self.http_url)?
                    .ok_or("--backend http needs --http-url (RAGPOOL_HTTP_URL)")?;
                let mut c = HttpConfig::new(base);
                c.analyze_image_url = url_flag(
                    "--http-analyze-image-url (RAGPOOL_HTTP_ANALYZE_IMAGE_URL)",
                    &self.http_analyze_image_url,
                )?;
                c.complete_answer_url = url_flag(
                    "--http-complete-answer-url (RAGPOOL_HTTP_COMPLETE_ANSWER_URL)",
                    &self.http_complete_answer_url,
                )?;
                c.query_url = url_flag(
                    "--http-query-url (RAGPOOL_HTTP_QUERY_URL)",
                    &self.http_query_url,
                )?;
                c.forward_image_urls = self.http_forward_image_urls;
                c.timeout_secs = self.request_timeout_seconds;
                Ok(BackendConfig::Http(c))
            }
            other => Err(format!(
                "unknown backend {other:?}: expected builtin, openai or http"
            )),
        }
    }
}

/// The value of the URL setting `flag`, if it is an http(s) URL. The error names the flag and
/// what is wrong, never the value: a backend URL may carry credentials.
fn url_flag(flag: &str, value: &Option<String>) -> Result<Option<String>, String> {
    value
        .as_deref()
        .map(|url| {
            checked_base_url(url)
                .map(|_| url.to_owned())
                .map_err(|why| format!("{flag} {why}"))
        })
        .transpose()
}

impl ExecutorSettings {
    /// The queues of `--queues`, read the way every binary reads queues
    /// ([`QueueSettings`]). Only their names and weights matter here: tasks carry their own
    /// timeouts and attempts from the API that enqueued them.
    pub fn queue_configs(&self) -> Result<Vec<QueueConfig>, String> {
        let queues = QueueEntry::parse_list(&self.queues).map_err(|e| format!("--queues: {e}"))?;
        if queues.is_empty() {
            return Err("--queues: at least one queue is needed".into());
        }
        QueueSettings {
            queues,
            ..QueueSettings::default()
        }
        .resolve()
        .map_err(|e| format!("--queues: {e}"))
    }

    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_seconds)
    }

    pub fn drain(&self) -> Duration {
        Duration::from_secs(self.drain_seconds)
    }

    pub fn maintenance_interval(&self) -> Duration {
        Duration::from_secs(self.maintenance_seconds)
    }
}
