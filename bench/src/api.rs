//! The API served in this process on a loopback port, for the sections that measure a path
//! through it.

use ragpool_api::ApiConfig;
use ragpool_queue::Broker;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A running in-process API.
pub struct InProcessApi {
    /// The broker it serves from, for the section's own enqueues and reads.
    pub broker: Broker,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// Ends once `stop` is cancelled.
    pub served: JoinHandle<anyhow::Result<()>>,
}

/// Serves the API with its default settings against `redis_url` until `stop` is cancelled.
pub async fn start(redis_url: String, stop: &CancellationToken) -> anyhow::Result<InProcessApi> {
    let config = ApiConfig {
        redis_url,
        ..ApiConfig::default()
    };
    let broker = Broker::connect(config.broker_config()?).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let served = tokio::spawn(ragpool_api::serve(
        config,
        broker.clone(),
        listener,
        stop.clone().cancelled_owned(),
    ));
    Ok(InProcessApi {
        broker,
        base,
        served,
    })
}
