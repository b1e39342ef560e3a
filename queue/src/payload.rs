//! The JSON payloads of the three task kinds.
//!
//! The API validates a request and stores one of these as the task's payload; an executor
//! reads it back and hands it to its RAG backend. Keeping the shapes here means the two sides
//! cannot drift apart.

use serde::{Deserialize, Serialize};

/// `analyze_image`: describe one image. Exactly one of `image` and `image_url` is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct AnalyzeImage {
    /// The image bytes, standard base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// An `https` URL the executor fetches the image from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_url: Option<String>,
    /// What to look for, passed to model backends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
}

/// `complete_answer`: answer a question from retrieved passages and optional context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct CompleteAnswer {
    pub question: String,
    /// Free text to answer from, in addition to retrieval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// The id of an `analyze_image` task whose result is the context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_task_id: Option<String>,
    /// How many passages to retrieve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
}

/// `full_query`: image analysis (when an image is given), retrieval and answer in one task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct FullQuery {
    pub question: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
}
