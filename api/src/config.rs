//! The API's settings: flags with `RAGPOOL_*` environment fallbacks, shared by the
//! `ragpool-api` binary and by `ragpool dev`, and a [`Default`] for tests.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::cross_site::CrossSiteArgs;
use ragpool_queue::{BrokerConfig, MAX_ENQUEUE_BATCH, QueueConfig, QueueSettings, TaskKind};
use ragpool_runtime::DurabilityArgs;
use ragpool_runtime::KeyPrefixArgs;
use ragpool_runtime::PartitionArgs;
use ragpool_runtime::http_server::ServerArgs;

/// Everything `ragpool-api` can be told. Every flag has an environment fallback.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiConfig {
    /// Redis to use: `redis://[user:password@]host:port[/db]`, `rediss://…` for TLS, a
    /// comma-separated list of seed URLs (or `redis+cluster://…`) for Redis Cluster, or
    /// `redis+sentinel://[[user]:password@]host:port[,host:port…]/<master-name>[/<db>]` for a
    /// primary watched by Sentinel.
    #[arg(
        long,
        env = "RAGPOOL_REDIS_URL",
        default_value = DEFAULT_REDIS_URL,
        hide_env_values = true
    )]
    pub redis_url: String,

    /// PEM file of the CA that signed the Redis server's TLS certificate (for `rediss://`
    /// with a private CA).
    #[arg(long, env = "RAGPOOL_REDIS_CA_FILE")]
    pub redis_ca_file: Option<PathBuf>,

    /// When a submission is answered 202: see `--durability`.
    #[command(flatten)]
    pub durability: DurabilityArgs,

    /// Key prefix of every queue key: see `--key-prefix`. The executors must use the same one.
    #[command(flatten)]
    pub key_prefix: KeyPrefixArgs,

    /// How many partitions the key prefix's queues are split into: see `--partitions`.
    #[command(flatten)]
    pub partitions: PartitionArgs,

    /// Address to listen on.
    #[arg(long, env = "RAGPOOL_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// A second address serving only /healthz and /readyz, for the kubelet's probes: its
    /// connections are its own, so no client of the API can crowd the probes out.
    #[arg(long, env = "RAGPOOL_HEALTH_LISTEN")]
    pub health_listen: Option<SocketAddr>,

    #[command(flatten)]
    pub limits: Limits,

    /// Header and body timeouts and the connection limit of the listener.
    #[command(flatten)]
    pub server: ServerArgs,

    #[command(flatten)]
    pub auth: AuthConfig,

    /// Which origins and host names browsers may reach the API from.
    #[command(flatten)]
    pub cross_site: CrossSiteArgs,

    /// Accept `image_url` in submissions (https only, never to loopback, private or
    /// link-local addresses). Off by default: the executor would fetch the URL.
    #[arg(long, env = "RAGPOOL_ALLOW_IMAGE_URLS")]
    pub allow_image_urls: bool,

    #[command(flatten)]
    pub queues: QueueFlags,

    /// How long a Redis call waits for its answer. A submission's script call waits behind
    /// every other submission in flight on the shared connection, so this must cover Redis
    /// taking in the whole reserved submission budget; a call past it is answered `503
    /// outcome_unknown` (the task may have been created).
    #[arg(
        long,
        env = "RAGPOOL_REDIS_RESPONSE_TIMEOUT_SECONDS",
        default_value_t = 60
    )]
    pub redis_response_timeout_seconds: u64,

    /// Workers not heard from for this long are left out of `/api/queue/stats`.
    #[arg(long, env = "RAGPOOL_WORKER_TTL_SECONDS", default_value_t = 30)]
    pub worker_ttl_seconds: u64,

    /// Add the gauges `ragpool_api_owner_queued{owner}` and `ragpool_api_owner_started{owner}`
    /// to `/metrics`: each configured key's queued and started tasks, by key name (one series
    /// per key in the key list, none for tasks without a key). Read from Redis at each scrape.
    #[arg(long, env = "RAGPOOL_METRICS_PER_OWNER")]
    pub metrics_per_owner: bool,
}

pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// Size and range limits of submissions.
#[derive(Debug, Clone, clap::Args)]
pub struct Limits {
    /// Largest request body in bytes (JSON or multipart).
    #[arg(long, env = "RAGPOOL_MAX_BODY_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Largest image in bytes, after base64 decoding.
    #[arg(long, env = "RAGPOOL_MAX_IMAGE_BYTES", default_value_t = 10 * 1024 * 1024)]
    pub max_image_bytes: usize,

    /// Longest `question`, `context` or `prompt` in bytes (UTF-8).
    #[arg(long, env = "RAGPOOL_MAX_QUESTION_BYTES", default_value_t = 8 * 1024)]
    pub max_question_bytes: usize,

    /// Largest `top_k` a submission may ask for.
    #[arg(long, env = "RAGPOOL_MAX_TOP_K", default_value_t = 100)]
    pub max_top_k: u32,

    /// Longest `?wait=N` in seconds (at most 60).
    #[arg(
        long,
        env = "RAGPOOL_MAX_WAIT_SECONDS",
        default_value_t = 60,
        value_parser = clap::value_parser!(u64).range(0..=60)
    )]
    pub max_wait_seconds: u64,

    /// Longest life of one event stream in seconds; the client reconnects (browsers'
    /// `EventSource` does so by itself) and gets the current state first.
    #[arg(long, env = "RAGPOOL_MAX_STREAM_SECONDS", default_value_t = 1800)]
    pub max_stream_seconds: u64,

    /// Event streams and `?wait` requests one API key may hold open at once (from any
    /// address); one more is answered 429 with Retry-After.
    #[arg(
        long,
        env = "RAGPOOL_MAX_HELD_REQUESTS_PER_KEY",
        default_value_t = DEFAULT_MAX_HELD_REQUESTS_PER_KEY
    )]
    pub max_held_requests_per_key: usize,

    /// Event streams and `?wait` requests one peer address may hold open at once (under any
    /// key, or none); one more is answered 429 with Retry-After.
    #[arg(
        long,
        env = "RAGPOOL_MAX_HELD_REQUESTS_PER_PEER",
        default_value_t = DEFAULT_MAX_HELD_REQUESTS_PER_PEER
    )]
    pub max_held_requests_per_peer: usize,

    /// The reserved submission budget and one key's share of it.
    #[command(flatten)]
    pub reserved: ReservedBudgetArgs,

    /// Time a request body has to arrive whole, however steadily it trickles; past it the
    /// request is answered 408 and its share of the budget given back.
    #[arg(long, env = "RAGPOOL_BODY_DEADLINE_SECONDS", default_value_t = 60)]
    pub body_deadline_seconds: u64,

    /// Most tasks in one `POST /api/async/batch` (1 to 1000). The default, 1000, is the most
    /// one enqueue script call carries, so a whole batch is queued atomically in one round
    /// trip, and that call holds Redis for about a millisecond or two.
    #[arg(
        long,
        env = "RAGPOOL_MAX_BATCH_TASKS",
        default_value_t = DEFAULT_MAX_BATCH_TASKS,
        value_parser = clap::value_parser!(u64).range(1..=MAX_ENQUEUE_BATCH as u64)
    )]
    pub max_batch_tasks: u64,

    /// Payload bytes all queued tasks may hold in Redis together; a submission that would
    /// go over is answered 429 with Retry-After until executors claim tasks. 0: no limit.
    #[arg(
        long,
        env = "RAGPOOL_MAX_QUEUED_PAYLOAD_BYTES",
        default_value_t = DEFAULT_MAX_QUEUED_PAYLOAD_BYTES
    )]
    pub max_queued_payload_bytes: u64,

    /// Payload bytes the queued tasks of one API key may hold; as above, per key. Tasks
    /// submitted without keys (auth off) count against the total limit only. 0: no limit.
    #[arg(
        long,
        env = "RAGPOOL_MAX_QUEUED_PAYLOAD_BYTES_PER_KEY",
        default_value_t = DEFAULT_MAX_QUEUED_PAYLOAD_BYTES_PER_KEY
    )]
    pub max_queued_payload_bytes_per_key: u64,
}

