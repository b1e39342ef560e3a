//! Backend configuration: plain serde structs the binary fills from flags and environment.
//!
//! Durations are whole seconds or milliseconds (`*_secs`, `*_ms`) so that the same structs
//! read naturally from YAML, JSON or environment variables.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use ragpool_queue::TaskKind;
use serde::{Deserialize, Serialize};

/// Which backend to run, and its settings. Serialised with a `kind` tag:
/// `{"kind": "builtin", "docs": "docs"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum BackendConfig {
    Builtin(BuiltinConfig),
    #[serde(rename = "openai")]
    OpenAi(OpenAiConfig),
    Http(HttpConfig),
}

impl BackendConfig {
    /// The name used on the command line and in metrics: `builtin`, `openai` or `http`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Builtin(_) => "builtin",
            Self::OpenAi(_) => "openai",
            Self::Http(_) => "http",
        }
    }
}

impl Default for BackendConfig {
    fn default() -> Self {
        Self::Builtin(BuiltinConfig::default())
    }
}

/// The offline backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BuiltinConfig {
    /// Folder of Markdown/text documents to index (recursively). `None` means an empty index:
    /// answers then only use the context given with the task.
    pub docs: Option<PathBuf>,
    pub retrieval: RetrievalConfig,
    pub fetch: FetchConfig,
    /// Memory for decoding images, shared by every task at once (estimated from each image's
    /// header before it is decoded); an image that alone would need more is refused.
    pub image_memory_bytes: u64,
}

impl Default for BuiltinConfig {
    fn default() -> Self {
        Self {
            docs: None,
            retrieval: RetrievalConfig::default(),
            fetch: FetchConfig::default(),
            image_memory_bytes: super::image_budget::DEFAULT_IMAGE_MEMORY_BYTES,
        }
    }
}

/// How documents are split and how many passages a question retrieves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RetrievalConfig {
    /// Passages retrieved when the task does not say (`top_k`).
    pub top_k: usize,
    /// Upper bound on a passage's length in characters.
    pub max_passage_chars: usize,
}

impl Default for RetrievalConfig {
    fn default() -> Self {
        Self {
            top_k: 3,
            max_passage_chars: 1200,
        }
    }
}

/// Limits on fetching an image from a task's `image_url`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FetchConfig {
    /// Largest image accepted, in bytes (applies to inline base64 images too).
    pub max_bytes: u64,
    pub timeout_secs: u64,
}

impl Default for FetchConfig {
    fn default() -> Self {
        Self {
            max_bytes: 20 * 1024 * 1024,
            timeout_secs: 20,
        }
    }
}

impl FetchConfig {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }
}

/// How often a request to a model or RAG server is retried within one task attempt before
/// the task itself goes back to the queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RetryPolicy {
    /// Retries after the first request (so `max_retries + 1` requests at most).
    pub max_retries: u32,
    /// First backoff when the server gave no `Retry-After`; doubles each retry.
    pub backoff_ms: u64,
    /// A `Retry-After` longer than this is not waited out in-process: the task fails as
    /// retryable carrying that delay, so the queue holds it instead of a leased executor slot.
    pub max_wait_secs: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 2,
            backoff_ms: 500,
            max_wait_secs: 30,
        }
    }
}

/// An OpenAI-compatible chat-completions server (vLLM, Ollama, llama.cpp, TGI, OpenAI).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenAiConfig {
    /// Base URL including the version prefix, e.g. `http://127.0.0.1:8000/v1`;
    /// requests go to `{base_url}/chat/completions`.
    pub base_url: String,
    /// Model for answers.
    pub model: String,
    /// Model for image analysis; defaults to `model`.
    #[serde(default)]
    pub vision_model: Option<String>,
    /// Sent as `Authorization: Bearer …` when set.
    #[serde(default)]
    pub api_key: Option<SecretString>,
    /// A file holding the API key (used when `api_key` is unset), e.g. a mounted secret.
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
    #[serde(default = "default_model_timeout")]
    pub timeout_secs: u64,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub temperature: Option<f32>,
    /// Documents whose passages are retrieved into the prompt; none means no retrieval.
    #[serde(default)]
    pub docs: Option<PathBuf>,
    #[serde(default)]
    pub retrieval: RetrievalConfig,
    #[serde(default)]
    pub retry: RetryPolicy,
    #[serde(default)]
    pub fetch: FetchConfig,
}

