//! Queue settings and the claim policy.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{QueueError, Result};

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
        }
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

/// The seed's three queues, highest priority first: `image_analysis` (10 min),
/// `answer_generation` (10 min), `full_query` (15 min); weights 6/3/1.
pub fn default_queues() -> Vec<QueueConfig> {
    vec![
        QueueConfig::new("image_analysis").with_weight(6),
        QueueConfig::new("answer_generation").with_weight(3),
        QueueConfig::new("full_query")
            .with_timeout(Duration::from_secs(900))
            .with_weight(1),
    ]
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
