//! The builtin backend's retrieval and extractive answers over a small corpus.

use std::path::Path;

use ragpool_executor::backend::retrieval::DocumentIndex;
use ragpool_executor::backend::{self, BackendConfig, BuildError, BuiltinConfig, TaskContext};
use ragpool_queue::Progress;
use ragpool_queue::payload::{CompleteAnswer, FullQuery};
use serde_json::Value;

mod backend_support;

fn write(root: &Path, relative: &str, text: &str) {
    let path = root.join(relative);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// Three documents (one nested), plus files the index must skip.
fn corpus() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(
        root,
        "queue.md",
        "# Queue\n\nTasks wait in Redis until an executor claims them. A claimed task holds a \
         lease of fifteen seconds; when its executor dies the lease expires and the task is \
         delivered again.\n\n## Priorities\n\nQueues are claimed in strict or weighted order.\n",
    );
    write(
        root,
        "guides/scaling.md",
        "# Scaling\n\nThe operator watches queue depth and sets the number of executor \
         replicas.\n\nIt scales down only idle pods, marking busy pods with a high deletion \
         cost.\n",
    );
    write(
        root,
        "notes.txt",
        "Image analysis reports dominant colours, brightness and a perceptual hash.\n\
         Uploaded images may be PNG, JPEG, WebP or GIF.\n",
    );
    write(
        root,
        "src/lease.rs",
        "// lease lease lease claimed task lease seconds\n",
    );
    write(
        root,
        ".hidden/lease.md",
        "# Lease\n\nA claimed task lease lasts seconds.\n",
    );
    dir
}

fn config(docs: &Path) -> BackendConfig {
    BackendConfig::Builtin(BuiltinConfig {
        docs: Some(docs.to_path_buf()),
        ..BuiltinConfig::default()
    })
}

fn citations(result: &Value) -> &Vec<Value> {
    result["citations"].as_array().expect("citations array")
}

#[tokio::test]
async fn a_question_cites_the_document_that_answers_it_first() {
    let docs = corpus();
    let backend = backend::build(&config(docs.path())).await.unwrap();
    let req = CompleteAnswer {
        question: "How long is the lease of a claimed task?".into(),
        ..Default::default()
    };
    let result = backend
        .complete_answer(&req, &TaskContext::default())
        .await
        .unwrap();

    let cites = citations(&result);
    assert!(!cites.is_empty() && cites.len() <= 3, "{result:#}");
    assert_eq!(cites[0]["document"], "queue.md", "{result:#}");
    assert_eq!(cites[0]["passage"], 1);
    assert!(cites[0]["score"].as_f64().unwrap() > 0.0);
    assert!(
        cites[0]["text"]
            .as_str()
            .unwrap()
            .contains("fifteen seconds")
    );
    let documents: Vec<&str> = cites
        .iter()
        .map(|c| c["document"].as_str().unwrap())
        .collect();
    assert!(
        documents
            .iter()
            .all(|d| !d.contains("lease.rs") && !d.contains(".hidden")),
        "{documents:?}"
    );

    let answer = result["answer"].as_str().unwrap();
    assert!(answer.contains("lease of fifteen seconds"), "{answer}");
    assert!(answer.contains("[1]"), "{answer}");
}

#[tokio::test]
async fn nested_documents_are_cited_by_relative_path() {
    let docs = corpus();
    let backend = backend::build(&config(docs.path())).await.unwrap();
    let req = CompleteAnswer {
        question: "Which pods does the operator scale down?".into(),
        top_k: Some(1),
        ..Default::default()
    };
    let result = backend
        .complete_answer(&req, &TaskContext::default())
        .await
        .unwrap();
    let cites = citations(&result);
    assert_eq!(cites.len(), 1, "top_k is respected: {result:#}");
    assert_eq!(cites[0]["document"], "guides/scaling.md");
    assert!(result["answer"].as_str().unwrap().contains("idle pods"));
}

#[tokio::test]
async fn the_index_reads_only_markdown_and_text() {
    let docs = corpus();
    let index = DocumentIndex::build_async(Some(docs.path().to_path_buf()), 1200)
        .await
        .unwrap();
    assert_eq!(index.document_count(), 3);
    assert_eq!(
        index.passage_count(),
        4,
        "queue.md has 2, scaling.md 1, notes.txt 1"
    );
    let hits = index.search("perceptual hash GIF", 3).unwrap();
    assert_eq!(hits[0].document, "notes.txt");
    assert!(index.search("zebra xylophone", 3).unwrap().is_empty());
}

#[tokio::test]
async fn context_is_quoted_when_it_answers_the_question() {
    let backend = backend::build(&BackendConfig::default()).await.unwrap();
    let req = CompleteAnswer {
        question: "What colour is the car?".into(),
        context: Some("The photo shows a street. The car is bright yellow.".into()),
        ..Default::default()
    };
    let result = backend
        .complete_answer(&req, &TaskContext::default())
        .await
        .unwrap();
    assert_eq!(result["answer"], "The car is bright yellow.");
    assert!(citations(&result).is_empty());

    let req = CompleteAnswer {
        question: "What colour is the car?".into(),
        ..Default::default()
    };
    let result = backend
        .complete_answer(&req, &TaskContext::default())
        .await
        .unwrap();
    assert!(
        result["answer"].as_str().unwrap().starts_with("Nothing"),
        "{result}"
    );
}

#[tokio::test]
async fn full_query_analyses_retrieves_answers_and_reports_progress() {
    let docs = corpus();
    let backend = backend::build(&config(docs.path())).await.unwrap();
    let (cx, progress) = TaskContext::new();
    let req = FullQuery {
        question: "Which image formats may be uploaded?".into(),
        image: Some(backend_support::red_blue_png_base64()),
        ..Default::default()
    };
    let result = backend.full_query(&req, &cx).await.unwrap();

    assert_eq!(result["analysis"]["format"], "png");
    assert_eq!(citations(&result)[0]["document"], "notes.txt");
    assert!(
        result["answer"]
            .as_str()
            .unwrap()
            .contains("PNG, JPEG, WebP or GIF")
    );
    assert_eq!(
        *progress.borrow(),
        Progress {
            percent: 100,
            message: "done".into()
        }
    );
}

#[tokio::test]
async fn full_query_without_an_image_has_no_analysis() {
    let docs = corpus();
    let backend = backend::build(&config(docs.path())).await.unwrap();
    let req = FullQuery {
        question: "What order are queues claimed in?".into(),
        ..Default::default()
    };
    let result = backend
        .full_query(&req, &TaskContext::default())
        .await
        .unwrap();
    assert!(result.get("analysis").is_none(), "{result:#}");
    assert_eq!(citations(&result)[0]["document"], "queue.md");
    assert_eq!(citations(&result)[0]["passage"], 2);
}

#[tokio::test]
async fn an_empty_question_is_bad_input() {
    let backend = backend::build(&BackendConfig::default()).await.unwrap();
    let req = CompleteAnswer {
        question: "   ".into(),
        ..Default::default()
    };
    let err = backend
        .complete_answer(&req, &TaskContext::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "bad_input");
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn a_missing_docs_folder_fails_the_build() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let err = backend::build(&config(&missing)).await.err().unwrap();
    assert!(
        matches!(err, BuildError::Docs { ref path, .. } if *path == missing),
        "{err}"
    );
}
