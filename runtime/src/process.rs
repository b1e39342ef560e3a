//! What every component's process does alike: its logs, its async runtime and exit status,
//! and the signal that stops it.

use std::future::Future;
use std::process::ExitCode;

use tracing_subscriber::EnvFilter;

use crate::telemetry::{self, Traces};

/// Logs to stderr, and exports traces when the environment asks for them (see
/// [`crate::telemetry`]; `component` is the service name then). `RAGPOOL_LOG` filters
/// (`RUST_LOG` when it is unset; `default_filter` when neither is), e.g. `RAGPOOL_LOG=debug`
/// or `info,ragpool_queue=debug`, spans as well as logs; `json` writes one JSON object per
/// line (the components take it from `RAGPOOL_LOG_FORMAT=json`, see [`json_logs_wanted`]).
/// Colours only on a terminal. Keep the answer until the process ends: dropping it sends the
/// last spans.
pub fn init_logging(component: &str, default_filter: &str, json: bool) -> Traces {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    let filter = EnvFilter::try_from_env("RAGPOOL_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new(default_filter));
    let mut failed = None;
    let (tracer, provider) = match telemetry::wanted().then(|| telemetry::tracer(component)) {
        Some(Ok((tracer, provider))) => (Some(tracer), Some(provider)),
        Some(Err(e)) => {
            failed = Some(e);
            (None, None)
        }
        None => (None, None),
    };
    let traces = tracer.map(|t| tracing_opentelemetry::layer().with_tracer(t));
    let registry = tracing_subscriber::registry().with(filter).with(traces);
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if json {
        registry.with(logs.json().with_current_span(true)).init();
    } else {
        registry.with(logs).init();
    }
    if let Some(e) = failed {
        tracing::warn!(error = %e, "traces are off: the OTLP exporter could not be set up");
    }
    Traces::new(provider)
}

/// True when `RAGPOOL_LOG_FORMAT` says `json` (in any case).
pub fn json_logs_wanted() -> bool {
    std::env::var("RAGPOOL_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"))
}

/// Runs `main` on a multi-threaded runtime to the process's exit status; an error is printed
/// with its causes. CPU-heavy work (image decoding, indexing) runs on the blocking pool, which
/// is kept to the machine's size rather than tokio's default of 512 threads.
pub fn run_to_exit<F>(main: F) -> ExitCode
where
    F: Future<Output = anyhow::Result<()>>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(
            std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .max(2),
        )
        .build();
    let result = match runtime {
        Ok(runtime) => runtime.block_on(main),
        Err(e) => Err(anyhow::Error::new(e).context("starting the async runtime")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:?}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on the first SIGTERM or SIGINT (only SIGINT where SIGTERM cannot be listened for),
/// logging which.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops this process");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_exits_with_failure_and_success_with_success() {
        assert_eq!(run_to_exit(async { Ok(()) }), ExitCode::SUCCESS);
        assert_eq!(
            run_to_exit(async { Err(anyhow::anyhow!("no Redis")) }),
            ExitCode::FAILURE
        );
    }
}
