//! The document index: BM25 retrieval over a folder of Markdown and text files.
//!
//! Files (`*.md`, `*.markdown`, `*.txt`, recursively, hidden entries skipped) are split into
//! passages and indexed in RAM with tantivy at startup. Queries are built from the question's
//! analysed terms rather than tantivy's query language, so a question containing `:` or `"`
//! cannot turn into a syntax error or a field lookup. The same analyser (lower-casing,
//! English stop words and stemming) later scores sentences for extractive answers, so
//! "indexes" in a question matches "indexing" in both places.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use tantivy::collector::TopDocs;
use tantivy::query::{BooleanQuery, BoostQuery, Occur, Query, TermQuery};
use tantivy::schema::{
    Field, IndexRecordOption, STORED, Schema, TextFieldIndexing, TextOptions, Value,
};
use tantivy::tokenizer::{
    Language, LowerCaser, RemoveLongFilter, SimpleTokenizer, Stemmer, StopWordFilter, TextAnalyzer,
};
use tantivy::{Index, IndexReader, ReloadPolicy, TantivyDocument, Term, doc};

use super::error::{BackendError, BuildError};
use super::passages::{self, Passage};

const ANALYZER: &str = "ragpool_en";
const EXTENSIONS: [&str; 3] = ["md", "markdown", "txt"];
/// Upper bound on `top_k`, whatever a task asks for.
pub const MAX_TOP_K: usize = 50;
/// Headings name a passage's topic, so a match there counts for more than one in the body.
const HEADING_BOOST: f32 = 2.0;
const PATH_BOOST: f32 = 0.5;

/// A retrieved passage as it appears in a result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Citation {
    /// Path relative to the indexed folder, `/`-separated.
    pub document: String,
    /// 1-based passage number within the document.
    pub passage: u32,
    /// BM25 score (higher is better; comparable only within one query).
    pub score: f32,
    pub text: String,
}

/// A search hit: the passage and its score.
#[derive(Debug, Clone)]
pub(crate) struct Hit {
    pub passage: Arc<Passage>,
    pub score: f32,
}

impl Hit {
    pub fn citation(&self) -> Citation {
        Citation {
            document: self.passage.document.clone(),
            passage: self.passage.number,
            score: self.score,
            text: self.passage.text.clone(),
        }
    }
}

struct Fields {
    id: Field,
    heading: Field,
    body: Field,
    path: Field,
}

/// An in-memory BM25 index over the passages of a folder of documents.
pub struct DocumentIndex {
    reader: IndexReader,
    fields: Fields,
    analyzer: TextAnalyzer,
    passages: Vec<Arc<Passage>>,
    documents: usize,
}

impl std::fmt::Debug for DocumentIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DocumentIndex")
            .field("documents", &self.documents)
            .field("passages", &self.passages.len())
            .finish()
    }
}

impl DocumentIndex {
    /// Reads and indexes every document under `folder` (none: an empty index). CPU-heavy;
    /// call from a blocking context, or use [`DocumentIndex::build_async`].
    pub fn build(folder: Option<&Path>, max_passage_chars: usize) -> Result<Self, BuildError> {
        let mut passages = Vec::new();
        let mut documents = 0;
        if let Some(folder) = folder {
            for (relative, text) in read_documents(folder)? {
                documents += 1;
                passages.extend(passages::split(&relative, &text, max_passage_chars));
            }
        }
        Self::from_passages(passages, documents)
    }

    /// [`DocumentIndex::build`] on the blocking pool, logging what it indexed: an operator
    /// sees at start whether the corpus arrived (a wrong mount shows as 0 documents).
    pub async fn build_async(
        folder: Option<PathBuf>,
        max_passage_chars: usize,
    ) -> Result<Arc<Self>, BuildError> {
        let shown = folder
            .as_deref()
            .map_or_else(|| "(none)".into(), |f| f.display().to_string());
        let index =
            tokio::task::spawn_blocking(move || Self::build(folder.as_deref(), max_passage_chars))
                .await
                .map_err(|e| BuildError::Index(format!("indexing task failed: {e}")))??;
        tracing::info!(
            folder = %shown,
            documents = index.document_count(),
            passages = index.passage_count(),
            "document index built"
        );
        Ok(Arc::new(index))
    }

