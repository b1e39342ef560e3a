//! A backend for any OpenAI-compatible chat-completions server (vLLM, Ollama, llama.cpp's
//! server, TGI, OpenAI itself).
//!
//! Image analysis sends one user message whose content is a text part and an `image_url` part
//! holding the image as a `data:` URL, so the model server never fetches anything itself.
//! Answers put the passages retrieved from the configured docs folder, numbered, into the
//! prompt with the task's context, and ask the model to cite them as `[n]`.
//!
//! Answers are requested with `stream: true`: each piece of text the server streams goes on
//! to the task as it arrives, and the answer stored at the end is the pieces joined (trimmed,
//! as a non-streamed answer is). A server that answers with one JSON response anyway works
//! as before; its whole answer then goes on to the task as one piece.

use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine as _;
use ragpool_queue::payload::{AnalyzeImage, CompleteAnswer, FullQuery};
use serde_json::{Map, Value, json};

use super::Backend;
use super::config::{OpenAiConfig, SecretString};
use super::context::TaskContext;
use super::error::{BackendError, BuildError, kinds};
use super::fetch::ImageFetcher;
use super::input;
use super::retrieval::{DocumentIndex, Hit};
use super::streaming::Shape;
use super::transport::JsonClient;

const DESCRIBE_PROMPT: &str = "Describe this image in one paragraph: the main subjects, the \
    setting, notable colours and any text it contains.";
const GROUNDED_SYSTEM: &str = "You answer questions using only the numbered passages and the \
    context given with the question. Cite each passage you use as [n]. If they do not contain \
    the answer, say that you do not know.";
const PLAIN_SYSTEM: &str = "Answer the question concisely and accurately.";

/// See the module documentation.
#[derive(Debug)]
pub struct OpenAiBackend {
    client: JsonClient,
    endpoint: String,
    model: String,
    vision_model: String,
    max_tokens: Option<u32>,
    temperature: Option<f32>,
    retriever: Option<Arc<DocumentIndex>>,
    top_k: usize,
    fetcher: ImageFetcher,
}

/// The useful part of a chat-completions response.
struct Completion {
    text: String,
    model: String,
    usage: Option<Value>,
}

impl Completion {
    fn into_object(self, text_field: &str) -> Map<String, Value> {
        let mut out = Map::new();
        out.insert(text_field.into(), Value::String(self.text));
        out.insert("model".into(), Value::String(self.model));
        if let Some(usage) = self.usage {
            out.insert("usage".into(), usage);
        }
        out
    }
}

impl OpenAiBackend {
    /// Reads the key file and indexes the docs folder, when configured.
    pub async fn new(config: &OpenAiConfig) -> Result<Self, BuildError> {
        let base = super::http::configured_url("the model server's base URL", &config.base_url)?;
        if config.model.trim().is_empty() {
            return Err(BuildError::Config(
                "the OpenAI backend needs a model".into(),
            ));
        }
        let api_key = match (&config.api_key, &config.api_key_file) {
            (Some(key), _) => Some(key.clone()),
            (None, Some(path)) => {
                let key = tokio::fs::read_to_string(path).await.map_err(|source| {
                    BuildError::KeyFile {
                        path: path.clone(),
                        source,
                    }
                })?;
                let key = key.trim();
                if key.is_empty() {
                    return Err(BuildError::Config(format!(
                        "the API key file {} is empty",
                        path.display()
                    )));
                }
                Some(SecretString::new(key))
            }
            (None, None) => None,
        };
        let retriever = match &config.docs {
            Some(docs) => Some(
                DocumentIndex::build_async(Some(docs.clone()), config.retrieval.max_passage_chars)
                    .await?,
            ),
            None => {
                tracing::info!(
                    "no document corpus (--docs / RAGPOOL_DOCS unset): answers are plain model \
                     calls, without retrieved passages or citations"
                );
                None
            }
        };
        let client = JsonClient::new(
            "model server",
            std::time::Duration::from_secs(config.timeout_secs),
            config.retry.clone(),
            api_key,
        )?;
        Ok(Self {
            client,
            endpoint: format!("{base}/chat/completions"),
            model: config.model.clone(),
            vision_model: config
                .vision_model
                .clone()
                .filter(|m| !m.trim().is_empty())
                .unwrap_or_else(|| config.model.clone()),
            max_tokens: config.max_tokens,
            temperature: config.temperature,
            retriever,
            top_k: config.retrieval.top_k,
            fetcher: ImageFetcher::new(&config.fetch),
        })
    }

