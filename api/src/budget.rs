//! A byte budget for request bodies in flight, so many large submissions at once cannot take
//! the API's memory with them.
//!
//! A submission's body is held while it is parsed, its image decoded and checked, and the
//! task written to Redis: a few times its size in memory, for as long as that takes. Each
//! request that carries a body reserves its length (`Content-Length`, or the body limit for a
//! body of unknown length) from one budget before it is read, and gives it back when its
//! response is ready. A request that does not fit is answered at once with `503` and
//! `Retry-After`, rather than queued: a queue of waiting bodies would be held in memory too.
//! A body larger than the whole budget reserves all of it, so it runs, alone.
//!
//! The budget is counted in KiB, since a semaphore counts permits in `u32`.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{ApiError, ExpectedOutage};
use crate::state::AppState;

const UNIT: usize = 1024;

/// See the module documentation. Cheap to clone; clones share the budget.
#[derive(Debug, Clone)]
pub struct SubmissionBudget {
    permits: Arc<Semaphore>,
    total_units: u32,
    in_flight: Gauge,
}

/// A reservation of the budget, given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    _permit: OwnedSemaphorePermit,
    bytes: i64,
    in_flight: Gauge,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.in_flight.dec_by(self.bytes);
    }
}

/// The budget has no room for a request now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{bytes} bytes of submissions do not fit in the budget now")]
pub struct OverBudget {
    pub bytes: usize,
}

impl SubmissionBudget {
    /// A budget of `total_bytes` (at least 1 KiB, at most 4 TiB), reporting the bytes
    /// reserved in `in_flight`.
    pub fn new(total_bytes: usize, in_flight: Gauge) -> Self {
        let total_units = u32::try_from(total_bytes / UNIT).unwrap_or(u32::MAX).max(1);
        SubmissionBudget {
            permits: Arc::new(Semaphore::new(total_units as usize)),
            total_units,
            in_flight,
        }
    }

    /// Reserves `bytes`, or all of the budget if `bytes` is more, if that is free now.
    pub fn try_reserve(&self, bytes: usize) -> Result<Reservation, OverBudget> {
        let units = u32::try_from(bytes.div_ceil(UNIT))
            .unwrap_or(u32::MAX)
            .clamp(1, self.total_units);
        let permit = Arc::clone(&self.permits)
            .try_acquire_many_owned(units)
            .map_err(|_| OverBudget { bytes })?;
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        self.in_flight.inc_by(bytes);
        Ok(Reservation {
            _permit: permit,
            bytes,
            in_flight: self.in_flight.clone(),
        })
    }
}

/// The bytes a request's body may take: its `Content-Length` (at most `max_body`), `max_body`
/// for a body of unknown length, `None` for a request without a body.
fn body_bytes(request: &Request, max_body: usize) -> Option<usize> {
    let headers = request.headers();
    match headers.get(header::CONTENT_LENGTH) {
        Some(len) => match len.to_str().ok().and_then(|l| l.trim().parse::<u64>().ok()) {
            Some(0) => None,
            Some(n) => Some(usize::try_from(n).unwrap_or(usize::MAX).min(max_body)),
            // A malformed length is the body's reader's to refuse; reserve as for any body.
            None => Some(max_body),
        },
        None => headers
            .contains_key(header::TRANSFER_ENCODING)
            .then_some(max_body),
    }
}

/// Middleware: holds a [`Reservation`] for the body of each request while it is answered.
pub async fn limit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(bytes) = body_bytes(&request, state.limits().max_body_bytes) else {
        return next.run(request).await;
    };
    match state.submission_budget().try_reserve(bytes) {
        Ok(reservation) => {
            let response = next.run(request).await;
            drop(reservation);
            response
        }
        Err(over) => {
            let mut response = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "over_capacity",
                "too many large submissions are in progress; try again shortly",
            )
            .into_response();
            // Answered on purpose: logged at WARN, rate-limited, like a Redis outage.
            response.extensions_mut().insert(ExpectedOutage {
                what: "submission budget full",
                cause: over.to_string(),
            });
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_share_the_budget_and_give_it_back() {
        let gauge = Gauge::default();
        let budget = SubmissionBudget::new(10 * UNIT, gauge.clone());
        let a = budget.try_reserve(6 * UNIT).unwrap();
        assert_eq!(gauge.get(), 6 * UNIT as i64);
        // 5 KiB more does not fit next to 6 KiB; 4 KiB does.
        assert_eq!(
            budget.try_reserve(5 * UNIT).unwrap_err(),
            OverBudget { bytes: 5 * UNIT }
        );
        let b = budget.try_reserve(4 * UNIT).unwrap();
        assert!(budget.try_reserve(1).is_err(), "a byte still takes a unit");
        drop(a);
        assert_eq!(gauge.get(), 4 * UNIT as i64);
        let c = budget.try_reserve(5 * UNIT).unwrap();
        drop((b, c));
        assert_eq!(gauge.get(), 0);
    }

    #[test]
    fn a_body_larger_than_the_budget_runs_alone() {
        let budget = SubmissionBudget::new(4 * UNIT, Gauge::default());
        let small = budget.try_reserve(1).unwrap();
        assert!(budget.try_reserve(100 * UNIT).is_err());
        drop(small);
        let big = budget.try_reserve(100 * UNIT).unwrap();
        assert!(budget.try_reserve(1).is_err());
        drop(big);
        assert!(budget.try_reserve(1).is_ok());
    }

    #[test]
    fn only_requests_with_a_body_reserve() {
        let req = |headers: &[(&str, &str)]| {
            let mut b = Request::builder();
            for (k, v) in headers {
                b = b.header(*k, *v);
            }
            b.body(axum::body::Body::empty()).unwrap()
        };
        assert_eq!(body_bytes(&req(&[]), 100), None);
        assert_eq!(body_bytes(&req(&[("content-length", "0")]), 100), None);
        assert_eq!(body_bytes(&req(&[("content-length", "42")]), 100), Some(42));
        assert_eq!(
            body_bytes(&req(&[("content-length", "4200")]), 100),
            Some(100)
        );
        assert_eq!(
            body_bytes(&req(&[("transfer-encoding", "chunked")]), 100),
            Some(100)
        );
        assert_eq!(body_bytes(&req(&[("content-length", "x")]), 100), Some(100));
    }
}
