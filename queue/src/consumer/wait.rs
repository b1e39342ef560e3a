//! Waiting for work: `BLPOP` on the queues' wake-up lists, on a connection of the
//! consumer's own, or with several partitions one waiter per partition.

use std::sync::Arc;
use std::time::Duration;

use redis::Value;

use super::{Consumer, MAX_BLOCK};
use crate::conn::Conn;
use crate::error::Result;
use crate::events::AbortOnDrop;

/// The per-partition `BLPOP` loops of a consumer with several partitions.
pub(super) struct Watch {
    /// True while the consumer waits: a waiter blocks only then.
    waiting: tokio::sync::watch::Sender<bool>,
    woken: Arc<tokio::sync::Notify>,
    _waiters: Vec<AbortOnDrop>,
}

impl Consumer {
    /// Waits until a task may be ready on one of the queues, or `wait` (at most 5 s) passes;
    /// then call [`Consumer::try_claim`]. Unlike a claim, this wait may be abandoned at any
    /// point (a shutdown) without losing a task.
    pub async fn wait_for_work(&self, wait: Duration) -> Result<()> {
        self.wait_for_signal(wait.min(MAX_BLOCK)).await
    }

    /// Blocks until one of the queues' wake-up lists has a token, or `wait` passes.
    pub(super) async fn wait_for_signal(&self, wait: Duration) -> Result<()> {
        if self.broker.keys().count() > 1 {
            return self.wait_in_partitions(wait).await;
        }
        let mut guard = self.blocking.lock().await;
        let established = guard.is_some();
        let conn = match guard.as_mut() {
            Some(conn) => conn,
            None => guard.insert(Conn::open(&self.broker.config().target, None).await?),
        };
        let part = &self.broker.keys().partitions()[0];
        let mut cmd = redis::cmd("BLPOP");
        for name in &self.config.queues {
            cmd.arg(part.queue(name).signal);
        }
        // BLPOP takes seconds as a decimal; 0 would mean forever.
        cmd.arg(format!("{:.3}", wait.as_secs_f64().max(0.01)));
        let result: redis::RedisResult<Value> = cmd.query_async(conn).await;
        if let Err(e) = result {
            // Open a fresh connection next time rather than trusting this one.
            *guard = None;
            // A connection that worked and was cut (a failover demoting the primary ends its
            // blocked commands) counts as a wake-up: the caller claims again, on the
            // multiplexed connection, which reports a real outage.
            if established && (e.is_connection_dropped() || e.code() == Some("UNBLOCKED")) {
                return Ok(());
            }
            return Err(e.into());
        }
        Ok(())
    }

    /// [`Consumer::wait_for_signal`] with several partitions: the per-partition waiters
    /// block while this call waits, and the first token ends it.
    async fn wait_in_partitions(&self, wait: Duration) -> Result<()> {
        let mut guard = self.watch.lock().await;
        let watch = guard.get_or_insert_with(|| self.start_watch());
        let woken = watch.woken.clone();
        watch.waiting.send_replace(true);
        let _ = tokio::time::timeout(wait, woken.notified()).await;
        watch.waiting.send_replace(false);
        Ok(())
    }

    fn start_watch(&self) -> Watch {
        let (waiting, _) = tokio::sync::watch::channel(false);
        let woken = Arc::new(tokio::sync::Notify::new());
        let waiters = self
            .broker
            .keys()
            .partitions()
            .iter()
            .map(|part| {
                let signals: Vec<String> = self
                    .config
                    .queues
                    .iter()
                    .map(|q| part.queue(q).signal)
                    .collect();
                AbortOnDrop(tokio::spawn(watch_partition(
                    self.broker.config().target.clone(),
                    signals,
                    waiting.subscribe(),
                    woken.clone(),
                )))
            })
            .collect();
        Watch {
            waiting,
            woken,
            _waiters: waiters,
        }
    }
}

/// One partition's waiter: while the consumer waits, `BLPOP` on the partition's wake-up
/// lists; a token wakes the consumer, or goes back when the consumer no longer waits.
async fn watch_partition(
    target: crate::conn::RedisTarget,
    signals: Vec<String>,
    mut waiting: tokio::sync::watch::Receiver<bool>,
    woken: Arc<tokio::sync::Notify>,
) {
    let mut conn: Option<Conn> = None;
    let mut backoff = Duration::from_millis(100);
    loop {
        if waiting.wait_for(|w| *w).await.is_err() {
            return;
        }
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match Conn::open(&target, None).await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    tracing::debug!(error = %e, "wake-up connection failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BLOCK);
                    continue;
                }
            },
        };
        let mut cmd = redis::cmd("BLPOP");
        cmd.arg(&signals)
            .arg(format!("{:.3}", MAX_BLOCK.as_secs_f64()));
        match cmd.query_async::<Option<(String, String)>>(c).await {
            Ok(Some((key, _))) => {
                backoff = Duration::from_millis(100);
                if *waiting.borrow() {
                    woken.notify_one();
                } else {
                    // Taken for a consumer that stopped waiting: another may want it.
                    let pushed: redis::RedisResult<()> =
                        redis::cmd("LPUSH").arg(&key).arg("1").query_async(c).await;
                    if pushed.is_err() {
                        conn = None;
                    }
                }
            }
            Ok(None) => backoff = Duration::from_millis(100),
            Err(e) => {
                // Wake the consumer: its next claim reports a real outage.
                tracing::debug!(error = %e, "waiting for a wake-up failed");
                conn = None;
                woken.notify_one();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BLOCK);
            }
        }
    }
}
