//! `ragpool repartition`: changes the partition count a key prefix is recorded with, the step
//! between stopping every process of the key prefix and starting them again with the new
//! `--partitions` (see `docs/operations.md`, "Changing the partition count").
//!
//! The queue crate refuses while any task waits, runs or waits out a backoff under the old
//! count (`Broker::repartition`); this command only connects, asks and reports.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use ragpool_queue::keys::MAX_PARTITIONS;
use ragpool_queue::redact::redact;
use ragpool_queue::{Broker, BrokerConfig};
use ragpool_runtime::KeyPrefixArgs;

/// `ragpool repartition` flags. Redis and the key prefix are read as the API and the
/// executors read them.
#[derive(Debug, Clone, Args)]
pub struct RepartitionArgs {
    /// The new partition count, 1 to 64. Start every process of the key prefix with the same
    /// `--partitions` afterwards.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=i64::from(MAX_PARTITIONS)))]
    pub partitions: u16,

    /// Redis holding the key prefix, as for the API (`redis://`, `rediss://`, cluster seeds
    /// or `redis+sentinel://…`).
    #[arg(long, env = "RAGPOOL_REDIS_URL", hide_env_values = true)]
    pub redis_url: String,

    /// PEM file of the CA that signed the Redis server's TLS certificate.
    #[arg(long, env = "RAGPOOL_REDIS_CA_FILE")]
    pub redis_ca_file: Option<PathBuf>,

    /// The key prefix whose count changes: see `--key-prefix`.
    #[command(flatten)]
    pub key_prefix: KeyPrefixArgs,
}

/// Runs `ragpool repartition`: prints `key prefix <prefix>: partitions <old> -> <new>`, or fails
/// with the refusal (which names the queues still holding tasks).
pub async fn run(args: RepartitionArgs) -> anyhow::Result<ExitCode> {
    let mut config = BrokerConfig::from_url(&args.redis_url).context("--redis-url")?;
    if let Some(ca) = &args.redis_ca_file {
        config.target = config.target.with_ca_file(ca).context("--redis-ca-file")?;
    }
    let key_prefix = args.key_prefix.resolve();
    config.key_prefix = key_prefix.clone();
    let broker = Broker::connect(config)
        .await
        .with_context(|| format!("connecting to Redis at {}", redact(&args.redis_url)))?;
    let old = broker
        .repartition(args.partitions)
        .await
        .with_context(|| format!("key prefix {key_prefix}"))?;
    println!(
        "key prefix {key_prefix}: partitions {old} -> {}",
        args.partitions
    );
    Ok(ExitCode::SUCCESS)
}
