//! Queue statistics and the worker registry's records.

use serde::{Deserialize, Serialize};

/// Mean and percentiles of a duration over the recent window, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DurationSummary {
    /// How many samples the window holds.
    pub samples: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
}

/// One owner's (API key's) tasks over every queue: see `Broker::owner_stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OwnerStats {
    /// The key's name (never the key).
    pub owner: String,
    pub queued: u64,
    pub started: u64,
    /// Its `maxInFlight`, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u64>,
}

/// One queue's counts and timings, read in one atomic step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QueueStats {
    pub queue: String,
    /// Waiting to be claimed.
    pub queued: u64,
    /// Claimed and held under a lease.
    pub started: u64,
    /// Waiting out a retry backoff.
    pub delayed: u64,
    /// Ended and still kept (within their TTL).
    pub finished: u64,
    pub failed: u64,
    pub canceled: u64,
    /// Totals since the queue was first used.
    pub total_enqueued: u64,
    pub total_finished: u64,
    pub total_failed: u64,
    /// Leases that expired and were reaped (a worker died or stalled).
    pub total_lease_expired: u64,
    /// Time from claim to completion over the recent window.
    pub processing: DurationSummary,
    /// Time from becoming ready to being claimed over the recent window.
    pub wait: DurationSummary,
    /// Age of the oldest queued task in milliseconds, 0 when none is queued.
    pub oldest_queued_age_ms: u64,
    /// Payload bytes of the queued tasks: what the backlog holds in Redis, and what the
    /// queued-payload limits count.
    #[serde(default)]
    pub queued_payload_bytes: u64,
    /// Redis server time the snapshot was taken at, milliseconds since the epoch. Not
    /// serialized: a reply that lists several queues states its snapshot time once.
    #[serde(skip)]
    pub at_ms: u64,
}

/// What an executor says about itself in the worker registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct WorkerInfo {
    /// Unique per executor process.
    pub id: String,
    pub host: String,
    /// Kubernetes pod name, when running in a pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    pub queues: Vec<String>,
    pub concurrency: u32,
    pub in_flight: u32,
    /// Milliseconds since the epoch.
    pub started_at_ms: u64,
    pub last_seen_ms: u64,
    /// True once the executor has begun draining (SIGTERM) and claims nothing more.
    #[serde(default)]
    pub draining: bool,
}