    /// One chat completion; with `stream` its text goes on to the task as it is generated.
    async fn chat(
        &self,
        model: &str,
        messages: Value,
        stream: bool,
        cx: &TaskContext,
    ) -> Result<Completion, BackendError> {
        let mut body = json!({ "model": model, "messages": messages });
        if stream {
            body["stream"] = json!(true);
            // The token counts come in the last chunk, as in a JSON response.
            body["stream_options"] = json!({ "include_usage": true });
        }
        if let Some(max_tokens) = self.max_tokens {
            body["max_tokens"] = json!(max_tokens);
        }
        if let Some(temperature) = self.temperature {
            body["temperature"] = json!(temperature);
        }
        let estimate = estimate_tokens(&body["messages"], self.max_tokens);
        let streamed_before = cx.answer_text().received();
        let response = if stream {
            self.client
                .post_streamed(&self.endpoint, &body, &[], cx, estimate, Shape::Chat)
                .await?
        } else {
            self.client
                .post_metered(&self.endpoint, &body, cx, estimate)
                .await?
        };
        let content = &response["choices"][0]["message"]["content"];
        // Most servers send a string; some send a list of text parts.
        let text = match content {
            Value::String(s) => Some(s.clone()),
            Value::Array(parts) => Some(
                parts
                    .iter()
                    .filter_map(|p| p["text"].as_str())
                    .collect::<Vec<_>>()
                    .join(""),
            ),
            _ => None,
        }
        .ok_or_else(|| {
            BackendError::permanent(
                kinds::MODEL_ERROR,
                "the model server's response has no choices[0].message.content",
            )
        })?;
        if stream && cx.answer_text().received() == streamed_before {
            // Answered in one piece: it still reaches the task as text.
            cx.stream_text(&text);
        }
        Ok(Completion {
            text: text.trim().to_owned(),
            model: response["model"].as_str().unwrap_or(model).to_owned(),
            usage: response.get("usage").filter(|u| !u.is_null()).cloned(),
        })
    }

    /// Asks the vision model about the image; `None` when the payload has no image.
    async fn describe(
        &self,
        image: Option<&str>,
        image_url: Option<&str>,
        prompt: &str,
        cx: &TaskContext,
    ) -> Result<Option<Completion>, BackendError> {
        let Some(bytes) = input::image_bytes(image, image_url, &self.fetcher).await? else {
            return Ok(None);
        };
        let data_url = data_url(&bytes)?;
        let messages = json!([{
            "role": "user",
            "content": [
                { "type": "text", "text": prompt },
                { "type": "image_url", "image_url": { "url": data_url } },
            ],
        }]);
        self.chat(&self.vision_model, messages, false, cx)
            .await
            .map(Some)
    }

    async fn retrieve(&self, question: &str, top_k: Option<u32>) -> Result<Vec<Hit>, BackendError> {
        let Some(index) = &self.retriever else {
            return Ok(Vec::new());
        };
        let index = Arc::clone(index);
        let top_k = top_k.map_or(self.top_k, |k| k as usize);
        let question = question.to_owned();
        tokio::task::spawn_blocking(move || index.hits(&question, top_k))
            .await
            .map_err(|e| BackendError::internal(format!("retrieval failed: {e}")))?
    }

    async fn answer(
        &self,
        question: &str,
        context: Option<&str>,
        hits: &[Hit],
        cx: &TaskContext,
    ) -> Result<Map<String, Value>, BackendError> {
        let context = context.map(str::trim).filter(|c| !c.is_empty());
        let grounded = context.is_some() || !hits.is_empty();
        let messages = json!([
            { "role": "system", "content": if grounded { GROUNDED_SYSTEM } else { PLAIN_SYSTEM } },
            { "role": "user", "content": prompt(question, context, hits) },
        ]);
        let mut out = self
            .chat(&self.model, messages, true, cx)
            .await?
            .into_object("answer");
        if self.retriever.is_some() {
            let citations: Vec<_> = hits.iter().map(Hit::citation).collect();
            out.insert("citations".into(), json!(citations));
        }
        Ok(out)
    }
}

#[async_trait]
impl Backend for OpenAiBackend {
    async fn analyze_image(
        &self,
        req: &AnalyzeImage,
        cx: &TaskContext,
    ) -> Result<Value, BackendError> {
        let prompt = req
            .prompt
            .as_deref()
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .unwrap_or(DESCRIBE_PROMPT);
        let completion = self
            .describe(req.image.as_deref(), req.image_url.as_deref(), prompt, cx)
            .await?
            .ok_or_else(|| BackendError::bad_input("give image or image_url"))?;
        Ok(Value::Object(completion.into_object("summary")))
    }

