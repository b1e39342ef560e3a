//! Reaching Redis the ways production does: a password in the URL, and TLS (`rediss://`).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ragpool_queue::testing::RedisServer;
use ragpool_queue::testing::sample_payload;
use ragpool_queue::{Broker, BrokerConfig, NewTask, TaskKind};

#[tokio::test]
async fn password_in_the_url() {
    let server = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap()
        .unwrap();
    let open = common::broker_for(server.url().parse().unwrap(), common::test_queues()).await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("s3cret")
        .query_async(
            &mut ragpool_queue::conn::Conn::open(&open.config().target, None)
                .await
                .unwrap(),
        )
        .await
        .unwrap();

    let url = format!("redis://:s3cret@127.0.0.1:{}", server.port());
    let broker = Broker::connect(BrokerConfig::from_url(&url).unwrap())
        .await
        .unwrap();
    let q = broker
        .enqueue(NewTask::new(sample_payload(TaskKind::FullQuery, "q")))
        .await
        .unwrap();
    assert!(broker.get(&q.id).await.unwrap().is_some());

    let wrong = format!("redis://:nope@127.0.0.1:{}", server.port());
    let broker = Broker::connect(BrokerConfig::from_url(&wrong).unwrap())
        .await
        .unwrap();
    let err = broker.ping().await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
}

/// A TLS-only redis-server, killed on drop.
struct TlsRedis {
    child: Child,
    port: u16,
    cert: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_tls_redis() -> TlsRedis {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_file, cert.cert.pem()).unwrap();
    std::fs::write(&key_file, cert.signing_key.serialize_pem()).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .arg("--tls-cert-file")
        .arg(&cert_file)
        .arg("--tls-key-file")
        .arg(&key_file)
        .arg("--tls-ca-cert-file")
        .arg(&cert_file)
        .args([
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server runs");
    TlsRedis {
        child,
        port,
        cert: cert_file,
        _dir: dir,
    }
}

#[tokio::test]
async fn tls_with_rediss() {
    let redis = tokio::task::spawn_blocking(start_tls_redis).await.unwrap();
    // The server's certificate is self-signed: trust it as the CA, as with a private CA.
    let url = format!("rediss://127.0.0.1:{}", redis.port);
    let mut config = BrokerConfig::from_url(&url).unwrap();
    config.target = config.target.with_ca_file(&redis.cert).unwrap();
    let broker = Broker::connect(config).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while let Err(e) = broker.ping().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "TLS redis never answered: {e}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let q = broker
        .enqueue(NewTask::new(sample_payload(TaskKind::AnalyzeImage, "q")))
        .await
        .unwrap();
    assert_eq!(
        broker.get(&q.id).await.unwrap().unwrap().queue,
        "image_analysis"
    );
    // Without the CA the server's certificate is refused.
    let broker = Broker::connect(BrokerConfig::from_url(&url).unwrap())
        .await
        .unwrap();
    assert!(broker.ping().await.is_err());
    // A plain-text client cannot talk to the TLS port.
    let plain = format!("redis://127.0.0.1:{}", redis.port);
    let broker = Broker::connect(BrokerConfig::from_url(&plain).unwrap())
        .await
        .unwrap();
    assert!(broker.ping().await.is_err());
}

/// `auto`, the default partition count: 1 on a single server; on a cluster the key prefix's
/// recorded count, or 2 per master for a new key prefix, recorded by its first use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_partition_count_follows_the_deployment() {
    let server = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap()
        .unwrap();
    let single = Broker::connect(BrokerConfig::from_url(&server.url()).unwrap())
        .await
        .unwrap();
    assert_eq!(single.keys().count(), 1);

    let (_cluster, target) = common::three_masters().await;
    let config = |key_prefix: &str| {
        let mut c = BrokerConfig::new(target.clone());
        c.key_prefix = key_prefix.into();
        c
    };
    let fresh = Broker::connect(config("fresh")).await.unwrap();
    assert_eq!(fresh.keys().count(), 6, "two per master");
    fresh
        .enqueue(NewTask::new(sample_payload(TaskKind::FullQuery, "q")))
        .await
        .unwrap();
    // A key prefix recorded with another count keeps it: a later process adopts it.
    let mut four = config("planned");
    four.partitions = 4;
    let four = Broker::connect(four).await.unwrap();
    four.check_layout().await.unwrap();
    let later = Broker::connect(config("planned")).await.unwrap();
    assert_eq!(later.keys().count(), 4);
    later.check_layout().await.unwrap();
    let again = Broker::connect(config("fresh")).await.unwrap();
    assert_eq!(again.keys().count(), 6);
}
