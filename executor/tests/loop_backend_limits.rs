//! Pool-wide limits on backend calls, with `ragpool-executor` processes sharing one limit
//! key over a real Redis and a fake model server on loopback that counts the calls running
//! at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use ragpool_queue::{TaskId, TaskState};
use serde_json::json;
use tokio::sync::watch;

mod loop_support;
use loop_support::{Env, ExecutorProcess, quick_queues};

/// A model server on 127.0.0.1: each request is answered as `respond` says, given its
/// arrival number (0 for the first); it counts the requests running at once.
struct FakeModel {
    url: String,
    /// The number of requests that arrived so far.
    arrivals: watch::Receiver<usize>,
    arrived: Arc<AtomicUsize>,
    running: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
}

type Respond = dyn Fn(usize, watch::Receiver<usize>) -> futures::future::BoxFuture<'static, Response>
    + Send
    + Sync;

impl FakeModel {
    async fn start(respond: Box<Respond>) -> FakeModel {
        let arrived = Arc::new(AtomicUsize::new(0));
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let (arrivals, watching) = watch::channel(0usize);
        let watching_for_app = watching.clone();
        let respond: Arc<Respond> = respond.into();
        let app = {
            let (arrived, running, most) = (arrived.clone(), running.clone(), most.clone());
            Router::new().fallback(move || {
                let (arrived, running, most) = (arrived.clone(), running.clone(), most.clone());
                let (respond, arrivals, watching) =
                    (respond.clone(), arrivals.clone(), watching_for_app.clone());
                async move {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    let n = arrived.fetch_add(1, Ordering::SeqCst);
                    arrivals.send_replace(n + 1);
                    let response = respond(n, watching).await;
                    running.fetch_sub(1, Ordering::SeqCst);
                    response
                }
            })
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake model server");
        let url = format!("http://{}", listener.local_addr().expect("local addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeModel {
            url,
            arrivals: watching,
            arrived,
            running,
            most,
        }
    }
}

fn answer() -> Response {
    axum::Json(json!({"answer": "ok"})).into_response()
}

fn executor_env<'a>(redis: &'a str, model: &'a FakeModel, id: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("RAGPOOL_REDIS_URL", redis),
        ("RAGPOOL_BACKEND", "http"),
        ("RAGPOOL_HTTP_URL", model.url.as_str()),
        ("RAGPOOL_WORKER_ID", id),
        ("RAGPOOL_BACKEND_LIMIT_KEY", "shared-model"),
    ]
}

/// Three executors of 8 slots each share a limit of 4 calls. The server answers in rounds:
/// each request is held until four have arrived in its round, so a limit that let a fifth
/// call through would be seen, and a limit that never reached four would hang the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_executors_never_exceed_the_pool_limit() {
    const LIMIT: usize = 4;
    const TASKS: usize = 40;
    let env = Env::start(quick_queues()).await;
    let url = env.url();
    let model = FakeModel::start(Box::new(|n, mut arrivals| {
        Box::pin(async move {
            let round_full = (n / LIMIT + 1) * LIMIT;
            let _ = arrivals.wait_for(|&a| a >= round_full).await;
            answer()
        })
    }))
    .await;
    let mut executors = Vec::new();
    for id in ["limited-a", "limited-b", "limited-c"] {
        let mut vars = executor_env(&url, &model, id);
        vars.extend([
            ("RAGPOOL_CONCURRENCY", "8"),
            ("RAGPOOL_BACKEND_MAX_CONCURRENT", "4"),
        ]);
        executors.push(ExecutorProcess::start(&vars).await);
    }
    let mut ids: Vec<TaskId> = Vec::new();
    for i in 0..TASKS {
        ids.push(env.ask(&format!("question {i}?")).await);
    }
    for id in &ids {
        let task = env.ended(id).await;
        assert_eq!(task.state, TaskState::Finished, "{task:?}");
        assert_eq!(task.attempts, 1, "waiting for a permit spends no attempt");
    }
    assert_eq!(model.arrived.load(Ordering::SeqCst), TASKS);
    assert_eq!(
        model.most.load(Ordering::SeqCst),
        LIMIT,
        "calls running at once across three executors"
    );
    assert_eq!(model.running.load(Ordering::SeqCst), 0);
    let state = env
        .broker
        .backend_limit_state("shared-model")
        .await
        .unwrap();
    assert_eq!(state.in_use, 0, "every permit was given back");
    for e in executors {
        e.sigterm();
        let (status, output) = e.exit().await;
        assert!(status.success(), "{output}");
    }
}

