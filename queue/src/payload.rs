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
//!
//! A payload may carry an image of many megabytes, so it is stored apart from its task and
//! read only by a claim; the task keeps an [`InputSummary`] and a [`Payload::brief`] (the
//! payload without its image bytes), which is what status reads and the dashboard show.

use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

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

impl Payload {
    /// The inline image (base64), when the payload carries one.
    pub fn image(&self) -> Option<&str> {
        match self {
            Payload::AnalyzeImage(p) => p.image.as_deref(),
            Payload::FullQuery(p) => p.image.as_deref(),
            Payload::CompleteAnswer(_) => None,
        }
    }

    /// The payload without its inline image: what a task keeps to show what it asked for
    /// once its payload is gone. Small: every other field is bounded by the API's limits.
    pub fn brief(&self) -> Payload {
        self.with_image(None)
    }

    /// This payload with `image` in place of its inline image (a kind without one is
    /// returned as it is).
    fn with_image(&self, image: Option<String>) -> Payload {
        match self {
            Payload::AnalyzeImage(p) => Payload::AnalyzeImage(AnalyzeImage {
                image,
                image_url: p.image_url.clone(),
                prompt: p.prompt.clone(),
            }),
            Payload::FullQuery(p) => Payload::FullQuery(FullQuery {
                question: p.question.clone(),
                image,
                image_url: p.image_url.clone(),
                top_k: p.top_k,
            }),
            Payload::CompleteAnswer(p) => Payload::CompleteAnswer(p.clone()),
        }
    }

    /// The stored form ([`Payload::to_json`]'s text) in pieces that borrow the inline image
    /// rather than copy it: a payload of many megabytes is written to Redis from the image
    /// its caller holds, never serialised whole beside it.
    pub fn stored(&self) -> serde_json::Result<StoredJson<'_>> {
        // Base64 (any text without quotes, backslashes and control characters) is its own
        // JSON string body; other text needs escaping, so it is serialised the usual way.
        let plain = |b: u8| b >= 0x20 && b != b'"' && b != b'\\';
        let whole = || -> serde_json::Result<StoredJson<'_>> {
            Ok(StoredJson {
                head: self.to_json()?,
                image: "",
                tail: String::new(),
            })
        };
        let Some(image) = self.image().filter(|i| i.bytes().all(plain)) else {
            return whole();
        };
        let mut head = self.with_image(Some(String::new())).to_json()?;
        // The image's key: inside a string value every quote is escaped, so `{"` or `,"`
        // only ever opens a key.
        const KEY: &str = "\"image\":\"";
        let Some(at) = head
            .match_indices(KEY)
            .map(|(at, _)| at)
            .find(|&at| at > 0 && matches!(head.as_bytes()[at - 1], b'{' | b','))
        else {
            return whole();
        };
        let tail = head.split_off(at + KEY.len());
        Ok(StoredJson { head, image, tail })
    }

    /// The summary a task keeps of this payload, whose stored form is `json`.
    pub fn summary(&self, json: &str) -> InputSummary {
        self.summary_of(json.len() as u64, Sha256::digest(json.as_bytes()).into())
    }

    fn summary_of(&self, bytes: u64, sha256: [u8; 32]) -> InputSummary {
        let image = self.image();
        InputSummary {
            bytes,
            // Base64 holds 3 bytes per 4 characters.
            image_bytes: image.map(|b64| (b64.trim_end_matches('=').len() * 3 / 4) as u64),
            image_type: image.and_then(sniff_image_type).map(str::to_owned),
            sha256: sha256.iter().map(|b| format!("{b:02x}")).collect(),
        }
    }
}

/// A payload's stored form as a head, the inline image and a tail: see [`Payload::stored`].
#[derive(Debug)]
pub struct StoredJson<'a> {
    head: String,
    image: &'a str,
    tail: String,
}

impl StoredJson<'_> {
    /// The pieces, in order; together they are the stored form.
    pub fn pieces(&self) -> [&[u8]; 3] {
        [
            self.head.as_bytes(),
            self.image.as_bytes(),
            self.tail.as_bytes(),
        ]
    }

    /// Bytes of the stored form.
    pub fn len(&self) -> usize {
        self.head.len() + self.image.len() + self.tail.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The stored form in one string: a copy, for a small payload.
    pub fn to_text(&self) -> String {
        [self.head.as_str(), self.image, self.tail.as_str()].concat()
    }

    /// The summary a task keeps of `payload`, whose stored form this is.
    pub fn summary(&self, payload: &Payload) -> InputSummary {
        let mut digest = Sha256::new();
        for piece in self.pieces() {
            digest.update(piece);
        }
        payload.summary_of(self.len() as u64, digest.finalize().into())
    }
}

