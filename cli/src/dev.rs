//! `ragpool dev`: the API and an executor in one process, over a private `redis-server`
//! unless `RAGPOOL_REDIS_URL` names a Redis to use, for trying ragpool on one machine.
//!
//! Shutdown order matters: on the first SIGINT/SIGTERM the API stops accepting and the
//! executor drains (both still need Redis), and only when both have stopped is the private
//! Redis shut down. A second signal stops the API and executor at once; their unfinished
//! tasks are re-delivered on the next start, after their leases expire.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Parser};
use ragpool_api::ApiConfig;
use ragpool_executor::settings::ExecutorSettings;
use ragpool_queue::redact::redact;
use ragpool_runtime::PartitionArgs;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::redis_server::{self, PrivateRedis};

/// A question the project's own documents answer, for the printed example.
const SAMPLE_QUESTION: &str = "When is the task of a dead worker re-delivered?";

/// `ragpool dev` flags. Everything else the API and the executor read from their usual
/// `RAGPOOL_*` environment variables.
#[derive(Debug, Clone, Args)]
pub struct DevArgs {
    /// Address the API listens on (port 0: any free port).
    #[arg(long, env = "RAGPOOL_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Folder of Markdown and text documents the built-in backend answers from [default:
    /// ./docs when it exists].
    #[arg(long, env = "RAGPOOL_DOCS", value_name = "FOLDER")]
    pub docs: Option<PathBuf>,

    /// Tasks the executor runs at once.
    #[arg(long, env = "RAGPOOL_CONCURRENCY", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub concurrency: u32,

    /// Use this Redis instead of starting a private redis-server.
    #[arg(long, env = "RAGPOOL_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// The partition count both the API and the executor use.
    #[command(flatten)]
    pub partitions: PartitionArgs,

    /// Folder for the private Redis's data (in `redis/` under it) and the lock that keeps two
    /// `ragpool dev` from sharing it.
    #[arg(long, default_value = ".ragpool", value_name = "FOLDER")]
    pub data_dir: PathBuf,

    /// Address of the executor's /healthz, /readyz and /metrics (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub executor_metrics_listen: SocketAddr,

    /// On Ctrl-C, how long tasks in flight may finish before they are put back in the queue.
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    pub drain_seconds: u64,
}

/// Runs until SIGINT/SIGTERM, then stops everything it started. Errors name the flag or
/// the program at fault.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let docs = docs_folder(args.docs.as_deref())?;
    let signals = Signals::install()?;

    let Some(external) = args.redis_url.clone() else {
        let _lock = lock_data_dir(&args.data_dir)?;
        let redis_dir = args.data_dir.join("redis");
        if redis_server::stop_leftover(&redis_dir).await? {
            tracing::info!("stopped a redis-server an earlier `ragpool dev` left running");
        }
        let redis = PrivateRedis::start(&redis_dir).await?;
        let about = format!(
            "private redis-server (pid {}) on 127.0.0.1:{}, data in {} (append-only file on)",
            redis.pid(),
            redis.port(),
            redis_dir.display()
        );
        let result = run_services(&args, docs.as_deref(), &redis.url(), &about, &signals).await;
        let stopped = redis.stop().await;
        result?;
        let status = stopped.context("stopping the private redis-server")?;
        tracing::info!(%status, "redis-server stopped");
        return Ok(());
    };
    let about = format!(
        "{} (from RAGPOOL_REDIS_URL / --redis-url)",
        redact(&external)
    );
    run_services(&args, docs.as_deref(), &external, &about, &signals).await
}

