//! The `ragpool-api` command line (also `ragpool api`): parses flags, sets up logging,
//! connects to Redis and serves until SIGTERM or SIGINT.

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use ragpool_queue::Broker;
use ragpool_runtime::process;

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
    process::run_to_exit(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if cli.print_openapi {
        println!("{}", crate::openapi().to_pretty_json()?);
        return Ok(());
    }
    let _traces = process::init_logging("ragpool-api", "info", process::json_logs_wanted());
    let config = cli.config;
    let broker = Broker::connect(config.broker_config().context("invalid Redis settings")?)
        .await
        .context("connecting to Redis")?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    crate::serve(config, broker, listener, process::shutdown_signal()).await
}
