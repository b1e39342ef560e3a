//! The Redis key layout of one key prefix (see `docs/queue.md`).
//!
//! A key prefix's tasks live in one or more **partitions**. A partition is a hash tag: every
//! key of a partition (its tasks, idempotency keys, events stream, sequence and the keys of
//! each queue) hashes to one Redis Cluster slot, so a script may touch any of them, and
//! different partitions land on different slots and so, in a cluster, on different masters.
//!
//! - With one partition (the default) every key starts with `{<key_prefix>}:`, the layout of
//!   every release before partitions existed.
//! - With `P > 1`, partition `p` starts with `{<key_prefix>:p<p>of<P>:<n>}:`, where `n` is the
//!   smallest number that puts the tag's slot in the `p`-th of `P` equal slot ranges. With
//!   the usual even split of slots over `M` masters and `P` a multiple of `M`, each master
//!   serves `P / M` partitions.
//!
//! A task's id says which partition it lives in (see [`Partition::new_task_id`]), so any
//! component finds a task from its id alone. Prefix-wide keys (the worker registry, the
//! recorded partition count, the dashboard history) keep the `{<key_prefix>}:` tag.

use crate::task::TaskId;

/// Redis Cluster's slot count.
const SLOTS: u32 = 16384;

/// The key prefix every component uses unless told otherwise.
pub const DEFAULT_KEY_PREFIX: &str = "ragpool";

/// The most partitions a key prefix may have; far more than masters anyone runs, and few
/// enough that a pass over every partition stays a handful of round trips.
pub const MAX_PARTITIONS: u16 = 64;

/// The slot of a key or hash tag (CRC16/XMODEM, as Redis Cluster computes it).
pub fn slot(tag: &str) -> u16 {
    (u32::from(crc16::State::<crc16::XMODEM>::calculate(tag.as_bytes())) % SLOTS) as u16
}

/// Builds key names for one key prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
    key_prefix: String,
    partitions: Vec<Partition>,
}

/// One partition of a key prefix: its keys share one hash tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    index: u16,
    count: u16,
    prefix: String,
}

impl Keys {
    /// The keys of a key prefix with one partition.
    pub fn new(key_prefix: &str) -> Self {
        Self::with_partitions(key_prefix, 1)
    }

    /// The keys of a key prefix split into `count` partitions (at least 1; callers validate
    /// the upper bound, [`MAX_PARTITIONS`]).
    pub fn with_partitions(key_prefix: &str, count: u16) -> Self {
        let count = count.max(1);
        Keys {
            prefix: format!("{{{key_prefix}}}:"),
            key_prefix: key_prefix.to_string(),
            partitions: (0..count)
                .map(|index| Partition::new(key_prefix, index, count))
                .collect(),
        }
    }

    /// `{prefix}:` — the tag of the prefix-wide keys (and of the only partition when there is
    /// one).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn key_prefix(&self) -> &str {
        &self.key_prefix
    }

    /// Every partition of the layout, in index order.
    pub fn partitions(&self) -> &[Partition] {
        &self.partitions
    }

    /// The partition count.
    pub fn count(&self) -> u16 {
        self.partitions.len() as u16
    }

    /// The partition a task lives in, read from its id. An id made under another partition
    /// count still names its own partition, so a task stays reachable by id after the count
    /// changed.
    pub fn of_task(&self, id: &TaskId) -> Partition {
        let (index, count) = id.partition().unwrap_or((0, 1));
        match self.partitions.get(usize::from(index)) {
            Some(p) if p.count == count => p.clone(),
            _ => Partition::new(&self.key_prefix, index, count),
        }
    }

    /// The hash key of a task, in the partition its id names.
    pub fn task(&self, id: &TaskId) -> String {
        self.of_task(id).task(id.as_str())
    }

    /// The partition that holds an idempotency key (and so the task it names): chosen by the
    /// key's own hash, so a replay finds the first task without knowing its id.
    pub fn of_idempotency(&self, key: &str) -> &Partition {
        let i = usize::from(slot(key)) % self.partitions.len();
        &self.partitions[i]
    }

    /// The home partition of an owner with limits (see [`crate::OwnerShare`]): all its tasks
    /// and idempotency keys live there, so its counts are exact.
    pub fn of_owner(&self, owner: &str) -> &Partition {
        self.of_idempotency(owner)
    }

    /// STRING: the partition count the key prefix was laid out with, written by the first
    /// process that used it; every process checks its own count against it.
    pub fn layout(&self) -> String {
        format!("{}partitions", self.prefix)
    }

    /// The outage clock under the prefix-wide tag: the only partition's clock when there
    /// is one partition (see [`Partition::clock`]); unused otherwise.
    pub fn clock(&self) -> String {
        format!("{}clock", self.prefix)
    }

    pub fn workers(&self) -> String {
        format!("{}workers", self.prefix)
    }

    pub fn worker(&self, id: &str) -> String {
        format!("{}worker:{id}", self.prefix)
    }

    /// HASH minute → sample: a queue's chart history, prefix-wide.
    pub fn history(&self, queue: &str) -> String {
        format!("{}q:{queue}:history", self.prefix)
    }

    /// The keys of one backend limit key (see [`crate::limits`]), under a hash tag of their
    /// own, `{<key_prefix>:backend:<name>}:`, so that on a cluster each limit key is one slot.
    pub fn backend_limit(&self, name: &str) -> LimitKeys {
        let base = format!("{{{}:backend:{name}}}:", self.key_prefix);
        LimitKeys {
            permits: format!("{base}permits"),
            state: format!("{base}state"),
        }
    }
}