/// An eighth of the default connection limit: eight tenants at their cap still leave room.
pub const DEFAULT_MAX_HELD_REQUESTS_PER_KEY: usize = 64;
/// Half of the default per-peer connection limit: an address at its cap can still submit.
pub const DEFAULT_MAX_HELD_REQUESTS_PER_PEER: usize = 64;

/// See [`Limits::max_queued_payload_bytes`]: 2 GiB, about 120 images of the largest size
/// (13.3 MiB of base64 each) or millions of text tasks.
pub const DEFAULT_MAX_QUEUED_PAYLOAD_BYTES: u64 = 2 << 30;

/// See [`Limits::max_queued_payload_bytes_per_key`]: a quarter of the total, so one key
/// cannot take the whole backlog.
pub const DEFAULT_MAX_QUEUED_PAYLOAD_BYTES_PER_KEY: u64 = DEFAULT_MAX_QUEUED_PAYLOAD_BYTES / 4;

/// See [`Limits::max_batch_tasks`].
pub const DEFAULT_MAX_BATCH_TASKS: u64 = MAX_ENQUEUE_BATCH as u64;

/// See [`ReservedBudgetArgs::bytes`].
pub const DEFAULT_MAX_RESERVED_SUBMISSION_BYTES: usize = 256 * 1024 * 1024;

/// See [`ReservedBudgetArgs::share_per_key`].
pub const DEFAULT_MAX_RESERVED_SHARE_PER_KEY: u8 = 50;

/// `--max-reserved-submission-bytes`'s variable.
pub const RESERVED_BYTES_ENV: &str = "RAGPOOL_MAX_RESERVED_SUBMISSION_BYTES";

/// [`RESERVED_BYTES_ENV`] before it had its own name, still read when the new one is unset.
pub const OLD_RESERVED_BYTES_ENV: &str = "RAGPOOL_MAX_INFLIGHT_SUBMISSION_BYTES";

/// `--max-reserved-share-per-key`'s variable.
pub const RESERVED_SHARE_ENV: &str = "RAGPOOL_MAX_RESERVED_SHARE_PER_KEY";

/// [`RESERVED_SHARE_ENV`] before it had its own name, still read when the new one is unset.
pub const OLD_RESERVED_SHARE_ENV: &str = "RAGPOOL_MAX_INFLIGHT_SHARE_PER_KEY";

