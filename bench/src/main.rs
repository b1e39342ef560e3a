//! `ragpool-bench`: ragpool measured against baselines taken in the same run on the same
//! machine. Each subcommand starts what it needs (a private `redis-server` on a free loopback
//! port, in-process components) and prints one table of figures, each next to the baseline it
//! is divided by. Absolute numbers depend on the machine; the ratios are what to compare.

mod executor;
mod footprint;
mod queue;
mod report;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ragpool-bench",
    version,
    about = "ragpool measured against baselines taken in the same run"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// ragpool's queue protocol against a bare Redis list queue (LPUSH/BRPOP/SET).
    Queue(queue::Args),
    /// The executor's job loop against library loops at the same concurrency, and the idle
    /// binaries' resident memory.
    Executor(executor::Args),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Queue(args) => queue::run(args).await,
        Command::Executor(args) => executor::run(args).await,
    }
}
