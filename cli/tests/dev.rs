//! `ragpool dev` as a process: it starts its own Redis, answers a query from the documents it
//! was given, and on SIGINT stops cleanly, taking its Redis with it.

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;
use support::{QUESTION, write_docs};

/// Longest any single wait may take before the test fails (a debug build indexes and
/// starts slowly on a busy machine).
const PATIENCE: Duration = Duration::from_secs(120);

/// A `ragpool dev` child process, killed if the test ends early.
struct Dev {
    child: Option<Child>,
    pid: u32,
    lines: mpsc::Receiver<String>,
}

impl Dev {
    fn start(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Dev {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ragpool"));
        command
            .arg("dev")
            .args(args)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (key, _) in std::env::vars() {
            if key.starts_with("RAGPOOL_") {
                command.env_remove(key);
            }
        }
        command
            .env("RAGPOOL_LOG", "error")
            .envs(env.iter().copied());
        let mut child = command.spawn().expect("starting ragpool dev");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Dev {
            pid: child.id(),
            child: Some(child),
            lines,
        }
    }

    /// The next line of stdout containing `needle`.
    fn line_with(&self, needle: &str) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(PATIENCE)
                .unwrap_or_else(|e| panic!("no line with {needle:?} from ragpool dev: {e}"));
            if line.contains(needle) {
                return line;
            }
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.pid.to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit.
    fn wait(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("waited once");
        let (tx, rx) = mpsc::channel();
        // `Child::wait` blocks without a deadline; a thread gives it one.
        std::thread::spawn(move || {
            if let Ok(status) = child.wait() {
                let _ = tx.send(status);
            }
        });
        rx.recv_timeout(PATIENCE).unwrap_or_else(|_| {
            self.signal("KILL");
            panic!("ragpool dev did not exit in time");
        })
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `pid N` and `127.0.0.1:PORT` from the banner's Redis line.
fn redis_pid_and_port(line: &str) -> (u32, u16) {
    let pid = line
        .split("pid ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {line:?}"));
    let port = line
        .split("127.0.0.1:")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"));
    (pid, port)
}

#[tokio::test]
async fn dev_answers_from_its_docs_and_stops_cleanly_on_sigint() {
    let cwd = tempfile::tempdir().expect("tempdir");
    write_docs(&cwd.path().join("corpus"));
    let mut dev = Dev::start(
        cwd.path(),
        &[
            "--listen",
            "127.0.0.1:0",
            "--docs",
            "corpus",
            "--concurrency",
            "2",
        ],
        &[],
    );

    let url = dev
        .line_with("API listening on ")
        .split("API listening on ")
        .nth(1)
        .expect("url")
        .trim()
        .to_owned();
    let (redis_pid, redis_port) = redis_pid_and_port(&dev.line_with("Redis:"));
    assert!(!process_gone(redis_pid));
    let dashboard = format!("{url}/dashboard");
    assert!(dev.line_with("Dashboard:").ends_with(&dashboard));
    let curl = dev.line_with("curl -s -X POST");
    assert!(curl.contains(&format!("{url}/api/async/query")), "{curl}");
    assert!(dev.line_with("?wait=30").contains(&url));
    let page = reqwest::get(&dashboard).await.expect("dashboard page");
    assert_eq!(page.status(), reqwest::StatusCode::OK, "{dashboard}");
    assert!(
        cwd.path().join(".ragpool/redis/appendonlydir").is_dir(),
        "the private Redis keeps an append-only file under ./.ragpool/redis"
    );

    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let submitted: Value = http
        .post(format!("{url}/api/async/query"))
        .json(&serde_json::json!({ "question": QUESTION }))
        .send()
        .await
        .expect("submitting")
        .json()
        .await
        .expect("JSON");
    let id = submitted["task_id"].as_str().expect("task_id");
    let mut task = Value::Null;
    for _ in 0..4 {
        task = http
            .get(format!("{url}/api/async/task/{id}?wait=30"))
            .send()
            .await
            .expect("reading the task")
            .json()
            .await
            .expect("JSON");
        if task["status"] == "finished" || task["status"] == "failed" {
            break;
        }
    }
    assert_eq!(task["status"], "finished", "{task:#}");
    assert_eq!(
        task["result"]["citations"][0]["document"], "tides.md",
        "{task:#}"
    );
    assert!(
        task["result"]["answer"]
            .as_str()
            .is_some_and(|a| a.contains("4.2 metres")),
        "{task:#}"
    );

    dev.signal("INT");
    let status = dev.wait();
    assert_eq!(status.code(), Some(0), "ragpool dev exit: {status}");
    assert!(
        process_gone(redis_pid),
        "redis-server (pid {redis_pid}) outlived ragpool dev"
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", redis_port)).is_err(),
        "something still listens on the private Redis port {redis_port}"
    );
}

#[tokio::test]
async fn dev_uses_the_redis_it_is_given() {
    let redis = tokio::task::spawn_blocking(ragpool_queue::testing::RedisServer::start)
        .await
        .expect("harness thread")
        .expect("redis-server starts");
    let cwd = tempfile::tempdir().expect("tempdir");
    let mut dev = Dev::start(
        cwd.path(),
        &["--listen", "127.0.0.1:0"],
        &[("RAGPOOL_REDIS_URL", &redis.url())],
    );
    let line = dev.line_with("Redis:");
    assert!(line.contains(&redis.url()), "{line}");
    assert!(dev.line_with("Executor:").contains("no documents"));
    assert!(
        !cwd.path().join(".ragpool").exists(),
        "no private Redis data"
    );
    dev.signal("TERM");
    assert_eq!(dev.wait().code(), Some(0));
}

#[test]
fn dev_says_how_to_get_redis_when_it_is_missing() {
    let cwd = tempfile::tempdir().expect("tempdir");
    let empty_path = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_ragpool"))
        .args(["dev", "--listen", "127.0.0.1:0"])
        .current_dir(cwd.path())
        .env_remove("RAGPOOL_REDIS_URL")
        .env("PATH", empty_path.path())
        .stdin(Stdio::null())
        .output()
        .expect("running ragpool dev");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("sudo apt-get install redis-server")
            && stderr.contains("RAGPOOL_REDIS_URL"),
        "{stderr}"
    );
}

/// Whether a process is gone (a zombie nobody reaped counts as gone).
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// The banner's API URL and the private Redis's pid.
fn banner(dev: &Dev) -> (String, u32) {
    let url = dev
        .line_with("API listening on ")
        .split("API listening on ")
        .nth(1)
        .expect("url")
        .trim()
        .to_owned();
    let (pid, _) = redis_pid_and_port(&dev.line_with("Redis:"));
    (url, pid)
}

#[tokio::test]
async fn a_killed_dev_leaves_nothing_behind_for_the_next_one() {
    let cwd = tempfile::tempdir().expect("tempdir");
    write_docs(&cwd.path().join("corpus"));
    let args = ["--listen", "127.0.0.1:0", "--docs", "corpus"];
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");

    let mut first = Dev::start(cwd.path(), &args, &[]);
    let (url, first_redis) = banner(&first);
    let submitted: Value = http
        .post(format!("{url}/api/async/complete-answer"))
        .json(&serde_json::json!({ "question": QUESTION }))
        .send()
        .await
        .expect("submitting")
        .json()
        .await
        .expect("JSON");
    let id = submitted["task_id"].as_str().expect("task_id").to_owned();
    let task: Value = http
        .get(format!("{url}/api/async/task/{id}?wait=30"))
        .send()
        .await
        .expect("reading the task")
        .json()
        .await
        .expect("JSON");
    assert_eq!(task["status"], "finished", "{task:#}");

    // SIGKILL gives no chance to stop Redis: it keeps running on the data folder.
    first.signal("KILL");
    first.wait();
    assert!(!process_gone(first_redis), "Redis runs on after a SIGKILL");

    let mut second = Dev::start(cwd.path(), &args, &[]);
    let (url, second_redis) = banner(&second);
    assert_ne!(first_redis, second_redis);
    assert!(
        process_gone(first_redis),
        "the leftover redis-server (pid {first_redis}) was stopped before a new one started"
    );
    // The task finished before the kill is still there: same data, append-only file.
    let again: Value = http
        .get(format!("{url}/api/async/task/{id}"))
        .send()
        .await
        .expect("reading the task")
        .json()
        .await
        .expect("JSON");
    assert_eq!(again["status"], "finished", "{again:#}");
    assert_eq!(again["result"], task["result"]);

    second.signal("INT");
    assert_eq!(second.wait().code(), Some(0));
    assert!(process_gone(second_redis));
}
