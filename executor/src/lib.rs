//! The ragpool executor: the job loop that runs in worker pods, and the RAG backends it runs
//! tasks against.
//!
//! [`run`] is the whole executor (what the `ragpool-executor` binary and `ragpool dev` call);
//! [`runner::Runner`] is the job loop alone, for tests that bring their own backend.

pub mod backend;
pub mod cli;
pub mod health;
pub mod metrics;
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
pub async fn run(settings: ExecutorSettings, stop: CancellationToken) -> anyhow::Result<()> {
    let config = settings.backend.to_config().map_err(anyhow::Error::msg)?;
    let backend = backend::build(&config)
        .await
        .with_context(|| format!("starting the {} backend", config.name()))?;
    run_with_backend(settings, backend, stop).await
}

/// Runs an executor over a given backend.
pub async fn run_with_backend(
    settings: ExecutorSettings,
    backend: Arc<dyn Backend>,
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
    broker_config.namespace = settings.namespace.clone();
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
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());

    let listener = tokio::net::TcpListener::bind(settings.metrics_listen)
        .await
        .with_context(|| format!("binding --metrics-listen {}", settings.metrics_listen))?;
    tracing::info!(addr = %listener.local_addr()?, "health and metrics listening");
    let app = health::router(health.clone(), metrics.clone());
    let server_stop = CancellationToken::new();
    let server = tokio::spawn(ragpool_runtime::http_server::serve(
        listener,
        app,
        settings.server.limits(),
        server_stop.clone().cancelled_owned(),
    ));

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
        metrics,
        health,
    );
    let result = runner.run(stop).await;
    server_stop.cancel();
    let _ = server.await;
    result.context("job loop")
}