/// A 429 with Retry-After seen by one executor holds the calls of every executor of the
/// key; once the pause is over they all go ahead, without spending an attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_pauses_every_executor() {
    let env = Env::start(quick_queues()).await;
    let url = env.url();
    let model = FakeModel::start(Box::new(|n, _| {
        Box::pin(async move {
            if n == 0 {
                let mut r = (StatusCode::TOO_MANY_REQUESTS, "slow down").into_response();
                r.headers_mut()
                    .insert("retry-after", HeaderValue::from_static("3600"));
                r
            } else {
                answer()
            }
        })
    }))
    .await;
    let mut executors = Vec::new();
    for id in ["paused-a", "paused-b"] {
        let mut vars = executor_env(&url, &model, id);
        vars.extend([
            ("RAGPOOL_CONCURRENCY", "1"),
            ("RAGPOOL_BACKEND_MAX_CONCURRENT", "8"),
        ]);
        executors.push(ExecutorProcess::start(&vars).await);
    }
    // The first call meets the 429; its task goes back to the queue for the hour asked.
    let mut events = loop_support::Events::follow(&env.broker).await;
    let first = env.ask("first?").await;
    events.until_state(&first, TaskState::Delayed).await;
    assert!(
        env.broker
            .backend_limit_state("shared-model")
            .await
            .unwrap()
            .paused_for
            > std::time::Duration::ZERO
    );
    // One task per executor (each has one slot): both are held by the pause.
    let later = [env.ask("second?").await, env.ask("third?").await];
    for e in &mut executors {
        e.wait_log("calls to the backend paused").await;
    }
    assert_eq!(
        model.arrived.load(Ordering::SeqCst),
        1,
        "no call during the pause"
    );
    // The pause ends (here: lifted); both calls go ahead.
    let mut redis = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("HDEL")
        .arg("{ragpool:backend:shared-model}:state")
        .arg("paused_until")
        .query_async(&mut redis)
        .await
        .unwrap();
    for id in &later {
        let task = env.ended(id).await;
        assert_eq!(task.state, TaskState::Finished, "{task:?}");
        assert_eq!(task.attempts, 1, "waiting out a pause spends no attempt");
    }
    assert_eq!(model.arrived.load(Ordering::SeqCst), 3);
    for e in executors {
        e.sigterm();
        let (status, output) = e.exit().await;
        assert!(status.success(), "{output}");
    }
}

/// An executor killed while its calls hold every permit leaks none: its permits' leases run
/// out like its tasks' leases, and another executor finishes the tasks under the same limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_executors_permits_come_back() {
    let env = Env::start(quick_queues()).await;
    let url = env.url();
    // The first two calls (the killed executor's) never end; later ones are answered.
    let model = FakeModel::start(Box::new(|n, _| {
        Box::pin(async move {
            if n < 2 {
                std::future::pending::<()>().await;
            }
            answer()
        })
    }))
    .await;
    let limited = |id: &'static str| {
        let mut vars = executor_env(&url, &model, id);
        vars.extend([
            ("RAGPOOL_CONCURRENCY", "4"),
            ("RAGPOOL_LEASE_SECONDS", "1"),
            ("RAGPOOL_BACKEND_MAX_CONCURRENT", "2"),
        ]);
        vars
    };
    let a = ExecutorProcess::start(&limited("holder")).await;
    let ids = [env.ask("one?").await, env.ask("two?").await];
    let mut arrivals = model.arrivals.clone();
    let _ = arrivals.wait_for(|&n| n >= 2).await;
    let state = env
        .broker
        .backend_limit_state("shared-model")
        .await
        .unwrap();
    assert_eq!(state.in_use, 2, "the holder has every permit");
    a.sigkill().await;

    let b = ExecutorProcess::start(&limited("successor")).await;
    for id in &ids {
        let task = env.ended(id).await;
        assert_eq!(task.state, TaskState::Finished, "{task:?}");
        assert_eq!(task.worker.as_deref(), Some("successor"));
    }
    let state = env
        .broker
        .backend_limit_state("shared-model")
        .await
        .unwrap();
    assert_eq!(
        state.in_use, 0,
        "the dead holder's permits are gone, the successor's given back"
    );
    b.sigterm();
    let (status, output) = b.exit().await;
    assert!(status.success(), "{output}");
}
