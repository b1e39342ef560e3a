//! [`AppState`]: what every handler shares — the broker, the keys, the limits, the metrics
//! and the shutdown signal. Cheap to clone.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ragpool_queue::Broker;
use tokio_util::sync::CancellationToken;

use crate::auth::{ApiKeys, KeyConfigError};
use crate::budget::SubmissionBudget;
use crate::config::{ApiConfig, Limits, ReservedBudgetError};
use crate::cross_site::CrossSitePolicy;
use crate::holds::Holds;
use crate::live::Live;
use crate::metrics::Metrics;
use crate::rates::RateWindow;

/// What keeps the API's state from being built.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("loading API keys")]
    Keys(#[from] KeyConfigError),
    #[error("reading the reserved submission budget")]
    Budget(#[from] ReservedBudgetError),
}

/// Shared by every request.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    broker: Broker,
    keys: ApiKeys,
    limits: Limits,
    allow_image_urls: bool,
    worker_ttl: Duration,
    metrics: Metrics,
    submission_budget: SubmissionBudget,
    holds: Holds,
    cross_site: CrossSitePolicy,
    /// Cancelled when the server begins shutting down: long waits and event streams end
    /// early, so in-flight requests can finish.
    shutdown: CancellationToken,
    rates: Mutex<RateWindow>,
    /// The dashboards' shared snapshot reader.
    live: Live,
}

impl AppState {
    /// State for `config`; loads the API keys it names and resolves the reserved submission
    /// budget.
    pub fn new(config: &ApiConfig, broker: Broker) -> Result<AppState, StateError> {
        let keys = ApiKeys::load(&config.auth)?;
        let budget = config.limits.reserved.resolve()?;
        let metrics = if config.metrics_per_owner {
            Metrics::with_owner_gauges()
        } else {
            Metrics::new()
        };
        let submission_budget = SubmissionBudget::new(
            budget.bytes,
            budget.share_per_key,
            metrics.submission_reserved_bytes(),
        );
        let cross_site = CrossSitePolicy::new(&config.cross_site, keys.enabled());
        Ok(AppState {
            inner: Arc::new(Inner {
                broker,
                keys,
                limits: config.limits.clone(),
                allow_image_urls: config.allow_image_urls,
                worker_ttl: Duration::from_secs(config.worker_ttl_seconds),
                metrics,
                submission_budget,
                holds: Holds::new(
                    config.limits.max_held_requests_per_key,
                    config.limits.max_held_requests_per_peer,
                ),
                cross_site,
                shutdown: CancellationToken::new(),
                rates: Mutex::new(RateWindow::default()),
                live: Live::default(),
            }),
        })
    }

    pub fn broker(&self) -> &Broker {
        &self.inner.broker
    }

    pub fn keys(&self) -> &ApiKeys {
        &self.inner.keys
    }

    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    pub fn allow_image_urls(&self) -> bool {
        self.inner.allow_image_urls
    }

    pub fn worker_ttl(&self) -> Duration {
        self.inner.worker_ttl
    }

    pub fn submission_budget(&self) -> &SubmissionBudget {
        &self.inner.submission_budget
    }

    /// The caps on event streams and `?wait` requests.
    pub fn holds(&self) -> &Holds {
        &self.inner.holds
    }

    pub fn cross_site(&self) -> &CrossSitePolicy {
        &self.inner.cross_site
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The token that [`crate::serve`] cancels when shutdown begins.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.inner.shutdown.clone()
    }

    pub(crate) fn rates(&self) -> &Mutex<RateWindow> {
        &self.inner.rates
    }

    pub(crate) fn live(&self) -> &Live {
        &self.inner.live
    }
}