    fn from_passages(passages: Vec<Passage>, documents: usize) -> Result<Self, BuildError> {
        let index_err = |e: tantivy::TantivyError| BuildError::Index(e.to_string());
        let analyzer = analyzer()?;
        let text = TextOptions::default().set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer(ANALYZER)
                .set_index_option(IndexRecordOption::WithFreqsAndPositions),
        );
        let mut schema = Schema::builder();
        let fields = Fields {
            id: schema.add_u64_field("id", STORED),
            heading: schema.add_text_field("heading", text.clone()),
            body: schema.add_text_field("body", text.clone()),
            path: schema.add_text_field("path", text),
        };
        let index = Index::create_in_ram(schema.build());
        index.tokenizers().register(ANALYZER, analyzer.clone());

        // One indexing thread: the corpus is small and the executor's other tasks need the
        // cores more than indexing needs to be fast.
        let mut writer = index
            .writer_with_num_threads::<TantivyDocument>(1, 50_000_000)
            .map_err(index_err)?;
        for (id, p) in passages.iter().enumerate() {
            writer
                .add_document(doc!(
                    fields.id => id as u64,
                    fields.heading => p.heading.as_str(),
                    fields.body => p.text.as_str(),
                    fields.path => path_words(&p.document),
                ))
                .map_err(index_err)?;
        }
        writer.commit().map_err(index_err)?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(index_err)?;
        Ok(Self {
            reader,
            fields,
            analyzer,
            passages: passages.into_iter().map(Arc::new).collect(),
            documents,
        })
    }

    /// How many documents were read.
    pub fn document_count(&self) -> usize {
        self.documents
    }

    /// How many passages were indexed.
    pub fn passage_count(&self) -> usize {
        self.passages.len()
    }

    /// The best `top_k` passages for `query` (clamped to 1..=[`MAX_TOP_K`]), best first.
    pub fn search(&self, query: &str, top_k: usize) -> Result<Vec<Citation>, BackendError> {
        Ok(self.hits(query, top_k)?.iter().map(Hit::citation).collect())
    }

    pub(crate) fn hits(&self, query: &str, top_k: usize) -> Result<Vec<Hit>, BackendError> {
        let terms = self.terms(query);
        if terms.is_empty() || self.passages.is_empty() {
            return Ok(Vec::new());
        }
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        let mut seen = HashSet::new();
        for term in terms.iter().filter(|t| seen.insert(t.as_str())) {
            for (field, boost) in [
                (self.fields.heading, HEADING_BOOST),
                (self.fields.body, 1.0),
                (self.fields.path, PATH_BOOST),
            ] {
                let q = TermQuery::new(
                    Term::from_field_text(field, term),
                    IndexRecordOption::WithFreqs,
                );
                clauses.push((Occur::Should, Box::new(BoostQuery::new(Box::new(q), boost))));
            }
        }
        let query = BooleanQuery::new(clauses);
        let searcher = self.reader.searcher();
        let limit = top_k.clamp(1, MAX_TOP_K);
        let found = searcher
            .search(&query, &TopDocs::with_limit(limit).order_by_score())
            .map_err(|e| BackendError::internal(format!("searching the index: {e}")))?;
        let mut hits = Vec::with_capacity(found.len());
        for (score, address) in found {
            let doc: TantivyDocument = searcher
                .doc(address)
                .map_err(|e| BackendError::internal(format!("reading a hit: {e}")))?;
            let passage = doc
                .get_first(self.fields.id)
                .and_then(|v| v.as_u64())
                .and_then(|id| self.passages.get(usize::try_from(id).ok()?))
                .ok_or_else(|| BackendError::internal("index hit without a known passage"))?;
            hits.push(Hit {
                passage: Arc::clone(passage),
                score,
            });
        }
        Ok(hits)
    }

    /// BM25's inverse document frequency of each term over passage bodies: how much a match
    /// on it says. Terms the corpus lacks (they can still match a task's context) get the
    /// highest weight.
    pub(crate) fn idf<'a>(
        &self,
        terms: impl IntoIterator<Item = &'a String>,
    ) -> HashMap<&'a str, f32> {
        let searcher = self.reader.searcher();
        let n = self.passages.len() as f32;
        terms
            .into_iter()
            .map(|t| {
                let df = searcher
                    .doc_freq(&Term::from_field_text(self.fields.body, t))
                    .unwrap_or(0) as f32;
                (t.as_str(), (1.0 + (n - df + 0.5) / (df + 0.5)).ln())
            })
            .collect()
    }

    /// `text` through the index's analyser: lower-cased, stop words removed, stemmed.
    pub(crate) fn terms(&self, text: &str) -> Vec<String> {
        let mut analyzer = self.analyzer.clone();
        let mut stream = analyzer.token_stream(text);
        let mut out = Vec::new();
        while stream.advance() {
            out.push(stream.token().text.clone());
        }
        out
    }
}

