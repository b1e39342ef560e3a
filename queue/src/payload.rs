//! The payloads of the task kinds, and [`Payload`], the one enum the rest of the system passes
//! around.
//!
//! The API builds a [`Payload`] from a checked request and enqueues it; an executor claims the
//! task and matches on the same enum to call its RAG backend. The variant *is* the kind: a task
//! cannot carry a kind and a payload that disagree, and adding a kind is one new variant here
//! after which the compiler lists every place that must handle it (as mini-redis's `Command`).
//!
//! On the wire (the task hash's `kind` and `payload` fields, and the body the `http` backend
//! forwards) a payload is its variant's struct as plain JSON, with the kind stored beside it;
//! [`Payload::to_json`] and [`Payload::from_json`] are the only places that convert.

use serde::{Deserialize, Serialize};

use crate::task::TaskKind;

/// What a task asks for: one variant per [`TaskKind`].
///
/// Serializes as the variant's struct alone (`untagged`), which is the stored `payload` field;
/// reading one back needs the kind, see [`Payload::from_json`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Payload {
    AnalyzeImage(AnalyzeImage),
    CompleteAnswer(CompleteAnswer),
    FullQuery(FullQuery),
}

impl Payload {
    /// The kind this payload is.
    pub fn kind(&self) -> TaskKind {
        match self {
            Payload::AnalyzeImage(_) => TaskKind::AnalyzeImage,
            Payload::CompleteAnswer(_) => TaskKind::CompleteAnswer,
            Payload::FullQuery(_) => TaskKind::FullQuery,
        }
    }

    /// The stored form: the variant's struct as JSON text.
    pub fn to_json(&self) -> serde_json::Result<String> {
        serde_json::to_string(self)
    }

    /// Reads a stored payload of `kind`.
    pub fn from_json(kind: TaskKind, json: &str) -> serde_json::Result<Payload> {
        Ok(match kind {
            TaskKind::AnalyzeImage => Payload::AnalyzeImage(serde_json::from_str(json)?),
            TaskKind::CompleteAnswer => Payload::CompleteAnswer(serde_json::from_str(json)?),
            TaskKind::FullQuery => Payload::FullQuery(serde_json::from_str(json)?),
        })
    }
}

impl From<AnalyzeImage> for Payload {
    fn from(p: AnalyzeImage) -> Self {
        Payload::AnalyzeImage(p)
    }
}

impl From<CompleteAnswer> for Payload {
    fn from(p: CompleteAnswer) -> Self {
        Payload::CompleteAnswer(p)
    }
}

impl From<FullQuery> for Payload {
    fn from(p: FullQuery) -> Self {
        Payload::FullQuery(p)
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_form_is_the_variant_struct_and_reads_back_by_kind() {
        let p = Payload::from(CompleteAnswer {
            question: "why?".into(),
            top_k: Some(3),
            ..CompleteAnswer::default()
        });
        let json = p.to_json().unwrap();
        assert_eq!(json, r#"{"question":"why?","top_k":3}"#);
        assert_eq!(Payload::from_json(p.kind(), &json).unwrap(), p);
        // The same text read as another kind is that kind's payload: the kind decides.
        assert_eq!(
            Payload::from_json(TaskKind::FullQuery, &json)
                .unwrap()
                .kind(),
            TaskKind::FullQuery
        );
        assert!(Payload::from_json(TaskKind::CompleteAnswer, "{}").is_err());
    }
}
