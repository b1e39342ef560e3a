//! Redis away for longer than a lease while tasks run: no task is re-delivered because of it.
//!
//! Three executors run in this process, each holding two tasks in a backend that blocks until
//! the test releases it. Redis is SIGKILLed for twice the lease and restarted from its
//! append-only file. One executor reaches it directly; the other two go through proxies that
//! stay cut for a while after Redis is back, so they reconnect at different moments, the last
//! well after the first one's maintenance pass saw every lease expired. Every backend must be
//! called exactly once and every task must finish once, on its first attempt.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ragpool_executor::backend::{Backend, BackendError, TaskContext};
use ragpool_queue::payload::{AnalyzeImage, CompleteAnswer, FullQuery};
use ragpool_queue::{TaskId, TaskState};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

mod loop_support;
use loop_support::{Env, Events, InProcess, PATIENCE, answer_queue, settings, states};

const LEASE_SECONDS: u64 = 4;
const LEASE: Duration = Duration::from_secs(LEASE_SECONDS);
const EXECUTORS: usize = 3;
const SLOTS: usize = 2;
const TASKS: usize = EXECUTORS * SLOTS;

/// Counts calls per task id, reports each arrival, and answers only once released.
struct GatedBackend {
    calls: Mutex<HashMap<TaskId, usize>>,
    arrivals: mpsc::UnboundedSender<TaskId>,
    released: watch::Receiver<bool>,
}

impl GatedBackend {
    async fn work(&self, cx: &TaskContext) -> Result<Value, BackendError> {
        let (id, _) = cx.task().expect("the job loop names the task");
        *self
            .calls
            .lock()
            .expect("lock")
            .entry(id.clone())
            .or_default() += 1;
        let _ = self.arrivals.send(id.clone());
        // A closed gate means the test is over (it failed): answer and let it end.
        let _ = self.released.clone().wait_for(|r| *r).await;
        Ok(json!({ "answer": format!("for {id}") }))
    }
}

#[async_trait]
impl Backend for GatedBackend {
    async fn analyze_image(
        &self,
        _: &AnalyzeImage,
        cx: &TaskContext,
    ) -> Result<Value, BackendError> {
        self.work(cx).await
    }

    async fn complete_answer(
        &self,
        _: &CompleteAnswer,
        cx: &TaskContext,
    ) -> Result<Value, BackendError> {
        self.work(cx).await
    }

    async fn full_query(&self, _: &FullQuery, cx: &TaskContext) -> Result<Value, BackendError> {
        self.work(cx).await
    }
}

/// A TCP proxy to Redis that the test can cut (every connection dropped, new ones closed at
/// once) and open again: an executor that cannot reach Redis while others can.
struct Proxy {
    addr: SocketAddr,
    open: watch::Sender<bool>,
}

impl Proxy {
    async fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (open, watch_open) = watch::channel(true);
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut open = watch_open.clone();
                if !*open.borrow() {
                    continue;
                }
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", target)).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = open.wait_for(|o| !*o) => {}
                    }
                });
            }
        });
        Proxy { addr, open }
    }

    fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    fn cut(&self) {
        self.open.send_replace(false);
    }

    fn reopen(&self) {
        self.open.send_replace(true);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_of_twice_the_lease_runs_each_task_once() {
    let mut env = Env::start_persistent(vec![answer_queue(3, Duration::from_secs(300))]).await;
    let mut events = Events::follow(&env.broker).await;
    let (arrived, mut arrivals) = mpsc::unbounded_channel();
    let (release, released) = watch::channel(false);
    let backend = Arc::new(GatedBackend {
        calls: Mutex::default(),
        arrivals: arrived,
        released,
    });

    // Executor 0 reaches Redis directly, 1 and 2 through proxies.
    let proxies = [
        Proxy::start(env.redis.port()).await,
        Proxy::start(env.redis.port()).await,
    ];
    let mut urls = vec![env.url()];
    urls.extend(proxies.iter().map(Proxy::url));
    let executors: Vec<InProcess> = urls
        .iter()
        .map(|url| {
            let settings = settings(
                url,
                &[
                    "--queues",
                    "answer_generation",
                    "--lease-seconds",
                    &LEASE_SECONDS.to_string(),
                    "--maintenance-seconds",
                    "1",
                    "--concurrency",
                    &SLOTS.to_string(),
                ],
            );
            InProcess::with_backend(settings, backend.clone())
        })
        .collect();

    let mut ids = Vec::new();
    for n in 0..TASKS {
        ids.push(env.ask(&format!("question {n}")).await);
    }
    // Every slot of every executor holds a task (each takes at most its two).
    for _ in 0..TASKS {
        tokio::time::timeout(PATIENCE, arrivals.recv())
            .await
            .expect("every task reaches the backend")
            .expect("backend alive");
    }
    let holders = workers_of(&env, &ids).await;
    assert_eq!(
        holders.len(),
        EXECUTORS,
        "each executor holds tasks: {holders:?}"
    );

    // The outage: Redis killed (its append-only file keeps every lease) for twice the lease;
    // the proxied executors stay cut off a quarter and half a lease longer: the last one
    // returns after executor 0 has run maintenance passes over leases that all ran out, and
    // well inside the hold (a lease from the first contact), reconnection included.
    for p in &proxies {
        p.cut();
    }
    env.kill_redis();
    tokio::time::sleep(LEASE * 2).await;
    env.restart_redis().await;
    tokio::time::sleep(LEASE / 4).await;
    proxies[0].reopen();
    tokio::time::sleep(LEASE / 4).await;
    proxies[1].reopen();

    // The tasks keep running for one and a half leases more: past the hold, a lease nobody
    // renewed would be reaped (its task re-queued, or run again on a free slot).
    tokio::time::sleep(LEASE * 3 / 2).await;
    for id in &ids {
        let task = env.broker.get(id).await.expect("read").expect("exists");
        assert_eq!(
            (task.state, task.attempts),
            (TaskState::Started, 1),
            "{id} still on its first attempt: {task:?}"
        );
    }
    assert_eq!(
        workers_of(&env, &ids).await,
        holders,
        "every task still with the executor that claimed it"
    );

    release.send_replace(true);
    for id in &ids {
        let task = env.ended(id).await;
        assert_eq!(task.state, TaskState::Finished, "{task:?}");
        assert_eq!(task.attempts, 1, "{task:?}");
        assert_eq!(task.result, Some(json!({ "answer": format!("for {id}") })));
        let history = events.until_end(id).await;
        assert_eq!(
            states(&history),
            ["queued", "started", "finished"],
            "{id}: claimed once, ended once"
        );
    }
    let calls = backend.calls.lock().expect("lock").clone();
    assert_eq!(calls.len(), TASKS, "{calls:?}");
    assert!(
        calls.values().all(|&n| n == 1),
        "each backend called exactly once: {calls:?}"
    );

    for e in executors {
        e.shutdown().await;
    }
}

/// Which worker holds each task, as a map worker -> tasks.
async fn workers_of(env: &Env, ids: &[TaskId]) -> HashMap<String, Vec<TaskId>> {
    let mut by_worker: HashMap<String, Vec<TaskId>> = HashMap::new();
    for id in ids {
        let task = env.broker.get(id).await.expect("read").expect("exists");
        let worker = task
            .worker
            .clone()
            .unwrap_or_else(|| panic!("{id} has no worker: {task:?}"));
        by_worker.entry(worker).or_default().push(id.clone());
    }
    by_worker
}
