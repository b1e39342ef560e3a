//! Decoding of what the scripts return: task hashes and small status replies.

use std::collections::HashMap;
use std::time::Duration;

use redis::Value;

use crate::error::{QueueError, Result};
use crate::payload::{InputSummary, Payload};
use crate::task::{Progress, Task, TaskError, TaskId, TaskKind, TraceContext};

/// A task hash as field → value.
pub(crate) type Fields = HashMap<String, String>;

fn num<T: std::str::FromStr>(f: &Fields, name: &str) -> Result<Option<T>> {
    match f.get(name) {
        None => Ok(None),
        Some(v) if v.is_empty() => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| QueueError::Corrupt(format!("field {name} is not a number: {v:?}"))),
    }
}

fn req<T: std::str::FromStr>(f: &Fields, name: &str) -> Result<T> {
    num(f, name)?.ok_or_else(|| QueueError::Corrupt(format!("task hash lacks {name}")))
}

fn text(f: &Fields, name: &str) -> Result<String> {
    f.get(name)
        .cloned()
        .ok_or_else(|| QueueError::Corrupt(format!("task hash lacks {name}")))
}

fn json(f: &Fields, name: &str) -> Result<Option<serde_json::Value>> {
    match f.get(name) {
        None => Ok(None),
        Some(v) => serde_json::from_str(v)
            .map(Some)
            .map_err(|e| QueueError::Corrupt(format!("field {name} is not JSON: {e}"))),
    }
}

/// The payload, read as the stored kind says.
pub(crate) fn payload(kind: TaskKind, json: &str) -> Result<Payload> {
    Payload::from_json(kind, json)
        .map_err(|e| QueueError::Corrupt(format!("payload is not a valid {kind} payload: {e}")))
}

/// The fields of a task hash that [`task`] reads: never the payload (nor the brief of it, nor
/// a worker's last report), so reading a task's state costs its size, not its input's.
pub(crate) const TASK_FIELDS: [&str; 26] = [
    "id",
    "queue",
    "kind",
    "state",
    "attempts",
    "max_attempts",
    "enqueued_at",
    "started_at",
    "finished_at",
    "retry_at",
    "worker",
    "progress",
    "progress_msg",
    "result",
    "error_kind",
    "error_msg",
    "timeout_ms",
    "result_ttl_ms",
    "failure_ttl_ms",
    "idem_key",
    "owner",
    "cancel",
    "input_bytes",
    "image_bytes",
    "image_type",
    "input_sha256",
];

/// [`TASK_FIELDS`] zipped with an `HMGET` reply; `None` when the task does not exist.
pub(crate) fn task_fields(values: Vec<Option<String>>) -> Option<Fields> {
    let fields: Fields = TASK_FIELDS
        .iter()
        .zip(values)
        .filter_map(|(name, v)| v.map(|v| (name.to_string(), v)))
        .collect();
    (!fields.is_empty()).then_some(fields)
}

fn opt_text(f: &Fields, name: &str) -> Option<String> {
    f.get(name).filter(|v| !v.is_empty()).cloned()
}

/// The trace context a task hash carries: `None` for a task submitted without one (and every
/// task enqueued before the queue kept them).
pub(crate) fn trace(f: &Fields) -> Option<TraceContext> {
    Some(TraceContext {
        traceparent: opt_text(f, "traceparent")?,
        tracestate: f.get("tracestate").cloned().unwrap_or_default(),
    })
}

/// Builds a [`Task`] from its hash.
pub(crate) fn task(f: &Fields) -> Result<Task> {
    let error = match (opt_text(f, "error_kind"), f.get("error_msg")) {
        (Some(kind), msg) => Some(TaskError::new(kind, msg.cloned().unwrap_or_default())),
        _ => None,
    };
    Ok(Task {
        id: TaskId::from_str_unchecked(text(f, "id")?),
        queue: text(f, "queue")?,
        kind: text(f, "kind")?.parse()?,
        input: InputSummary {
            bytes: num(f, "input_bytes")?.unwrap_or(0),
            image_bytes: num(f, "image_bytes")?,
            image_type: opt_text(f, "image_type"),
            sha256: f.get("input_sha256").cloned().unwrap_or_default(),
        },
        state: text(f, "state")?.parse()?,
        attempts: req(f, "attempts")?,
        max_attempts: req(f, "max_attempts")?,
        enqueued_at_ms: req(f, "enqueued_at")?,
        started_at_ms: num(f, "started_at")?,
        finished_at_ms: num(f, "finished_at")?,
        retry_at_ms: num(f, "retry_at")?,
        worker: opt_text(f, "worker"),
        progress: Progress {
            percent: num(f, "progress")?.unwrap_or(0),
            message: f.get("progress_msg").cloned().unwrap_or_default(),
        },
        result: json(f, "result")?,
        error,
        timeout: Duration::from_millis(req(f, "timeout_ms")?),
        result_ttl: Duration::from_millis(req(f, "result_ttl_ms")?),
        failure_ttl: Duration::from_millis(req(f, "failure_ttl_ms")?),
        idempotency_key: opt_text(f, "idem_key"),
        owner: opt_text(f, "owner"),
        cancel_requested: f.get("cancel").is_some_and(|v| v == "1"),
    })
}

/// A script's status reply `{code, ...}` as strings.
pub(crate) fn status(v: &Value) -> Result<Vec<String>> {
    match v {
        Value::Array(items) => items.iter().map(scalar).collect(),
        other => Err(QueueError::Corrupt(format!(
            "unexpected script reply {other:?}"
        ))),
    }
}

/// One scalar reply as a string (bulk, simple or integer).
pub(crate) fn scalar(v: &Value) -> Result<String> {
    match v {
        Value::BulkString(b) => Ok(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Ok(s.clone()),
        Value::Int(i) => Ok(i.to_string()),
        Value::Okay => Ok("OK".into()),
        other => Err(QueueError::Corrupt(format!("unexpected reply {other:?}"))),
    }
}

/// One integer reply.
pub(crate) fn int(v: &Value) -> Result<i64> {
    match v {
        Value::Int(i) => Ok(*i),
        other => scalar(other)?
            .parse()
            .map_err(|_| QueueError::Corrupt(format!("expected an integer, got {other:?}"))),
    }
}

/// A flat field/value array as a map.
pub(crate) fn pairs(v: &Value) -> Result<Fields> {
    match v {
        Value::Array(items) => {
            let mut out = HashMap::with_capacity(items.len() / 2);
            for pair in items.chunks(2) {
                if let [k, v] = pair {
                    out.insert(scalar(k)?, scalar(v)?);
                }
            }
            Ok(out)
        }
        Value::Map(entries) => entries
            .iter()
            .map(|(k, v)| Ok((scalar(k)?, scalar(v)?)))
            .collect(),
        Value::Nil => Ok(HashMap::new()),
        other => Err(QueueError::Corrupt(format!(
            "expected a hash, got {other:?}"
        ))),
    }
}

/// An array of scalars.
pub(crate) fn list(v: &Value) -> Result<Vec<String>> {
    match v {
        Value::Array(items) => items.iter().map(scalar).collect(),
        Value::Nil => Ok(Vec::new()),
        other => Err(QueueError::Corrupt(format!(
            "expected a list, got {other:?}"
        ))),
    }
}
