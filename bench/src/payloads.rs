//! `ragpool-bench payloads`: what a large input costs once its task is queued, read and
//! done, each figure against a small task's in the same run.
//!
//! One private `redis-server`, the API served in this process and an executor's job loop in
//! this process over a backend that answers a small result (and, for the polling figure,
//! holds the task for a while):
//!
//! - **Redis bytes per finished task**: `INFO memory` `used_memory` before and after a round
//!   of tasks run to the end, divided by the tasks; image tasks (a PNG of `--image-mib`)
//!   against text tasks.
//! - **status read p50**: `GET /api/async/task/{id}` of a running image task (its payload
//!   still stored) against a running text task's, and the same once both finished.
//! - **Redis output per polled image task**: `INFO stats` `total_net_output_bytes` over the
//!   whole life of one image task submitted over HTTP and held for `--hold-ms` while a
//!   client polls it every 100 ms, against the payload's size.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_trait::async_trait;
use base64::Engine;
use image::ImageEncoder as _;
use ragpool_executor::backend::{Backend, BackendError, TaskContext};
use ragpool_queue::payload::{AnalyzeImage, CompleteAnswer, FullQuery};
use ragpool_queue::testing::RedisServer;
use ragpool_queue::{Broker, NewTask, Payload, TaskId};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::report::{Row, print_table};

/// Flags of `ragpool-bench payloads`.
#[derive(clap::Args, Clone)]
pub struct Args {
    /// Size of the test image (a PNG of random pixels), MiB.
    #[arg(long, default_value_t = 5.0)]
    pub image_mib: f64,
    /// Tasks per memory figure.
    #[arg(long, default_value_t = 20)]
    pub tasks: usize,
    /// Status reads per latency figure.
    #[arg(long, default_value_t = 300)]
    pub reads: usize,
    /// How long the polled image task runs, ms.
    #[arg(long, default_value_t = 2000)]
    pub hold_ms: u64,
}

/// Runs the section and prints its table.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let rows = rows(&args).await?;
    println!();
    print_table(&rows);
    Ok(())
}

/// A backend that answers a small result; while `hold` is set it first waits for `release`.
struct Holder {
    hold: AtomicBool,
    release: Notify,
    called: Notify,
}

impl Holder {
    async fn call(&self) -> Result<Value, BackendError> {
        if self.hold.load(Ordering::Relaxed) {
            let released = self.release.notified();
            self.called.notify_one();
            released.await;
        }
        Ok(json!({ "summary": "a small result" }))
    }
}

#[async_trait]
impl Backend for Holder {
    async fn analyze_image(
        &self,
        _: &AnalyzeImage,
        _: &TaskContext,
    ) -> Result<Value, BackendError> {
        self.call().await
    }
    async fn complete_answer(
        &self,
        _: &CompleteAnswer,
        _: &TaskContext,
    ) -> Result<Value, BackendError> {
        self.call().await
    }
    async fn full_query(&self, _: &FullQuery, _: &TaskContext) -> Result<Value, BackendError> {
        self.call().await
    }
}

