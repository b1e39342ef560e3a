//! Assembling the service (routes, limits, tracing, request ids, metrics) and running it
//! with a graceful shutdown.
//!
//! Request tracing: every response is logged at INFO. A `5xx` is logged at ERROR as a
//! failure, except a `503` the service answered on purpose (an [`ExpectedOutage`]: Redis is
//! unreachable, or the reserved submission budget is full). During an outage every request
//! gets one, so those are logged at WARN by
//! [`OutageLog`], at most once per [`OUTAGE_LOG_EVERY`] with a count of the ones in between.
//!
//! Probes: with `--health-listen`, `/healthz` and `/readyz` are served on a second listener
//! of their own as well, so a client that takes every connection of the API's listener
//! cannot fail the kubelet's probes and have the pod restarted.
//!
//! Shutdown: when the caller's shutdown future resolves, the listener stops accepting and
//! the shared [`CancellationToken`](tokio_util::sync::CancellationToken) is cancelled, so
//! `?wait` requests answer at once and event streams end; every request in flight then
//! completes before [`serve`] returns.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderName, HeaderValue, Response, header};
use axum::{Extension, middleware};
use ragpool_queue::Broker;
use ragpool_runtime::http_server::ServerLimits;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tower::ServiceBuilder;
use tower_http::classify::{
    ClassifiedResponse, ClassifyResponse, NeverClassifyEos, ServerErrorsAsFailures,
    ServerErrorsFailureClass, SharedClassifier,
};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnRequest, DefaultOnResponse, OnResponse, TraceLayer};
use tracing::{Level, Span};

use crate::config::ApiConfig;
use crate::cross_site;
use crate::error::ExpectedOutage;
use crate::metrics;
use crate::routes::{self, health::OpenApiJson};
use crate::state::AppState;

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// At most one WARN line per this long while Redis is unreachable.
pub const OUTAGE_LOG_EVERY: Duration = Duration::from_secs(5);

/// The service's router with every layer, ready to serve.
pub fn router(state: AppState) -> Router {
    router_with(state, OutageLog::new(OUTAGE_LOG_EVERY))
}

fn router_with(state: AppState, outages: OutageLog) -> Router {
    let (api, doc) = routes::api();
    let mut doc = serde_json::to_value(&doc).unwrap_or_default();
    // The batch limit is a setting: the document states this server's, and clients read it.
    if let Some(tasks) = doc.pointer_mut("/components/schemas/BatchRequest/properties/tasks") {
        tasks["maxItems"] = state.limits().max_batch_tasks.into();
    }
    let doc = serde_json::to_string_pretty(&doc).unwrap_or_else(|_| "{}".to_string());
    api.route_layer(middleware::from_fn(metrics::tag_route))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        // Before any handler and its body extractor: a forged request reserves nothing.
        .layer(middleware::from_fn_with_state(
            state.clone(),
            cross_site::guard,
        ))
        .layer(DefaultBodyLimit::max(state.limits().max_body_bytes))
        .layer(Extension(OpenApiJson(Arc::new(doc))))
        .layer(
            ServiceBuilder::new()
                .layer(middleware::map_response(no_sniff_no_store))
                .layer(middleware::map_request(drop_unfit_request_id))
                .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
                .layer(request_trace(outages))
                .layer(PropagateRequestIdLayer::x_request_id())
                .layer(middleware::from_fn_with_state(
                    state.clone(),
                    metrics::track,
                )),
        )
        .with_state(state)
}

/// Longest `X-Request-Id` a client may choose; it is echoed in the response and logged.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// Removes a client's `X-Request-Id` that is longer than [`MAX_REQUEST_ID_LEN`] or not all
/// visible ASCII, so a fresh one is made instead: the id is copied into every log line and
/// the response, and must not carry a client's 60 KB or its control bytes there.
async fn drop_unfit_request_id(mut request: Request) -> Request {
    let fit = |v: &HeaderValue| {
        let b = v.as_bytes();
        !b.is_empty() && b.len() <= MAX_REQUEST_ID_LEN && b.iter().all(|c| c.is_ascii_graphic())
    };
    if let Some(v) = request.headers().get(X_REQUEST_ID)
        && !fit(v)
    {
        request.headers_mut().remove(X_REQUEST_ID);
    }
    request
}

