//! Shared pieces of the CLI tests: a real Redis, the API (and optionally an executor) served
//! in this process, a small document folder, and a way to run the `ragpool` binary.

#![allow(dead_code)]

use std::path::Path;
use std::process::Output;

use clap::Parser;
use ragpool_api::ApiConfig;
use ragpool_executor::settings::ExecutorSettings;
use ragpool_queue::testing::RedisServer;
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The document that answers [`QUESTION`], and two that do not.
pub const DOCS: &[(&str, &str)] = &[
    (
        "tides.md",
        "# Tides at Karsk harbour\n\nThe Karsk harbour tide gauge reads highest at the spring \
         equinox, when the water stands 4.2 metres above chart datum.\n",
    ),
    (
        "bread.md",
        "# Baking rye bread\n\nRye dough ferments slowly; a sourdough starter keeps it moist \
         and gives the crumb its sour taste.\n",
    ),
    (
        "trains.md",
        "# Night trains\n\nThe night train leaves the northern station at ten and reaches the \
         coast by morning, with sleeping cars and a dining car.\n",
    ),
];

/// A question only `tides.md` answers.
pub const QUESTION: &str = "How high does the water stand at Karsk harbour at the spring equinox?";

/// Writes [`DOCS`] into `dir`.
pub fn write_docs(dir: &Path) {
    std::fs::create_dir_all(dir).expect("creating the docs folder");
    for (name, text) in DOCS {
        std::fs::write(dir.join(name), text).expect("writing a document");
    }
}

/// The API (and an executor, when asked) over a fresh `redis-server`, until dropped.
pub struct Stack {
    pub url: String,
    pub redis_url: String,
    stop: CancellationToken,
    api: Option<JoinHandle<anyhow::Result<()>>>,
    executor: Option<JoinHandle<anyhow::Result<()>>>,
    _redis: RedisServer,
    _docs: tempfile::TempDir,
}

impl Stack {
    pub async fn start(api_keys: Option<&str>, with_executor: bool) -> Stack {
        Self::start_with(api_keys, with_executor, |_| {}).await
    }

    /// As [`Stack::start`], with the API's configuration changed by `configure`.
    pub async fn start_with(
        api_keys: Option<&str>,
        with_executor: bool,
        configure: impl FnOnce(&mut ApiConfig),
    ) -> Stack {
        let redis = tokio::task::spawn_blocking(RedisServer::start)
            .await
            .expect("harness thread")
            .expect("redis-server starts");
        let mut config = ApiConfig {
            redis_url: redis.url(),
            ..ApiConfig::default()
        };
        config.auth.api_keys = api_keys.map(str::to_owned);
        configure(&mut config);
        let broker = ragpool_queue::Broker::connect(config.broker_config().expect("config"))
            .await
            .expect("broker connects");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the API");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let stop = CancellationToken::new();
        let api = tokio::spawn(ragpool_api::serve(
            config,
            broker,
            listener,
            stop.clone().cancelled_owned(),
        ));

        let docs = tempfile::tempdir().expect("tempdir");
        write_docs(docs.path());
        let executor = with_executor.then(|| {
            #[derive(Parser)]
            struct Args {
                #[command(flatten)]
                settings: ExecutorSettings,
            }
            let docs = docs.path().to_string_lossy().into_owned();
            let redis_url = redis.url();
            let settings = Args::try_parse_from([
                "ragpool-executor",
                "--redis-url",
                &redis_url,
                "--metrics-listen",
                "127.0.0.1:0",
                "--backend",
                "builtin",
                "--docs",
                &docs,
            ])
            .expect("executor settings")
            .settings;
            tokio::spawn(ragpool_executor::run(settings, stop.clone()))
        });
        Stack {
            url,
            redis_url: redis.url(),
            stop,
            api: Some(api),
            executor,
            _redis: redis,
            _docs: docs,
        }
    }

    /// Stops the API and the executor and checks both stopped cleanly.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(api) = self.api.take() {
            api.await.expect("API task").expect("API stops cleanly");
        }
        if let Some(executor) = self.executor.take() {
            executor
                .await
                .expect("executor task")
                .expect("executor stops cleanly");
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// What a `ragpool` run printed, and how it exited.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// stdout as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    pub fn assert_ok(&self) -> &Self {
        assert_eq!(self.code, Some(0), "ragpool failed: {self:?}");
        self
    }
}

/// Runs the `ragpool` binary with `args`, none of the `RAGPOOL_*` variables of the test's own
/// environment, and `env` added.
pub async fn ragpool(args: &[&str], env: &[(&str, &str)]) -> Run {
    ragpool_with_stdin(args, env, None).await
}

/// As [`ragpool`], with `input` on stdin (none when `None`).
pub async fn ragpool_with_stdin(args: &[&str], env: &[(&str, &str)], input: Option<&str>) -> Run {
    use tokio::io::AsyncWriteExt as _;
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_ragpool"));
    command.args(args).stdin(if input.is_some() {
        std::process::Stdio::piped()
    } else {
        std::process::Stdio::null()
    });
    command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (key, _) in std::env::vars() {
        if key.starts_with("RAGPOOL_") {
            command.env_remove(key);
        }
    }
    command.envs(env.iter().copied());
    let mut child = command.spawn().expect("running ragpool");
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(input.as_bytes())
            .await
            .expect("writing stdin");
    }
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().await.expect("running ragpool");
    Run {
        code: status.code(),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// A real 4×4 PNG.
pub fn png() -> Vec<u8> {
    let img = image::RgbImage::from_fn(4, 4, |x, y| image::Rgb([x as u8 * 60, y as u8 * 60, 90]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .expect("encoding a PNG");
    out.into_inner()
}
