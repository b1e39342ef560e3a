//! The operator's view of a pool's queues, read from a real Redis with tasks queued and in
//! flight and executors registered.

use std::time::Duration;

use ragpool_operator::redis_observer::observe_queues;
use ragpool_queue::testing::{RedisServer, sample_payload};
use ragpool_queue::{Broker, BrokerConfig, ConsumerConfig, NewTask, TaskKind, WorkerInfo};
use serde_json::json;

#[tokio::test]
async fn observes_queued_started_and_busy_pods() {
    let server = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap()
        .unwrap();
    let broker = Broker::connect(BrokerConfig::from_url(&server.url()).unwrap())
        .await
        .unwrap();
    for n in 0..5 {
        broker
            .enqueue(NewTask::new(sample_payload(
                TaskKind::AnalyzeImage,
                &format!("q{n}"),
            )))
            .await
            .unwrap();
    }
    // Work on another queue the pool does not serve.
    broker
        .enqueue(NewTask::new(sample_payload(TaskKind::FullQuery, "q")))
        .await
        .unwrap();
    let consumer = broker
        .consumer(ConsumerConfig {
            worker_id: "w-busy".into(),
            queues: vec!["image_analysis".into()],
            policy: Default::default(),
            lease: Duration::from_secs(30),
        })
        .await
        .unwrap();
    let first = consumer.try_claim().await.unwrap().unwrap();
    consumer.try_claim().await.unwrap().unwrap();
    broker.complete(&first.lease, &json!("done")).await.unwrap();
    consumer.try_claim().await.unwrap().unwrap();

    let worker = |id: &str, pod: &str, in_flight, queue: &str| WorkerInfo {
        id: id.into(),
        host: "node".into(),
        pod: Some(pod.into()),
        queues: vec![queue.into()],
        concurrency: 4,
        in_flight,
        ..Default::default()
    };
    let ttl = Duration::from_secs(30);
    broker
        .register_worker(&worker("w-busy", "pool-a", 2, "image_analysis"), ttl)
        .await
        .unwrap();
    broker
        .register_worker(&worker("w-idle", "pool-b", 0, "image_analysis"), ttl)
        .await
        .unwrap();
    broker
        .register_worker(&worker("w-other", "other-c", 1, "full_query"), ttl)
        .await
        .unwrap();

    let obs = observe_queues(&broker, &["image_analysis".to_string()])
        .await
        .unwrap();
    assert_eq!((obs.queued, obs.started, obs.delayed), (2, 2, 0));
    assert_eq!(obs.total_enqueued, 5);
    assert!(
        obs.mean_processing_ms.is_some(),
        "one task finished, so processing time is known"
    );
    let mut ids: Vec<&str> = obs.workers.iter().map(|w| w.id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, vec!["w-busy", "w-idle"], "only this pool's workers");
    assert_eq!(
        obs.busy_pods().into_iter().collect::<Vec<_>>(),
        vec!["pool-a".to_string()]
    );
    assert!(obs.has_work());

    drop(server);
    let err = observe_queues(&broker, &["image_analysis".to_string()])
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "RedisUnreachable");
}

/// A pool whose Redis is a primary watched by Sentinel: the operator's URL for it reaches the
/// primary, and after a failover the same connection reads from the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observes_through_sentinel_across_a_failover() {
    use ragpool_operator::crd::SentinelSpec;
    use ragpool_operator::observe::ObserveError;
    use ragpool_operator::resources::sentinel_url;
    use ragpool_queue::testing::RedisSentinel;

    let redis = tokio::task::spawn_blocking(RedisSentinel::start)
        .await
        .unwrap()
        .unwrap();
    let spec = SentinelSpec {
        master_name: ragpool_queue::testing::MASTER_NAME.into(),
        addresses: redis.addresses(),
        ..SentinelSpec::default()
    };
    let url = sentinel_url(&spec, false, None, None);
    assert_eq!(url, redis.url());
    let observer = Broker::connect(BrokerConfig::from_url(&url).unwrap())
        .await
        .unwrap();
    let writer = Broker::connect(BrokerConfig::from_url(&url).unwrap())
        .await
        .unwrap();
    let enqueue = |n: usize| {
        let writer = writer.clone();
        async move {
            writer
                .enqueue(NewTask::new(sample_payload(
                    TaskKind::AnalyzeImage,
                    &format!("q{n}"),
                )))
                .await
                .unwrap();
        }
    };
    enqueue(0).await;
    enqueue(1).await;
    let queues = ["image_analysis".to_string()];
    let obs = observe_queues(&observer, &queues).await.unwrap();
    assert_eq!(obs.queued, 2);

    let mut redis = redis;
    let redis = tokio::task::spawn_blocking(move || {
        redis.failover().unwrap();
        redis
    })
    .await
    .unwrap();
    // The sentinels cut the demoted primary's clients: each broker meets that once, as an
    // unreachable Redis, and then finds the new primary.
    let mut enqueued = false;
    for _ in 0..20 {
        match writer
            .enqueue(NewTask::new(sample_payload(TaskKind::AnalyzeImage, "q2")))
            .await
        {
            Ok(_) => {
                enqueued = true;
                break;
            }
            Err(e) => assert!(e.is_unavailable(), "{e}"),
        }
    }
    assert!(enqueued, "the writer found the new primary");
    let mut seen = None;
    for _ in 0..20 {
        match observe_queues(&observer, &queues).await {
            Ok(obs) => {
                seen = Some(obs.queued);
                break;
            }
            Err(ObserveError::Unreachable(_)) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(other) => panic!("{other}"),
        }
    }
    assert_eq!(seen, Some(3), "read from the new primary");
    drop(redis);
}