/// Every answer is about a tenant's tasks: a browser must not sniff it into another type,
/// and no cache on the way may keep it.
async fn no_sniff_no_store<B>(mut response: Response<B>) -> Response<B> {
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

type RequestTrace = TraceLayer<
    SharedClassifier<UnexpectedServerErrors>,
    fn(&Request) -> Span,
    DefaultOnRequest,
    LogResponse,
>;

/// The request trace: a span per request, every response at INFO, unexpected `5xx` at ERROR
/// and expected outages at WARN, rate-limited.
fn request_trace(outages: OutageLog) -> RequestTrace {
    TraceLayer::new(SharedClassifier::new(UnexpectedServerErrors))
        .make_span_with(request_span as fn(&Request) -> Span)
        .on_response(LogResponse { outages })
}

/// One span per request; handlers fill in `task_id` and `caller` once known. With traces on,
/// it continues the caller's trace when the request carries a `traceparent`, and a task
/// submitted in it stores its context (see `routes::submit`).
fn request_span(request: &Request) -> tracing::Span {
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let span = tracing::info_span!(
        "request",
        otel.kind = "server",
        method = %request.method(),
        path = %request.uri().path(),
        request_id,
        task_id = tracing::field::Empty,
        caller = tracing::field::Empty,
    );
    ragpool_runtime::telemetry::set_parent_from_headers(&span, request.headers());
    span
}

/// tower-http's `ServerErrorsAsFailures`, except that a response marked as an
/// [`ExpectedOutage`] is not a failure: the service answered it on purpose, and a client is
/// told to retry.
#[derive(Debug, Clone, Copy)]
struct UnexpectedServerErrors;

impl ClassifyResponse for UnexpectedServerErrors {
    type FailureClass = ServerErrorsFailureClass;
    type ClassifyEos = NeverClassifyEos<ServerErrorsFailureClass>;

    fn classify_response<B>(
        self,
        response: &Response<B>,
    ) -> ClassifiedResponse<Self::FailureClass, Self::ClassifyEos> {
        if response.extensions().get::<ExpectedOutage>().is_some() {
            return ClassifiedResponse::Ready(Ok(()));
        }
        ServerErrorsAsFailures::new().classify_response(response)
    }

    fn classify_error<E>(self, error: &E) -> Self::FailureClass
    where
        E: fmt::Display + 'static,
    {
        ServerErrorsAsFailures::new().classify_error(error)
    }
}

/// Logs every response at INFO, and an expected outage at WARN through [`OutageLog`].
#[derive(Debug, Clone)]
struct LogResponse {
    outages: OutageLog,
}

impl<B> OnResponse<B> for LogResponse {
    fn on_response(self, response: &Response<B>, latency: Duration, span: &Span) {
        DefaultOnResponse::new()
            .level(Level::INFO)
            .on_response(response, latency, span);
        if let Some(outage) = response.extensions().get::<ExpectedOutage>()
            && let Some(suppressed) = self.outages.admit(Instant::now())
        {
            tracing::warn!(
                error = %outage.cause,
                status = response.status().as_u16(),
                suppressed,
                "{}",
                outage.what
            );
        }
    }
}

/// Lets one outage line through per interval and counts the rest, shared by every request
/// of a router.
#[derive(Debug, Clone)]
struct OutageLog {
    every: Duration,
    window: Arc<Mutex<OutageWindow>>,
}

#[derive(Debug, Default)]
struct OutageWindow {
    last_logged: Option<Instant>,
    /// Outages not logged since `last_logged`.
    suppressed: u64,
}

impl OutageLog {
    fn new(every: Duration) -> Self {
        Self {
            every,
            window: Arc::default(),
        }
    }

    /// At `now`, whether to log, with the number of outages not logged since the last line.
    fn admit(&self, now: Instant) -> Option<u64> {
        // The window is two numbers: a panic elsewhere cannot leave it inconsistent.
        let mut window = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        match window.last_logged {
            Some(last) if now.saturating_duration_since(last) < self.every => {
                window.suppressed += 1;
                None
            }
            _ => {
                window.last_logged = Some(now);
                Some(std::mem::take(&mut window.suppressed))
            }
        }
    }
}

/// The OpenAPI document of every endpoint.
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes::api().1
}