/// Runs the API and the executor until a signal, or until one of them fails.
async fn run_services(
    args: &DevArgs,
    docs: Option<&Path>,
    redis_url: &str,
    redis_about: &str,
    signals: &Signals,
) -> anyhow::Result<()> {
    let api_config = api_config(args, redis_url)?;
    let executor_settings = executor_settings(args, docs, redis_url)?;
    let backend = executor_settings.backend.backend.clone();

    let broker_config = api_config
        .broker_config()
        .context("--redis-url (RAGPOOL_REDIS_URL)")?;
    let broker = ragpool_queue::Broker::connect(broker_config)
        .await
        .with_context(|| format!("connecting to Redis at {}", redact(redis_url)))?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| {
            format!(
                "binding --listen {} (is another ragpool running? try --listen 127.0.0.1:0)",
                args.listen
            )
        })?;
    let addr = listener
        .local_addr()
        .context("reading the API's listen address")?;

    let stop = signals.stop.clone();
    let mut api: JoinHandle<anyhow::Result<()>> = tokio::spawn({
        let stop = stop.clone();
        ragpool_api::serve(api_config, broker, listener, stop.cancelled_owned())
    });
    let mut executor: JoinHandle<anyhow::Result<()>> =
        tokio::spawn(ragpool_executor::run(executor_settings, stop.clone()));

    print_banner(addr, redis_about, &backend, args.concurrency, docs);

    // Whichever ends first (a signal, or a part failing) stops the other part too.
    let mut api_result = None;
    let mut executor_result = None;
    tokio::select! {
        r = &mut api => api_result = Some(joined("API", r)),
        r = &mut executor => executor_result = Some(joined("executor", r)),
        _ = stop.cancelled() => {}
    }
    stop.cancel();
    let finish = async {
        if api_result.is_none() {
            api_result = Some(joined("API", (&mut api).await));
        }
        if executor_result.is_none() {
            executor_result = Some(joined("executor", (&mut executor).await));
        }
    };
    tokio::select! {
        _ = finish => {}
        _ = signals.force.cancelled() => {
            api.abort();
            executor.abort();
            tracing::warn!("stopped without waiting for tasks in flight");
            return Ok(());
        }
    }
    api_result.unwrap_or(Ok(()))?;
    executor_result.unwrap_or(Ok(()))?;
    Ok(())
}

fn joined(what: &str, r: Result<anyhow::Result<()>, tokio::task::JoinError>) -> anyhow::Result<()> {
    match r {
        Ok(result) => result.with_context(|| format!("the {what} stopped")),
        Err(e) => Err(anyhow::anyhow!("the {what} crashed: {e}")),
    }
}

fn print_banner(
    addr: SocketAddr,
    redis_about: &str,
    backend: &str,
    concurrency: u32,
    docs: Option<&Path>,
) {
    let url = format!("http://{addr}");
    let docs = match docs {
        Some(d) => format!("documents from {}", d.display()),
        None => "no documents (pass --docs FOLDER to answer from a folder)".to_owned(),
    };
    let api_url_flag = if addr.to_string() == "127.0.0.1:8080" {
        String::new()
    } else {
        format!(" --api-url {url}")
    };
    let body = serde_json::json!({ "question": SAMPLE_QUESTION });
    println!("ragpool dev: API listening on {url}");
    println!("  Redis:    {redis_about}");
    println!("  Executor: {backend} backend, {concurrency} tasks at once, {docs}");
    println!("  Dashboard: {url}/dashboard");
    println!();
    println!("Try it:");
    println!(
        "  curl -s -X POST {url}/api/async/query -H 'Content-Type: application/json' -d '{body}'"
    );
    println!("  curl -s '{url}/api/async/task/TASK_ID?wait=30'   # TASK_ID from the answer above");
    println!("or:");
    println!("  ragpool submit query \"{SAMPLE_QUESTION}\" --wait 30{api_url_flag}");
    println!();
    println!("Stop with Ctrl-C.");
}

