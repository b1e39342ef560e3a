//! The `ragpool-api` command line (also `ragpool api`): parses flags, sets up logging,
//! connects to Redis and serves until SIGTERM or SIGINT.

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use ragpool_queue::Broker;
use tracing_subscriber::EnvFilter;

use crate::ApiConfig;

/// The ragpool HTTP API: accepts image-analysis, answer and query tasks, queues them in
/// Redis, and reports their state and results.
#[derive(Debug, Parser)]
#[command(name = "ragpool-api", version)]
struct Cli {
    #[command(flatten)]
    config: ApiConfig,

    /// Print the OpenAPI document and exit.
    #[arg(long)]
    print_openapi: bool,
}

/// Runs the API's command line `args` (the program name first) to its exit status.
pub fn main(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let cli = Cli::parse_from(args);
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
        .and_then(|runtime| runtime.block_on(run(cli)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:?}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if cli.print_openapi {
        println!("{}", crate::openapi().to_pretty_json()?);
        return Ok(());
    }
    init_tracing();
    let config = cli.config;
    let broker = Broker::connect(config.broker_config().context("invalid Redis settings")?)
        .await
        .context("connecting to Redis")?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    crate::serve(config, broker, listener, shutdown_signal()).await
}

/// Logs to stderr; JSON lines when `RAGPOOL_LOG_FORMAT=json`. `RUST_LOG` filters (default
/// `info`).
fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("RAGPOOL_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        builder.json().with_current_span(true).init();
    } else {
        builder.init();
    }
}

/// Resolves on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the server");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
