//! Pool-wide limits on backend calls, shared by every executor through Redis: a semaphore of
//! leased permits, a requests-per-minute bucket, a pause a backend can ask for with
//! `Retry-After`, and an adaptive concurrency limit (see `docs/executor.md`).
//!
//! Executors that name the same **limit key** share one set of limits: by default a pool's
//! name, so two pools calling one model server can share its limits by naming one key. Each
//! transition is one script (`lua/backend_*.lua`) over the key's two Redis keys
//! ([`crate::keys::LimitKeys`]), which share a hash tag. Time is Redis server time.
//!
//! A permit is leased, not owned: its holder renews it while the call runs
//! ([`BackendLimiter::renew`]), and the next acquisition drops permits whose lease ran out, so
//! an executor that dies holding permits gives them back within one lease.

use std::time::Duration;

use redis::Value;

use crate::broker::{Broker, millis};
use crate::decode;
use crate::error::{QueueError, Result};
use crate::keys::LimitKeys;
use crate::scripts;

/// The limits of one limit key, as every executor sharing it is configured.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendLimits {
    /// Backend calls running at once across every executor of the key; 0 for no limit.
    /// Under [`Adaptive`] the ceiling the limit moves under.
    pub max_concurrent: u32,
    /// Backend calls started per minute across every executor of the key; 0 for no limit.
    pub requests_per_minute: u32,
    /// Model tokens per minute across every executor of the key (each call's estimate, then
    /// corrected by what it used); 0 for no limit.
    pub tokens_per_minute: u32,
    /// Moves the concurrency limit between a floor and `max_concurrent` from how calls go.
    pub adaptive: Option<Adaptive>,
    /// How long a permit lasts without renewal: a dead holder's permit comes back this long
    /// after its last renewal.
    pub permit_lease: Duration,
}

/// AIMD settings of an adaptive concurrency limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Adaptive {
    /// The limit never goes below this (at least 1).
    pub min: u32,
    /// A call slower than this many times the no-load latency counts as a sign of overload.
    pub latency_factor: f64,
}

/// The default [`Adaptive::latency_factor`]: a model server's latency at twice its no-load
/// value means requests are queueing inside it.
pub const DEFAULT_LATENCY_FACTOR: f64 = 2.0;

impl BackendLimits {
    /// No limits: permits are still counted, so the calls in flight are visible.
    pub fn none(permit_lease: Duration) -> Self {
        BackendLimits {
            max_concurrent: 0,
            requests_per_minute: 0,
            tokens_per_minute: 0,
            adaptive: None,
            permit_lease,
        }
    }

    /// Checks the combination, with a message naming the bad setting.
    pub fn validate(&self) -> Result<()> {
        let fail = |m: String| Err(QueueError::Config(m));
        if self.permit_lease < Duration::from_millis(100) {
            return fail(format!(
                "the backend permit lease must be at least 100 ms, got {:?}",
                self.permit_lease
            ));
        }
        if let Some(a) = &self.adaptive {
            if self.max_concurrent == 0 {
                return fail("an adaptive backend limit needs maxConcurrent".into());
            }
            if a.min == 0 || a.min > self.max_concurrent {
                return fail(format!(
                    "the adaptive backend limit's min must be between 1 and maxConcurrent ({}), \
                     got {}",
                    self.max_concurrent, a.min
                ));
            }
            if !(a.latency_factor.is_finite() && a.latency_factor > 1.0) {
                return fail(format!(
                    "the adaptive latency factor must be above 1, got {}",
                    a.latency_factor
                ));
            }
        }
        Ok(())
    }

    fn floor(&self) -> u32 {
        self.adaptive.map_or(0, |a| a.min)
    }

    fn latency_factor(&self) -> f64 {
        self.adaptive
            .map_or(DEFAULT_LATENCY_FACTOR, |a| a.latency_factor)
    }
}

/// What an acquisition got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// A permit: make the call, renew it while the call runs, then release it.
    Granted(Permit),
    /// The backend asked every caller of the key to wait this long (`Retry-After`).
    Paused(Duration),
    /// `in_use` calls run and the limit is `limit`: wait for one to end.
    Full { limit: u32, in_use: u32 },
    /// The requests-per-minute budget is spent: one more is available in this long.
    RateLimited(Duration),
}