/// The API's settings: `RAGPOOL_*` environment as usual, with the address and Redis of
/// this run.
fn api_config(args: &DevArgs, redis_url: &str) -> anyhow::Result<ApiConfig> {
    #[derive(Parser)]
    struct Api {
        #[command(flatten)]
        config: ApiConfig,
    }
    let listen = args.listen.to_string();
    let partitions = args.partitions.as_arg();
    let argv = [
        "ragpool-api",
        "--redis-url",
        redis_url,
        "--listen",
        &listen,
        "--partitions",
        &partitions,
    ];
    Api::try_parse_from(argv)
        .map(|a| a.config)
        .map_err(|e| anyhow::anyhow!("the API's RAGPOOL_* settings: {}", e.render()))
}

/// The executor's settings: `RAGPOOL_*` environment as usual, with this run's Redis, docs,
/// concurrency and ports.
fn executor_settings(
    args: &DevArgs,
    docs: Option<&Path>,
    redis_url: &str,
) -> anyhow::Result<ExecutorSettings> {
    #[derive(Parser)]
    struct Executor {
        #[command(flatten)]
        settings: ExecutorSettings,
    }
    let mut argv: Vec<std::ffi::OsString> = vec![
        "ragpool-executor".into(),
        "--redis-url".into(),
        redis_url.into(),
        "--concurrency".into(),
        args.concurrency.to_string().into(),
        "--metrics-listen".into(),
        args.executor_metrics_listen.to_string().into(),
        "--drain-seconds".into(),
        args.drain_seconds.to_string().into(),
        "--partitions".into(),
        args.partitions.as_arg().into(),
    ];
    if let Some(docs) = docs {
        argv.push("--docs".into());
        argv.push(docs.as_os_str().to_owned());
    }
    Executor::try_parse_from(argv)
        .map(|e| e.settings)
        .map_err(|e| anyhow::anyhow!("the executor's RAGPOOL_* settings: {}", e.render()))
}

/// `--docs`, or `./docs` when it exists.
fn docs_folder(flag: Option<&Path>) -> anyhow::Result<Option<PathBuf>> {
    match flag {
        Some(path) => {
            let meta = std::fs::metadata(path)
                .with_context(|| format!("--docs {}: cannot read it", path.display()))?;
            if !meta.is_dir() {
                bail!("--docs {}: not a folder", path.display());
            }
            Ok(Some(path.to_path_buf()))
        }
        None => {
            let default = Path::new("docs");
            Ok(default.is_dir().then(|| Path::new(".").join(default)))
        }
    }
}

/// Holds an exclusive lock on `DATA_DIR/dev.lock` for as long as the file stays open, so
/// that two `ragpool dev` never run Redis on the same data.
fn lock_data_dir(data_dir: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating --data-dir {}", data_dir.display()))?;
    let path = data_dir.join("dev.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "another `ragpool dev` is running on {}: stop it, or give this one its own \
             --data-dir and --listen",
            data_dir.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
}

/// `stop` fires on the first SIGINT/SIGTERM, `force` on the second.
struct Signals {
    stop: CancellationToken,
    force: CancellationToken,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
        let stop = CancellationToken::new();
        let force = CancellationToken::new();
        tokio::spawn({
            let (stop, force) = (stop.clone(), force.clone());
            async move {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                eprintln!(
                    "stopping: tasks in flight may finish first; press Ctrl-C again to stop at \
                     once"
                );
                stop.cancel();
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                force.cancel();
            }
        });
        Ok(Signals { stop, force })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docs_flag_must_be_a_folder() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.md");
        std::fs::write(&file, "x").unwrap();
        let err = docs_folder(Some(&file)).unwrap_err().to_string();
        assert!(
            err.contains("--docs") && err.contains("not a folder"),
            "{err}"
        );
        let err = docs_folder(Some(&dir.path().join("missing")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--docs"), "{err}");
        assert_eq!(
            docs_folder(Some(dir.path())).unwrap().as_deref(),
            Some(dir.path())
        );
    }

    #[test]
    fn a_second_lock_on_the_data_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _held = lock_data_dir(dir.path()).unwrap();
        let err = lock_data_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("another `ragpool dev`"), "{err}");
    }
}
