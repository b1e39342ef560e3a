//! The `ragpool-operator` command line (also `ragpool operator`): `run` (the default) watches
//! RagWorkerPools and scales their executors; `crd` prints the CustomResourceDefinition YAML.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};
use kube::api::ListParams;
use kube::runtime::events::Reporter;
use kube::{Api, Client};
use ragpool_runtime::PartitionArgs;
use ragpool_runtime::http_server::ServerArgs;
use ragpool_runtime::process;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::controller::{self, Context};
use crate::crd::{RagWorkerPool, crd_yaml};
use crate::leader::{LeaseLock, SERVICE_ACCOUNT_NAMESPACE_FILE, lease_namespace};
use crate::metrics::Metrics;
use crate::observe::Observer;
use crate::redis_observer::RedisObserver;
use crate::resources::MANAGER;
use crate::server::{Health, router};

#[derive(Parser)]
#[command(
    name = "ragpool-operator",
    version,
    about = "Scales ragpool executor pools on queue depth and wait."
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator (the default).
    Run(RunArgs),
    /// Print the RagWorkerPool CustomResourceDefinition as YAML.
    Crd,
}

#[derive(Args, Clone)]
struct RunArgs {
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "RAGPOOL_OPERATOR_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Header and body timeouts and the connection limit of that listener.
    #[command(flatten)]
    server: ServerArgs,
    /// Leadership: elect one leader through a Lease so several replicas can run; off for a
    /// single replica. [env: RAGPOOL_OPERATOR_LEADERSHIP, or the older
    /// RAGPOOL_OPERATOR_LEADER_ELECTION] [default: true]
    #[arg(long, alias = "leader-election", action = ArgAction::Set)]
    leadership: Option<bool>,
    /// Namespace of the leadership Lease; the pod's own namespace when unset (`POD_NAMESPACE`,
    /// else the ServiceAccount's namespace file), else the kubeconfig context's namespace.
    #[arg(long, alias = "lease-namespace", env = "RAGPOOL_OPERATOR_NAMESPACE")]
    leadership_namespace: Option<String>,
    /// Name of the leadership Lease. [env: RAGPOOL_OPERATOR_LEADERSHIP_LEASE, or the older
    /// RAGPOOL_OPERATOR_LEASE_NAME] [default: ragpool-operator]
    #[arg(long, alias = "lease-name")]
    leadership_lease: Option<String>,
    /// Seconds a leader holds the leadership Lease without renewing; it renews every third of
    /// that. [env: RAGPOOL_OPERATOR_LEADERSHIP_SECONDS, or the older
    /// RAGPOOL_OPERATOR_LEASE_SECONDS] [default: 15]
    #[arg(long, alias = "lease-seconds")]
    leadership_seconds: Option<u64>,
    /// This replica's identity in the Lease and in Events; the pod name (HOSTNAME) when unset.
    #[arg(long, env = "RAGPOOL_OPERATOR_IDENTITY")]
    identity: Option<String>,
    /// Log format.
    #[arg(long, env = "RAGPOOL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// The partition count of pools that leave `spec.redis.partitions` unset: their
    /// executors get it, and their queues are observed with it.
    #[command(flatten)]
    partitions: PartitionArgs,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// The leadership settings, each from its flag, else its environment variable, else the
/// variable's older name, else its default.
#[derive(Debug, PartialEq)]
struct Leadership {
    enabled: bool,
    lease: String,
    seconds: u64,
}

impl Leadership {
    fn resolve(args: &RunArgs, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<Leadership> {
        let from_env = |names: [&str; 2]| {
            names
                .into_iter()
                .find_map(|name| env(name).map(|value| (name.to_string(), value)))
        };
        let enabled = match args.leadership {
            Some(on) => on,
            None => match from_env([
                "RAGPOOL_OPERATOR_LEADERSHIP",
                "RAGPOOL_OPERATOR_LEADER_ELECTION",
            ]) {
                Some((name, value)) => value
                    .parse()
                    .with_context(|| format!("{name} must be true or false, not {value:?}"))?,
                None => true,
            },
        };
        let lease = match &args.leadership_lease {
            Some(lease) => lease.clone(),
            None => from_env([
                "RAGPOOL_OPERATOR_LEADERSHIP_LEASE",
                "RAGPOOL_OPERATOR_LEASE_NAME",
            ])
            .map_or_else(|| "ragpool-operator".to_string(), |(_, v)| v),
        };
        let seconds = match args.leadership_seconds {
            Some(seconds) => seconds,
            None => match from_env([
                "RAGPOOL_OPERATOR_LEADERSHIP_SECONDS",
                "RAGPOOL_OPERATOR_LEASE_SECONDS",
            ]) {
                Some((name, value)) => value.parse().with_context(|| {
                    format!("{name} must be a number of seconds, not {value:?}")
                })?,
                None => 15,
            },
        };
        Ok(Leadership {
            enabled,
            lease,
            seconds,
        })
    }
}

/// Reads each pool's queues and worker registry from the Redis the pool names.
fn observer(client: &Client) -> Arc<dyn Observer> {
    Arc::new(RedisObserver::new(client.clone()))
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let _traces = process::init_logging(
        "ragpool-operator",
        "info,kube=warn",
        args.log_format == LogFormat::Json,
    );
    let identity = args
        .identity
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("{MANAGER}-{}", std::process::id()));
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in cluster or via KUBECONFIG)")?;
    Api::<RagWorkerPool>::all(client.clone())
        .list(&ListParams::default().limit(1))
        .await
        .context("listing RagWorkerPools; is the CRD installed? (kubectl apply -f crds/)")?;

