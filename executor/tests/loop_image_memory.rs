//! Hostile images through a real `ragpool-executor` (builtin backend, four tasks at once, an
//! explicit image memory budget): whatever their chunks say, the process's peak memory stays
//! within the budget plus the baseline `docs/executor.md` documents, and an image that is
//! refused fails its task `bad_input` once, without a re-delivery.
//!
//! The images are built here, small on the wire: a 1×1 PNG whose ICC profile inflates to
//! 4 GiB of zeros (the zlib stream is one compressed block repeated, so the test never holds
//! the zeros), a GIF of 100,000 frames, a PNG whose EXIF block is 8 MiB, and a PNG of 300,000
//! text chunks. Two of each are queued before the executor starts.

use flate2::{Compress, Compression, Crc, FlushCompress};
use ragpool_queue::payload::AnalyzeImage;
use ragpool_queue::{TaskId, TaskState};

mod loop_support;
use loop_support::{Env, ExecutorProcess, quick_queues};

/// The executor's image memory budget in this test.
const BUDGET: u64 = 64 * 1024 * 1024;
/// What the executor holds outside the image budget, measured with these images (see
/// `docs/executor.md`, "Image memory budget"): the idle process, the claim of four tasks
/// reading their payloads from Redis, and the encoded payloads the tasks hold.
const BASELINE: u64 = 96 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_images_stay_within_the_image_budget() {
    let env = Env::start(quick_queues()).await;
    let url = env.url();
    let cases = [
        ("iccp_bomb", iccp_bomb(4), TaskState::Failed),
        (
            "gif_100k_frames",
            many_frames_gif(100_000),
            TaskState::Finished,
        ),
        ("huge_exif", huge_exif_png(8 << 20), TaskState::Failed),
        (
            "many_text_chunks",
            many_text_chunks_png(300_000),
            TaskState::Failed,
        ),
    ];
    let mut queued: Vec<(&str, TaskId, TaskState)> = Vec::new();
    for (name, bytes, expected) in &cases {
        for _ in 0..2 {
            let payload = AnalyzeImage {
                image: Some(base64(bytes)),
                ..AnalyzeImage::default()
            };
            queued.push((name, env.enqueue(payload).await.id, *expected));
        }
    }

    let budget = BUDGET.to_string();
    let executor = ExecutorProcess::start(&[
        ("RAGPOOL_REDIS_URL", url.as_str()),
        ("RAGPOOL_BACKEND", "builtin"),
        ("RAGPOOL_CONCURRENCY", "4"),
        ("RAGPOOL_IMAGE_MEMORY_BYTES", budget.as_str()),
        ("RAGPOOL_WORKER_ID", "executor-images"),
    ])
    .await;

    let mut ended = Vec::new();
    for (name, id, expected) in &queued {
        ended.push((name, env.ended(id).await, expected));
    }
    let peak = vm_hwm(executor.pid());
    eprintln!(
        "executor VmHWM {} KiB; budget {} KiB + baseline {} KiB",
        peak >> 10,
        BUDGET >> 10,
        BASELINE >> 10
    );
    assert!(
        peak <= BUDGET + BASELINE,
        "peak {} MiB over budget {} MiB + baseline {} MiB",
        peak >> 20,
        BUDGET >> 20,
        BASELINE >> 20
    );
    // The payloads are megabytes: only the outcome is printed.
    for (name, task, expected) in ended {
        let outcome = (&task.state, task.attempts, &task.error);
        assert_eq!(task.state, *expected, "{name}: {outcome:?}");
        assert_eq!(task.attempts, 1, "{name}: run once, never re-delivered");
        if *expected == TaskState::Failed {
            let error = task.error.as_ref().expect("a failed task has an error");
            assert_eq!(error.kind, "bad_input", "{name}: {error:?}");
        }
    }

    executor.sigterm();
    let (status, output) = executor.exit().await;
    assert!(status.success(), "{status}\n{output}");
}

/// The most an executor holds of a large image task's payload, in payloads (its stored
/// base64 text): the claim's reply, the parsed payload, the decoded bytes. Pixels are the
/// image budget's, and a valid PNG of one pixel has next to none.
const MAX_PAYLOADS_HELD: u64 = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_image_task_holds_its_payload_at_most_twice() {
    let env = Env::start(quick_queues()).await;
    let url = env.url();
    let executor = ExecutorProcess::start(&[
        ("RAGPOOL_REDIS_URL", url.as_str()),
        ("RAGPOOL_BACKEND", "builtin"),
        ("RAGPOOL_CONCURRENCY", "4"),
        ("RAGPOOL_WORKER_ID", "executor-large"),
    ])
    .await;
    let small = png_with(|_| {});
    let warm = env
        .enqueue(AnalyzeImage {
            image: Some(base64(&small)),
            ..AnalyzeImage::default()
        })
        .await;
    env.ended(&warm.id).await;
    let baseline = vm_hwm(executor.pid());

    // A 1×1 PNG followed by 10 MiB of filler (the API's default image limit), which the
    // decoder never reads: about 13.3 MiB of base64.
    let mut image = small;
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    image.extend((0..10 << 20).map(|_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x as u8
    }));
    let payload = AnalyzeImage {
        image: Some(base64(&image)),
        ..AnalyzeImage::default()
    };
    let len = payload.image.as_ref().map_or(0, |i| i.len()) as u64;
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(env.enqueue(payload.clone()).await.id);
    }
    drop(payload);
    for id in &ids {
        let task = env.ended(id).await;
        assert_eq!(task.state, TaskState::Finished, "{:?}", task.error);
    }
    let grew = vm_hwm(executor.pid()) - baseline;
    eprintln!(
        "executor: 4 x {len} byte payload: VmHWM +{} KiB, {:.2} payloads each",
        grew >> 10,
        grew as f64 / (4 * len) as f64
    );
    assert!(
        grew <= 4 * MAX_PAYLOADS_HELD * len + (8 << 20),
        "4 tasks of {len} payload bytes took {grew} bytes"
    );
    executor.sigterm();
    let (status, output) = executor.exit().await;
    assert!(status.success(), "{status}\n{output}");
}