/// A pool as applied with `kubectl`: Redis at `url`, `partitions` when given.
fn pool_at(url: &str, partitions: Option<i32>) -> ragpool_operator::crd::RagWorkerPool {
    let mut redis = json!({ "url": url });
    if let Some(p) = partitions {
        redis["partitions"] = p.into();
    }
    serde_json::from_value(json!({
        "apiVersion": "ragpool.io/v1alpha1",
        "kind": "RagWorkerPool",
        "metadata": { "name": "pool", "namespace": "ns" },
        "spec": {
            "queues": { "names": ["image_analysis"] },
            "redis": redis,
            "executor": { "image": "ragpool:test" },
            "scaling": { "maxReplicas": 5 },
        },
    }))
    .unwrap()
}

#[tokio::test]
async fn a_pool_is_observed_with_its_own_partition_count() {
    use ragpool_operator::observe::{ObserveError, Observer};
    use ragpool_operator::redis_observer::RedisObserver;

    let server = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap()
        .unwrap();
    let mut config = BrokerConfig::from_url(&server.url()).unwrap();
    config.partitions = 6;
    let six = Broker::connect(config).await.unwrap();
    for n in 0..7 {
        six.enqueue(NewTask::new(sample_payload(
            TaskKind::AnalyzeImage,
            &format!("q{n}"),
        )))
        .await
        .unwrap();
    }
    // A literal URL needs nothing from the Kubernetes API: any request would fail the test.
    let (service, _never_answered) = tower_test::mock::pair::<
        http::Request<kube::client::Body>,
        http::Response<kube::client::Body>,
    >();
    let observer = RedisObserver::new(kube::Client::new(service, "default"));

    let obs = observer
        .observe(&pool_at(&server.url(), Some(6)))
        .await
        .unwrap();
    assert_eq!(obs.queued, 7, "every partition is counted");

    let err = observer
        .observe(&pool_at(&server.url(), None))
        .await
        .unwrap_err();
    let ObserveError::Config(message) = &err else {
        panic!("a wrong count is a setting to fix, not an outage: {err:?}");
    };
    assert!(
        message.contains("laid out in 6 partition(s)") && message.contains("configured with 1"),
        "{message}"
    );
}

/// A pool whose executors serve another key prefix than the default: the operator observes
/// that prefix's queues, not the default's (which here hold other work).
#[tokio::test]
async fn observes_the_queues_under_the_pools_key_prefix() {
    use ragpool_operator::crd::{
        ExecutorSpec, QueueName, QueuesSpec, RagWorkerPool, RagWorkerPoolSpec, RedisSpec,
        ScalingSpec,
    };
    use ragpool_operator::observe::Observer;
    use ragpool_operator::redis_observer::RedisObserver;

    let server = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap()
        .unwrap();
    let broker_under = |prefix: &str| {
        let mut config = BrokerConfig::from_url(&server.url()).unwrap();
        config.key_prefix = prefix.into();
        Broker::connect(config)
    };
    let tenant = broker_under("tenant-a").await.unwrap();
    let default = broker_under(ragpool_queue::DEFAULT_KEY_PREFIX)
        .await
        .unwrap();
    for n in 0..3 {
        let payload = sample_payload(TaskKind::AnalyzeImage, &format!("t{n}"));
        tenant.enqueue(NewTask::new(payload)).await.unwrap();
    }
    let payload = sample_payload(TaskKind::AnalyzeImage, "d");
    default.enqueue(NewTask::new(payload)).await.unwrap();

    // A pool with a literal URL needs nothing from the API server: a client whose every
    // request would go unanswered shows that none is made.
    let (service, _handle) = tower_test::mock::pair::<
        http::Request<kube::client::Body>,
        http::Response<kube::client::Body>,
    >();
    let client = kube::Client::new(service, "default");
    let observer = RedisObserver::new(client);
    let pool = |key_prefix: Option<&str>| {
        let mut pool = RagWorkerPool::new(
            "pool",
            RagWorkerPoolSpec {
                queues: QueuesSpec {
                    names: vec![QueueName("image_analysis".into())],
                    priority: Default::default(),
                    weights: None,
                },
                redis: RedisSpec {
                    url: Some(server.url()),
                    key_prefix: key_prefix.map(str::to_owned),
                    ..RedisSpec::default()
                },
                executor: ExecutorSpec::with_image("ragpool/executor:test"),
                scaling: ScalingSpec::between(0, 4),
            },
        );
        pool.metadata.namespace = Some("ns".into());
        pool
    };
    let obs = observer.observe(&pool(Some("tenant-a"))).await.unwrap();
    assert_eq!(obs.queued, 3);
    let obs = observer.observe(&pool(None)).await.unwrap();
    assert_eq!(obs.queued, 1);
}