/// The `--max-reserved-submission-bytes` and `--max-reserved-share-per-key` flags: the
/// reserved submission budget (memory for the submissions being handled at once) and the
/// share of it one API key may hold.
///
/// Their older spellings, `--max-inflight-…` and `RAGPOOL_MAX_INFLIGHT_…`, still work, as
/// `--key-prefix`'s do ([`KeyPrefixArgs`]): clap reads one variable per flag, so each value is
/// resolved by [`ReservedBudgetArgs::resolve`], not by clap, and the `[env: …]` and
/// `[default: …]` notes of the help are written out by hand.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct ReservedBudgetArgs {
    /// Memory for submissions being handled at once, across all requests: each reserves
    /// two times its body (what it holds at its peak, measured); one that does not fit is
    /// answered 503 with Retry-After. The API's memory limit must be this plus a fixed
    /// baseline (docs/operations.md). `RAGPOOL_MAX_INFLIGHT_SUBMISSION_BYTES` and
    /// `--max-inflight-submission-bytes`, the older names, are read when neither this flag
    /// nor `RAGPOOL_MAX_RESERVED_SUBMISSION_BYTES` is set.
    /// [env: RAGPOOL_MAX_RESERVED_SUBMISSION_BYTES=] [default: 268435456]
    #[arg(
        id = "max_reserved_submission_bytes",
        long = "max-reserved-submission-bytes",
        alias = "max-inflight-submission-bytes",
        value_name = "BYTES"
    )]
    pub bytes: Option<usize>,

    /// Percent of the reserved submission budget one API key may hold; past it the key's
    /// submissions are answered 429 with Retry-After, so one tenant cannot starve the others.
    /// `RAGPOOL_MAX_INFLIGHT_SHARE_PER_KEY` and `--max-inflight-share-per-key`, the older
    /// names, are read when neither this flag nor `RAGPOOL_MAX_RESERVED_SHARE_PER_KEY` is set.
    /// [env: RAGPOOL_MAX_RESERVED_SHARE_PER_KEY=] [default: 50]
    #[arg(
        id = "max_reserved_share_per_key",
        long = "max-reserved-share-per-key",
        alias = "max-inflight-share-per-key",
        value_name = "PERCENT",
        value_parser = clap::value_parser!(u8).range(1..=100)
    )]
    pub share_per_key: Option<u8>,
}

/// The reserved submission budget, resolved from its flags and variables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReservedBudget {
    /// Bytes all submissions being handled may reserve together.
    pub bytes: usize,
    /// Percent (1 to 100) of `bytes` one API key may hold.
    pub share_per_key: u8,
}

impl Default for ReservedBudget {
    fn default() -> Self {
        ReservedBudget {
            bytes: DEFAULT_MAX_RESERVED_SUBMISSION_BYTES,
            share_per_key: DEFAULT_MAX_RESERVED_SHARE_PER_KEY,
        }
    }
}

/// A budget variable that does not hold a value its flag would accept.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{variable}={value:?}: expected {expected}")]
pub struct ReservedBudgetError {
    pub variable: &'static str,
    pub value: String,
    pub expected: &'static str,
}

impl ReservedBudgetArgs {
    /// An explicit budget, as if given by the flags (for tests and for callers that build
    /// settings in code).
    pub fn new(bytes: usize, share_per_key: u8) -> Self {
        ReservedBudgetArgs {
            bytes: Some(bytes),
            share_per_key: Some(share_per_key),
        }
    }

    /// Each value: the flag, else its `RAGPOOL_MAX_RESERVED_…` variable, else the
    /// `RAGPOOL_MAX_INFLIGHT_…` one, else the default.
    pub fn resolve(&self) -> Result<ReservedBudget, ReservedBudgetError> {
        self.resolve_with(|name| std::env::var(name).ok())
    }

