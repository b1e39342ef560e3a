//! Resident memory of the idle binaries: `ragpool-api`, `ragpool-executor` (builtin backend
//! over the repository's `docs/`) and `ragpool-operator`, each started as a real process from
//! the release binaries next to this one, left alone for a few seconds, then read from
//! `/proc/<pid>/status` (`VmRSS`).
//!
//! The operator needs a Kubernetes API. A loopback stub serves it: every list answers an empty
//! list and every watch stays open with nothing to say, which is what an idle cluster with
//! no pools looks like to the operator. It is a stand-in for a benchmark, not a test double.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::RawQuery;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use ragpool_queue::testing::RedisServer;

use crate::report::Row;

/// How long each binary sits idle before its memory is read.
const SETTLE: Duration = Duration::from_secs(3);

/// The idle-footprint rows, one per binary.
pub async fn rows() -> anyhow::Result<Vec<Row>> {
    let dir = std::env::current_exe()
        .context("locating this binary")?
        .parent()
        .map(Path::to_path_buf)
        .context("the directory of this binary")?;
    for name in ["ragpool-api", "ragpool-executor", "ragpool-operator"] {
        if !dir.join(name).is_file() {
            bail!(
                "{} is missing: build the binaries first with \
                 `cargo build --release -p ragpool-api -p ragpool-executor -p ragpool-operator \
                 -p ragpool-bench` (or pass --no-footprint)",
                dir.join(name).display()
            );
        }
    }
    let redis = tokio::task::spawn_blocking(RedisServer::start)
        .await?
        .context("starting redis-server")?;
    let url = redis.url();
    let kube = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let kube_addr = kube.local_addr()?;
    let stub = tokio::spawn(async move { axum::serve(kube, kube_stub()).await });
    let kubeconfig = std::env::temp_dir().join(format!(
        "ragpool-bench-kubeconfig-{}.yaml",
        std::process::id()
    ));
    std::fs::write(&kubeconfig, kubeconfig_for(&format!("http://{kube_addr}")))
        .context("writing the stub's kubeconfig")?;

    let mut children = vec![
        (
            "idle ragpool-api",
            Guard::spawn(
                Command::new(dir.join("ragpool-api"))
                    .args(["--listen", "127.0.0.1:0"])
                    .env("RAGPOOL_REDIS_URL", &url),
            )?,
        ),
        (
            "idle ragpool-executor (builtin, docs/)",
            Guard::spawn(
                Command::new(dir.join("ragpool-executor"))
                    .args(["--metrics-listen", "127.0.0.1:0", "--docs"])
                    .arg(docs_dir())
                    .env("RAGPOOL_REDIS_URL", &url),
            )?,
        ),
        (
            "idle ragpool-operator (stub Kubernetes API)",
            Guard::spawn(
                Command::new(dir.join("ragpool-operator"))
                    .args(["--listen", "127.0.0.1:0", "--leadership", "false"])
                    .env("KUBECONFIG", &kubeconfig),
            )?,
        ),
    ];
    tokio::time::sleep(SETTLE).await;
    let mut rows = Vec::new();
    for (figure, child) in &mut children {
        if let Some(status) = child.0.try_wait()? {
            bail!("{figure}: the process exited ({status}) before it was measured");
        }
        rows.push(Row::plain(*figure, rss_mib(child.0.id())?, "MiB"));
    }
    drop(children);
    stub.abort();
    let _ = std::fs::remove_file(&kubeconfig);
    Ok(rows)
}

/// The repository's `docs/` folder (compiled in; the executor indexes it at start).
fn docs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs")
}

/// A child process that is killed and reaped when dropped.
struct Guard(Child);

impl Guard {
    fn spawn(cmd: &mut Command) -> anyhow::Result<Guard> {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {:?}", cmd.get_program()))?;
        Ok(Guard(child))
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `VmRSS` of a process, in MiB.
fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS line")?;
    Ok(kib / 1024.0)
}

/// A kubeconfig for a plain-HTTP API server at `server`, without credentials.
fn kubeconfig_for(server: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: stub\n  cluster:\n    server: {server}\n\
         contexts:\n- name: stub\n  context:\n    cluster: stub\n    user: stub\n    namespace: default\n\
         current-context: stub\nusers:\n- name: stub\n  user: {{}}\n"
    )
}

/// The stub Kubernetes API: empty lists, silent watches.
fn kube_stub() -> Router {
    Router::new().fallback(|RawQuery(query): RawQuery| async move {
        let watch = query
            .as_deref()
            .is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
        if watch {
            let silent = futures::stream::pending::<Result<Bytes, Infallible>>();
            Response::builder()
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from_stream(silent))
                .map(IntoResponse::into_response)
                .unwrap_or_else(|e| e.to_string().into_response())
        } else {
            (
                [(header::CONTENT_TYPE, "application/json")],
                r#"{"apiVersion":"v1","kind":"List","metadata":{"resourceVersion":"1"},"items":[]}"#,
            )
                .into_response()
        }
    })
}