/// The section's rows.
pub async fn rows(args: &Args) -> anyhow::Result<Vec<Row>> {
    let redis = tokio::task::spawn_blocking(RedisServer::start)
        .await?
        .context("starting redis-server")?;
    let stop = CancellationToken::new();
    let crate::api::InProcessApi {
        broker,
        base,
        served: api,
    } = crate::api::start(redis.url(), &stop).await?;
    let holder = Arc::new(Holder {
        hold: AtomicBool::new(false),
        release: Notify::new(),
        called: Notify::new(),
    });
    let executor = tokio::spawn(ragpool_executor::run_with_backend(
        crate::executor::settings(&redis.url(), 4)?,
        holder.clone(),
        stop.clone(),
    ));
    let mut redis_conn = redis::Client::open(redis.url())?
        .get_multiplexed_async_connection()
        .await?;
    let image = png_base64(args.image_mib)?;
    let image_task = || {
        NewTask::new(AnalyzeImage {
            image: Some(image.clone()),
            ..AnalyzeImage::default()
        })
    };
    let text_task = || {
        NewTask::new(CompleteAnswer {
            question: "what does the manual say about sizing?".into(),
            ..CompleteAnswer::default()
        })
    };
    let payload_bytes = Payload::from(AnalyzeImage {
        image: Some(image.clone()),
        ..AnalyzeImage::default()
    })
    .to_json()?
    .len() as f64;

    let mut rows = Vec::new();
    let image_kept = finished_bytes(&broker, &mut redis_conn, args.tasks, &image_task).await?;
    let text_kept = finished_bytes(&broker, &mut redis_conn, args.tasks, &text_task).await?;
    rows.push(Row::ratio(
        format!(
            "its keys' bytes per finished {} MiB image task",
            args.image_mib
        ),
        image_kept.1,
        "B",
        "per finished text task",
        text_kept.1,
    ));
    rows.push(Row::ratio(
        format!(
            "used_memory growth per finished {} MiB image task",
            args.image_mib
        ),
        image_kept.0,
        "B",
        "per finished text task",
        text_kept.0,
    ));

    // Status reads: both tasks running (held), then both finished.
    let client = reqwest::Client::new();
    holder.hold.store(true, Ordering::Relaxed);
    let img = held(&broker, &holder, image_task()).await?;
    let txt = held(&broker, &holder, text_task()).await?;
    let (ri, rt) = read_p50s(&client, &base, &img, &txt, args.reads).await?;
    rows.push(Row::ratio(
        "GET task p50, running image task",
        ri,
        "ms",
        "running text task",
        rt,
    ));
    holder.hold.store(false, Ordering::Relaxed);
    holder.release.notify_waiters();
    ended(&broker, &img).await?;
    ended(&broker, &txt).await?;
    let (fi, ft) = read_p50s(&client, &base, &img, &txt, args.reads).await?;
    rows.push(Row::ratio(
        "GET task p50, finished image task",
        fi,
        "ms",
        "finished text task",
        ft,
    ));

    // One image task's whole life over HTTP, polled every 100 ms.
    holder.hold.store(true, Ordering::Relaxed);
    let before = net_output(&mut redis_conn).await?;
    let submitted: Value = client
        .post(format!("{base}/api/async/analyze-image"))
        .json(&json!({ "image": image }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let id = submitted["task_id"]
        .as_str()
        .context("no task_id")?
        .to_string();
    let hold = Duration::from_millis(args.hold_ms);
    let release = {
        let holder = holder.clone();
        tokio::spawn(async move {
            holder.called.notified().await;
            tokio::time::sleep(hold).await;
            holder.hold.store(false, Ordering::Relaxed);
            holder.release.notify_waiters();
        })
    };
    let mut polls = 0;
    loop {
        polls += 1;
        let view: Value = client
            .get(format!("{base}/api/async/task/{id}"))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        if view["status"] == "finished" {
            break;
        }
        if polls > 1000 {
            bail!("the polled task did not finish: {view}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    release.await?;
    let output = net_output(&mut redis_conn).await? - before;
    rows.push(Row::ratio(
        format!("Redis output bytes, image task polled {polls}× in its life"),
        output as f64,
        "B",
        "its payload",
        payload_bytes,
    ));

    stop.cancel();
    executor.await??;
    api.await??;
    Ok(rows)
}

/// Bytes Redis holds per task over `n` tasks run to the end: `used_memory` growth (which
/// also holds the clients' buffers and allocator slack) and `MEMORY USAGE` of each task's
/// own keys (its hash and, while kept, its payload).
async fn finished_bytes(
    broker: &Broker,
    conn: &mut redis::aio::MultiplexedConnection,
    n: usize,
    task: &dyn Fn() -> NewTask,
) -> anyhow::Result<(f64, f64)> {
    let before = used_memory(conn).await?;
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        ids.push(broker.enqueue(task()).await?.id);
    }
    for id in &ids {
        ended(broker, id).await?;
    }
    let after = used_memory(conn).await?;
    let mut keys = 0u64;
    for id in &ids {
        let part = broker.keys().of_task(id);
        for key in [part.task(id.as_str()), part.payload(id.as_str())] {
            let used: Option<u64> = redis::cmd("MEMORY")
                .arg("USAGE")
                .arg(key)
                .arg("SAMPLES")
                .arg(0)
                .query_async(conn)
                .await?;
            keys += used.unwrap_or(0);
        }
    }
    Ok((
        after.saturating_sub(before) as f64 / n as f64,
        keys as f64 / n as f64,
    ))
}

/// Enqueues a task and returns once the held backend has it.
async fn held(broker: &Broker, holder: &Holder, task: NewTask) -> anyhow::Result<TaskId> {
    let called = holder.called.notified();
    let id = broker.enqueue(task).await?.id;
    tokio::time::timeout(Duration::from_secs(10), called)
        .await
        .context("the executor did not start the task within 10 s")?;
    Ok(id)
}

/// p50 of `GET /api/async/task/{id}` for two tasks, reads interleaved, in ms.
async fn read_p50s(
    client: &reqwest::Client,
    base: &str,
    a: &TaskId,
    b: &TaskId,
    reads: usize,
) -> anyhow::Result<(f64, f64)> {
    let (mut ta, mut tb) = (Vec::with_capacity(reads), Vec::with_capacity(reads));
    for _ in 0..reads {
        for (id, out) in [(a, &mut ta), (b, &mut tb)] {
            let started = Instant::now();
            client
                .get(format!("{base}/api/async/task/{id}"))
                .send()
                .await?
                .error_for_status()?
                .bytes()
                .await?;
            out.push(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
    Ok((median(&mut ta), median(&mut tb)))
}

fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples.get(samples.len() / 2).copied().unwrap_or(0.0)
}

async fn ended(broker: &Broker, id: &TaskId) -> anyhow::Result<()> {
    match broker.wait_for_end(id, Duration::from_secs(30)).await? {
        Some(t) if t.state.is_terminal() => Ok(()),
        other => bail!("task {id} did not end: {other:?}"),
    }
}

async fn info_field(
    conn: &mut redis::aio::MultiplexedConnection,
    section: &str,
    field: &str,
) -> anyhow::Result<u64> {
    let info: String = redis::cmd("INFO").arg(section).query_async(conn).await?;
    info.lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .strip_prefix(':')?
                .trim()
                .parse()
                .ok()
        })
        .with_context(|| format!("INFO {section} has no {field}"))
}

async fn used_memory(conn: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<u64> {
    info_field(conn, "memory", "used_memory").await
}

async fn net_output(conn: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<u64> {
    info_field(conn, "stats", "total_net_output_bytes").await
}

/// A PNG of random pixels of about `mib` MiB (noise does not compress), as base64.
fn png_base64(mib: f64) -> anyhow::Result<String> {
    use rand::RngCore;
    let side = ((mib * 1024.0 * 1024.0 / 3.0).sqrt()) as u32;
    let mut pixels = vec![0u8; (side * side * 3) as usize];
    rand::rng().fill_bytes(&mut pixels);
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new_with_quality(
        &mut png,
        image::codecs::png::CompressionType::Fast,
        image::codecs::png::FilterType::NoFilter,
    )
    .write_image(&pixels, side, side, image::ExtendedColorType::Rgb8)
    .context("encoding the test PNG")?;
    Ok(base64::engine::general_purpose::STANDARD.encode(png))
}
