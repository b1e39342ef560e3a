//! The offline backend: BM25 retrieval, extractive answers and local image analysis.
//!
//! Everything runs inside the executor: no model server, no network except fetching an
//! `image_url`. CPU-bound steps (decoding, searching) run on the blocking pool so a large
//! image cannot stall the other tasks' heartbeats.

use std::sync::Arc;

use async_trait::async_trait;
use ragpool_queue::payload::{AnalyzeImage, CompleteAnswer, FullQuery};
use ragpool_runtime::image_input::{self, ImageSource};
use serde_json::Value;

use super::Backend;
use super::analysis::{self, ImageAnalysis};
use super::config::BuiltinConfig;
use super::context::TaskContext;
use super::error::{BackendError, BuildError};
use super::extract;
use super::fetch::ImageFetcher;
use super::image_budget::{ImageBudget, ImageReservation};
use super::input;
use super::retrieval::{DocumentIndex, Hit};

/// See the module documentation.
#[derive(Debug)]
pub struct BuiltinBackend {
    index: Arc<DocumentIndex>,
    fetcher: ImageFetcher,
    image_budget: ImageBudget,
    top_k: usize,
}

impl BuiltinBackend {
    /// Indexes `config.docs` (on the blocking pool).
    pub async fn new(config: &BuiltinConfig) -> Result<Self, BuildError> {
        let index =
            DocumentIndex::build_async(config.docs.clone(), config.retrieval.max_passage_chars)
                .await?;
        Ok(Self::with_index(index, config))
    }

    /// A backend over an index that was already built (shared with another backend, say).
    pub fn with_index(index: Arc<DocumentIndex>, config: &BuiltinConfig) -> Self {
        Self {
            index,
            fetcher: ImageFetcher::new(&config.fetch),
            image_budget: ImageBudget::new(config.image_memory_bytes),
            top_k: config.retrieval.top_k,
        }
    }

    pub fn index(&self) -> &Arc<DocumentIndex> {
        &self.index
    }

    async fn analysis(
        &self,
        image: Option<&str>,
        image_url: Option<&str>,
    ) -> Result<Option<ImageAnalysis>, BackendError> {
        let source = image_input::image_source(image, image_url)
            .map_err(|both| BackendError::bad_input(both.to_string()))?;
        let Some(source) = source else {
            return Ok(None);
        };
        let (bytes, reservation) = self.image_input(source).await?;
        // Judged from the header before anything is decoded, and held until the decode's
        // memory is freed.
        let cost = analysis::decode_cost(&bytes)?;
        let reservation = self.image_budget.grow(reservation, cost).await?;
        let analysis = tokio::task::spawn_blocking(move || {
            let analysis = analysis::analyze(&bytes);
            drop(bytes);
            drop(reservation);
            analysis
        })
        .await
        .map_err(|e| BackendError::internal(format!("image analysis failed: {e}")))??;
        Ok(Some(analysis))
    }

    /// The image's bytes, under a reservation for them, for the payload they were decoded
    /// from, and for opening a decoder on them ([`analysis::probe_cost`]).
    async fn image_input(
        &self,
        source: ImageSource<&str>,
    ) -> Result<(Vec<u8>, ImageReservation), BackendError> {
        match source {
            ImageSource::Inline(encoded) => {
                let decoded = input::decoded_len(encoded);
                let held = encoded.len() as u64 + decoded + analysis::probe_cost(decoded);
                let reservation = self.image_budget.reserve(held).await?;
                let bytes = input::decode_base64(encoded, self.fetcher.max_bytes())?;
                Ok((bytes, reservation))
            }
            ImageSource::Url(url) => {
                let mut reservation = self.image_budget.reserve(self.fetcher.max_bytes()).await?;
                let bytes = self.fetcher.fetch(url).await?;
                let len = bytes.len() as u64;
                reservation.shrink_to(len);
                let reservation = self
                    .image_budget
                    .grow(reservation, analysis::probe_cost(len))
                    .await?;
                Ok((bytes, reservation))
            }
        }
    }

    async fn retrieve(&self, question: &str, top_k: Option<u32>) -> Result<Vec<Hit>, BackendError> {
        let top_k = top_k.map_or(self.top_k, |k| k as usize);
        let index = Arc::clone(&self.index);
        let question = question.to_owned();
        tokio::task::spawn_blocking(move || index.hits(&question, top_k))
            .await
            .map_err(|e| BackendError::internal(format!("retrieval failed: {e}")))?
    }

    /// Composing quotes a handful of passages: cheap enough for the async thread.
    fn compose(&self, question: &str, hits: &[Hit], context: Option<&str>) -> Value {
        extract::compose(&self.index, question, hits, context)
    }
}

#[async_trait]
impl Backend for BuiltinBackend {
    async fn analyze_image(
        &self,
        req: &AnalyzeImage,
        _cx: &TaskContext,
    ) -> Result<Value, BackendError> {
        let analysis = self
            .analysis(req.image.as_deref(), req.image_url.as_deref())
            .await?
            .ok_or_else(|| BackendError::bad_input("give image or image_url"))?;
        to_value(&analysis)
    }

    async fn complete_answer(
        &self,
        req: &CompleteAnswer,
        _cx: &TaskContext,
    ) -> Result<Value, BackendError> {
        let question = non_empty(&req.question)?;
        let hits = self.retrieve(question, req.top_k).await?;
        Ok(self.compose(question, &hits, req.context.as_deref()))
    }

    async fn full_query(&self, req: &FullQuery, cx: &TaskContext) -> Result<Value, BackendError> {
        let question = non_empty(&req.question)?;
        let has_image = req.image.is_some() || req.image_url.is_some();
        if has_image {
            cx.progress(10, "analysing image");
        }
        let analysis = self
            .analysis(req.image.as_deref(), req.image_url.as_deref())
            .await?;
        cx.progress(40, "retrieving passages");
        let hits = self.retrieve(question, req.top_k).await?;
        cx.progress(70, "composing answer");
        let context = analysis.as_ref().map(|a| a.summary.as_str());
        let mut result = self.compose(question, &hits, context);
        if let (Some(analysis), Some(object)) = (&analysis, result.as_object_mut()) {
            object.insert("analysis".into(), to_value(analysis)?);
        }
        cx.progress(100, "done");
        Ok(result)
    }
}

fn to_value(analysis: &ImageAnalysis) -> Result<Value, BackendError> {
    serde_json::to_value(analysis)
        .map_err(|e| BackendError::internal(format!("encoding the analysis: {e}")))
}

fn non_empty(question: &str) -> Result<&str, BackendError> {
    let question = question.trim();
    if question.is_empty() {
        return Err(BackendError::bad_input("question is empty"));
    }
    Ok(question)
}
