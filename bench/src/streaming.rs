//! `ragpool-bench streaming`: how soon a client sees an answer's first words when the model
//! server streams, and what streaming costs Redis.
//!
//! One private `redis-server`, the API and an executor with the `openai` backend served in
//! this process, and a fake OpenAI-compatible model server on loopback that generates
//! `--tokens` tokens with `--gap-ms` between them. Tasks run one at a time; a client follows
//! each task's events (`GET /api/async/task/{id}/events`) from its submission.
//!
//! - **Streamed**: the model streams its tokens (`stream: true`). The figure is the time from
//!   the model server writing its first token to the client receiving the first `delta`.
//! - **Baseline, not streamed**: the same model answers with one JSON response after the same
//!   generation time, as every backend did before streaming; the client's first text is the
//!   `finished` event, timed from the model server starting to generate.
//!
//! Redis commands per task (`INFO commandstats`, every caller's commands, the ones run inside
//! scripts included) are counted over each phase and compared the same way.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use clap::Parser;
use futures::StreamExt;
use ragpool_executor::settings::ExecutorSettings;
use ragpool_queue::NewTask;
use ragpool_queue::payload::CompleteAnswer;
use ragpool_queue::testing::RedisServer;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::latency::percentile;
use crate::report::{Row, print_table};

/// Flags of `ragpool-bench streaming`.
#[derive(clap::Args, Clone)]
pub struct Args {
    /// Tasks per phase, one at a time.
    #[arg(long, default_value_t = 20)]
    pub tasks: usize,
    /// Tokens the model generates per answer.
    #[arg(long, default_value_t = 200)]
    pub tokens: usize,
    /// Milliseconds between two tokens.
    #[arg(long, default_value_t = 10)]
    pub gap_ms: u64,
}

/// Runs the section and prints its table.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let rows = rows(&args).await?;
    println!();
    print_table(&rows);
    Ok(())
}

/// The fake model server's state: how it answers, and when each answer began.
struct Model {
    streaming: AtomicBool,
    tokens: usize,
    gap: Duration,
    /// When each request's generation began (its first token was written, when streaming).
    began: mpsc::UnboundedSender<Instant>,
}

async fn generate(State(model): State<Arc<Model>>) -> Response {
    if !model.streaming.load(Ordering::Relaxed) {
        let _ = model.began.send(Instant::now());
        tokio::time::sleep(model.gap * u32::try_from(model.tokens).unwrap_or(u32::MAX)).await;
        let text: String = (1..=model.tokens).map(|i| format!("word{i} ")).collect();
        return axum::Json(json!({
            "model": "bench-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
        }))
        .into_response();
    }
    let (tx, mut rx) = mpsc::channel::<Bytes>(1);
    tokio::spawn(async move {
        for i in 1..=model.tokens {
            if i > 1 {
                tokio::time::sleep(model.gap).await;
            }
            let chunk = json!({"model": "bench-model", "choices": [{"index": 0, "delta": {"content": format!("word{i} ")}}]});
            if i == 1 {
                let _ = model.began.send(Instant::now());
            }
            if tx.send(format!("data: {chunk}\n\n").into()).await.is_err() {
                return;
            }
        }
        let _ = tx.send("data: [DONE]\n\n".into()).await;
    });
    let body = futures::stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
            .map(|b| b.map(Ok::<_, std::convert::Infallible>))
    });
    let mut response = Body::from_stream(body).into_response();
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("text/event-stream"),
    );
    response
}

/// One phase's samples: client's first text after generation began, and Redis commands.
struct Phase {
    first_text: Vec<Duration>,
    commands_per_task: f64,
}

