//! `ragpool repartition` as a process against a real Redis: it records the new count and
//! prints the change, refuses (exit 1, naming the queue) while tasks wait, and takes the
//! key prefix from its flag or its variables, old spellings included.

use ragpool_queue::testing::{RedisServer, printed, run_isolated, sample_payload};
use ragpool_queue::{Broker, BrokerConfig, NewTask, QueueError, TaskKind};

/// Runs `ragpool repartition ARGS` with only `RAGPOOL_REDIS_URL` in its environment.
fn repartition(url: &str, args: &[&str]) -> std::process::Output {
    repartition_with(url, args, &[])
}

/// As [`repartition`], with `env` added to the environment.
fn repartition_with(url: &str, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut argv = vec!["repartition"];
    argv.extend_from_slice(args);
    let mut vars = vec![("RAGPOOL_REDIS_URL", url.to_owned())];
    vars.extend(env.iter().map(|(k, v)| (*k, v.to_string())));
    run_isolated(env!("CARGO_BIN_EXE_ragpool"), &argv, &vars)
}

async fn broker(url: &str, key_prefix: &str, partitions: u16) -> Broker {
    let mut config = BrokerConfig::from_url(url).expect("url");
    config.key_prefix = key_prefix.into();
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
        "key prefix ragpool: partitions 1 -> 6\n"
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

    // Another key prefix has its own count.
    let output = tokio::task::block_in_place(|| {
        repartition(&url, &["--partitions", "3", "--key-prefix", "other"])
    });
    assert!(output.status.success(), "{}", printed(&output));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "key prefix other: partitions 1 -> 3\n"
    );
    broker(&url, "other", 3)
        .await
        .check_layout()
        .await
        .expect("3 is the other key prefix's count");
}

#[test]
fn the_key_prefix_comes_from_the_new_and_the_old_spellings() {
    let server = RedisServer::start().expect("redis-server starts");
    let url = server.url();
    /// Flags, variables, and the prefix they name.
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 4] = [
        // The old flag is an alias of the new one.
        (&["--namespace", "old-flag"], &[], "old-flag"),
        (&[], &[("RAGPOOL_KEY_PREFIX", "new-var")], "new-var"),
        // The old variable is read when the new one is unset, and loses to it.
        (&[], &[("RAGPOOL_NAMESPACE", "old-var")], "old-var"),
        (
            &["--key-prefix", "flag"],
            &[("RAGPOOL_KEY_PREFIX", "x"), ("RAGPOOL_NAMESPACE", "y")],
            "flag",
        ),
    ];
    for (flags, env, prefix) in cases {
        let mut args = vec!["--partitions", "2"];
        args.extend_from_slice(flags);
        let output = repartition_with(&url, &args, env);
        assert!(output.status.success(), "{prefix}: {}", printed(&output));
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            format!("key prefix {prefix}: partitions 1 -> 2\n")
        );
    }
    let output = repartition_with(
        &url,
        &["--partitions", "3"],
        &[
            ("RAGPOOL_KEY_PREFIX", "new-var"),
            ("RAGPOOL_NAMESPACE", "old-var"),
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "key prefix new-var: partitions 2 -> 3\n",
        "{}",
        printed(&output)
    );
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