    let shutdown = CancellationToken::new();
    {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            process::shutdown_signal().await;
            shutdown.cancel();
        });
    }
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(true));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    info!(listen = %args.listen, "serving /healthz, /readyz, /metrics");
    let server = {
        let shutdown = shutdown.clone();
        let app = router(Health {
            metrics: metrics.clone(),
            ready: ready.clone(),
        });
        tokio::spawn(ragpool_runtime::http_server::serve(
            listener,
            app,
            args.server.limits(),
            shutdown.cancelled_owned(),
        ))
    };

    let leadership = Leadership::resolve(&args, |name| std::env::var(name).ok())?;
    // `stop` ends the controller on shutdown or when leadership is lost.
    let stop = shutdown.child_token();
    let lock = leadership.enabled.then(|| {
        let namespace = lease_namespace(
            args.leadership_namespace.as_deref(),
            std::env::var("POD_NAMESPACE").ok().as_deref(),
            std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE_FILE)
                .ok()
                .as_deref(),
            client.default_namespace(),
        );
        info!(namespace = %namespace, lease = %leadership.lease, "leadership election");
        LeaseLock::new(
            client.clone(),
            &namespace,
            &leadership.lease,
            &identity,
            Duration::from_secs(leadership.seconds.max(3)),
        )
    });
    if let Some(lock) = &lock
        && lock
            .acquire(Duration::from_secs(2), &shutdown)
            .await
            .is_none()
    {
        return Ok(());
    }
    let keeper = lock.map(|lock| {
        let (shutdown, stop) = (shutdown.clone(), stop.clone());
        let every = Duration::from_secs((leadership.seconds / 3).max(1));
        tokio::spawn(async move {
            lock.keep(every, &shutdown, &stop).await;
            lock
        })
    });

    let ctx = Arc::new(
        Context::new(
            client.clone(),
            observer(&client),
            metrics,
            Reporter {
                controller: MANAGER.into(),
                instance: Some(identity),
            },
        )
        .with_default_partitions(args.partitions.partitions),
    );
    let controller_stop = stop.clone();
    controller::run(ctx, async move { controller_stop.cancelled_owned().await }).await;

    let lost = stop.is_cancelled() && !shutdown.is_cancelled();
    shutdown.cancel();
    ready.store(false, Ordering::Relaxed);
    if let Some(keeper) = keeper {
        match keeper.await {
            Ok(lock) if !lost => {
                if let Err(e) = lock.release().await {
                    warn!(error = %e, "cannot release the lease; a standby takes over when it expires");
                }
            }
            Ok(_) => {}
            Err(e) => error!(error = %e, "lease keeper failed"),
        }
    }
    if let Err(e) = server.await {
        warn!(error = %e, "health server");
    }
    if lost {
        bail!("lost leadership; exiting so a restart rejoins as a standby");
    }
    Ok(())
}

