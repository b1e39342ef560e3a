//! RAG backends: what an executor calls to run a task's payload.
//!
//! One object-safe trait, [`Backend`], covers the three task kinds. Three implementations
//! exist: [`builtin`] (offline: a BM25 index over a folder of documents, extractive answers
//! and local image analysis), [`openai`] (any OpenAI-compatible chat-completions server) and
//! [`http`] (forwarding to an existing RAG HTTP service). [`build`] turns a
//! [`BackendConfig`] into a ready backend; index building happens there, once, so tasks only
//! query.
//!
//! Errors say whether trying again could help ([`BackendError`]); progress goes out through
//! the [`TaskContext`] the caller passes in.

pub mod builtin;
pub mod http;
pub mod openai;
pub mod retrieval;

mod analysis;
mod config;
mod context;
mod error;
mod extract;
mod fetch;
pub mod gate;
mod image_budget;
mod input;
mod passages;
mod streaming;
mod transport;

use std::sync::Arc;

use async_trait::async_trait;
use ragpool_queue::payload::{AnalyzeImage, CompleteAnswer, FullQuery, Payload};

pub use analysis::{DominantColor, ImageAnalysis};
pub use config::{
    BackendConfig, BuiltinConfig, FetchConfig, HttpConfig, OpenAiConfig, RetrievalConfig,
    RetryPolicy, SecretString,
};
pub use context::{AnswerText, TaskContext};
pub use error::{BackendError, BuildError, kinds};
pub use gate::{CallGate, CallOutcome, CallPass, CallReport};
pub use image_budget::DEFAULT_IMAGE_MEMORY_BYTES;
pub use retrieval::Citation;

/// Runs the three task kinds. Implementations are shared between concurrent tasks.
#[async_trait]
pub trait Backend: Send + Sync {
    /// Runs a payload with the method of its kind: the one place a payload meets a backend.
    async fn run(
        &self,
        payload: &Payload,
        cx: &TaskContext,
    ) -> Result<serde_json::Value, BackendError> {
        match payload {
            Payload::AnalyzeImage(req) => self.analyze_image(req, cx).await,
            Payload::CompleteAnswer(req) => self.complete_answer(req, cx).await,
            Payload::FullQuery(req) => self.full_query(req, cx).await,
        }
    }

    /// Describes one image (`image` bytes or an `https` `image_url`).
    async fn analyze_image(
        &self,
        req: &AnalyzeImage,
        cx: &TaskContext,
    ) -> Result<serde_json::Value, BackendError>;

    /// Answers a question from retrieved passages and `req.context`.
    ///
    /// `req.context` is already filled in by the caller when the submitter gave a context
    /// task id.
    async fn complete_answer(
        &self,
        req: &CompleteAnswer,
        cx: &TaskContext,
    ) -> Result<serde_json::Value, BackendError>;

    /// Image analysis (when an image is given), retrieval and answer in one task.
    async fn full_query(
        &self,
        req: &FullQuery,
        cx: &TaskContext,
    ) -> Result<serde_json::Value, BackendError>;
}

/// Builds the backend a configuration names.
///
/// For `builtin` (and `openai` with a docs folder) this reads and indexes the documents, which
/// takes CPU time proportional to the corpus; it runs on the blocking pool.
pub async fn build(config: &BackendConfig) -> Result<Arc<dyn Backend>, BuildError> {
    Ok(match config {
        BackendConfig::Builtin(c) => Arc::new(builtin::BuiltinBackend::new(c).await?),
        BackendConfig::OpenAi(c) => Arc::new(openai::OpenAiBackend::new(c).await?),
        BackendConfig::Http(c) => Arc::new(http::HttpBackend::new(c)?),
    })
}
