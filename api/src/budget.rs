//! The reserved submission budget: a byte budget for the submissions being handled, so many
//! large submissions at once cannot take the API's memory with them, and one key cannot take
//! the whole budget from the others.
//!
//! A submission's body is held while it is read, parsed, its image checked and the task
//! written to Redis. The image is not copied on the way: it becomes the payload in the
//! buffer the body was read into, is checked a piece at a time, and is written to Redis in
//! pieces (see `docs/queue.md`, "Payloads"). [`COPIES`] is how many times over a body is held
//! at the peak, measured with the real binary; a submission reserves that many times
//! its declared length (`Content-Length`, or the body limit for a body of unknown length),
//! so the budget counts the memory a submission really takes.
//!
//! Only the extractors that read a body reserve (see `extract.rs`): a request that takes no
//! body reserves nothing, whatever its `Content-Length` says, and the caller is authenticated
//! before anything is reserved. The reservation lives as long as the request is handled and
//! is given back the moment it ends: answered, refused, or dropped because the client went.
//!
//! A request that does not fit is answered at once (`503 over_capacity`, or `429
//! over_key_share` when its key holds its share already), rather than queued: a queue of
//! waiting bodies would be held in memory too. A reservation larger than the whole budget
//! takes all of it, so it runs, alone; a key holding nothing may always reserve once, so a
//! share smaller than one body still lets the key submit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::metrics::gauge::Gauge;

/// How many times over a submission's body is held at its peak, rounded up: a JSON body is
/// held about once (its image becomes the payload in the body's buffer; the other fields are
/// parsed from a small copy) and a batch about twice (its items are copied out of the body
/// before the body is dropped). Measured with the test binary and `VmHWM` (1.07 for one
/// 13.3 MiB image, 2.0 for a batch carrying it; `budget::a_large_submission_holds_its_body_at_most_twice`);
/// see docs/operations.md.
pub const COPIES: usize = 2;

/// [`COPIES`] for a multipart body: its image is read into a buffer with room for its base64
/// (4/3 of its size) and encoded there, so it is held about 1.4 times (measured 1.39).
pub const MULTIPART_COPIES: usize = 2;

/// See the module documentation. Cheap to clone; clones share the budget.
#[derive(Debug, Clone)]
pub struct SubmissionBudget {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    total: usize,
    per_key: usize,
    usage: Mutex<Usage>,
    reserved_bytes: Gauge,
}

#[derive(Debug, Default)]
struct Usage {
    used: usize,
    /// Bytes held per key name; a key holding nothing has no entry.
    by_key: HashMap<String, usize>,
}

/// A reservation of the budget, given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: SubmissionBudget,
    bytes: usize,
    key: Option<String>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let inner = &self.budget.inner;
        let mut usage = inner.usage.lock().unwrap_or_else(PoisonError::into_inner);
        usage.used -= self.bytes;
        if let Some(key) = &self.key
            && let Some(held) = usage.by_key.get_mut(key)
        {
            *held -= self.bytes;
            if *held == 0 {
                usage.by_key.remove(key);
            }
        }
        inner.reserved_bytes.dec_by(gauge_value(self.bytes));
    }
}

/// Why a reservation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OverBudget {
    #[error("{bytes} bytes of submissions do not fit in the budget now")]
    Full { bytes: usize },
    #[error("{bytes} more bytes would take this key past its share of the budget")]
    KeyShare { bytes: usize },
}

impl SubmissionBudget {
    /// A budget of `total_bytes` (at least 1), of which one key may hold `key_share_percent`
    /// (1 to 100), reporting the bytes reserved in `reserved_bytes`.
    pub fn new(total_bytes: usize, key_share_percent: u8, reserved_bytes: Gauge) -> Self {
        let total = total_bytes.max(1);
        let per_key = (total / 100)
            .saturating_mul(usize::from(key_share_percent.clamp(1, 100)))
            .max(1);
        SubmissionBudget {
            inner: Arc::new(Inner {
                total,
                per_key,
                usage: Mutex::default(),
                reserved_bytes,
            }),
        }
    }

    /// Reserves `bytes` (all of the budget if `bytes` is more) for a request of `key` (none
    /// with auth off), if that fits now.
    pub fn try_reserve(&self, bytes: usize, key: Option<&str>) -> Result<Reservation, OverBudget> {
        let inner = &self.inner;
        let asked = bytes;
        let bytes = bytes.clamp(1, inner.total);
        let mut usage = inner.usage.lock().unwrap_or_else(PoisonError::into_inner);
        if usage.used + bytes > inner.total {
            return Err(OverBudget::Full { bytes: asked });
        }
        if let Some(key) = key {
            let held = usage.by_key.get(key).copied().unwrap_or(0);
            if held > 0 && held + bytes > inner.per_key {
                return Err(OverBudget::KeyShare { bytes: asked });
            }
            usage.by_key.insert(key.to_string(), held + bytes);
        }
        usage.used += bytes;
        inner.reserved_bytes.inc_by(gauge_value(bytes));
        Ok(Reservation {
            budget: self.clone(),
            bytes,
            key: key.map(str::to_string),
        })
    }
}

fn gauge_value(bytes: usize) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_share_the_budget_and_give_it_back() {
        let gauge = Gauge::default();
        let budget = SubmissionBudget::new(10, 100, gauge.clone());
        let a = budget.try_reserve(6, None).unwrap();
        assert_eq!(gauge.get(), 6);
        assert_eq!(
            budget.try_reserve(5, None).unwrap_err(),
            OverBudget::Full { bytes: 5 }
        );
        let b = budget.try_reserve(4, None).unwrap();
        assert!(budget.try_reserve(1, None).is_err());
        drop(a);
        assert_eq!(gauge.get(), 4);
        let c = budget.try_reserve(5, None).unwrap();
        drop((b, c));
        assert_eq!(gauge.get(), 0);
    }

    #[test]
    fn a_body_larger_than_the_budget_runs_alone() {
        let budget = SubmissionBudget::new(4, 100, Gauge::default());
        let small = budget.try_reserve(1, None).unwrap();
        assert!(budget.try_reserve(100, None).is_err());
        drop(small);
        let big = budget.try_reserve(100, None).unwrap();
        assert!(budget.try_reserve(1, None).is_err());
        drop(big);
        assert!(budget.try_reserve(1, None).is_ok());
    }

    #[test]
    fn one_key_holds_at_most_its_share() {
        let budget = SubmissionBudget::new(100, 50, Gauge::default());
        let a1 = budget.try_reserve(30, Some("a")).unwrap();
        let a2 = budget.try_reserve(20, Some("a")).unwrap();
        assert_eq!(
            budget.try_reserve(1, Some("a")).unwrap_err(),
            OverBudget::KeyShare { bytes: 1 }
        );
        // Another key still has room, and anonymous requests count only globally.
        let b = budget.try_reserve(40, Some("b")).unwrap();
        assert!(budget.try_reserve(10, None).is_ok());
        drop(a1);
        let a3 = budget.try_reserve(10, Some("a")).unwrap();
        drop((a2, a3, b));
        // A key holding nothing may take one body larger than its share.
        let big = budget.try_reserve(80, Some("a")).unwrap();
        assert!(budget.try_reserve(1, Some("a")).is_err());
        drop(big);
        assert!(budget.try_reserve(1, Some("a")).is_ok());
    }
}
