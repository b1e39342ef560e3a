//! Responses that arrive piece by piece: the model server's or RAG service's answer streamed
//! as server-sent events or newline-delimited JSON, assembled into the JSON value the
//! non-streamed response would have been, with each piece of answer text passed on to the
//! task ([`TaskContext::stream_text`]) as it arrives.
//!
//! Two shapes exist, one per remote backend ([`Shape`]):
//! - OpenAI's chat-completion chunks (`data: {"choices":[{"delta":{"content":"…"}}]}` …
//!   `data: [DONE]`), assembled into a chat-completion response;
//! - the RAG service's events, each a JSON object: `{"delta": "…"}` appends answer text,
//!   `{"result": {…}}` is the task's result, `{"error": "…"}` fails the attempt. A stream
//!   without `result` has the result `{"answer": <the pieces joined>}`.

use eventsource_stream::Eventsource;
use futures::{Stream, StreamExt};
use reqwest::header::{CONTENT_TYPE, HeaderMap};
use serde_json::{Map, Value, json};

use super::context::TaskContext;
use super::error::{BackendError, kinds};

/// The `Accept` header of a request that may be answered with a stream.
pub(crate) const ACCEPT_STREAM: &str =
    "text/event-stream, application/x-ndjson;q=0.9, application/json;q=0.8";

/// Which pieces a stream is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// OpenAI chat-completion chunks.
    Chat,
    /// The RAG service's `delta` / `result` / `error` events.
    Rag,
}

/// How a response body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    EventStream,
    Ndjson,
}

impl Framing {
    /// The streamed framing a response declares, if any; anything else is read as one JSON
    /// document.
    pub fn of(headers: &HeaderMap) -> Option<Framing> {
        let content_type = headers.get(CONTENT_TYPE)?.to_str().ok()?;
        let mime = content_type.split(';').next()?.trim().to_ascii_lowercase();
        match mime.as_str() {
            "text/event-stream" => Some(Framing::EventStream),
            "application/x-ndjson" | "application/jsonl" | "application/ndjson" => {
                Some(Framing::Ndjson)
            }
            _ => None,
        }
    }
}

/// Why reading a stream stopped early.
pub(crate) enum StreamError {
    /// The transfer broke off.
    Transfer(reqwest::Error),
    /// The server sent something that is not a piece of the shape, or an error.
    Backend(BackendError),
}

/// Reads `body` as `framing` pieces of `shape` to its end, passing text on to `cx`.
pub(crate) async fn read<B: AsRef<[u8]>>(
    body: impl Stream<Item = Result<B, reqwest::Error>> + Unpin,
    framing: Framing,
    shape: Shape,
    peer: &str,
    cx: &TaskContext,
) -> Result<Value, StreamError> {
    let mut assembler = Assembler::new(shape, peer);
    match framing {
        Framing::EventStream => {
            let mut events = body.eventsource();
            while let Some(event) = events.next().await {
                let event = event.map_err(|e| match e {
                    eventsource_stream::EventStreamError::Transport(e) => StreamError::Transfer(e),
                    other => StreamError::Backend(assembler.malformed(&other.to_string())),
                })?;
                if event.data.trim() == "[DONE]" {
                    break;
                }
                if event.data.trim().is_empty() {
                    continue;
                }
                assembler.piece(&event.data, cx)?;
            }
        }
        Framing::Ndjson => {
            let mut body = body;
            let mut line = Vec::new();
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(StreamError::Transfer)?;
                for part in chunk.as_ref().split_inclusive(|b| *b == b'\n') {
                    line.extend_from_slice(part);
                    if line.ends_with(b"\n") {
                        assembler.line(&line, cx)?;
                        line.clear();
                    }
                }
            }
            assembler.line(&line, cx)?;
        }
    }
    Ok(assembler.finish())
}

/// Builds the response a stream stands for.
struct Assembler<'a> {
    shape: Shape,
    peer: &'a str,
    text: String,
    model: Option<String>,
    usage: Option<Value>,
    result: Option<Value>,
}

impl<'a> Assembler<'a> {
    fn new(shape: Shape, peer: &'a str) -> Self {
        Self {
            shape,
            peer,
            text: String::new(),
            model: None,
            usage: None,
            result: None,
        }
    }

    fn malformed(&self, why: &str) -> BackendError {
        BackendError::permanent(
            kinds::MODEL_ERROR,
            format!("the {} streamed something unreadable: {why}", self.peer),
        )
    }

    fn line(&mut self, line: &[u8], cx: &TaskContext) -> Result<(), StreamError> {
        let line = std::str::from_utf8(line)
            .map_err(|_| StreamError::Backend(self.malformed("a line is not UTF-8")))?
            .trim();
        if line.is_empty() {
            return Ok(());
        }
        self.piece(line, cx)
    }

