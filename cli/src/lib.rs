//! `ragpool`, the command line: `ragpool dev` runs ragpool on one machine, `submit`,
//! `status`, `stats`, `cancel` and `retry` are thin clients of its HTTP API, `explain`
//! shows what the operator's scaling policy would decide for a pool now, and `repartition`
//! changes a key prefix's partition count in Redis.

pub mod client;
pub mod commands;
pub mod component;
pub mod dev;
pub mod explain;
pub mod redis_server;
pub mod repartition;
pub mod simulate;
pub mod stream;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use commands::{StatsArgs, StatusArgs, SubmitArgs, TaskArgs};
use component::{Component, ComponentArgs};
use dev::DevArgs;
use explain::ExplainArgs;

/// The `ragpool` command line.
#[derive(Debug, Parser)]
#[command(
    name = "ragpool",
    version,
    about = "Asynchronous RAG tasks: run ragpool locally and talk to its API"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the API and an executor (built-in RAG backend) in one process, with a private
    /// redis-server unless RAGPOOL_REDIS_URL is set.
    Dev(DevArgs),
    /// Submit a task; prints the API's answer (or, with --wait, the ended task). With
    /// --batch FILE, submit a JSON Lines file of tasks and print their ids.
    Submit(SubmitArgs),
    /// Show a task: status, progress, result or error.
    Status(StatusArgs),
    /// Show every queue's counts, rates and times, and the workers.
    Stats(StatsArgs),
    /// Cancel a task (a running one stops at its next heartbeat).
    Cancel(TaskArgs),
    /// Queue a failed task again.
    Retry(TaskArgs),
    /// Show what the operator's scaling policy would decide for a RagWorkerPool now, and
    /// why, step by step (from the cluster, or --file plus --redis-url).
    Explain(ExplainArgs),
    /// Replay an arrival trace against a pool's autoscaling policy (no cluster needed).
    Simulate(simulate::SimulateArgs),
    /// Change the partition count a key prefix is recorded with (stop every API, executor
    /// and operator of it first; refused while tasks wait or run).
    Repartition(repartition::RepartitionArgs),
    /// Run the HTTP API: `ragpool api --help` lists its flags (the same as `ragpool-api`'s).
    Api(ComponentArgs),
    /// Run an executor: `ragpool executor --help` lists its flags (the same as
    /// `ragpool-executor`'s).
    Executor(ComponentArgs),
    /// Run the operator: `ragpool operator --help` lists its flags (the same as
    /// `ragpool-operator`'s).
    Operator(ComponentArgs),
}

/// Runs the command line `args` (the program name first): a component's own when the binary
/// was started under the component's name, else `ragpool`'s.
pub fn main(args: Vec<OsString>) -> ExitCode {
    if let Some(component) = args.first().and_then(|a| Component::from_program(a)) {
        return component.main(args);
    }
    run(Cli::parse_from(args))
}

/// Runs a parsed command line to its exit status. Errors are printed to stderr.
pub fn run(cli: Cli) -> ExitCode {
    // Components build their own runtime and logging.
    let (component, args) = match cli.command {
        Command::Api(args) => (Component::Api, args),
        Command::Executor(args) => (Component::Executor, args),
        Command::Operator(args) => (Component::Operator, args),
        command => return run_client(command),
    };
    component.main(args.command_line(component))
}

/// Runs `ragpool`'s own commands (everything but the components).
fn run_client(command: Command) -> ExitCode {
    let cli = Cli { command };
    let _traces = matches!(cli.command, Command::Dev(_)).then(|| {
        ragpool_runtime::process::init_logging(
            "ragpool-dev",
            "info,tantivy=warn",
            ragpool_runtime::process::json_logs_wanted(),
        )
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // CPU-heavy work of the built-in backend (indexing, image decoding) runs on the
        // blocking pool; keep it to the machine's size.
        .max_blocking_threads(
            std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .max(2),
        )
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: anyhow::Result<ExitCode> = runtime.block_on(async {
        Ok(match cli.command {
            Command::Dev(args) => {
                dev::run(args).await?;
                ExitCode::SUCCESS
            }
            Command::Submit(c) => commands::submit(c).await?,
            Command::Status(a) => commands::status(a).await?,
            Command::Stats(a) => commands::stats(a).await?,
            Command::Cancel(a) => commands::cancel(a).await?,
            Command::Retry(a) => commands::retry(a).await?,
            Command::Explain(a) => {
                explain::explain(a).await?;
                ExitCode::SUCCESS
            }
            Command::Simulate(a) => simulate::run(a)?,
            Command::Repartition(a) => repartition::run(a).await?,
            Command::Api(_) | Command::Executor(_) | Command::Operator(_) => {
                unreachable!("run hands the components their own command line")
            }
        })
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
