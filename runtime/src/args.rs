//! The command-line arguments every component reads the same way: `--partitions`, and
//! `--durability` with `--replication-timeout-ms`. Each is a clap struct to flatten into a
//! component's own arguments, with a [`Default`] for tests and an `apply` that sets it on a
//! [`BrokerConfig`].

use std::time::Duration;

use ragpool_queue::keys::MAX_PARTITIONS;
use ragpool_queue::{AUTO_PARTITIONS, BrokerConfig, Durability};

/// The `--durability` and `--replication-timeout-ms` flags every component reads, with their
/// `RAGPOOL_*` fallbacks.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct DurabilityArgs {
    /// When a state change counts as done: `local` (the primary applied it) or `replicated`
    /// (a replica acknowledged it too, `WAIT 1` after each change; survives a failover).
    #[arg(long, env = "RAGPOOL_DURABILITY", default_value = "local")]
    pub durability: Durability,

    /// Under `replicated`: how long a change waits for a replica before it is reported not
    /// replicated (the API answers 503, the executor retries). Below the 5 s response timeout.
    #[arg(
        long,
        env = "RAGPOOL_REPLICATION_TIMEOUT_MS",
        default_value_t = 1000,
        value_parser = clap::value_parser!(u64).range(1..5000)
    )]
    pub replication_timeout_ms: u64,
}

impl Default for DurabilityArgs {
    fn default() -> Self {
        DurabilityArgs {
            durability: Durability::Local,
            replication_timeout_ms: 1000,
        }
    }
}

impl DurabilityArgs {
    /// Sets these on a broker's configuration.
    pub fn apply(&self, config: &mut BrokerConfig) {
        config.durability = self.durability;
        config.replication_timeout = Duration::from_millis(self.replication_timeout_ms);
    }
}

/// The `--partitions` flag (`RAGPOOL_PARTITIONS`) of the API, the executor, the operator and
/// `ragpool dev`. Every process of a namespace must use the same count: the namespace records
/// it, and a process configured with another one refuses to work
/// ([`QueueError::Layout`](ragpool_queue::QueueError::Layout)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Args)]
pub struct PartitionArgs {
    /// Partitions each queue is split into, each its own Redis Cluster hash slot: more
    /// spreads the load over a cluster's masters, at the cost of one round trip per
    /// partition for claims, stats and maintenance. `auto`: the namespace's recorded count;
    /// for a new namespace 1 on a single Redis or Sentinel, 2 per master on a cluster. Same
    /// count on every process of a namespace; change it with `ragpool repartition`.
    #[arg(
        long,
        env = "RAGPOOL_PARTITIONS",
        default_value = "auto",
        value_parser = parse_partitions
    )]
    pub partitions: u16,
}

/// `auto` ([`AUTO_PARTITIONS`]) or a count from 1 to [`MAX_PARTITIONS`].
fn parse_partitions(s: &str) -> std::result::Result<u16, String> {
    let max = MAX_PARTITIONS;
    if s.eq_ignore_ascii_case("auto") {
        return Ok(AUTO_PARTITIONS);
    }
    s.parse::<u16>()
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| format!("expected auto or a count from 1 to {max}, got {s:?}"))
}

impl Default for PartitionArgs {
    fn default() -> Self {
        PartitionArgs {
            partitions: AUTO_PARTITIONS,
        }
    }
}

impl PartitionArgs {
    /// The flag's value as it is written: `auto` or the count.
    pub fn as_arg(&self) -> String {
        if self.partitions == AUTO_PARTITIONS {
            "auto".into()
        } else {
            self.partitions.to_string()
        }
    }

    /// Sets the count on a broker's configuration.
    pub fn apply(&self, config: &mut BrokerConfig) {
        config.partitions = self.partitions;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_flag_takes_one_to_the_most_and_defaults_to_auto() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            partitions: PartitionArgs,
        }
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied()))
                .map(|c| c.partitions)
        };
        assert_eq!(parse(&[]).unwrap(), PartitionArgs::default());
        assert_eq!(parse(&[]).unwrap().partitions, AUTO_PARTITIONS);
        assert_eq!(
            parse(&["--partitions", "Auto"]).unwrap().partitions,
            AUTO_PARTITIONS
        );
        assert_eq!(parse(&["--partitions", "64"]).unwrap().partitions, 64);
        for bad in ["0", "65", "x"] {
            let err = parse(&["--partitions", bad]).unwrap_err().to_string();
            assert!(err.contains("--partitions"), "{bad}: {err}");
        }
        let mut config = BrokerConfig::from_url("redis://127.0.0.1:1").unwrap();
        parse(&["--partitions", "6"]).unwrap().apply(&mut config);
        assert_eq!(config.partitions, 6);
    }
}