/// Serves the API on `listener` until `shutdown` resolves, then finishes the requests in
/// flight and returns. Fails when the key configuration or a reserved-budget variable is
/// invalid, or when the key prefix is laid out in another partition count than
/// `--partitions` (an unreachable Redis is no reason not to start: see
/// [`ragpool_queue::check_layout_at_start`]). The listener's timeouts and connection limit
/// are `config.server`'s (see [`ragpool_runtime::http_server`]).
pub async fn serve(
    config: ApiConfig,
    broker: Broker,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    ragpool_queue::check_layout_at_start(&broker).await?;
    let state = AppState::new(&config, broker)?;
    if state.keys().enabled() {
        tracing::info!(keys = state.keys().len(), "API keys configured: auth is on");
    } else {
        tracing::warn!("no API keys configured: auth is off, every caller sees every task");
    }
    let token = state.shutdown_token();
    let limits = config.server.limits();
    let probes = match config.health_listen {
        Some(addr) => Some(serve_probes(addr, state.clone(), limits).await?),
        None => None,
    };
    let app = router(state);
    let addr = listener
        .local_addr()
        .context("reading the listen address")?;
    tracing::info!(%addr, "ragpool-api listening");
    ragpool_runtime::http_server::serve(listener, app, limits, async move {
        shutdown.await;
        tracing::info!("shutting down: finishing requests in flight");
        token.cancel();
    })
    .await;
    if let Some(probes) = probes {
        // It stops with the same token; a probe in flight is answered first.
        let _ = probes.await;
    }
    tracing::info!("ragpool-api stopped");
    Ok(())
}