    /// [`resolve`](Self::resolve) with the environment read through `env`. An empty
    /// variable counts as unset; a variable that is set must hold what the flag accepts.
    pub fn resolve_with(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<ReservedBudget, ReservedBudgetError> {
        let bytes = match self.bytes {
            Some(bytes) => bytes,
            None => renamed_variable(
                &env,
                [RESERVED_BYTES_ENV, OLD_RESERVED_BYTES_ENV],
                "a number of bytes",
                |v| v.parse::<usize>().ok(),
            )?
            .unwrap_or(DEFAULT_MAX_RESERVED_SUBMISSION_BYTES),
        };
        let share_per_key = match self.share_per_key {
            Some(share) => share,
            None => renamed_variable(
                &env,
                [RESERVED_SHARE_ENV, OLD_RESERVED_SHARE_ENV],
                "a percent from 1 to 100",
                |v| v.parse::<u8>().ok().filter(|p| (1..=100).contains(p)),
            )?
            .unwrap_or(DEFAULT_MAX_RESERVED_SHARE_PER_KEY),
        };
        Ok(ReservedBudget {
            bytes,
            share_per_key,
        })
    }
}

/// The value of the first of `names` (the variable, then its older name) that is set and
/// not empty, parsed by `parse`; `None` when neither is set.
fn renamed_variable<T>(
    env: &impl Fn(&str) -> Option<String>,
    names: [&'static str; 2],
    expected: &'static str,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Option<T>, ReservedBudgetError> {
    let Some((variable, value)) = names
        .into_iter()
        .find_map(|name| env(name).filter(|v| !v.is_empty()).map(|v| (name, v)))
    else {
        return Ok(None);
    };
    match parse(value.trim()) {
        Some(parsed) => Ok(Some(parsed)),
        None => Err(ReservedBudgetError {
            variable,
            value,
            expected,
        }),
    }
}

impl Limits {
    /// See [`Limits::body_deadline_seconds`].
    pub fn body_deadline(&self) -> Duration {
        Duration::from_secs(self.body_deadline_seconds)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 16 * 1024 * 1024,
            max_image_bytes: 10 * 1024 * 1024,
            max_question_bytes: 8 * 1024,
            max_top_k: 100,
            max_wait_seconds: 60,
            max_stream_seconds: 1800,
            reserved: ReservedBudgetArgs::new(
                DEFAULT_MAX_RESERVED_SUBMISSION_BYTES,
                DEFAULT_MAX_RESERVED_SHARE_PER_KEY,
            ),
            body_deadline_seconds: 60,
            max_held_requests_per_key: DEFAULT_MAX_HELD_REQUESTS_PER_KEY,
            max_held_requests_per_peer: DEFAULT_MAX_HELD_REQUESTS_PER_PEER,
            max_batch_tasks: DEFAULT_MAX_BATCH_TASKS,
            max_queued_payload_bytes: DEFAULT_MAX_QUEUED_PAYLOAD_BYTES,
            max_queued_payload_bytes_per_key: DEFAULT_MAX_QUEUED_PAYLOAD_BYTES_PER_KEY,
        }
    }
}

/// Where API keys come from. With no key configured, auth is off.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AuthConfig {
    /// API keys, comma- or newline-separated entries `NAME:KEY`, then options after colons:
    /// `admin`, `weight=N`, `maxQueued=N`, `maxInFlight=N`.
    #[arg(long, env = "RAGPOOL_API_KEYS", hide_env_values = true)]
    pub api_keys: Option<String>,

    /// A file of API keys, one entry (as for `--api-keys`) per line (`#` starts a comment).
    /// Combined with `--api-keys`.
    #[arg(long, env = "RAGPOOL_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,

    /// Each key's share of the queues, apart from the keys themselves (they are not secret,
    /// and change without rotating a key): comma- or newline-separated entries `NAME`, then
    /// options after colons (`weight=N`, `maxQueued=N`, `maxInFlight=N`), e.g.
    /// `batch:maxQueued=20000:maxInFlight=4,live:weight=4`. Set here, an option overrides the
    /// key entry's; a name no key has stops the server at start.
    #[arg(long, env = "RAGPOOL_API_KEY_SETTINGS")]
    pub api_key_settings: Option<String>,
}

/// The settings new tasks carry (timeouts, retention, attempts), as flags. Executors read them
/// from each task, so only the API needs them. They become a [`ragpool_queue::QueueSettings`],
/// the form every binary hands its queue settings to the queue crate in.
#[derive(Debug, Clone, clap::Args)]
pub struct QueueFlags {
    /// Attempts before a retryable failure becomes final.
    #[arg(long, env = "RAGPOOL_MAX_ATTEMPTS", default_value_t = 3)]
    pub max_attempts: u32,

    /// How long a finished task and its result are kept.
    #[arg(long, env = "RAGPOOL_RESULT_TTL_SECONDS", default_value_t = 3600)]
    pub result_ttl_seconds: u64,