impl OpenAiConfig {
    /// A configuration with defaults for everything but the server and model.
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            model: model.into(),
            vision_model: None,
            api_key: None,
            api_key_file: None,
            timeout_secs: default_model_timeout(),
            max_tokens: None,
            temperature: None,
            docs: None,
            retrieval: RetrievalConfig::default(),
            retry: RetryPolicy::default(),
            fetch: FetchConfig::default(),
        }
    }
}

/// An existing RAG HTTP service that takes a task's payload and answers with its result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpConfig {
    /// Requests go to `{base_url}/analyze-image`, `{base_url}/complete-answer` and
    /// `{base_url}/query` unless overridden below.
    pub base_url: String,
    #[serde(default)]
    pub analyze_image_url: Option<String>,
    #[serde(default)]
    pub complete_answer_url: Option<String>,
    #[serde(default)]
    pub query_url: Option<String>,
    /// Generous by default: such services are often slow, which is why they sit behind a queue.
    #[serde(default = "default_rag_timeout")]
    pub timeout_secs: u64,
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Send a task's `image_url` to the service as it is, for the service to fetch. Off by
    /// default: the executor then fetches the image itself, under the same checks as every
    /// other backend, and sends it inline as `image`; a service fetching a submitter's URL
    /// would reach inside the cluster unchecked.
    #[serde(default)]
    pub forward_image_urls: bool,
    /// Limits on fetching an `image_url` when it is not forwarded.
    #[serde(default)]
    pub fetch: FetchConfig,
}

impl HttpConfig {
    /// The URL set for `kind` instead of `{base_url}/` and the kind's backend path
    /// ([`ragpool_queue::task::KindDescriptor::backend_path`]). No catch-all arm: a new kind
    /// decides here whether it has an override.
    pub fn url_override(&self, kind: TaskKind) -> Option<&str> {
        match kind {
            TaskKind::AnalyzeImage => self.analyze_image_url.as_deref(),
            TaskKind::CompleteAnswer => self.complete_answer_url.as_deref(),
            TaskKind::FullQuery => self.query_url.as_deref(),
        }
    }

    /// A configuration with defaults for everything but the service's base URL.
    pub fn new(base_url: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            analyze_image_url: None,
            complete_answer_url: None,
            query_url: None,
            timeout_secs: default_rag_timeout(),
            retry: RetryPolicy::default(),
            forward_image_urls: false,
            fetch: FetchConfig::default(),
        }
    }
}

fn default_model_timeout() -> u64 {
    120
}

fn default_rag_timeout() -> u64 {
    300
}

/// A string kept out of `Debug` output and logs.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretString(***)")
    }
}

impl From<String> for SecretString {
    fn from(secret: String) -> Self {
        Self(secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_read_from_json_with_defaults() {
        let c: BackendConfig =
            serde_json::from_str(r#"{"kind": "builtin", "docs": "docs"}"#).unwrap();
        let BackendConfig::Builtin(b) = &c else {
            panic!("{c:?}")
        };
        assert_eq!(b.docs.as_deref(), Some(std::path::Path::new("docs")));
        assert_eq!(b.retrieval.top_k, 3);
        assert_eq!(c.name(), "builtin");

        let c: BackendConfig = serde_json::from_str(
            r#"{"kind": "openai", "base_url": "http://127.0.0.1:8000/v1", "model": "m", "api_key": "k"}"#,
        )
        .unwrap();
        let BackendConfig::OpenAi(o) = &c else {
            panic!("{c:?}")
        };
        assert_eq!(o.api_key.as_ref().map(SecretString::expose), Some("k"));
        assert_eq!(o.timeout_secs, 120);
        assert_eq!(o.retry, RetryPolicy::default());

        let c: BackendConfig =
            serde_json::from_str(r#"{"kind": "http", "base_url": "http://rag:8080"}"#).unwrap();
        assert_eq!(c, BackendConfig::Http(HttpConfig::new("http://rag:8080")));
        assert!(serde_json::from_str::<BackendConfig>(r#"{"kind": "http"}"#).is_err());
    }
}
