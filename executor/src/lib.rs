//! The ragpool executor: the job loop that runs in worker pods, and the RAG backends it runs
//! tasks against.
//!
//! [`run`] is the whole executor (what the `ragpool-executor` binary and `ragpool dev` call);
//! [`runner::Runner`] is the job loop alone, for tests that bring their own backend.

pub mod backend;
pub mod cli;
pub mod health;
pub mod limits;
pub mod metrics;
pub mod publish;
pub mod runner;
pub mod settings;

use std::sync::Arc;

use anyhow::Context;
use ragpool_queue::{Broker, BrokerConfig, ConsumerConfig};
use tokio_util::sync::CancellationToken;

use backend::Backend;
use health::Health;
use metrics::Metrics;
use runner::{Runner, RunnerConfig};
use settings::ExecutorSettings;

/// Runs an executor with the backend its settings name until `stop` fires and it has drained.
///
/// The health endpoints answer first, `/readyz` with 503 while the backend builds (indexing
/// its documents can take a while); the job loop starts once it is built.
pub async fn run(settings: ExecutorSettings, stop: CancellationToken) -> anyhow::Result<()> {
    let config = settings.backend.to_config().map_err(anyhow::Error::msg)?;
    let endpoints = Endpoints::start(&settings).await?;
    let built = tokio::select! {
        built = backend::build(&config) => built,
        () = stop.cancelled() => {
            tracing::info!("stopped while the backend was being built");
            endpoints.stop().await;
            return Ok(());
        }
    };
    let backend = match built.with_context(|| format!("starting the {} backend", config.name())) {
        Ok(backend) => backend,
        Err(e) => {
            endpoints.stop().await;
            return Err(e);
        }
    };
    endpoints.health.backend_built();
    run_loop(settings, backend, endpoints, stop).await
}

/// Runs an executor over a given backend.
pub async fn run_with_backend(
    settings: ExecutorSettings,
    backend: Arc<dyn Backend>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let endpoints = Endpoints::start(&settings).await?;
    endpoints.health.backend_built();
    run_loop(settings, backend, endpoints, stop).await
}

/// The health and metrics listener, and what it reports.
struct Endpoints {
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    server: tokio::task::JoinHandle<()>,
}

impl Endpoints {
    async fn start(settings: &ExecutorSettings) -> anyhow::Result<Endpoints> {
        let metrics = Arc::new(Metrics::new());
        let health = Arc::new(Health::default());
        let listener = tokio::net::TcpListener::bind(settings.metrics_listen)
            .await
            .with_context(|| format!("binding --metrics-listen {}", settings.metrics_listen))?;
        tracing::info!(addr = %listener.local_addr()?, "health and metrics listening");
        let app = health::router(health.clone(), metrics.clone());
        let stop = CancellationToken::new();
        let server = tokio::spawn(ragpool_runtime::http_server::serve(
            listener,
            app,
            settings.server.limits(),
            stop.clone().cancelled_owned(),
        ));
        Ok(Endpoints {
            health,
            metrics,
            stop,
            server,
        })
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = self.server.await;
    }
}

/// Connects to Redis and runs the job loop until `stop` fires and it has drained.
async fn run_loop(
    settings: ExecutorSettings,
    backend: Arc<dyn Backend>,
    endpoints: Endpoints,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let result = job_loop(settings, backend, &endpoints, stop).await;
    endpoints.stop().await;
    result
}

async fn job_loop(
    settings: ExecutorSettings,
    backend: Arc<dyn Backend>,
    endpoints: &Endpoints,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let queues = settings.queue_configs().map_err(anyhow::Error::msg)?;
    let mut broker_config =
        BrokerConfig::from_url(&settings.redis_url).context("--redis-url (RAGPOOL_REDIS_URL)")?;
    if let Some(ca) = &settings.redis_ca_file {
        broker_config.target = broker_config
            .target
            .with_ca_file(ca)
            .context("--redis-ca-file (RAGPOOL_REDIS_CA_FILE)")?;
    }
    settings.key_prefix.apply(&mut broker_config);
    broker_config.queues = queues.clone();
    settings.durability.apply(&mut broker_config);
    settings.partitions.apply(&mut broker_config);
    let broker = Broker::connect(broker_config)
        .await
        .context("connecting to Redis")?;
    ragpool_queue::check_layout_at_start(&broker).await?;

    let worker_id = settings.worker_id.clone().unwrap_or_else(|| {
        format!(
            "{}-{}-{}",
            runner::hostname(),
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..6]
        )
    });
    let gate = match settings.limits.limits(settings.lease()) {
        Some(limits) => {
            let key = &settings.limits.backend_limit_key;
            tracing::info!(key = %key, ?limits, "calls to the backend pass pool-wide limits");
            let gate =
                limits::PoolGate::new(&broker, key, limits, &worker_id, endpoints.metrics.clone())
                    .context("--backend-* limits")?;
            Some(Arc::new(gate) as Arc<dyn backend::CallGate>)
        }
        None => None,
    };
    let runner = Runner::new(
        RunnerConfig {
            worker_id: worker_id.clone(),
            pod_name: settings.pod_name.clone(),
            consumer: ConsumerConfig {
                worker_id,
                queues: queues.iter().map(|q| q.name.clone()).collect(),
                policy: settings.priority,
                lease: settings.lease(),
            },
            concurrency: settings.concurrency,
            drain: settings.drain(),
            maintenance_interval: settings.maintenance_interval(),
        },
        broker,
        backend,
        endpoints.metrics.clone(),
        endpoints.health.clone(),
    )
    .with_gate(gate);
    runner.run(stop).await.context("job loop")
}