/// What a task keeps of its input after the payload is gone: recorded at enqueue, so
/// showing it never reads the payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InputSummary {
    /// Bytes of the stored payload (its JSON, an inline image as base64 included): what it
    /// costs in Redis while it is kept, and what the backlog limits count.
    pub bytes: u64,
    /// Bytes of the inline image after base64 decoding, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_bytes: Option<u64>,
    /// The inline image's type by its first bytes (`image/png`, `image/jpeg`, …), when
    /// recognised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_type: Option<String>,
    /// SHA-256 of the stored payload, hex: tells two submissions of the same input apart
    /// from two different ones without keeping either.
    pub sha256: String,
}

/// The media type of a base64 image by its signature: only the first 16 characters (12
/// bytes) are decoded.
fn sniff_image_type(b64: &str) -> Option<&'static str> {
    let head = b64.get(..16.min(b64.len() - b64.len() % 4))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(head)
        .ok()?;
    const SIGNATURES: [(&[u8], &str); 5] = [
        (b"\x89PNG", "image/png"),
        (b"\xFF\xD8\xFF", "image/jpeg"),
        (b"GIF8", "image/gif"),
        (b"BM", "image/bmp"),
        (b"II*\x00", "image/tiff"),
    ];
    if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        return Some("image/webp");
    }
    SIGNATURES
        .iter()
        .find(|(sig, _)| bytes.starts_with(sig))
        .map(|(_, t)| *t)
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

    #[test]
    fn summary_sizes_types_and_digests_without_the_image() {
        use base64::Engine;
        let png = [b"\x89PNG\r\n\x1a\n".as_slice(), &[0u8; 100]].concat();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&png);
        let p = Payload::from(AnalyzeImage {
            image: Some(b64),
            prompt: Some("what".into()),
            ..AnalyzeImage::default()
        });
        let json = p.to_json().unwrap();
        let s = p.summary(&json);
        assert_eq!(s.bytes, json.len() as u64);
        assert_eq!(s.image_bytes, Some(png.len() as u64));
        assert_eq!(s.image_type.as_deref(), Some("image/png"));
        assert_eq!(s.sha256.len(), 64);
        assert_ne!(
            s.sha256,
            p.brief().summary(&p.brief().to_json().unwrap()).sha256
        );
        assert_eq!(p.brief().image(), None);
        assert_eq!(p.brief().to_json().unwrap(), r#"{"prompt":"what"}"#);
        let text = Payload::from(CompleteAnswer {
            question: "q".into(),
            ..CompleteAnswer::default()
        });
        let s = text.summary(&text.to_json().unwrap());
        assert_eq!((s.image_bytes, s.image_type), (None, None));
        // Not an image, or too short to tell: no type.
        for b64 in ["aGVsbG8gd29ybGQgaGVsbG8=", "iVA", ""] {
            assert_eq!(sniff_image_type(b64), None, "{b64}");
        }
    }

    #[test]
    fn stored_pieces_are_the_stored_form_without_copying_the_image() {
        let b64 = "iVBORw0KGgo+/AAAA==".to_string();
        let tricky = r#"x","image":"y\"#.to_string();
        for p in [
            Payload::from(AnalyzeImage {
                image: Some(b64.clone()),
                prompt: Some(tricky.clone()),
                ..AnalyzeImage::default()
            }),
            Payload::from(FullQuery {
                question: tricky.clone(),
                image: Some(b64.clone()),
                top_k: Some(2),
                ..FullQuery::default()
            }),
            // Text that JSON must escape is serialised whole.
            Payload::from(AnalyzeImage {
                image: Some("a\"b".into()),
                ..AnalyzeImage::default()
            }),
            Payload::from(CompleteAnswer {
                question: tricky.clone(),
                ..CompleteAnswer::default()
            }),
        ] {
            let json = p.to_json().unwrap();
            let stored = p.stored().unwrap();
            assert_eq!(stored.to_text(), json);
            assert_eq!(stored.len(), json.len());
            assert_eq!(stored.summary(&p), p.summary(&json));
            if let Some(image) = p.image().filter(|i| *i == b64) {
                // Borrowed, not copied.
                assert_eq!(stored.pieces()[1].as_ptr(), image.as_ptr());
            }
        }
    }
}