    /// How long a failed or canceled task is kept.
    #[arg(long, env = "RAGPOOL_FAILURE_TTL_SECONDS", default_value_t = 24 * 3600)]
    pub failure_ttl_seconds: u64,

    /// How long a finished or canceled task keeps its payload (for inspecting inputs); 0
    /// deletes it when the task ends. A failed task keeps it for its failure TTL, so it can
    /// be retried.
    #[arg(long, env = "RAGPOOL_KEEP_PAYLOAD_SECONDS", default_value_t = 0)]
    pub keep_payload_seconds: u64,

    /// Time limit of one `analyze_image` attempt.
    #[arg(
        long,
        env = "RAGPOOL_IMAGE_ANALYSIS_TIMEOUT_SECONDS",
        default_value_t = TaskKind::AnalyzeImage.descriptor().timeout_secs
    )]
    pub image_analysis_timeout_seconds: u64,

    /// Time limit of one `complete_answer` attempt.
    #[arg(
        long,
        env = "RAGPOOL_ANSWER_GENERATION_TIMEOUT_SECONDS",
        default_value_t = TaskKind::CompleteAnswer.descriptor().timeout_secs
    )]
    pub answer_generation_timeout_seconds: u64,

    /// Time limit of one `full_query` attempt.
    #[arg(
        long,
        env = "RAGPOOL_FULL_QUERY_TIMEOUT_SECONDS",
        default_value_t = TaskKind::FullQuery.descriptor().timeout_secs
    )]
    pub full_query_timeout_seconds: u64,
}

impl Default for QueueFlags {
    fn default() -> Self {
        QueueFlags {
            max_attempts: 3,
            result_ttl_seconds: 3600,
            failure_ttl_seconds: 24 * 3600,
            keep_payload_seconds: 0,
            image_analysis_timeout_seconds: TaskKind::AnalyzeImage.descriptor().timeout_secs,
            answer_generation_timeout_seconds: TaskKind::CompleteAnswer.descriptor().timeout_secs,
            full_query_timeout_seconds: TaskKind::FullQuery.descriptor().timeout_secs,
        }
    }
}

impl QueueFlags {
    /// The flag that sets `kind`'s timeout. No catch-all arm: a new kind needs its flag.
    fn timeout_seconds(&self, kind: TaskKind) -> u64 {
        match kind {
            TaskKind::AnalyzeImage => self.image_analysis_timeout_seconds,
            TaskKind::CompleteAnswer => self.answer_generation_timeout_seconds,
            TaskKind::FullQuery => self.full_query_timeout_seconds,
        }
    }

    /// The queues of every kind with these settings applied.
    pub fn queue_configs(&self) -> ragpool_queue::Result<Vec<QueueConfig>> {
        let secs = Duration::from_secs;
        QueueSettings {
            queues: Vec::new(),
            max_attempts: Some(self.max_attempts),
            result_ttl: Some(secs(self.result_ttl_seconds)),
            failure_ttl: Some(secs(self.failure_ttl_seconds)),
            keep_payload: Some(secs(self.keep_payload_seconds)),
            timeouts: TaskKind::ALL
                .iter()
                .map(|&kind| (kind, secs(self.timeout_seconds(kind))))
                .collect(),
        }
        .resolve()
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            redis_url: DEFAULT_REDIS_URL.into(),
            redis_ca_file: None,
            durability: DurabilityArgs::default(),
            key_prefix: KeyPrefixArgs::default(),
            partitions: PartitionArgs::default(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            health_listen: None,
            limits: Limits::default(),
            server: ServerArgs::default(),
            auth: AuthConfig::default(),
            cross_site: CrossSiteArgs::default(),
            allow_image_urls: false,
            queues: QueueFlags::default(),
            redis_response_timeout_seconds: 60,
            worker_ttl_seconds: 30,
            metrics_per_owner: false,
        }
    }
}