/// A held permit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permit {
    pub id: String,
    /// Server time (ms) the permit was granted.
    pub granted_at_ms: u64,
    /// Its number among the key's admissions (an adaptive limit's cuts count only calls
    /// admitted after the last one).
    pub admission: u64,
    /// The concurrency limit in force when it was granted (0: none).
    pub limit: u32,
    /// The tokens the call was estimated to use, taken from the tokens-per-minute budget.
    pub tokens: u32,
    /// Permits held at that moment, this one included.
    pub in_use: u32,
}

/// How a call went, as far as the backend's load is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    /// It succeeded: its latency teaches the no-load latency and may raise the limit.
    Succeeded,
    /// The backend said it is overloaded (429, 503) or the call timed out.
    Overloaded,
    /// Anything else (a bad request, a canceled call): says nothing about load.
    Other,
}

/// What [`BackendLimiter::release`] reports about the key afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Released {
    /// The concurrency limit now (0: none).
    pub limit: u32,
    pub in_use: u32,
}

/// A limit key's state, read for status and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LimitState {
    /// Permits whose lease has not run out.
    pub in_use: u32,
    /// The adaptive limit, once one was computed.
    pub adaptive_limit: Option<f64>,
    /// How long calls are still paused for.
    pub paused_for: Duration,
    /// The no-load latency learnt so far (adaptive limits only).
    pub base_latency_ms: Option<f64>,
    /// An adaptive limit is still in slow start: never cut and its calls' latency not yet
    /// rising, it is climbing from its floor towards the server's capacity and will reach
    /// `maxConcurrent` unless the server pushes back.
    pub probing: bool,
}

/// The limits of one limit key over one broker's Redis. Cheap to clone.
#[derive(Clone)]
pub struct BackendLimiter {
    broker: Broker,
    name: String,
    keys: LimitKeys,
    limits: BackendLimits,
}

impl Broker {
    /// The limiter of limit key `name` under `limits`.
    pub fn backend_limiter(&self, name: &str, limits: BackendLimits) -> Result<BackendLimiter> {
        check_name(name)?;
        limits.validate()?;
        Ok(BackendLimiter {
            broker: self.clone(),
            name: name.to_owned(),
            keys: self.keys().backend_limit(name),
            limits,
        })
    }

    /// The state of limit key `name`, whatever its limits.
    pub async fn backend_limit_state(&self, name: &str) -> Result<LimitState> {
        check_name(name)?;
        let keys = self.keys().backend_limit(name);
        let reply: Value = scripts::BACKEND_STATE
            .key(&keys.permits)
            .key(&keys.state)
            .invoke_async(&mut self.conn())
            .await?;
        let r = decode::status(&reply)?;
        let float = |s: Option<&String>| s.and_then(|s| s.parse::<f64>().ok());
        Ok(LimitState {
            in_use: r.first().and_then(|s| s.parse().ok()).unwrap_or(0),
            adaptive_limit: float(r.get(1)),
            paused_for: Duration::from_millis(r.get(2).and_then(|s| s.parse().ok()).unwrap_or(0)),
            base_latency_ms: float(r.get(3)),
            probing: r.get(4).is_some_and(|s| s == "1"),
        })
    }
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.contains(['{', '}']) {
        return Err(QueueError::Config(format!(
            "the backend limit key must be non-empty and free of braces, got {name:?}"
        )));
    }
    Ok(())
}

impl BackendLimiter {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn limits(&self) -> &BackendLimits {
        &self.limits
    }

    /// Tries once to take permit `id` for a call; never waits.
    pub async fn try_acquire(&self, id: &str) -> Result<Admission> {
        self.try_acquire_tokens(id, 0).await
    }

