//! `ragpool explain` as a process: a pool read from a YAML file, its queue in a real Redis
//! holding a backlog, and the operator's policy deciding on what it sees.

use std::process::Command;

use ragpool_operator::crd::RagWorkerPool;
use ragpool_operator::policy::{History, desired_replicas};
use ragpool_operator::redis_observer::observe_queues;
use ragpool_queue::testing::{RedisServer, sample_payload};
use ragpool_queue::{Broker, BrokerConfig, NewTask, TaskKind};

const POOL: &str = "\
apiVersion: ragpool.io/v1alpha1
kind: RagWorkerPool
metadata:
  name: images
  namespace: rag
spec:
  queues:
    names: [image_analysis]
  redis:
    url: redis://redis.rag.svc:6379
  executor:
    image: ragpool/executor:test
  scaling:
    maxReplicas: 20
";

#[tokio::test]
async fn explains_a_backlog_with_the_operators_policy() {
    let server = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .expect("harness thread")
        .expect("redis-server starts");
    let broker = Broker::connect(BrokerConfig::from_url(&server.url()).expect("url"))
        .await
        .expect("connects");
    for n in 0..40 {
        broker
            .enqueue(NewTask::new(sample_payload(
                TaskKind::AnalyzeImage,
                &format!("n{n}"),
            )))
            .await
            .expect("enqueues");
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("pool.yaml");
    std::fs::write(&file, POOL).expect("writes the pool");

    let output = Command::new(env!("CARGO_BIN_EXE_ragpool"))
        .args(["explain", "--file"])
        .arg(&file)
        .args([
            "--redis-url",
            &server.url(),
            "--replicas",
            "2",
            "--sample-seconds",
            "0",
        ])
        .output()
        .expect("runs ragpool explain");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // The text the operator would record, from its own function on the same look.
    let pool: RagWorkerPool = serde_yaml::from_str(POOL).expect("pool parses");
    let observation = observe_queues(&broker, &pool.spec.queue_names())
        .await
        .expect("observes");
    let decision = desired_replicas(Some(&observation), &pool.spec, &History::new(2));
    assert_eq!(
        decision.message(),
        "queueLength: (40 queued + 0 started) / 5 per replica = 8.00; → 8; \
         backlog: 40 queued > 8 slots; scale-up step limit 6 skipped"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[0],
        "Pool rag/images: queueLength 5 per replica, 0–20 replicas, 2 now"
    );
    assert!(
        lines[1].starts_with("Queues image_analysis: 40 queued, 0 started, 0 delayed"),
        "{stdout}"
    );
    let decision_at = lines
        .iter()
        .position(|l| l.starts_with("Decision: "))
        .expect("a decision line");
    assert_eq!(lines[decision_at], "Decision: 2 → 8 (Backlog, would scale)");
    assert_eq!(lines[decision_at + 1], format!("  {}", decision.message()));
    let steps: Vec<&str> = lines[3..decision_at]
        .iter()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        steps,
        [
            "recommend",
            "tolerance",
            "bounds",
            "stabilise",
            "from",
            "step",
            "maxReplicas"
        ]
    );
}

#[test]
fn a_pool_name_and_a_file_exclude_each_other() {
    let output = Command::new(env!("CARGO_BIN_EXE_ragpool"))
        .args(["explain", "images", "--file", "pool.yaml"])
        .output()
        .expect("runs ragpool explain");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--file"), "{stderr}");
}

/// A pool under another key prefix is explained from that prefix's queues: the default
/// prefix's backlog is someone else's.
#[tokio::test]
async fn explains_the_queues_under_the_pools_key_prefix() {
    let server = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .expect("harness thread")
        .expect("redis-server starts");
    let mut config = BrokerConfig::from_url(&server.url()).expect("url");
    config.key_prefix = "tenant-a".into();
    let tenant = Broker::connect(config).await.expect("connects");
    let default = Broker::connect(BrokerConfig::from_url(&server.url()).expect("url"))
        .await
        .expect("connects");
    for n in 0..3 {
        let payload = sample_payload(TaskKind::AnalyzeImage, &format!("t{n}"));
        tenant
            .enqueue(NewTask::new(payload))
            .await
            .expect("enqueues");
    }
    let payload = sample_payload(TaskKind::AnalyzeImage, "d");
    default
        .enqueue(NewTask::new(payload))
        .await
        .expect("enqueues");
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("pool.yaml");
    let pool = POOL.replace(
        "    url: redis://redis.rag.svc:6379\n",
        "    url: redis://redis.rag.svc:6379\n    keyPrefix: tenant-a\n",
    );
    std::fs::write(&file, pool).expect("writes the pool");
    let output = Command::new(env!("CARGO_BIN_EXE_ragpool"))
        .args(["explain", "--file"])
        .arg(&file)
        .args(["--redis-url", &server.url(), "--sample-seconds", "0"])
        .output()
        .expect("runs ragpool explain");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(
        stdout.contains("Queues image_analysis: 3 queued,"),
        "{stdout}"
    );
}