/// The peak resident memory of process `pid`, in bytes.
fn vm_hwm(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in {status}"));
    kib * 1024
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// One PNG chunk: length, type, data, CRC of type and data.
fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&u32::try_from(data.len()).expect("chunk size").to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let mut crc = Crc::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(&crc.sum().to_be_bytes());
}

/// A 1×1 RGB PNG with `extra` chunks between its header and its pixels.
fn png_with(extra: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    // 1×1, 8 bits, RGB, deflate, adaptive filtering, not interlaced.
    chunk(&mut out, b"IHDR", &[0, 0, 0, 1, 0, 0, 0, 1, 8, 2, 0, 0, 0]);
    extra(&mut out);
    let mut pixels = Vec::with_capacity(64);
    let mut z = Compress::new(Compression::default(), true);
    z.compress_vec(&[0, 200, 30, 30], &mut pixels, FlushCompress::Finish)
        .expect("deflate");
    chunk(&mut out, b"IDAT", &pixels);
    chunk(&mut out, b"IEND", &[]);
    out
}

/// A 1×1 PNG whose `iCCP` profile is zlib of `gib` GiB of zeros.
fn iccp_bomb(gib: u64) -> Vec<u8> {
    let mut data = b"bomb\0\0".to_vec();
    data.extend(zlib_of_zeros(gib << 30));
    png_with(|out| chunk(out, b"iCCP", &data))
}

/// A zlib stream of `len` zeros (a multiple of 1 MiB), built without holding them: one
/// sync-flushed deflate block of 1 MiB of zeros, repeated (each block is self-contained and
/// only refers back to zeros), then an empty final block and the Adler-32 of the whole.
fn zlib_of_zeros(len: u64) -> Vec<u8> {
    const PIECE: u64 = 1 << 20;
    let mut deflate = Compress::new(Compression::best(), false);
    let mut block = Vec::with_capacity(64 * 1024);
    deflate
        .compress_vec(&vec![0; PIECE as usize], &mut block, FlushCompress::Sync)
        .expect("deflate");
    let mut end = Vec::with_capacity(64);
    deflate
        .compress_vec(&[], &mut end, FlushCompress::Finish)
        .expect("deflate");
    let pieces = len / PIECE;
    let mut out = Vec::with_capacity(2 + block.len() * pieces as usize + end.len() + 4);
    out.extend_from_slice(&[0x78, 0xda]);
    for _ in 0..pieces {
        out.extend_from_slice(&block);
    }
    out.extend_from_slice(&end);
    // Adler-32 of zeros: the byte sum stays 1, the running sum is the length.
    let adler = (((pieces * PIECE) % 65521) << 16) | 1;
    out.extend_from_slice(&u32::try_from(adler).expect("adler").to_be_bytes());
    out
}

/// A 1×1 PNG with an `eXIf` block of `len` bytes: a valid TIFF header and directory (one
/// `Orientation` entry), then padding.
fn huge_exif_png(len: usize) -> Vec<u8> {
    let mut exif = b"MM\0\x2a\0\0\0\x08".to_vec();
    exif.extend_from_slice(&[0, 1]); // one entry
    exif.extend_from_slice(&[0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 6, 0, 0]); // Orientation = 6
    exif.extend_from_slice(&[0, 0, 0, 0]); // no next directory
    exif.resize(len, 0);
    png_with(|out| chunk(out, b"eXIf", &exif))
}

/// A 1×1 PNG carrying `count` one-letter `tEXt` chunks.
fn many_text_chunks_png(count: usize) -> Vec<u8> {
    png_with(|out| {
        for _ in 0..count {
            chunk(out, b"tEXt", b"k\0");
        }
    })
}

/// A 1×1 GIF of `frames` frames.
fn many_frames_gif(frames: usize) -> Vec<u8> {
    let mut out = b"GIF89a".to_vec();
    // 1×1 screen, a global table of two colours.
    out.extend_from_slice(&[1, 0, 1, 0, 0x80, 0, 0]);
    out.extend_from_slice(&[0, 0, 0, 255, 255, 255]);
    for _ in 0..frames {
        // Image descriptor at (0, 0), 1×1, then its LZW data: one pixel of colour 0.
        out.extend_from_slice(&[0x2c, 0, 0, 0, 0, 1, 0, 1, 0, 0]);
        out.extend_from_slice(&[0x02, 0x02, 0x44, 0x01, 0x00]);
    }
    out.push(0x3b);
    out
}
