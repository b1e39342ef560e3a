//! Traces: every component's `tracing` spans as OpenTelemetry spans, exported over OTLP
//! (HTTP with protobuf), and the W3C trace context (`traceparent`, `tracestate`) read from
//! and written to HTTP headers and tasks.
//!
//! Configured by the standard variables: `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) turns it on, `OTEL_SERVICE_NAME` names the
//! component (its own name when unset), `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`
//! choose which traces are kept (the SDK's default, `parentbased_always_on`, otherwise),
//! `OTEL_BSP_*` tune the batching and `OTEL_SDK_DISABLED=true` turns it off again. Without an
//! endpoint nothing is set up: no exporter, no OpenTelemetry layer, and every function here
//! finds no span context and does nothing, so a task carries no context.

use std::time::Duration;

use http::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt, TracerProvider as _};
use opentelemetry::{Context, global};
use opentelemetry_otlp::WithHttpConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use ragpool_queue::TraceContext;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The instrumentation scope every component's spans are recorded under.
const SCOPE: &str = "ragpool";

/// How long one export may take before it is given up (the OTLP default).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The trace exporter of a process, while it runs: dropping it sends the spans still
/// buffered and stops the exporter. Holds nothing when traces are off.
#[must_use = "dropping it at once stops the exporter"]
pub struct Traces {
    provider: Option<SdkTracerProvider>,
}

impl Traces {
    pub(crate) fn new(provider: Option<SdkTracerProvider>) -> Self {
        Traces { provider }
    }
}

impl Drop for Traces {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("could not send the last spans: {e}");
        }
    }
}

/// True when the environment asks for traces: an OTLP endpoint is set and the SDK is not
/// disabled.
pub fn wanted() -> bool {
    let set = |name| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// The tracer that exports to the endpoint the environment names, for `component` (the
/// service name unless `OTEL_SERVICE_NAME` says otherwise), and its provider. Also makes the
/// provider the global one and W3C trace context the global propagator.
pub(crate) fn tracer(component: &str) -> anyhow::Result<(SdkTracer, SdkTracerProvider)> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(BlockingClient::new()?)
        .build()
        .map_err(|e| anyhow::anyhow!("setting up the OTLP exporter: {e}"))?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name(component.to_string());
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    global::set_tracer_provider(provider.clone());
    global::set_text_map_propagator(TraceContextPropagator::new());
    Ok((provider.tracer(SCOPE), provider))
}

/// The OTLP exporter's HTTP client: the workspace's reqwest, blocking, since the SDK's
/// batch processor exports from a thread of its own, outside any async runtime.
#[derive(Debug)]
struct BlockingClient(reqwest::blocking::Client);

