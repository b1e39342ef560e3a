//! `ragpool-bench`: ragpool measured against baselines taken in the same run on the same
//! machine. Each subcommand starts what it needs (a private `redis-server` on a free loopback
//! port, in-process components) and prints one table of figures, each next to the baseline it
//! is divided by. Absolute numbers depend on the machine; the ratios are what to compare.

mod api;
mod backend;
mod chaos;
mod cluster;
mod dashboard;
mod durability;
mod enqueue;
mod executor;
mod fairness;
mod footprint;
mod latency;
mod payloads;
mod queue;
mod report;
mod streaming;
mod submit_rate;

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
    /// The executor's job loop against library loops at the same concurrency, and the idle
    /// binaries' resident memory.
    Executor(executor::Args),
    /// Hand-off latency with idle parties: enqueue to claimed, result to `?wait` and to SSE.
    Latency(latency::Args),
    /// `--durability replicated` (WAIT 1 after each change) against `local`, same run.
    Durability(durability::Args),
    /// One Redis Cluster master against three, same partition count: enqueue and drain
    /// throughput, CPU per process, each master's share.
    Cluster(cluster::Args),
    /// What a large input costs: Redis bytes per finished image task, status reads of image
    /// tasks, Redis output over a polled image task's life; each against a text task's.
    Payloads(payloads::Args),
    /// Fair share between owners: claim throughput with 1, 10 and 1,000 owners against tasks
    /// without one, and a late owner's wait behind another's batch with and without it.
    Fairness(fairness::Args),
    /// Pool-wide backend limits against a model server that slows past a knee and refuses
    /// past a ceiling: goodput and p95 without a limit, at the knee, and adaptive.
    Backend(backend::Args),
    /// The API's submit rate (`POST /api/async/query`, 16 connections) of one `ragpool` binary
    /// against another built from the same source, e.g. opt-level 3 against "z".
    SubmitRate(submit_rate::Args),
    /// Streamed answers: the client's first words after the model's first token against the
    /// whole answer without streaming, and Redis commands per streamed task.
    Streaming(streaming::Args),
    /// The executor, latency and enqueue sections in one table.
    All(AllArgs),
}

/// Flags of `ragpool-bench all`: those of each section.
#[derive(clap::Args)]
struct AllArgs {
    #[command(flatten)]
    executor: executor::Args,
    /// Tasks per latency figure, one at a time.
    #[arg(long, default_value_t = latency::Args::default().tasks)]
    latency_tasks: usize,
    /// Tasks per way of enqueueing (one call at a time, batches of 100 and 1,000).
    #[arg(long, default_value_t = 10_000)]
    enqueue_tasks: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Queue(args) => queue::run(args).await,
        Command::Dashboard(args) => dashboard::run(args).await,
        Command::Durability(args) => durability::run(args).await,
        Command::Enqueue(args) => enqueue::run(args).await,
        Command::Chaos(args) => chaos::run(args).await,
        Command::Cluster(args) => cluster::run(args).await,
        Command::Executor(args) => executor::run(args).await,
        Command::Latency(args) => latency::run(args).await,
        Command::Payloads(args) => payloads::run(args).await,
        Command::Fairness(args) => fairness::run(args).await,
        Command::Backend(args) => backend::run(args).await,
        Command::SubmitRate(args) => submit_rate::run(args).await,
        Command::Streaming(args) => streaming::run(args).await,
        Command::All(args) => {
            let mut rows = executor::rows(&args.executor).await?;
            rows.extend(
                latency::rows(&latency::Args {
                    tasks: args.latency_tasks,
                    ..latency::Args::default()
                })
                .await?,
            );
            rows.extend(
                enqueue::rows(&enqueue::Args {
                    tasks: args.enqueue_tasks,
                    rounds: args.executor.rounds,
                })
                .await?,
            );
            println!();
            report::print_table(&rows);
            Ok(())
        }
    }
}