/// Key names of one backend limit key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitKeys {
    /// ZSET permit id → lease deadline (ms): the backend calls running now.
    pub permits: String,
    /// HASH: the adaptive limit, the no-load latency, the requests-per-minute bucket and the
    /// pause (see `lua/limits.lua`).
    pub state: String,
}

impl Partition {
    fn new(key_prefix: &str, index: u16, count: u16) -> Partition {
        let prefix = if count <= 1 {
            format!("{{{key_prefix}}}:")
        } else {
            let lo = u32::from(index) * SLOTS / u32::from(count);
            let hi = (u32::from(index) + 1) * SLOTS / u32::from(count);
            // About `count` tries on average; every process finds the same `n`.
            let tag = (0u32..)
                .map(|n| format!("{key_prefix}:p{index}of{count}:{n}"))
                .find(|tag| (lo..hi).contains(&u32::from(slot(tag))))
                .unwrap_or_else(|| format!("{key_prefix}:p{index}of{count}"));
            format!("{{{tag}}}:")
        };
        Partition {
            index,
            count,
            prefix,
        }
    }

    pub fn index(&self) -> u16 {
        self.index
    }

    /// `{tag}:` — scripts derive task keys from it.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The Redis Cluster slot every key of the partition hashes to.
    pub fn slot(&self) -> u16 {
        let tag = self
            .prefix
            .strip_prefix('{')
            .and_then(|rest| rest.strip_suffix("}:"))
            .unwrap_or(&self.prefix);
        slot(tag)
    }

    /// STRING written before each `WAIT` under `replicated` durability, so the wait covers
    /// the latest writes of the master serving this partition (see `durability`). With one
    /// partition it is `{<key_prefix>}:replication-probe`.
    pub fn replication_probe(&self) -> String {
        format!("{}replication-probe", self.prefix)
    }

    /// A fresh id for a task of this partition: a random UUID (version 4) with one
    /// partition; with more, a UUID of version 8 (RFC 9562's layout for application data)
    /// whose last two bytes are the partition count and index, and 106 random bits.
    pub fn new_task_id(&self) -> TaskId {
        if self.count <= 1 {
            TaskId::new()
        } else {
            TaskId::in_partition(self.index, self.count)
        }
    }

    pub fn task(&self, id: &str) -> String {
        format!("{}task:{id}", self.prefix)
    }

    /// STRING: a task's payload, apart from its hash so that reading a task's state never
    /// carries its input; only a claim (and an inspection by id) reads it.
    pub fn payload(&self, id: &str) -> String {
        format!("{}payload:{id}", self.prefix)
    }

    /// STRING: the answer text a running task has streamed so far (see `stream.rs`); it
    /// expires on its own a task timeout after the last piece.
    pub fn text(&self, id: &str) -> String {
        format!("{}text:{id}", self.prefix)
    }

    /// STRING: a large payload on its way in, written in pieces before the enqueue script
    /// renames it to [`Partition::payload`]; it expires on its own when the enqueue never
    /// comes (see `broker/enqueue.rs`).
    pub fn staging(&self, id: &str) -> String {
        format!("{}staging:{id}", self.prefix)
    }