/// The section's rows.
pub async fn rows(args: &Args) -> anyhow::Result<Vec<Row>> {
    let redis = tokio::task::spawn_blocking(RedisServer::start)
        .await?
        .context("starting redis-server")?;
    let stop = CancellationToken::new();

    let (began_tx, mut began) = mpsc::unbounded_channel();
    let model = Arc::new(Model {
        streaming: AtomicBool::new(true),
        tokens: args.tokens,
        gap: Duration::from_millis(args.gap_ms),
        began: began_tx,
    });
    let model_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let model_url = format!("http://{}/v1", model_listener.local_addr()?);
    let app = Router::new().fallback(generate).with_state(model.clone());
    // As real model servers do: a token is written out at once, not held for an ACK.
    let model_listener = axum::serve::ListenerExt::tap_io(model_listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let model_server = tokio::spawn(async move { axum::serve(model_listener, app).await });

    let crate::api::InProcessApi {
        broker,
        base,
        served: api,
    } = crate::api::start(redis.url(), &stop).await?;
    let executor = tokio::spawn(ragpool_executor::run(
        openai_settings(&redis.url(), &model_url)?,
        stop.clone(),
    ));

    let client = reqwest::Client::new();
    let mut conn = redis::Client::open(redis.url())?
        .get_multiplexed_async_connection()
        .await?;
    let mut phases = Vec::new();
    for streaming in [true, false] {
        model.streaming.store(streaming, Ordering::Relaxed);
        let before = total_calls(&mut conn).await?;
        let mut first_text = Vec::with_capacity(args.tasks);
        for n in 0..args.tasks {
            let id = broker
                .enqueue(NewTask::new(CompleteAnswer {
                    question: format!("question {n}"),
                    ..CompleteAnswer::default()
                }))
                .await?
                .id;
            let mut events = client
                .get(format!("{base}/api/async/task/{id}/events"))
                .send()
                .await?
                .error_for_status()?
                .bytes_stream();
            let mut seen = String::new();
            let mut text_at = None;
            loop {
                let chunk = tokio::time::timeout(Duration::from_secs(60), events.next())
                    .await
                    .context("no event within 60 s")?
                    .context("event stream ended early")??;
                seen.push_str(&String::from_utf8_lossy(&chunk));
                if text_at.is_none() && seen.contains("event: delta") {
                    text_at = Some(Instant::now());
                }
                if seen.contains("event: finished") {
                    break;
                }
                if seen.contains("event: failed") || seen.contains("event: canceled") {
                    bail!("task {id} did not finish: {seen}");
                }
            }
            let ended_at = Instant::now();
            let began_at = began.recv().await.context("the model server stopped")?;
            let at = if streaming {
                text_at.context("a streamed task sent no delta")?
            } else {
                ended_at
            };
            first_text.push(at.saturating_duration_since(began_at));
        }
        let after = total_calls(&mut conn).await?;
        first_text.sort();
        phases.push(Phase {
            first_text,
            commands_per_task: (after - before) as f64 / args.tasks as f64,
        });
    }

    stop.cancel();
    executor.await??;
    api.await??;
    model_server.abort();

    let (streamed, whole) = (&phases[0], &phases[1]);
    let mut rows = Vec::new();
    for (label, p) in [("p50", 0.50), ("p99", 0.99)] {
        rows.push(Row::ratio(
            format!("model's first token → client's first delta, {label}"),
            percentile(&streamed.first_text, p).as_secs_f64() * 1000.0,
            "ms",
            "not streamed: generation start → finished event",
            percentile(&whole.first_text, p).as_secs_f64() * 1000.0,
        ));
    }
    rows.push(Row::ratio(
        format!(
            "Redis commands per streamed task ({} tokens, {} ms apart)",
            args.tokens, args.gap_ms
        ),
        streamed.commands_per_task,
        "commands",
        "per task not streamed",
        whole.commands_per_task,
    ));
    Ok(rows)
}

/// Executor settings for the `openai` backend at `model_url`.
fn openai_settings(redis_url: &str, model_url: &str) -> anyhow::Result<ExecutorSettings> {
    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        settings: ExecutorSettings,
    }
    let flags = Flags::try_parse_from([
        "ragpool-executor",
        "--redis-url",
        redis_url,
        "--metrics-listen",
        "127.0.0.1:0",
        "--worker-id",
        "bench-executor",
        "--backend",
        "openai",
        "--openai-base-url",
        model_url,
        "--openai-model",
        "bench-model",
    ])?;
    Ok(flags.settings)
}

/// Every command Redis ran so far (`INFO commandstats`), those inside scripts included.
async fn total_calls(conn: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<u64> {
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await?;
    Ok(stats
        .lines()
        .filter(|l| l.starts_with("cmdstat_"))
        .filter_map(|l| {
            l.split(',')
                .find_map(|f| f.split("calls=").nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .sum())
}
