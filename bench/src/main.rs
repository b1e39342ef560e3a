//! `ragpool-bench`: ragpool measured against baselines taken in the same run on the same
//! machine. Each subcommand starts what it needs (a private `redis-server` on a free loopback
//! port, in-process components) and prints one table of figures, each next to the baseline it
//! is divided by. Absolute numbers depend on the machine; the ratios are what to compare.

mod durability;
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
    /// `--durability replicated` (WAIT 1 after each change) against `local`, same run.
    Durability(durability::Args),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Queue(args) => queue::run(args).await,
        Command::Durability(args) => durability::run(args).await,
    }
}
