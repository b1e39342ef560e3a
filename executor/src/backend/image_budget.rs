//! A memory budget for decoding images, shared by every task of the executor.
//!
//! A small file can describe a huge image: a 35-byte GIF can declare a 16000×4000 canvas, a
//! 3 KB lossless WebP 9000×9000 pixels. So before a decode starts, its peak memory is
//! estimated from the header alone ([`super::analysis::decode_cost`]) and reserved here. An
//! image whose estimate is over the whole budget is refused as `bad_input`; one that does not
//! fit next to the decodes already running waits for them. So at most the budget is in use
//! for decoding at any time, however many tasks run at once.
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

/// Memory reserved for one decode, given back when dropped.
#[derive(Debug)]
pub(crate) struct ImageReservation {
    _permit: OwnedSemaphorePermit,
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
        let units = u32::try_from(bytes.div_ceil(UNIT))
            .unwrap_or(u32::MAX)
            .max(1);
        let permit = Arc::clone(&self.permits)
            .acquire_many_owned(units)
            .await
            .map_err(|_| BackendError::internal("the image memory budget was closed"))?;
        Ok(ImageReservation { _permit: permit })
    }
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
