//! `ragpool repartition` as a process against a real Redis: it records the new count and
//! prints the change, refuses (exit 1, naming the queue) while tasks wait, and takes the
//! namespace from its flag.

use ragpool_queue::testing::{RedisServer, printed, run_isolated, sample_payload};
use ragpool_queue::{Broker, BrokerConfig, NewTask, QueueError, TaskKind};

/// Runs `ragpool repartition ARGS` with only `RAGPOOL_REDIS_URL` in its environment.
fn repartition(url: &str, args: &[&str]) -> std::process::Output {
    let mut argv = vec!["repartition"];
    argv.extend_from_slice(args);
    run_isolated(
        env!("CARGO_BIN_EXE_ragpool"),
        &argv,
        &[("RAGPOOL_REDIS_URL", url.to_owned())],
    )
}

async fn broker(url: &str, namespace: &str, partitions: u16) -> Broker {
    let mut config = BrokerConfig::from_url(url).expect("url");
    config.namespace = namespace.into();
    config.partitions = partitions;
    Broker::connect(config).await.expect("connects")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_the_count_and_refuses_while_tasks_wait() {
    let server = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .expect("harness thread")
        .expect("redis-server starts");
    let url = server.url();

    let output = tokio::task::block_in_place(|| repartition(&url, &["--partitions", "6"]));
    assert!(output.status.success(), "{}", printed(&output));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "namespace ragpool: partitions 1 -> 6\n"
    );
    // Processes with the new count work; one with the old count is refused.
    let six = broker(&url, "ragpool", 6).await;
    six.check_layout().await.expect("6 is the recorded count");
    let err = broker(&url, "ragpool", 1)
        .await
        .check_layout()
        .await
        .expect_err("1 is no longer the count");
    assert!(matches!(err, QueueError::Layout { .. }), "{err}");

    six.enqueue(NewTask::new(sample_payload(TaskKind::AnalyzeImage, "wait")))
        .await
        .expect("enqueues");
    let output = tokio::task::block_in_place(|| repartition(&url, &["--partitions", "2"]));
    let text = printed(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.contains("cannot change the partition count")
            && text.contains("image_analysis")
            && text.contains("1 queued"),
        "{text}"
    );
    six.check_layout()
        .await
        .expect("the refusal changed nothing");

    // Another namespace has its own count.
    let output = tokio::task::block_in_place(|| {
        repartition(&url, &["--partitions", "3", "--namespace", "other"])
    });
    assert!(output.status.success(), "{}", printed(&output));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "namespace other: partitions 1 -> 3\n"
    );
    broker(&url, "other", 3)
        .await
        .check_layout()
        .await
        .expect("3 is the other namespace's count");
}

#[test]
fn a_count_out_of_range_is_refused_naming_the_flag() {
    for bad in ["0", "65"] {
        let output = repartition("redis://127.0.0.1:1", &["--partitions", bad]);
        let text = printed(&output);
        assert!(!output.status.success(), "{bad}: {text}");
        assert!(text.contains("--partitions"), "{bad}: {text}");
    }
}
