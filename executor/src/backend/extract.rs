//! Extractive answers: the sentences of the retrieved passages (and of the task's context)
//! that share the most terms with the question, each followed by a `[n]` marker pointing at
//! its citation.
//!
//! No model is involved, so the answer can only quote; the point is that an offline
//! installation still returns something a person can read and check against the citations.

use std::collections::{HashMap, HashSet};

use serde_json::{Value, json};

use super::passages;
use super::retrieval::{DocumentIndex, Hit};

/// Sentences in an answer.
const MAX_SENTENCES: usize = 3;
/// Sentences from any one passage, so the answer draws on more than one when it can.
const MAX_PER_SOURCE: usize = 2;

pub(crate) const NO_ANSWER: &str =
    "Nothing in the indexed documents or the given context matches the question.";

struct Candidate {
    /// 0 for the context, `rank + 1` for a retrieved passage.
    source: usize,
    position: usize,
    text: String,
    score: f32,
}

/// `{answer, citations}` for `question` from `hits` (best first) and an optional context.
pub(crate) fn compose(
    index: &DocumentIndex,
    question: &str,
    hits: &[Hit],
    context: Option<&str>,
) -> Value {
    let wanted: HashSet<String> = index.terms(question).into_iter().collect();
    let weights = index.idf(&wanted);
    let context = context.map(str::trim).filter(|c| !c.is_empty());
    let mut candidates = Vec::new();
    if let Some(context) = context {
        candidates.extend(score_sentences(index, &weights, context, 0, 1.0));
    }
    let top = hits.first().map_or(1.0, |h| h.score.max(f32::EPSILON));
    for (rank, hit) in hits.iter().enumerate() {
        // Sentence overlap decides; the passage's BM25 rank breaks near-ties.
        let weight = 0.5 + 0.5 * (hit.score / top);
        candidates.extend(score_sentences(
            index,
            &weights,
            &hit.passage.text,
            rank + 1,
            weight,
        ));
    }
    candidates.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then(a.source.cmp(&b.source))
            .then(a.text.len().cmp(&b.text.len()))
    });
    let mut chosen: Vec<Candidate> = Vec::new();
    for c in candidates {
        if chosen.len() == MAX_SENTENCES {
            break;
        }
        if chosen.iter().filter(|x| x.source == c.source).count() < MAX_PER_SOURCE {
            chosen.push(c);
        }
    }
    if chosen.is_empty() {
        chosen = fallback(hits, context);
    }
    chosen.sort_by_key(|c| (c.source, c.position));

    let answer = if chosen.is_empty() {
        NO_ANSWER.to_owned()
    } else {
        chosen
            .iter()
            .map(|c| match c.source {
                0 => c.text.clone(),
                n => format!("{} [{n}]", c.text),
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let citations: Vec<_> = hits.iter().map(Hit::citation).collect();
    json!({ "answer": answer, "citations": citations })
}

/// Each sentence that shares a term with the question, scored by the share of the
/// question's term weight it covers, times `weight`.
fn score_sentences(
    index: &DocumentIndex,
    wanted: &HashMap<&str, f32>,
    text: &str,
    source: usize,
    weight: f32,
) -> Vec<Candidate> {
    let total: f32 = wanted.values().sum();
    if total <= 0.0 {
        return Vec::new();
    }
    passages::sentences(text)
        .into_iter()
        .enumerate()
        .filter_map(|(position, sentence)| {
            let terms: HashSet<String> = index.terms(&sentence).into_iter().collect();
            let covered: f32 = terms.iter().filter_map(|t| wanted.get(t.as_str())).sum();
            (covered > 0.0).then(|| Candidate {
                source,
                position,
                score: weight * covered / total,
                text: sentence,
            })
        })
        .collect()
}

/// When no sentence shares a term with the question (it matched a heading, or the question
/// is about the context as a whole), the start of the context or of the best passage.
fn fallback(hits: &[Hit], context: Option<&str>) -> Vec<Candidate> {
    let (source, text) = match (context, hits.first()) {
        (Some(context), _) => (0, context),
        (None, Some(hit)) => (1, hit.passage.text.as_str()),
        (None, None) => return Vec::new(),
    };
    passages::sentences(text)
        .into_iter()
        .take(MAX_PER_SOURCE)
        .enumerate()
        .map(|(position, text)| Candidate {
            source,
            position,
            text,
            score: 0.0,
        })
        .collect()
}
