//! `ragpool-bench`: ragpool measured against baselines taken in the same run on the same
//! machine. Each subcommand starts what it needs (a private `redis-server` on a free loopback
//! port, in-process components) and prints one table of figures, each next to the baseline it
//! is divided by. Absolute numbers depend on the machine; the ratios are what to compare.

mod chaos;
mod dashboard;
mod enqueue;
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
    /// The dashboard's data calls with 1,000,000 finished tasks in Redis.
    Dashboard(dashboard::Args),
    /// One client submitting: enqueue against a bare LPUSH, batches against single calls.
    Enqueue(enqueue::Args),
    /// The whole system under SIGKILLs, a SIGTERM, Redis and API restarts: what was lost.
    Chaos(chaos::Args),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Queue(args) => queue::run(args).await,
        Command::Dashboard(args) => dashboard::run(args).await,
        Command::Enqueue(args) => enqueue::run(args).await,
        Command::Chaos(args) => chaos::run(args).await,
    }
}