    /// HASH: payload bytes of the partition's queued tasks: `all`, `queue:<name>` and
    /// `owner:<name>` (an API key's name), for the backlog limits and the stats.
    pub fn queued_bytes(&self) -> String {
        format!("{}queued_bytes", self.prefix)
    }

    /// HASH: per owner (an API key's name) `tasks:<owner>`, its tasks queued or started in
    /// this partition (the queued ones are its entries in the queues' `by:<owner>` sets, the
    /// rest are started), and `max:<owner>`, its `maxInFlight`.
    pub fn owners(&self) -> String {
        format!("{}owners", self.prefix)
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

    /// SET of the queue names that have seen tasks in this partition.
    pub fn queues(&self) -> String {
        format!("{}queues", self.prefix)
    }

    /// HASH: the outage clock — when an executor last ran a periodic script here, and until
    /// when reaping is held after a time nobody could reach this partition's server.
    pub fn clock(&self) -> String {
        format!("{}clock", self.prefix)
    }

    /// The keys of one named queue in this partition.
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
            turns: format!("{base}turns"),
            fair: format!("{base}fair"),
            base,
        }
    }
}

/// Key names of one queue in one partition.
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
    /// ZSET owner → virtual time: the owners whose turn may come, lowest first (fair share;
    /// see `lua/common.lua`).
    pub turns: String,
    /// HASH: the fair-share clock (`v`), owners' weights (`w:<owner>`) and where owners that
    /// left stopped (`f:<owner>`).
    pub fair: String,
    base: String,
}

impl QueueKeys {
    /// ZSET id → sequence number: one owner's queued tasks (`''` for tasks without one).
    pub fn owned(&self, owner: &str) -> String {
        format!("{}by:{owner}", self.base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_partition_keeps_the_key_prefix_tag() {
        let keys = Keys::new("ragpool");
        let p = &keys.partitions()[0];
        assert_eq!(p.prefix(), "{ragpool}:");
        assert_eq!(p.slot(), slot("ragpool"));
        assert_eq!(p.replication_probe(), "{ragpool}:replication-probe");
        assert_eq!(
            p.queue("full_query").started,
            "{ragpool}:q:full_query:active"
        );
        assert_eq!(keys.workers(), "{ragpool}:workers");
        let id = p.new_task_id();
        assert_eq!(id.partition(), None);
        assert_eq!(keys.of_task(&id), *p);
    }

    #[test]
    fn partitions_take_equal_slot_ranges() {
        for count in [2u16, 3, 6, 12, MAX_PARTITIONS] {
            let keys = Keys::with_partitions("ragpool", count);
            for p in keys.partitions() {
                let tag = p
                    .prefix()
                    .trim_start_matches('{')
                    .split('}')
                    .next()
                    .unwrap();
                let s = u32::from(slot(tag));
                let i = u32::from(p.index());
                let c = u32::from(count);
                assert!(
                    s >= i * SLOTS / c && s < (i + 1) * SLOTS / c,
                    "{tag} slot {s}"
                );
                // The probe a `WAIT` follows lands on the master serving the partition.
                assert_eq!(u32::from(p.slot()), s, "{tag}");
                assert!(p.replication_probe().starts_with(p.prefix()));
            }
        }
        // Spot values, so a change of tag or hash shows here first.
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("ragpool"), slot("ragpool"));
    }

    #[test]
    fn a_task_is_found_from_its_id_under_any_count() {
        let six = Keys::with_partitions("ns", 6);
        let one = Keys::new("ns");
        for p in six.partitions() {
            let id = p.new_task_id();
            assert_eq!(id.partition(), Some((p.index(), 6)));
            assert_eq!(six.of_task(&id), *p);
            // A process with another count still finds it.
            assert_eq!(one.of_task(&id).task(id.as_str()), p.task(id.as_str()));
            // The id is a canonical UUID, accepted where clients send ids.
            assert_eq!(id.as_str().parse::<TaskId>().unwrap(), id);
        }
    }

    #[test]
    fn idempotency_keys_spread_and_are_stable() {
        let keys = Keys::with_partitions("ns", 6);
        let mut seen = [0u32; 6];
        for i in 0..600 {
            let key = format!("order-{i}");
            let p = keys.of_idempotency(&key);
            assert_eq!(p, keys.of_idempotency(&key));
            seen[usize::from(p.index())] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
    }
}