/// The backend limits the pool's executors share: the limit in force (the adaptive one once
/// computed) and the permits held, read under the pool's limit key.
#[tokio::test]
async fn observes_the_backend_limit_and_permits_in_use() {
    use ragpool_operator::crd::{BackendLimitsSpec, RagWorkerPool};
    use ragpool_operator::redis_observer::observe_backend;
    use ragpool_queue::{Adaptive, Admission, BackendLimits, CallOutcome};

    let server = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap()
        .unwrap();
    let broker = Broker::connect(BrokerConfig::from_url(&server.url()).unwrap())
        .await
        .unwrap();
    let spec = |limits: Option<BackendLimitsSpec>| {
        let mut spec: ragpool_operator::crd::RagWorkerPoolSpec = serde_json::from_value(json!({
            "queues": {"names": ["image_analysis"]},
            "redis": {"url": server.url()},
            "executor": {"image": "ragpool/executor:test"},
            "scaling": {"minReplicas": 0, "maxReplicas": 20},
        }))
        .unwrap();
        spec.executor.backend.limits = limits;
        spec
    };
    let pool = RagWorkerPool::new(
        "gpu-pool",
        spec(Some(BackendLimitsSpec {
            max_concurrent: Some(16),
            adaptive: true,
            min: Some(2),
            ..BackendLimitsSpec::default()
        })),
    );
    // A new adaptive limit starts at its floor and is still looking for the server's
    // capacity: the pool is sized for the ceiling meanwhile.
    let seen = observe_backend(&broker, &pool).await.unwrap().unwrap();
    assert_eq!(
        (
            seen.key.as_str(),
            seen.limit,
            seen.in_use,
            seen.probing_up_to
        ),
        ("gpu-pool", Some(2), 0, Some(16))
    );
    assert_eq!(seen.replica_ceiling(4), Some(5));

    let limiter = broker
        .backend_limiter(
            "gpu-pool",
            BackendLimits {
                max_concurrent: 16,
                adaptive: Some(Adaptive {
                    min: 2,
                    latency_factor: 2.0,
                }),
                ..BackendLimits::none(Duration::from_secs(30))
            },
        )
        .unwrap();
    let mut held = Vec::new();
    let acquire = async |id: &str| match limiter.try_acquire(id).await.unwrap() {
        Admission::Granted(p) => p,
        other => panic!("{other:?}"),
    };
    held.push(acquire("a").await);
    held.push(acquire("b").await);
    // A success in slow start adds one.
    limiter
        .release(
            &held[0],
            CallOutcome::Succeeded,
            Duration::from_millis(5),
            None,
        )
        .await
        .unwrap();
    let seen = observe_backend(&broker, &pool).await.unwrap().unwrap();
    assert_eq!(
        (seen.limit, seen.in_use, seen.probing_up_to),
        (Some(3), 1, Some(16))
    );
    // An overload ends slow start: the limit halves (to the floor) and is the ceiling's.
    held.push(acquire("c").await);
    held.push(acquire("d").await);
    limiter
        .release(
            &held[1],
            CallOutcome::Overloaded,
            Duration::from_millis(5),
            None,
        )
        .await
        .unwrap();
    let seen = observe_backend(&broker, &pool).await.unwrap().unwrap();
    assert_eq!(
        (seen.limit, seen.in_use, seen.probing_up_to),
        (Some(2), 2, None)
    );
    assert_eq!(seen.replica_ceiling(4), Some(2));

    // A pool without limits reads nothing.
    let plain = RagWorkerPool::new("plain", spec(None));
    assert!(observe_backend(&broker, &plain).await.unwrap().is_none());
}
