//! The `ragpool-executor` command line (also `ragpool executor`): runs tasks from the ragpool
//! queues until SIGTERM/SIGINT, then drains.

use std::ffi::OsString;
use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;

use crate::settings::ExecutorSettings;

#[derive(Parser)]
#[command(
    name = "ragpool-executor",
    version,
    about = "Runs ragpool tasks against a RAG backend"
)]
struct Cli {
    #[command(flatten)]
    settings: ExecutorSettings,
}

/// Runs the executor's command line `args` (the program name first) to its exit status.
pub fn main(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let cli = Cli::parse_from(args);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:?}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    init_tracing();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // CPU-heavy backend work (image decoding, indexing) runs on the blocking pool; keep it
        // to the machine's size rather than tokio's default of 512 threads.
        .max_blocking_threads(
            std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .max(2),
        )
        .build()?;
    runtime.block_on(async {
        let stop = CancellationToken::new();
        tokio::spawn(forward_signals(stop.clone()));
        crate::run(cli.settings, stop).await
    })
}

/// Fires `stop` on the first SIGTERM or SIGINT.
async fn forward_signals(stop: CancellationToken) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: draining"),
    }
    stop.cancel();
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RAGPOOL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("RAGPOOL_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}
