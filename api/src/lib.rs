//! The ragpool HTTP API: a thin service that validates submissions, enqueues them through
//! `ragpool-queue`, and reports task state. It never runs RAG work itself.
//!
//! [`serve`] runs it on a listener until a shutdown future resolves; [`router`] gives the
//! axum router for embedding. The `ragpool-api` binary and `ragpool dev` are thin over these.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use ragpool_api::ApiConfig;
//! let config = ApiConfig::default();
//! let broker = ragpool_queue::Broker::connect(config.broker_config()?).await?;
//! let listener = tokio::net::TcpListener::bind(config.listen).await?;
//! ragpool_api::serve(config, broker, listener, async {
//!     let _ = tokio::signal::ctrl_c().await;
//! })
//! .await
//! # }
//! ```

pub mod auth;
mod budget;
pub mod cli;
pub mod config;
pub mod cross_site;
pub mod error;
mod extract;
mod holds;
mod image;
mod live;
mod metrics;
mod rates;
mod routes;
mod server;
mod state;

pub use auth::{ApiKeys, Caller};
pub use config::{ApiConfig, AuthConfig, Limits, QueueFlags, ReservedBudgetArgs};
pub use cross_site::CrossSiteArgs;
pub use error::ApiError;
pub use server::{openapi, router, serve};
pub use state::{AppState, StateError};