/// Runs the operator's command line `args` (the program name first) to its exit status.
pub fn main(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let cli = Cli::parse_from(args);
    process::run_to_exit(dispatch(cli))
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::Crd) => {
            print!("{}", crd_yaml().context("rendering the CRD")?);
            Ok(())
        }
        Some(Command::Run(args)) => run(args).await,
        None => run(cli.run).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_args(argv: &[&str]) -> RunArgs {
        let mut full = vec!["ragpool-operator"];
        full.extend_from_slice(argv);
        Cli::try_parse_from(full).expect("parses").run
    }

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn leadership_comes_from_flags_then_new_then_old_variables_then_defaults() {
        let defaults = Leadership::resolve(&run_args(&[]), env_of(&[])).unwrap();
        assert_eq!(
            defaults,
            Leadership {
                enabled: true,
                lease: "ragpool-operator".into(),
                seconds: 15
            }
        );
        let old = env_of(&[
            ("RAGPOOL_OPERATOR_LEADER_ELECTION", "false"),
            ("RAGPOOL_OPERATOR_LEASE_NAME", "old-lease"),
            ("RAGPOOL_OPERATOR_LEASE_SECONDS", "30"),
        ]);
        let from_old = Leadership::resolve(&run_args(&[]), old).unwrap();
        assert_eq!(
            from_old,
            Leadership {
                enabled: false,
                lease: "old-lease".into(),
                seconds: 30
            }
        );
        let both = env_of(&[
            ("RAGPOOL_OPERATOR_LEADERSHIP_SECONDS", "20"),
            ("RAGPOOL_OPERATOR_LEASE_SECONDS", "30"),
        ]);
        assert_eq!(
            Leadership::resolve(&run_args(&[]), both).unwrap().seconds,
            20
        );
        let flags = run_args(&[
            "--leadership",
            "false",
            "--leadership-lease",
            "mine",
            "--leadership-seconds",
            "9",
        ]);
        let from_flags =
            Leadership::resolve(&flags, env_of(&[("RAGPOOL_OPERATOR_LEASE_SECONDS", "30")]))
                .unwrap();
        assert_eq!(
            from_flags,
            Leadership {
                enabled: false,
                lease: "mine".into(),
                seconds: 9
            }
        );
    }

    #[test]
    fn the_older_flag_spellings_still_parse() {
        let args = run_args(&[
            "--leader-election",
            "false",
            "--lease-name",
            "l",
            "--lease-seconds",
            "6",
            "--lease-namespace",
            "ns",
        ]);
        let l = Leadership::resolve(&args, env_of(&[])).unwrap();
        assert_eq!((l.enabled, l.lease.as_str(), l.seconds), (false, "l", 6));
        assert_eq!(args.leadership_namespace.as_deref(), Some("ns"));
    }

    #[test]
    fn a_bad_leadership_variable_is_named() {
        let err = Leadership::resolve(
            &run_args(&[]),
            env_of(&[("RAGPOOL_OPERATOR_LEASE_SECONDS", "soon")]),
        )
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("RAGPOOL_OPERATOR_LEASE_SECONDS"),
            "{err:#}"
        );
    }
}
