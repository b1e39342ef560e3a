//! Queue settings and the claim policy.
//!
//! [`QueueConfig`] is one queue's settings. [`QueueSettings`] is how every binary describes
//! its queues: the API, the executor and `ragpool dev` turn their flags into one and call
//! [`QueueSettings::resolve`]; the operator writes the executor's queue list with
//! [`QueueEntry::format_list`], the inverse of [`QueueEntry::parse_list`]. The defaults live
//! in [`QueueConfig::named`], so a queue name means the same settings everywhere.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{QueueError, Result};
use crate::task::TaskKind;

/// Settings of one named queue. New tasks take their timeout, TTLs, attempts and backoff from
/// here and carry them, so executors and reapers need no configuration of their own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueConfig {
    pub name: String,
    /// How long one attempt may run before the executor stops it.
    #[serde(with = "secs")]
    pub timeout: Duration,
    /// How long a finished task (and its result) is kept.
    #[serde(with = "secs")]
    pub result_ttl: Duration,
    /// How long a failed or canceled task is kept.
    #[serde(with = "secs")]
    pub failure_ttl: Duration,
    /// Attempts before a retryable error becomes a failure (1 = no retry).
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt up to `backoff_max`, with jitter.
    #[serde(with = "secs")]
    pub backoff_base: Duration,
    #[serde(with = "secs")]
    pub backoff_max: Duration,
    /// Share of claims under the weighted policy.
    pub weight: u32,
    /// How long a finished or canceled task keeps its payload, for inspecting inputs; zero
    /// (the default) deletes it in the step that ends the task. Never longer than the task's
    /// own TTL. A failed task keeps its payload for its failure TTL whatever this says, so it
    /// can be retried.
    #[serde(with = "secs", default)]
    pub keep_payload: Duration,
}

impl QueueConfig {
    /// A queue with the seed's defaults: 10 min timeout, results kept 1 h, failures 24 h,
    /// 3 attempts, backoff from 1 s up to 5 min.
    pub fn new(name: impl Into<String>) -> Self {
        QueueConfig {
            name: name.into(),
            timeout: Duration::from_secs(600),
            result_ttl: Duration::from_secs(3600),
            failure_ttl: Duration::from_secs(24 * 3600),
            max_attempts: 3,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            weight: 1,
            keep_payload: Duration::ZERO,
        }
    }

    /// The default settings of queue `name`: the seed's for its three queues (see
    /// [`default_queues`]), [`QueueConfig::new`]'s for any other.
    pub fn named(name: &str) -> Self {
        default_queues()
            .into_iter()
            .find(|q| q.name == name)
            .unwrap_or_else(|| QueueConfig::new(name))
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// Checks the values a queue cannot work with.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str| Err(QueueError::Config(format!("queue {:?}: {what}", self.name)));
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            return bad("name must be non-empty ASCII letters, digits, '_', '-' or '.'");
        }
        if self.max_attempts == 0 {
            return bad("max_attempts must be at least 1");
        }
        if self.timeout.is_zero() || self.result_ttl.is_zero() || self.failure_ttl.is_zero() {
            return bad("timeout and TTLs must be positive");
        }
        if self.backoff_base > self.backoff_max {
            return bad("backoff_base must not exceed backoff_max");
        }
        Ok(())
    }
}

/// One queue per task kind, highest priority first, with the kind's default timeout and
/// weight ([`TaskKind::descriptor`]): `image_analysis` (10 min, weight 6),
/// `answer_generation` (10 min, 3), `full_query` (15 min, 1).
pub fn default_queues() -> Vec<QueueConfig> {
    TaskKind::ALL
        .iter()
        .map(|kind| {
            let d = kind.descriptor();
            QueueConfig::new(d.queue)
                .with_timeout(Duration::from_secs(d.timeout_secs))
                .with_weight(d.weight)
        })
        .collect()
}

/// One item of a queue list: a queue name and, optionally, its weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueEntry {
    pub name: String,
    pub weight: Option<u32>,
}

impl QueueEntry {
    /// Reads a queue list, `name[=weight]` items highest priority first (`:` works as well as
    /// `=`; the items may come comma-separated or already split). Blank items are skipped.
    /// This is the syntax of the executor's `--queues` / `RAGPOOL_QUEUES`.
    pub fn parse_list<S: AsRef<str>>(items: &[S]) -> Result<Vec<QueueEntry>> {
        let mut out: Vec<QueueEntry> = Vec::new();
        for item in items
            .iter()
            .flat_map(|i| i.as_ref().split(','))
            .map(str::trim)
            .filter(|i| !i.is_empty())
        {
            let (name, weight) = match item.split_once([':', '=']) {
                Some((name, w)) => {
                    let w: u32 = w.parse().ok().filter(|w| *w > 0).ok_or_else(|| {
                        QueueError::Config(format!(
                            "weight of {name:?} must be a positive integer, got {w:?}"
                        ))
                    })?;
                    (name, Some(w))
                }
                None => (item, None),
            };
            if out.iter().any(|q| q.name == name) {
                return Err(QueueError::Config(format!("{name:?} is listed twice")));
            }
            out.push(QueueEntry {
                name: name.to_string(),
                weight,
            });
        }
        Ok(out)
    }

