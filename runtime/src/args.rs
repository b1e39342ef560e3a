//! The command-line arguments every component reads the same way: `--key-prefix`,
//! `--partitions`, and `--durability` with `--replication-timeout-ms`. Each is a clap struct
//! to flatten into a component's own arguments, with a [`Default`] for tests and an `apply`
//! that sets it on a [`BrokerConfig`].

use std::time::Duration;

use ragpool_queue::keys::MAX_PARTITIONS;
use ragpool_queue::{AUTO_PARTITIONS, BrokerConfig, DEFAULT_KEY_PREFIX, Durability};

/// The key prefix's variable.
pub const KEY_PREFIX_ENV: &str = "RAGPOOL_KEY_PREFIX";

/// The key prefix's variable before it had its own name, still read when
/// [`KEY_PREFIX_ENV`] is unset: deployments written against it keep their prefix.
pub const OLD_KEY_PREFIX_ENV: &str = "RAGPOOL_NAMESPACE";

/// The `--key-prefix` flag of the API, the executor and `ragpool repartition`: the prefix
/// (and Redis Cluster hash tag) of every key, so several deployments can share one Redis.
///
/// Its older spellings, `--namespace` and `RAGPOOL_NAMESPACE`, still work; clap reads one
/// variable per flag, so the value is resolved by [`KeyPrefixArgs::resolve`], not by clap.
/// The `[env: …]` and `[default: …]` notes of the help are therefore written out by hand.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct KeyPrefixArgs {
    /// Key prefix (and Redis Cluster hash tag) of every queue key; the API, the executors and
    /// the operator's pool must use the same one. `RAGPOOL_NAMESPACE` and `--namespace`, the
    /// older names, are read when neither this flag nor `RAGPOOL_KEY_PREFIX` is set.
    /// [env: RAGPOOL_KEY_PREFIX=] [default: ragpool]
    #[arg(
        id = "key_prefix",
        long = "key-prefix",
        alias = "namespace",
        value_name = "KEY_PREFIX"
    )]
    pub flag: Option<String>,
}

impl KeyPrefixArgs {
    /// An explicit prefix, as if given by the flag (for tests and for callers that build
    /// settings in code).
    pub fn new(prefix: impl Into<String>) -> Self {
        KeyPrefixArgs {
            flag: Some(prefix.into()),
        }
    }

    /// The prefix to use: the flag, else `RAGPOOL_KEY_PREFIX`, else `RAGPOOL_NAMESPACE`,
    /// else `ragpool`.
    pub fn resolve(&self) -> String {
        self.resolve_with(|name| std::env::var(name).ok())
    }

    /// [`resolve`](Self::resolve) with the environment read through `env`. An empty
    /// variable counts as unset, as an empty prefix is refused anyway.
    pub fn resolve_with(&self, env: impl Fn(&str) -> Option<String>) -> String {
        let set = |value: Option<String>| value.filter(|v| !v.is_empty());
        set(self.flag.clone())
            .or_else(|| set(env(KEY_PREFIX_ENV)))
            .or_else(|| set(env(OLD_KEY_PREFIX_ENV)))
            .unwrap_or_else(|| DEFAULT_KEY_PREFIX.to_string())
    }

    /// Sets the prefix on a broker's configuration.
    pub fn apply(&self, config: &mut BrokerConfig) {
        config.key_prefix = self.resolve();
    }
}

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
/// `ragpool dev`. Every process of a key prefix must use the same count: the key prefix records
/// it, and a process configured with another one refuses to work
/// ([`QueueError::Layout`](ragpool_queue::QueueError::Layout)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Args)]
pub struct PartitionArgs {
    /// Partitions each queue is split into, each its own Redis Cluster hash slot: more
    /// spreads the load over a cluster's masters, at the cost of one round trip per
    /// partition for claims, stats and maintenance. `auto`: the key prefix's recorded count;
    /// for a new key prefix 1 on a single Redis or Sentinel, 2 per master on a cluster. Same
    /// count on every process of a key prefix; change it with `ragpool repartition`.
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
    fn key_prefix_is_the_flag_then_the_new_variable_then_the_old_then_ragpool() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            key_prefix: KeyPrefixArgs,
        }
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied()))
                .unwrap()
                .key_prefix
        };
        let both = |name: &str| match name {
            KEY_PREFIX_ENV => Some("from-new".to_string()),
            OLD_KEY_PREFIX_ENV => Some("from-old".to_string()),
            _ => None,
        };
        let old_only = |name: &str| (name == OLD_KEY_PREFIX_ENV).then(|| "from-old".to_string());
        let none = |_: &str| None;
        // Each source wins over every one after it.
        assert_eq!(parse(&["--key-prefix", "flag"]).resolve_with(both), "flag");
        assert_eq!(parse(&[]).resolve_with(both), "from-new");
        assert_eq!(parse(&[]).resolve_with(old_only), "from-old");
        assert_eq!(parse(&[]).resolve_with(none), DEFAULT_KEY_PREFIX);
        // The old flag is the same flag; an empty variable counts as unset.
        assert_eq!(
            parse(&["--namespace", "old-flag"]).resolve_with(both),
            "old-flag"
        );
        let empty_new = |name: &str| match name {
            KEY_PREFIX_ENV => Some(String::new()),
            _ => old_only(name),
        };
        assert_eq!(parse(&[]).resolve_with(empty_new), "from-old");
        assert_eq!(KeyPrefixArgs::new("set").resolve_with(both), "set");
    }

    #[test]
    fn key_prefix_help_names_both_variables_and_the_default() {
        use clap::CommandFactory;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            key_prefix: KeyPrefixArgs,
        }
        let help = Cli::command().render_long_help().to_string();
        for needle in [
            "--key-prefix <KEY_PREFIX>",
            "[env: RAGPOOL_KEY_PREFIX=]",
            "[default: ragpool]",
            "RAGPOOL_NAMESPACE",
        ] {
            assert!(help.contains(needle), "{needle} not in {help}");
        }
        assert!(
            !help.contains("--namespace <"),
            "the old flag is hidden: {help}"
        );
    }

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