impl ApiConfig {
    /// The broker settings these flags describe. Invalid values (a bad URL, a zero TTL) are
    /// reported here or by [`ragpool_queue::Broker::connect`].
    pub fn broker_config(&self) -> ragpool_queue::Result<BrokerConfig> {
        let mut config = BrokerConfig::from_url(&self.redis_url)?;
        if let Some(ca) = &self.redis_ca_file {
            config.target = config.target.with_ca_file(ca)?;
        }
        self.key_prefix.apply(&mut config);
        config.queues = self.queues.queue_configs()?;
        config.response_timeout = Duration::from_secs(self.redis_response_timeout_seconds);
        config.payload_limits = ragpool_queue::PayloadLimits {
            total: self.limits.max_queued_payload_bytes,
            per_key: self.limits.max_queued_payload_bytes_per_key,
        };
        self.durability.apply(&mut config);
        self.partitions.apply(&mut config);
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: ApiConfig,
    }

    #[test]
    fn flag_defaults_match_default() {
        // Only meaningful without RAGPOOL_* in the environment, which tests do not set.
        let parsed = Cli::try_parse_from(["ragpool-api"]).unwrap().config;
        let default = ApiConfig::default();
        assert_eq!(parsed.redis_url, default.redis_url);
        assert_eq!(parsed.listen, default.listen);
        assert_eq!(parsed.limits.max_body_bytes, default.limits.max_body_bytes);
        assert_eq!(
            parsed.limits.max_image_bytes,
            default.limits.max_image_bytes
        );
        assert_eq!(
            parsed.limits.max_question_bytes,
            default.limits.max_question_bytes
        );
        assert_eq!(parsed.limits.max_wait_seconds, 60);
        assert_eq!(
            parsed.limits.max_batch_tasks,
            default.limits.max_batch_tasks
        );
        assert_eq!(parsed.queues.max_attempts, default.queues.max_attempts);
        assert_eq!(parsed.queues.keep_payload_seconds, 0);
        assert_eq!(
            (
                parsed.limits.max_queued_payload_bytes,
                parsed.limits.max_queued_payload_bytes_per_key
            ),
            (
                default.limits.max_queued_payload_bytes,
                default.limits.max_queued_payload_bytes_per_key
            )
        );
        assert_eq!(parsed.server, default.server);
        assert_eq!(parsed.health_listen, None);
        assert_eq!(
            (
                parsed.limits.max_held_requests_per_key,
                parsed.limits.max_held_requests_per_peer
            ),
            (
                default.limits.max_held_requests_per_key,
                default.limits.max_held_requests_per_peer
            )
        );
        assert!(parsed.cross_site.allowed_hosts.is_empty());
        assert_eq!(parsed.partitions, default.partitions);
        assert!(!parsed.allow_image_urls);
        assert_eq!(
            parsed.limits.reserved.resolve_with(|_| None),
            default.limits.reserved.resolve_with(|_| None)
        );
    }

