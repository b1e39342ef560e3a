//! The RAG service the executors call in a chaos run: it answers deterministically from the
//! question, so a wrong or mixed-up result is detectable, and it counts the calls of every
//! task (with the attempt each call said it was, and when it came).

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// What the service saw: per task id, the attempt number and arrival time of each call, in
/// arrival order.
pub type Calls = HashMap<String, Vec<(u32, Instant)>>;

/// The counting service on 127.0.0.1.
pub struct CountingBackend {
    pub url: String,
    calls: Arc<Mutex<Calls>>,
}

impl CountingBackend {
    pub async fn start() -> anyhow::Result<CountingBackend> {
        let calls: Arc<Mutex<Calls>> = Arc::default();
        let app = Router::new().fallback(handle).with_state(calls.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the counting backend")?;
        let url = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(CountingBackend { url, calls })
    }

    /// Every call so far.
    pub fn calls(&self) -> Calls {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The answer the service gives for `question`: the whole check of a result.
pub fn expected_answer(question: &str) -> Value {
    json!({ "answer": format!("{}:{}", question.len(), question.chars().rev().collect::<String>()) })
}

/// Between 50 and 450 ms, fixed per question: long enough that kills land mid-task.
fn work_time(question: &str) -> Duration {
    let mut h = DefaultHasher::new();
    question.hash(&mut h);
    Duration::from_millis(50 + h.finish() % 400)
}

async fn handle(
    State(calls): State<Arc<Mutex<Calls>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let id = header("x-ragpool-task-id").unwrap_or_default();
    let attempt = header("x-ragpool-attempt")
        .and_then(|a| a.parse().ok())
        .unwrap_or(0);
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let question = body["question"].as_str().unwrap_or_default().to_owned();
    calls
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(id)
        .or_default()
        .push((attempt, Instant::now()));
    tokio::time::sleep(work_time(&question)).await;
    axum::Json(expected_answer(&question)).into_response()
}