/// Words that shape a question but carry no topic. Lucene's English list (used first) is
/// short and built for documents; without these, "what does…" matches every sentence that
/// says "what".
const QUESTION_WORDS: &[&str] = &[
    "what", "which", "who", "whom", "whose", "when", "where", "why", "how", "do", "does", "did",
    "doing", "can", "could", "should", "would", "shall", "i", "me", "my", "we", "us", "our", "you",
    "your", "he", "she", "him", "her", "his", "its", "them", "have", "has", "had", "been", "being",
    "am", "were", "about", "from", "so", "than", "too", "very", "just", "also", "any", "some",
    "here", "tell", "explain", "please",
];

fn analyzer() -> Result<TextAnalyzer, BuildError> {
    let stop_words = StopWordFilter::new(Language::English)
        .ok_or_else(|| BuildError::Index("no English stop-word list".into()))?;
    Ok(TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(40))
        .filter(LowerCaser)
        .filter(stop_words)
        .filter(StopWordFilter::remove(
            QUESTION_WORDS.iter().map(|w| (*w).to_owned()),
        ))
        .filter(Stemmer::new(Language::English))
        .build())
}

/// File names carry topic words ("scaling.md"); index them as text.
fn path_words(path: &str) -> String {
    path.replace(['/', '.', '-', '_'], " ")
}

/// Every document under `folder` as (relative path, text), in a stable order.
fn read_documents(folder: &Path) -> Result<Vec<(String, String)>, BuildError> {
    let docs_err = |source: std::io::Error| BuildError::Docs {
        path: folder.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(folder).map_err(docs_err)?;
    if !meta.is_dir() {
        return Err(docs_err(std::io::Error::new(
            std::io::ErrorKind::NotADirectory,
            "not a directory",
        )));
    }
    let mut out = Vec::new();
    let walker = walkdir::WalkDir::new(folder)
        .follow_links(true)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| e.depth() == 0 || !e.file_name().to_string_lossy().starts_with('.'));
    for entry in walker {
        if let Err(e) = &entry
            && let Some(ancestor) = e.loop_ancestor()
        {
            tracing::warn!(path = %ancestor.display(), "skipping a symlink loop in the docs folder");
            continue;
        }
        let entry = entry.map_err(|e| {
            let path = e.path().unwrap_or(folder).to_path_buf();
            BuildError::Docs {
                path,
                source: e.into(),
            }
        })?;
        let path = entry.path();
        let wanted = entry.file_type().is_file()
            && path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()));
        if !wanted {
            continue;
        }
        let bytes = std::fs::read(path).map_err(|source| BuildError::Docs {
            path: path.to_path_buf(),
            source,
        })?;
        let relative = path
            .strip_prefix(folder)
            .unwrap_or(path)
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/");
        out.push((relative, String::from_utf8_lossy(&bytes).into_owned()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn questions_with_query_syntax_do_not_error() {
        let passages = passages::split("a.md", "# Queue\n\nTasks wait in Redis lists.\n", 500);
        let index = DocumentIndex::from_passages(passages, 1).unwrap();
        let hits = index.search("title:\"queue AND (redis", 3).unwrap();
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].document, "a.md");
        assert!(index.search("the of and", 3).unwrap().is_empty());
    }

    #[test]
    fn analyser_stems_and_drops_stop_words() {
        let index = DocumentIndex::from_passages(Vec::new(), 0).unwrap();
        assert_eq!(index.terms("The Indexes of running"), ["index", "run"]);
        assert_eq!(
            index.terms("What does the operator scale?"),
            ["oper", "scale"]
        );
    }
}