    /// Writes a queue list that [`QueueEntry::parse_list`] reads back.
    pub fn format_list(entries: &[QueueEntry]) -> String {
        entries
            .iter()
            .map(|e| match e.weight {
                Some(w) => format!("{}={w}", e.name),
                None => e.name.clone(),
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// How a binary describes its queues, whatever flags it reads them from: which queues, and
/// what to change from their defaults ([`QueueConfig::named`]). Unset means the default.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueSettings {
    /// The queues, highest priority first; empty means the seed's three.
    pub queues: Vec<QueueEntry>,
    pub max_attempts: Option<u32>,
    pub result_ttl: Option<Duration>,
    pub failure_ttl: Option<Duration>,
    /// How long ended tasks keep their payloads; see [`QueueConfig::keep_payload`].
    pub keep_payload: Option<Duration>,
    /// Time limit of one attempt, by task kind; it applies to the kind's queue
    /// ([`TaskKind::queue`]) when that queue is among `queues`.
    pub timeouts: Vec<(TaskKind, Duration)>,
}

impl QueueSettings {
    /// The queue settings these describe, each checked.
    pub fn resolve(&self) -> Result<Vec<QueueConfig>> {
        let entries = if self.queues.is_empty() {
            default_queues()
                .into_iter()
                .map(|q| QueueEntry {
                    name: q.name,
                    weight: None,
                })
                .collect()
        } else {
            self.queues.clone()
        };
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            let mut q = QueueConfig::named(&entry.name);
            if let Some(w) = entry.weight {
                q.weight = w;
            }
            if let Some(n) = self.max_attempts {
                q.max_attempts = n;
            }
            if let Some(ttl) = self.result_ttl {
                q.result_ttl = ttl;
            }
            if let Some(ttl) = self.failure_ttl {
                q.failure_ttl = ttl;
            }
            if let Some(keep) = self.keep_payload {
                q.keep_payload = keep;
            }
            if let Some((_, t)) = self.timeouts.iter().find(|(k, _)| k.queue() == q.name) {
                q.timeout = *t;
            }
            q.validate()?;
            out.push(q);
        }
        Ok(out)
    }
}

/// The start-up check of a process that serves a key prefix (the API, an executor): a
/// partition count that differs from the key prefix's is an error to stop on, with
/// [`QueueError::Layout`]'s message. Redis being unreachable is not: a process starts
/// without it (and reports 503 or retries), so the check is only logged and happens again
/// on first use ([`crate::Broker::check_layout`] runs before every first enqueue, claim,
/// stats and maintenance).
pub async fn check_layout_at_start(broker: &crate::Broker) -> Result<()> {
    match broker.check_layout().await {
        Err(e @ QueueError::Layout { .. }) => Err(e),
        Err(e) => {
            tracing::warn!(
                error = %e,
                "cannot check the key prefix's partition count now; checked again on first use"
            );
            Ok(())
        }
        Ok(()) => Ok(()),
    }
}

/// How a consumer orders its queues when it claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ClaimPolicy {
    /// Always the first non-empty queue in the consumer's order (the seed's semantics).
    #[default]
    Strict,
    /// Queues are tried first in proportion to their weights, so a flood of high-priority work
    /// cannot starve the others; an empty queue's turn falls through to the next.
    Weighted,
}

impl std::str::FromStr for ClaimPolicy {
    type Err = QueueError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "strict" => Ok(ClaimPolicy::Strict),
            "weighted" => Ok(ClaimPolicy::Weighted),
            other => Err(QueueError::Config(format!(
                "unknown priority policy {other:?}: expected strict or weighted"
            ))),
        }
    }
}

/// Durations in whole seconds in serialized form (config files, CRDs).
mod secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_lists_read_back_what_they_write() {
        let entries =
            QueueEntry::parse_list(&["image_analysis:6, answer_generation=3", "x"]).unwrap();
        assert_eq!(
            QueueEntry::format_list(&entries),
            "image_analysis=6,answer_generation=3,x"
        );
        assert_eq!(QueueEntry::parse_list(&[" , "]).unwrap(), []);
        for (bad, reason) in [
            ("a,a", "listed twice"),
            ("a:0", "positive"),
            ("a=x", "positive"),
        ] {
            let e = QueueEntry::parse_list(&[bad]).unwrap_err().to_string();
            assert!(e.contains(reason), "{bad}: {e}");
        }
    }

    #[test]
    fn settings_apply_over_each_queues_defaults() {
        let settings = QueueSettings {
            queues: QueueEntry::parse_list(&["full_query=2,extra"]).unwrap(),
            max_attempts: Some(5),
            timeouts: vec![
                (TaskKind::FullQuery, Duration::from_secs(42)),
                (TaskKind::AnalyzeImage, Duration::from_secs(7)),
            ],
            ..QueueSettings::default()
        };
        let queues = settings.resolve().unwrap();
        let got: Vec<(&str, u32, u64, u32)> = queues
            .iter()
            .map(|q| {
                (
                    q.name.as_str(),
                    q.weight,
                    q.timeout.as_secs(),
                    q.max_attempts,
                )
            })
            .collect();
        assert_eq!(got, [("full_query", 2, 42, 5), ("extra", 1, 600, 5)]);

        let defaults = QueueSettings::default().resolve().unwrap();
        assert_eq!(defaults, default_queues());
        let bad = QueueSettings {
            max_attempts: Some(0),
            ..QueueSettings::default()
        };
        assert!(bad.resolve().is_err());
    }
}