    /// [`BackendLimiter::try_acquire`] for a call estimated to use `tokens` model tokens,
    /// taken from the tokens-per-minute budget (a call larger than the budget's burst still
    /// passes once the budget is above zero; later calls wait out the debt).
    pub async fn try_acquire_tokens(&self, id: &str, tokens: u32) -> Result<Admission> {
        let l = &self.limits;
        let reply: Value = scripts::BACKEND_ACQUIRE
            .key(&self.keys.permits)
            .key(&self.keys.state)
            .arg(id)
            .arg(millis(l.permit_lease))
            .arg(l.max_concurrent)
            .arg(l.floor())
            .arg(l.requests_per_minute)
            .arg(l.tokens_per_minute)
            .arg(tokens)
            .invoke_async(&mut self.broker.conn())
            .await?;
        let r = decode::status(&reply)?;
        let num = |i: usize| -> Result<u64> {
            r.get(i)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| QueueError::Corrupt(format!("backend_acquire replied {r:?}")))
        };
        let small = |i: usize| num(i).map(|n| u32::try_from(n).unwrap_or(u32::MAX));
        match r.first().map(String::as_str) {
            Some("ok") => Ok(Admission::Granted(Permit {
                id: id.to_owned(),
                granted_at_ms: num(1)?,
                limit: small(2)?,
                in_use: small(3)?,
                admission: num(4)?,
                tokens,
            })),
            Some("paused") => Ok(Admission::Paused(Duration::from_millis(num(1)?))),
            Some("full") => Ok(Admission::Full {
                limit: small(1)?,
                in_use: small(2)?,
            }),
            Some("rate") => Ok(Admission::RateLimited(Duration::from_millis(num(1)?))),
            _ => Err(QueueError::Corrupt(format!(
                "backend_acquire replied {r:?}"
            ))),
        }
    }

    /// Extends a held permit's lease while its call runs. Returns false when the permit had
    /// expired meanwhile (it is held again now).
    pub async fn renew(&self, permit: &Permit) -> Result<bool> {
        let held: i64 = scripts::BACKEND_RENEW
            .key(&self.keys.permits)
            .arg(&permit.id)
            .arg(millis(self.limits.permit_lease))
            .invoke_async(&mut self.broker.conn())
            .await?;
        Ok(held == 1)
    }

    /// Gives `permit` back after a call that went `outcome` and took `latency`; `pause`
    /// (a backend's `Retry-After`) holds every call of the key for that long.
    pub async fn release(
        &self,
        permit: &Permit,
        outcome: CallOutcome,
        latency: Duration,
        pause: Option<Duration>,
    ) -> Result<Released> {
        self.release_used(permit, outcome, latency, pause, None)
            .await
    }

    /// [`BackendLimiter::release`] of a call that used `tokens` model tokens (as its
    /// response said): the difference from its estimate goes back to, or comes out of, the
    /// tokens-per-minute budget.
    pub async fn release_used(
        &self,
        permit: &Permit,
        outcome: CallOutcome,
        latency: Duration,
        pause: Option<Duration>,
        tokens: Option<u32>,
    ) -> Result<Released> {
        let l = &self.limits;
        let extra = tokens.map_or(0, |used| i64::from(used) - i64::from(permit.tokens));
        let outcome = match outcome {
            CallOutcome::Succeeded => "ok",
            CallOutcome::Overloaded => "overload",
            CallOutcome::Other => "other",
        };
        let reply: Value = scripts::BACKEND_RELEASE
            .key(&self.keys.permits)
            .key(&self.keys.state)
            .arg(&permit.id)
            .arg(outcome)
            .arg(millis(latency))
            .arg(permit.admission)
            .arg(l.max_concurrent)
            .arg(l.floor())
            .arg(l.latency_factor())
            .arg(pause.map_or(0, millis))
            .arg(l.tokens_per_minute)
            .arg(extra)
            .invoke_async(&mut self.broker.conn())
            .await?;
        let r = decode::status(&reply)?;
        let num = |i: usize| r.get(i).and_then(|s| s.parse::<u32>().ok()).unwrap_or(0);
        Ok(Released {
            limit: num(0),
            in_use: num(1),
        })
    }

    /// This key's state now.
    pub async fn state(&self) -> Result<LimitState> {
        self.broker.backend_limit_state(&self.name).await
    }
}
