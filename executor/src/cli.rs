//! The `ragpool-executor` command line (also `ragpool executor`): runs tasks from the ragpool
//! queues until SIGTERM/SIGINT, then drains.

use std::ffi::OsString;
use std::process::ExitCode;

use clap::Parser;
use ragpool_runtime::process;
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
    let _traces = process::init_logging("ragpool-executor", "info", process::json_logs_wanted());
    process::run_to_exit(async {
        let stop = CancellationToken::new();
        let signalled = stop.clone();
        tokio::spawn(async move {
            process::shutdown_signal().await;
            tracing::info!("draining");
            signalled.cancel();
        });
        crate::run(cli.settings, stop).await
    })
}
