//! How a backend reports failure: whether the task may be retried, and why.
//!
//! The job loop only needs three facts from an error: retry or not, a short machine-readable
//! kind (shown to the submitter and counted in metrics) and, for rate limits, how long the
//! server asked us to wait.

use std::path::PathBuf;
use std::time::Duration;

/// Error kinds backends use. Kept as strings so other layers can add their own.
pub mod kinds {
    /// The payload cannot succeed as given (bad base64, undecodable image, refused URL…).
    pub const BAD_INPUT: &str = "bad_input";
    /// The model or RAG service answered, but not with something usable.
    pub const MODEL_ERROR: &str = "model_error";
    /// The model or RAG service could not be reached, timed out or answered 5xx.
    pub const BACKEND_UNAVAILABLE: &str = "backend_unavailable";
    /// The model or RAG service answered 429.
    pub const RATE_LIMITED: &str = "rate_limited";
    /// Fetching an image from its URL failed in a way that may pass.
    pub const FETCH_FAILED: &str = "fetch_failed";
    /// A fault inside the executor itself (a panicked worker, a broken index).
    pub const INTERNAL: &str = "internal";
}

/// A failed task, classified for the retry policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// Trying again later may succeed (overload, outage, timeout).
    #[error("{kind}: {message}")]
    Retryable {
        kind: String,
        message: String,
        /// How long the server asked us to wait, when it said.
        retry_after: Option<Duration>,
    },
    /// Trying again cannot help; the task should fail with this reason.
    #[error("{kind}: {message}")]
    Permanent { kind: String, message: String },
}

impl BackendError {
    pub fn retryable(
        kind: &str,
        message: impl Into<String>,
        retry_after: Option<Duration>,
    ) -> Self {
        Self::Retryable {
            kind: kind.to_owned(),
            message: message.into(),
            retry_after,
        }
    }

    pub fn permanent(kind: &str, message: impl Into<String>) -> Self {
        Self::Permanent {
            kind: kind.to_owned(),
            message: message.into(),
        }
    }

    /// Shorthand for a permanent [`kinds::BAD_INPUT`] error.
    pub fn bad_input(message: impl Into<String>) -> Self {
        Self::permanent(kinds::BAD_INPUT, message)
    }

    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self::permanent(kinds::INTERNAL, message)
    }

    pub fn kind(&self) -> &str {
        match self {
            Self::Retryable { kind, .. } | Self::Permanent { kind, .. } => kind,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Self::Retryable { message, .. } | Self::Permanent { message, .. } => message,
        }
    }

    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Retryable { .. })
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Retryable { retry_after, .. } => *retry_after,
            Self::Permanent { .. } => None,
        }
    }
}

/// A backend could not be built from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("invalid backend configuration: {0}")]
    Config(String),
    #[error("reading documents under {path}: {source}")]
    Docs {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("building the document index: {0}")]
    Index(String),
    #[error("reading the API key file {path}: {source}")]
    KeyFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("creating the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}
