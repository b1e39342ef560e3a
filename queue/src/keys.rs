//! The Redis key layout of one namespace (see `docs/queue.md`).
//!
//! Every key starts with `{<namespace>}:`. The braces are a Redis Cluster hash tag: all keys
//! of a namespace hash to one slot, so every script may touch any of them.

/// Builds key names for one namespace.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(namespace: &str) -> Self {
        Keys {
            prefix: format!("{{{namespace}}}:"),
        }
    }

    /// `{ns}:` — scripts derive task keys from it.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn task(&self, id: &str) -> String {
        format!("{}task:{id}", self.prefix)
    }

    pub fn idempotency(&self, key: &str) -> String {
        format!("{}idem:{key}", self.prefix)
    }

    pub fn events(&self) -> String {
        format!("{}events", self.prefix)
    }

    pub fn seq(&self) -> String {
        format!("{}seq", self.prefix)
    }

    pub fn queues(&self) -> String {
        format!("{}queues", self.prefix)
    }

    /// Written before each `WAIT` under `replicated` durability, so the wait covers the
    /// primary's latest writes (see `durability`).
    pub fn replication_probe(&self) -> String {
        format!("{}replication-probe", self.prefix)
    }

    pub fn workers(&self) -> String {
        format!("{}workers", self.prefix)
    }

    /// HASH: the outage clock — when an executor last ran a periodic script, and until when
    /// reaping is held after a time nobody could reach Redis.
    pub fn clock(&self) -> String {
        format!("{}clock", self.prefix)
    }

    pub fn worker(&self, id: &str) -> String {
        format!("{}worker:{id}", self.prefix)
    }

    /// The keys of one named queue.
    pub fn queue(&self, name: &str) -> QueueKeys {
        let base = format!("{}q:{name}:", self.prefix);
        QueueKeys {
            ready: format!("{base}ready"),
            // Named `active` in Redis since the first release; renaming would strand the
            // leases of a running deployment.
            started: format!("{base}active"),
            delayed: format!("{base}delayed"),
            finished: format!("{base}finished"),
            failed: format!("{base}failed"),
            canceled: format!("{base}canceled"),
            signal: format!("{base}signal"),
            counters: format!("{base}counters"),
            processing: format!("{base}processing_ms"),
            wait: format!("{base}wait_ms"),
        }
    }
}

/// Key names of one queue.
#[derive(Debug, Clone)]
pub struct QueueKeys {
    /// ZSET id → sequence number: FIFO order of queued tasks.
    pub ready: String,
    /// ZSET id → lease deadline (ms): the `started` tasks, held by workers (key `:active`).
    pub started: String,
    /// ZSET id → due time (ms): tasks waiting out a retry backoff.
    pub delayed: String,
    /// ZSETs id → expiry time (ms) of ended tasks, for counting and listing.
    pub finished: String,
    pub failed: String,
    pub canceled: String,
    /// LIST of wake-up tokens that blocked consumers wait on.
    pub signal: String,
    /// HASH of running totals.
    pub counters: String,
    /// LISTs of the most recent duration samples (ms).
    pub processing: String,
    pub wait: String,
}
