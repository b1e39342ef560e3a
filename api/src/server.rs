//! Assembling the service (routes, limits, tracing, request ids, metrics) and running it
//! with a graceful shutdown.
//!
//! Shutdown: when the caller's shutdown future resolves, the listener stops accepting and
//! the shared [`CancellationToken`](tokio_util::sync::CancellationToken) is cancelled, so
//! `?wait` requests answer at once and event streams end; every request in flight then
//! completes before [`serve`] returns.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::{Extension, middleware};
use ragpool_queue::Broker;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::config::ApiConfig;
use crate::metrics;
use crate::routes::{self, health::OpenApiJson};
use crate::state::AppState;

/// The service's router with every layer, ready to serve.
pub fn router(state: AppState) -> Router {
    let (api, doc) = routes::api_router().split_for_parts();
    let doc = serde_json::to_string_pretty(&doc).unwrap_or_else(|_| "{}".to_string());
    api.route_layer(middleware::from_fn(metrics::tag_route))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(DefaultBodyLimit::max(state.limits().max_body_bytes))
        .layer(Extension(OpenApiJson(Arc::new(doc))))
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
                .layer(
                    TraceLayer::new_for_http()
                        .make_span_with(request_span)
                        .on_response(DefaultOnResponse::new().level(Level::INFO)),
                )
                .layer(PropagateRequestIdLayer::x_request_id())
                .layer(middleware::from_fn_with_state(
                    state.clone(),
                    metrics::track,
                )),
        )
        .with_state(state)
}

/// One span per request; handlers fill in `task_id` and `caller` once known.
fn request_span(request: &Request) -> tracing::Span {
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    tracing::info_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        request_id,
        task_id = tracing::field::Empty,
        caller = tracing::field::Empty,
    )
}

/// The OpenAPI document of every endpoint.
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes::api_router().into_openapi()
}

/// Serves the API on `listener` until `shutdown` resolves, then finishes the requests in
/// flight and returns. Fails when the key configuration is invalid. The listener's timeouts
/// and connection limit are `config.server`'s (see [`ragpool_queue::http_server`]).
pub async fn serve(
    config: ApiConfig,
    broker: Broker,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let state = AppState::new(&config, broker).context("loading API keys")?;
    if state.keys().enabled() {
        tracing::info!(keys = state.keys().len(), "API keys configured: auth is on");
    } else {
        tracing::warn!("no API keys configured: auth is off, every caller sees every task");
    }
    let token = state.shutdown_token();
    let app = router(state);
    let addr = listener
        .local_addr()
        .context("reading the listen address")?;
    tracing::info!(%addr, "ragpool-api listening");
    let limits = config.server.limits();
    ragpool_queue::http_server::serve(listener, app, limits, async move {
        shutdown.await;
        tracing::info!("shutting down: finishing requests in flight");
        token.cancel();
    })
    .await;
    tracing::info!("ragpool-api stopped");
    Ok(())
}