    async fn complete_answer(
        &self,
        req: &CompleteAnswer,
        cx: &TaskContext,
    ) -> Result<Value, BackendError> {
        let question = non_empty(&req.question)?;
        let hits = self.retrieve(question, req.top_k).await?;
        let out = self
            .answer(question, req.context.as_deref(), &hits, cx)
            .await?;
        Ok(Value::Object(out))
    }

    async fn full_query(&self, req: &FullQuery, cx: &TaskContext) -> Result<Value, BackendError> {
        let question = non_empty(&req.question)?;
        if req.image.is_some() || req.image_url.is_some() {
            cx.progress(10, "analysing image");
        }
        let prompt = format!(
            "{DESCRIBE_PROMPT} Note everything that helps answer this question: {question}"
        );
        let analysis = self
            .describe(req.image.as_deref(), req.image_url.as_deref(), &prompt, cx)
            .await?
            .map(|c| c.into_object("summary"));
        cx.progress(40, "retrieving passages");
        let hits = self.retrieve(question, req.top_k).await?;
        cx.progress(70, "asking the model");
        let context = analysis
            .as_ref()
            .and_then(|a| a.get("summary"))
            .and_then(Value::as_str)
            .map(|s| format!("Description of the attached image: {s}"));
        let mut out = self.answer(question, context.as_deref(), &hits, cx).await?;
        if let Some(analysis) = analysis {
            out.insert("analysis".into(), Value::Object(analysis));
        }
        cx.progress(100, "done");
        Ok(Value::Object(out))
    }
}

fn non_empty(question: &str) -> Result<&str, BackendError> {
    let question = question.trim();
    if question.is_empty() {
        return Err(BackendError::bad_input("question is empty"));
    }
    Ok(question)
}

/// `data:<mime>;base64,…` for an image in a format vision models take.
fn data_url(bytes: &[u8]) -> Result<String, BackendError> {
    use image::ImageFormat;
    let format = image::guess_format(bytes)
        .ok()
        .filter(|f| {
            matches!(
                f,
                ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP | ImageFormat::Gif
            )
        })
        .ok_or_else(|| BackendError::bad_input("the image is not PNG, JPEG, WebP or GIF"))?;
    Ok(format!(
        "data:{};base64,{}",
        format.to_mime_type(),
        base64::engine::general_purpose::STANDARD.encode(bytes)
    ))
}

/// The user message: context, numbered passages, then the question.
fn prompt(question: &str, context: Option<&str>, hits: &[Hit]) -> String {
    let mut out = String::new();
    if let Some(context) = context {
        out.push_str("Context:\n");
        out.push_str(context);
        out.push_str("\n\n");
    }
    if !hits.is_empty() {
        out.push_str("Passages:\n");
        for (i, hit) in hits.iter().enumerate() {
            out.push_str(&format!(
                "[{}] {} (passage {})\n{}\n\n",
                i + 1,
                hit.passage.document,
                hit.passage.number,
                hit.passage.text
            ));
        }
    }
    out.push_str("Question: ");
    out.push_str(question);
    out
}

/// Tokens assumed for a completion when the request sets no `max_tokens`.
const COMPLETION_ESTIMATE: u32 = 256;

/// Tokens assumed per image: a 1024×1024 image at high detail on OpenAI's vision models.
const IMAGE_ESTIMATE: u32 = 765;

/// A request's model tokens, estimated before it is sent for the pool's tokens-per-minute
/// budget (the response's `usage` corrects it): about four characters a token of text, a
/// fixed cost per image, and the completion's `max_tokens`.
fn estimate_tokens(messages: &Value, max_tokens: Option<u32>) -> u32 {
    let mut chars = 0usize;
    let mut images = 0u32;
    for message in messages.as_array().into_iter().flatten() {
        match &message["content"] {
            Value::String(text) => chars += text.len(),
            Value::Array(parts) => {
                for part in parts {
                    match part["type"].as_str() {
                        Some("image_url") => images += 1,
                        _ => chars += part["text"].as_str().map_or(0, str::len),
                    }
                }
            }
            _ => {}
        }
    }
    let text = u32::try_from(chars.div_ceil(4)).unwrap_or(u32::MAX);
    text.saturating_add(images.saturating_mul(IMAGE_ESTIMATE))
        .saturating_add(max_tokens.unwrap_or(COMPLETION_ESTIMATE))
}

#[cfg(test)]
mod estimate_tests {
    use super::*;

    #[test]
    fn token_estimates_count_text_images_and_the_completion() {
        let messages = json!([
            {"role": "system", "content": "x".repeat(40)},
            {"role": "user", "content": [
                {"type": "text", "text": "y".repeat(8)},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ]},
        ]);
        assert_eq!(estimate_tokens(&messages, Some(100)), 10 + 2 + 765 + 100);
        assert_eq!(estimate_tokens(&json!([]), None), 256);
    }
}