    #[test]
    fn reserved_budget_is_the_flag_then_the_new_variable_then_the_old_then_the_default() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("ragpool-api").chain(args.iter().copied()))
                .unwrap()
                .config
                .limits
                .reserved
        };
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| (*v).to_string())
            }
        };
        let both = vars(&[
            (RESERVED_BYTES_ENV, "2000"),
            (OLD_RESERVED_BYTES_ENV, "3000"),
            (RESERVED_SHARE_ENV, "20"),
            (OLD_RESERVED_SHARE_ENV, "30"),
        ]);
        let old_only = vars(&[
            (OLD_RESERVED_BYTES_ENV, "3000"),
            (OLD_RESERVED_SHARE_ENV, "30"),
        ]);
        let budget = |bytes, share_per_key| ReservedBudget {
            bytes,
            share_per_key,
        };
        // Each source wins over every one after it.
        let flags = [
            "--max-reserved-submission-bytes",
            "1000",
            "--max-reserved-share-per-key",
            "10",
        ];
        assert_eq!(parse(&flags).resolve_with(both), Ok(budget(1000, 10)));
        assert_eq!(parse(&[]).resolve_with(both), Ok(budget(2000, 20)));
        assert_eq!(parse(&[]).resolve_with(old_only), Ok(budget(3000, 30)));
        assert_eq!(
            parse(&[]).resolve_with(|_| None),
            Ok(budget(DEFAULT_MAX_RESERVED_SUBMISSION_BYTES, 50))
        );
        // The old flags are the same flags; an empty variable counts as unset.
        let old_flags = [
            "--max-inflight-submission-bytes",
            "4000",
            "--max-inflight-share-per-key",
            "40",
        ];
        assert_eq!(parse(&old_flags).resolve_with(both), Ok(budget(4000, 40)));
        let empty_new = vars(&[
            (RESERVED_BYTES_ENV, ""),
            (OLD_RESERVED_BYTES_ENV, "3000"),
            (RESERVED_SHARE_ENV, ""),
            (OLD_RESERVED_SHARE_ENV, "30"),
        ]);
        assert_eq!(parse(&[]).resolve_with(empty_new), Ok(budget(3000, 30)));
        // Each value is resolved on its own.
        let mixed = vars(&[(RESERVED_BYTES_ENV, "2000"), (OLD_RESERVED_SHARE_ENV, "30")]);
        assert_eq!(parse(&[]).resolve_with(mixed), Ok(budget(2000, 30)));
    }

    #[test]
    fn reserved_budget_refuses_what_its_flags_would() {
        for bad in ["0", "101", "x"] {
            assert!(
                Cli::try_parse_from(["ragpool-api", "--max-reserved-share-per-key", bad]).is_err()
            );
        }
        let share = |value: &'static str| {
            move |name: &str| (name == OLD_RESERVED_SHARE_ENV).then(|| value.to_string())
        };
        let args = ReservedBudgetArgs::default();
        let err = args.resolve_with(share("101")).unwrap_err();
        assert_eq!(err.variable, OLD_RESERVED_SHARE_ENV);
        assert!(args.resolve_with(share("0")).is_err());
        let bytes = |name: &str| (name == RESERVED_BYTES_ENV).then(|| "lots".to_string());
        assert_eq!(
            args.resolve_with(bytes).unwrap_err().variable,
            RESERVED_BYTES_ENV
        );
    }

    #[test]
    fn wait_limit_is_capped_at_sixty() {
        assert!(Cli::try_parse_from(["ragpool-api", "--max-wait-seconds", "61"]).is_err());
    }

    #[test]
    fn batch_limit_is_one_script_call_at_most() {
        for bad in ["0", "1001"] {
            assert!(Cli::try_parse_from(["ragpool-api", "--max-batch-tasks", bad]).is_err());
        }
        let parsed = Cli::try_parse_from(["ragpool-api", "--max-batch-tasks", "5"]).unwrap();
        assert_eq!(parsed.config.limits.max_batch_tasks, 5);
    }

    #[test]
    fn queue_settings_reach_the_broker_config() {
        let mut config = ApiConfig::default();
        config.queues.full_query_timeout_seconds = 42;
        config.key_prefix = KeyPrefixArgs::new("other");
        config.partitions.partitions = 6;
        let broker = config.broker_config().unwrap();
        assert_eq!(broker.key_prefix, "other");
        assert_eq!(broker.partitions, 6);
        let fq = broker
            .queues
            .iter()
            .find(|q| q.name == "full_query")
            .unwrap();
        assert_eq!(fq.timeout, Duration::from_secs(42));
        assert_eq!(
            broker.payload_limits.per_key,
            DEFAULT_MAX_QUEUED_PAYLOAD_BYTES_PER_KEY
        );
        assert_eq!(broker.queues.len(), 3);
    }
}
