//! A memory budget for decoding images, shared by every task of the executor.
//!
//! A small file can describe a huge image: a 35-byte GIF can declare a 16000×4000 canvas, a
//! 3 KB lossless WebP 9000×9000 pixels, and a 1×1 PNG an ICC profile that inflates to GiBs.
//! So every byte a task's image costs is reserved here before it is allocated, in two steps:
//!
//! 1. the input: the encoded payload the task holds and its decoded copy (or, for an
//!    `image_url`, the fetch cap, shrunk to what arrived), and what opening a decoder on it
//!    takes ([`super::analysis::probe_cost`]: a file copy, metadata up to a fixed allowance);
//! 2. the decode, estimated from the header ([`super::analysis::decode_cost`]).
//!
//! A later step is added to what the task holds if it fits at once ([`ImageBudget::grow`]);
//! if not, the task gives everything back and waits until the whole amount fits: a task never
//! waits while holding part of the budget, so two tasks cannot each hold what the other waits
//! for. While it waits, its image bytes are outside the budget.
//!
//! An image whose total is over the whole budget is refused as `bad_input`; one that does not
//! fit next to the decodes already running waits for them. So at most the budget is in use
//! for images at any time, however many tasks run at once.
//!
//! The budget is counted in KiB, since a semaphore counts permits in `u32`.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::BackendError;

const UNIT: u64 = 1024;

/// The default budget, `RAGPOOL_IMAGE_MEMORY_BYTES`.
pub const DEFAULT_IMAGE_MEMORY_BYTES: u64 = 256 * 1024 * 1024;

/// See the module documentation. Clones share the budget.
#[derive(Debug, Clone)]
pub(crate) struct ImageBudget {
    permits: Arc<Semaphore>,
    total_bytes: u64,
}

/// Memory reserved for one image, given back when dropped.
#[derive(Debug)]
pub(crate) struct ImageReservation {
    permit: OwnedSemaphorePermit,
    permits: Arc<Semaphore>,
}

impl ImageBudget {
    pub fn new(total_bytes: u64) -> Self {
        let units = u32::try_from(total_bytes / UNIT).unwrap_or(u32::MAX).max(1);
        ImageBudget {
            permits: Arc::new(Semaphore::new(units as usize)),
            total_bytes: u64::from(units) * UNIT,
        }
    }

    /// Reserves `bytes`, waiting for decodes in progress to give theirs back; refuses an
    /// image that would not fit even alone.
    pub async fn reserve(&self, bytes: u64) -> Result<ImageReservation, BackendError> {
        if bytes > self.total_bytes {
            return Err(too_large(bytes, self.total_bytes));
        }
        let permit = Arc::clone(&self.permits)
            .acquire_many_owned(units(bytes))
            .await
            .map_err(|_| BackendError::internal("the image memory budget was closed"))?;
        Ok(ImageReservation {
            permit,
            permits: Arc::clone(&self.permits),
        })
    }

    /// `reservation` grown by `bytes`: at once if the room is free, else by giving it all back
    /// and waiting for the whole amount, so that no task waits while holding budget another
    /// one needs.
    pub async fn grow(
        &self,
        mut reservation: ImageReservation,
        bytes: u64,
    ) -> Result<ImageReservation, BackendError> {
        if reservation.try_grow(bytes) {
            return Ok(reservation);
        }
        let total = reservation.bytes() + bytes;
        drop(reservation);
        self.reserve(total).await
    }
}

impl ImageReservation {
    /// The bytes reserved (whole KiB).
    pub fn bytes(&self) -> u64 {
        self.permit.num_permits() as u64 * UNIT
    }

    /// Adds `bytes` if they are free now; never waits.
    pub fn try_grow(&mut self, bytes: u64) -> bool {
        match Arc::clone(&self.permits).try_acquire_many_owned(units(bytes)) {
            Ok(more) => {
                self.permit.merge(more);
                true
            }
            Err(_) => false,
        }
    }

    /// Gives back all but `bytes`.
    pub fn shrink_to(&mut self, bytes: u64) {
        let keep = units(bytes) as usize;
        let extra = self.permit.num_permits().saturating_sub(keep);
        drop(self.permit.split(extra));
    }
}

/// Budget units (KiB, rounded up, at least one) for `bytes`.
fn units(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(UNIT))
        .unwrap_or(u32::MAX)
        .max(1)
}

fn too_large(bytes: u64, budget: u64) -> BackendError {
    BackendError::bad_input(format!(
        "image too large for the memory budget: decoding it would take about {} MiB, \
         the budget is {} MiB",
        bytes.div_ceil(1 << 20),
        budget >> 20
    ))
}

#[cfg(test)]
mod tests {
    use futures::FutureExt as _;

    use super::*;

    #[tokio::test]
    async fn decodes_share_the_budget_and_wait_for_room() {
        let budget = ImageBudget::new(10 * UNIT);
        let first = budget.reserve(6 * UNIT).await.unwrap();
        // 6 KiB more does not fit next to the first: it waits rather than failing.
        let mut second = Box::pin(budget.reserve(6 * UNIT));
        assert!((&mut second).now_or_never().is_none());
        drop(first);
        assert!(second.now_or_never().unwrap().is_ok());
    }

    #[tokio::test]
    async fn a_reservation_grows_only_into_free_room_and_shrinks() {
        let budget = ImageBudget::new(10 * UNIT);
        let mut first = budget.reserve(4 * UNIT).await.unwrap();
        let other = budget.reserve(4 * UNIT).await.unwrap();
        assert!(!first.try_grow(3 * UNIT), "only 2 KiB are free");
        assert_eq!(first.bytes(), 4 * UNIT, "a failed grow takes nothing");
        assert!(first.try_grow(2 * UNIT));
        assert_eq!(first.bytes(), 6 * UNIT);
        first.shrink_to(UNIT + 1);
        assert_eq!(first.bytes(), 2 * UNIT);
        drop(other);
        assert!(budget.reserve(8 * UNIT).now_or_never().unwrap().is_ok());
    }

    #[tokio::test]
    async fn two_tasks_growing_at_once_do_not_wait_for_each_other() {
        let budget = ImageBudget::new(10 * UNIT);
        let a = budget.reserve(5 * UNIT).await.unwrap();
        let b = budget.reserve(5 * UNIT).await.unwrap();
        // Neither fits next to the other; each gives its part back while it waits.
        let mut grow_a = Box::pin(budget.grow(a, 3 * UNIT));
        assert!((&mut grow_a).now_or_never().is_none());
        let mut grow_b = Box::pin(budget.grow(b, 3 * UNIT));
        assert!((&mut grow_b).now_or_never().is_none());
        let a = grow_a.now_or_never().expect("a has room").unwrap();
        assert_eq!(a.bytes(), 8 * UNIT);
        drop(a);
        let b = grow_b.now_or_never().expect("b has room").unwrap();
        assert_eq!(b.bytes(), 8 * UNIT);
    }

    #[tokio::test]
    async fn an_image_over_the_whole_budget_is_refused() {
        let budget = ImageBudget::new(10 * UNIT);
        let err = budget.reserve(10 * UNIT + 1).await.unwrap_err();
        assert_eq!(err.kind(), "bad_input");
        assert!(
            err.message()
                .starts_with("image too large for the memory budget"),
            "{err}"
        );
    }
}