    /// One event's JSON.
    fn piece(&mut self, data: &str, cx: &TaskContext) -> Result<(), StreamError> {
        let value: Value = serde_json::from_str(data).map_err(|e| {
            StreamError::Backend(self.malformed(&format!("an event is not JSON ({e})")))
        })?;
        if let Some(error) = value.get("error").filter(|e| !e.is_null()) {
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .or_else(|| error.as_str())
                .unwrap_or("no message");
            return Err(StreamError::Backend(BackendError::retryable(
                kinds::BACKEND_UNAVAILABLE,
                format!("the {} failed while streaming: {message}", self.peer),
                None,
            )));
        }
        match self.shape {
            Shape::Chat => {
                if let Some(model) = value["model"].as_str() {
                    self.model = Some(model.to_owned());
                }
                if let Some(usage) = value.get("usage").filter(|u| !u.is_null()) {
                    self.usage = Some(usage.clone());
                }
                if let Some(piece) = value["choices"][0]["delta"]["content"].as_str() {
                    self.push(piece, cx);
                }
            }
            Shape::Rag => {
                if let Some(piece) = value["delta"].as_str() {
                    self.push(piece, cx);
                }
                if let Some(result) = value.get("result") {
                    self.result = Some(result.clone());
                }
            }
        }
        Ok(())
    }

    fn push(&mut self, piece: &str, cx: &TaskContext) {
        self.text.push_str(piece);
        cx.stream_text(piece);
    }

    fn finish(self) -> Value {
        match self.shape {
            Shape::Chat => {
                let mut out = Map::new();
                if let Some(model) = self.model {
                    out.insert("model".into(), Value::String(model));
                }
                out.insert(
                    "choices".into(),
                    json!([{ "message": { "role": "assistant", "content": self.text } }]),
                );
                if let Some(usage) = self.usage {
                    out.insert("usage".into(), usage);
                }
                Value::Object(out)
            }
            Shape::Rag => self
                .result
                .unwrap_or_else(|| json!({ "answer": self.text.trim() })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads `chunks` as one body.
    async fn read_chunks(chunks: &[&str], framing: Framing, shape: Shape) -> (Value, String) {
        let cx = TaskContext::default();
        let body = futures::stream::iter(
            chunks
                .iter()
                .map(|c| Ok::<_, reqwest::Error>(c.as_bytes().to_vec()))
                .collect::<Vec<_>>(),
        );
        let value = match read(body, framing, shape, "model server", &cx).await {
            Ok(v) => v,
            Err(StreamError::Backend(e)) => panic!("{e}"),
            Err(StreamError::Transfer(e)) => panic!("{e}"),
        };
        let text = cx
            .answer_text()
            .pending()
            .map(|(t, _)| t)
            .unwrap_or_default();
        (value, text)
    }

    #[tokio::test]
    async fn pieces_split_anywhere_between_chunks_are_read_whole() {
        let (value, text) = read_chunks(
            &["{\"delta\": \"é", "t\"}\n{\"del", "ta\": \"é\"}"],
            Framing::Ndjson,
            Shape::Rag,
        )
        .await;
        assert_eq!(value, json!({"answer": "été"}));
        assert_eq!(text, "été");

        let chunk =
            |s: &str| json!({"model": "m", "choices": [{"delta": {"content": s}}]}).to_string();
        let first = format!("data: {}\n\ndata: {}", chunk("Hel"), chunk("lo"));
        let (value, text) = read_chunks(
            &[
                &first[..20],
                &first[20..],
                "\n\ndata: {\"choices\": [], \"usage\": {\"total_tokens\": 3}}\n\n",
                "data: [DONE]\n\n",
            ],
            Framing::EventStream,
            Shape::Chat,
        )
        .await;
        assert_eq!(
            value,
            json!({
                "model": "m",
                "choices": [{"message": {"role": "assistant", "content": "Hello"}}],
                "usage": {"total_tokens": 3},
            })
        );
        assert_eq!(text, "Hello");
    }

    #[test]
    fn streamed_framings_are_told_by_content_type() {
        let framing = |ct: &str| {
            let mut h = HeaderMap::new();
            h.insert(CONTENT_TYPE, ct.parse().unwrap());
            Framing::of(&h)
        };
        assert_eq!(framing("text/event-stream"), Some(Framing::EventStream));
        assert_eq!(
            framing("Text/Event-Stream; charset=utf-8"),
            Some(Framing::EventStream)
        );
        assert_eq!(framing("application/x-ndjson"), Some(Framing::Ndjson));
        assert_eq!(framing("application/json"), None);
        assert_eq!(Framing::of(&HeaderMap::new()), None);
    }
}