impl BlockingClient {
    fn new() -> anyhow::Result<Self> {
        // The blocking client runs a small runtime on a thread of its own, which may not be
        // started from inside an async runtime: build it on a plain thread.
        std::thread::spawn(|| {
            reqwest::blocking::Client::builder()
                .timeout(EXPORT_TIMEOUT)
                .build()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("building the OTLP HTTP client panicked"))?
        .map(BlockingClient)
        .map_err(|e| anyhow::anyhow!("building the OTLP HTTP client: {e}"))
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for BlockingClient {
    async fn send_bytes(
        &self,
        request: http::Request<opentelemetry_http::Bytes>,
    ) -> Result<http::Response<opentelemetry_http::Bytes>, opentelemetry_http::HttpError> {
        let (parts, body) = request.into_parts();
        let response = self
            .0
            .request(parts.method, parts.uri.to_string())
            .headers(parts.headers)
            .body(body.to_vec())
            .send()?;
        let mut answer = http::Response::builder().status(response.status());
        if let Some(headers) = answer.headers_mut() {
            *headers = response.headers().clone();
        }
        Ok(answer.body(response.bytes()?)?)
    }
}

/// Makes `span` a child of the trace context in `headers`' `traceparent` (and `tracestate`),
/// when there is a valid one: a request joins its caller's trace. Without one the span
/// starts a trace of its own.
pub fn set_parent_from_headers(span: &tracing::Span, headers: &HeaderMap) {
    if !headers.contains_key("traceparent") {
        return;
    }
    let cx = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// The trace context of the current span, to store with a task; `None` when traces are off.
pub fn current_trace() -> Option<TraceContext> {
    let cx = tracing::Span::current().context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = Carrier::default();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    Some(TraceContext {
        traceparent: carrier.traceparent?,
        tracestate: carrier.tracestate.unwrap_or_default(),
    })
}

/// `span`'s own context in `traceparent` form; `None` when traces are off.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = Carrier::default();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.traceparent
}

/// Makes `span` a child of a stored trace context (a task's); an invalid one is ignored.
pub fn set_parent(span: &tracing::Span, trace: &TraceContext) {
    let cx = context_of(&trace.traceparent, &trace.tracestate);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// Links `span` to the span a `traceparent` names (an earlier attempt); an invalid one is
/// ignored.
pub fn add_link(span: &tracing::Span, traceparent: &str) {
    let cx = context_of(traceparent, "");
    let linked: SpanContext = cx.span().span_context().clone();
    if linked.is_valid() {
        span.add_link(linked);
    }
}

/// Adds `traceparent` (and `tracestate`) for the current span to outgoing request headers;
/// nothing when traces are off.
pub fn inject_headers(headers: &mut HeaderMap) {
    let cx = tracing::Span::current().context();
    if cx.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
    }
}

/// Records a span that already happened (`start` to `end`) as a child of `span`, e.g. one
/// claim call that took several tasks, recorded once in each task's trace. Nothing when
/// `span` is not traced.
pub fn record_child(
    span: &tracing::Span,
    name: &'static str,
    start: std::time::SystemTime,
    end: std::time::SystemTime,
) {
    use opentelemetry::trace::{Span as _, Tracer as _};
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return;
    }
    let tracer = global::tracer(SCOPE);
    let mut child = tracer
        .span_builder(name)
        .with_start_time(start)
        .start_with_context(&tracer, &cx);
    child.end_with_timestamp(end);
}

fn context_of(traceparent: &str, tracestate: &str) -> Context {
    let carrier = Carrier {
        traceparent: Some(traceparent.to_string()),
        tracestate: (!tracestate.is_empty()).then(|| tracestate.to_string()),
    };
    TraceContextPropagator::new().extract(&carrier)
}

/// The two W3C headers, as a propagator reads and writes them.
#[derive(Default)]
struct Carrier {
    traceparent: Option<String>,
    tracestate: Option<String>,
}

impl Extractor for Carrier {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => self.traceparent.as_deref(),
            "tracestate" => self.tracestate.as_deref(),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

impl Injector for Carrier {
    fn set(&mut self, key: &str, value: String) {
        match key {
            "traceparent" => self.traceparent = Some(value),
            "tracestate" if !value.is_empty() => self.tracestate = Some(value),
            _ => {}
        }
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_traces_nothing_is_carried() {
        let span = tracing::info_span!("request");
        let _in = span.enter();
        assert_eq!(current_trace(), None);
        assert_eq!(traceparent_of(&span), None);
        let mut headers = HeaderMap::new();
        inject_headers(&mut headers);
        assert!(headers.is_empty());
    }

    #[test]
    fn a_stored_context_reads_back_as_written() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = context_of(parent, "vendor=opaque");
        let sc = cx.span().span_context().clone();
        assert!(sc.is_valid() && sc.is_remote() && sc.is_sampled());
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.trace_state().header(), "vendor=opaque");
        for bad in [
            "",
            "00-zz-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        ] {
            assert!(
                !context_of(bad, "").span().span_context().is_valid(),
                "{bad:?}"
            );
        }
    }
}
