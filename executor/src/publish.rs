//! Publishes a running task's answer text as it is generated.
//!
//! A backend that streams puts each piece into the task's [`AnswerText`]; this loop sends what
//! accumulated to the queue ([`Broker::publish_delta`]), at once for the first piece (the
//! reader's time to first word) and then at most once per [`DELTA_INTERVAL`], so a task costs
//! Redis one script call per interval however fast the model generates. Text that cannot be
//! sent (Redis unreachable) stays pending and goes with the next call: pieces are never lost
//! or sent twice, only joined.

use std::time::Duration;

use ragpool_queue::{Broker, DeltaAck, Lease, QueueError};

use crate::backend::AnswerText;

/// The shortest time between two pieces of one task's text.
pub const DELTA_INTERVAL: Duration = Duration::from_millis(50);

/// Why publishing stopped the task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// A cancel was asked for.
    Canceled,
    /// The lease is gone: another executor may hold the task.
    LeaseLost,
}

/// Publishes `text` until the task is canceled or its lease lost; runs while the backend does,
/// and is dropped when it returns.
pub async fn publish_loop(broker: &Broker, lease: &Lease, text: &AnswerText) -> Stop {
    loop {
        text.changed().await;
        match publish_pending(broker, lease, text).await {
            Ok(Some(ack)) if ack.cancel_requested => return Stop::Canceled,
            Ok(_) => {}
            Err(QueueError::LeaseLost(_) | QueueError::NotFound(_)) => return Stop::LeaseLost,
            // Still pending: the next round sends it with what comes after.
            Err(e) => tracing::debug!(error = %e, "publishing answer text failed; retrying"),
        }
        tokio::time::sleep(DELTA_INTERVAL).await;
    }
}

/// Sends the text not published yet, if any.
pub async fn publish_pending(
    broker: &Broker,
    lease: &Lease,
    text: &AnswerText,
) -> Result<Option<DeltaAck>, QueueError> {
    let Some((piece, end)) = text.pending() else {
        return Ok(None);
    };
    let ack = broker.publish_delta(lease, &piece).await?;
    text.published(end);
    Ok(Some(ack))
}