/// Binds `addr` and serves `/healthz` and `/readyz` there until the API shuts down, with the
/// API's timeouts and limits but connections of its own.
async fn serve_probes(
    addr: SocketAddr,
    state: AppState,
    limits: ServerLimits,
) -> anyhow::Result<JoinHandle<()>> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the health listener {addr}"))?;
    let bound = listener
        .local_addr()
        .context("reading the health listen address")?;
    tracing::info!(addr = %bound, "health listening");
    let token = state.shutdown_token();
    let probes = routes::health::probe_router().with_state(state);
    Ok(tokio::spawn(ragpool_runtime::http_server::serve(
        listener,
        probes,
        limits,
        async move { token.cancelled().await },
    )))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::io::Write;
    use std::sync::OnceLock;
    use std::thread::ThreadId;

    use axum::body::Body;
    use axum::http::StatusCode;
    use axum::routing::get;
    use ragpool_queue::testing::RedisServer;
    use tower::ServiceExt as _;
    use tracing_subscriber::fmt::MakeWriter;

    use super::*;
    use crate::error::ApiError;

    /// Log output of this test binary, kept per thread. One global subscriber, installed
    /// once: a thread-local one (`set_default`) races with tests on other threads registering
    /// the same callsites and can miss events. The tests run on a current-thread runtime, so
    /// every task they spawn logs on the test's own thread.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<HashMap<ThreadId, Vec<u8>>>>);

    /// A writer for one event, into the buffer of the thread that logs it.
    struct ThreadWriter(Captured);

    impl Write for ThreadWriter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let mut all = self.0.0.lock().unwrap();
            all.entry(std::thread::current().id())
                .or_default()
                .extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl MakeWriter<'_> for Captured {
        type Writer = ThreadWriter;

        fn make_writer(&self) -> ThreadWriter {
            ThreadWriter(self.clone())
        }
    }

    /// What this thread logs from now on.
    struct ThreadLogs {
        all: Captured,
        thread: ThreadId,
        from: usize,
    }

    impl Captured {
        fn install() -> ThreadLogs {
            static GLOBAL: OnceLock<Captured> = OnceLock::new();
            let all = GLOBAL
                .get_or_init(|| {
                    let all = Captured::default();
                    let subscriber = tracing_subscriber::fmt()
                        .with_writer(all.clone())
                        .with_max_level(Level::INFO)
                        .with_ansi(false)
                        .finish();
                    // Another global subscriber would leave the capture empty: the tests fail.
                    let _ = tracing::subscriber::set_global_default(subscriber);
                    all
                })
                .clone();
            let thread = std::thread::current().id();
            let from = all.0.lock().unwrap().get(&thread).map_or(0, Vec::len);
            ThreadLogs { all, thread, from }
        }
    }

    impl ThreadLogs {
        fn lines(&self) -> Vec<String> {
            let all = self.all.0.lock().unwrap();
            let mine = all.get(&self.thread).map_or(&[][..], |b| &b[self.from..]);
            String::from_utf8_lossy(mine)
                .lines()
                .map(str::to_owned)
                .collect()
        }

        fn at(&self, level: &str) -> Vec<String> {
            let level = format!(" {level} ");
            self.lines()
                .into_iter()
                .filter(|l| l.contains(&level))
                .collect()
        }
    }

    async fn get_status(app: &Router, path: &str) -> StatusCode {
        let request = Request::get(path).body(Body::empty()).unwrap();
        app.clone().oneshot(request).await.unwrap().status()
    }

    #[tokio::test]
    async fn an_outage_logs_one_warning_and_no_errors() {
        let logs = Captured::install();
        let mut redis = RedisServer::start().unwrap();
        let config = ApiConfig {
            redis_url: redis.url(),
            ..ApiConfig::default()
        };
        let broker = Broker::connect(config.broker_config().unwrap())
            .await
            .unwrap();
        let state = AppState::new(&config, broker).unwrap();
        // An interval no test run outlasts: the count of lines cannot depend on speed.
        let app = router_with(state, OutageLog::new(Duration::from_secs(24 * 3600)));
        assert_eq!(get_status(&app, "/readyz").await, StatusCode::OK);

        redis.kill().unwrap();
        for path in ["/readyz", "/api/queue/stats"].repeat(5) {
            assert_eq!(
                get_status(&app, path).await,
                StatusCode::SERVICE_UNAVAILABLE,
                "{path}"
            );
        }

        let warnings = logs.at("WARN");
        assert_eq!(warnings.len(), 1, "{warnings:#?}");
        assert!(
            warnings[0].contains("redis unavailable") && warnings[0].contains("suppressed=0"),
            "{}",
            warnings[0]
        );
        assert_eq!(logs.at("ERROR"), Vec::<String>::new());
        // Each request is still in the access log.
        let finished = logs
            .lines()
            .iter()
            .filter(|l| l.contains("finished processing request"))
            .count();
        assert_eq!(finished, 11);
    }

    #[tokio::test]
    async fn an_unexpected_server_error_is_still_logged_as_one() {
        let logs = Captured::install();
        let app = Router::new()
            .route("/boom", get(|| async { ApiError::internal("boom") }))
            .route("/down", get(|| async { ApiError::unavailable("down") }))
            .layer(request_trace(OutageLog::new(Duration::from_secs(
                24 * 3600,
            ))));
        assert_eq!(
            get_status(&app, "/boom").await,
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(
            get_status(&app, "/down").await,
            StatusCode::SERVICE_UNAVAILABLE
        );
        let errors = logs.at("ERROR");
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert!(
            errors[0].contains("response failed") && errors[0].contains("500"),
            "{}",
            errors[0]
        );
        assert_eq!(logs.at("WARN").len(), 1);
    }

    #[test]
    fn the_outage_log_lets_one_line_through_per_interval() {
        let log = OutageLog::new(Duration::from_secs(5));
        let start = Instant::now();
        let at = |secs| start + Duration::from_secs(secs);
        assert_eq!(log.admit(at(0)), Some(0));
        assert_eq!(log.admit(at(1)), None);
        assert_eq!(log.admit(at(4)), None);
        assert_eq!(log.admit(at(5)), Some(2), "the two in between are counted");
        assert_eq!(log.admit(at(9)), None);
        assert_eq!(log.admit(at(60)), Some(1));
        // A clone shares the window: every request of a router holds one.
        let clone = log.clone();
        assert_eq!(clone.admit(at(61)), None);
        assert_eq!(log.admit(at(65)), Some(1));
    }
}
