//! Pool-wide backend limits against a real Redis: the leased-permit semaphore, the
//! requests-per-minute bucket, the pause a backend asks for, and the adaptive limit.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::{Env, broker_for, test_queues};
use ragpool_queue::{
    Adaptive, Admission, BackendLimiter, BackendLimits, Broker, CallOutcome, Permit,
};

const LEASE: Duration = Duration::from_secs(30);

fn limits(max_concurrent: u32) -> BackendLimits {
    BackendLimits {
        max_concurrent,
        ..BackendLimits::none(LEASE)
    }
}

fn granted(a: Admission) -> Permit {
    match a {
        Admission::Granted(p) => p,
        other => panic!("expected a permit, got {other:?}"),
    }
}

/// Acquires `id`, waiting between tries the way an executor does (without a wake-up).
async fn acquire(l: &BackendLimiter, id: &str) -> Permit {
    loop {
        match l.try_acquire(id).await.expect("acquire") {
            Admission::Granted(p) => return p,
            Admission::Full { .. } => tokio::task::yield_now().await,
            other => panic!("unexpected {other:?}"),
        }
    }
}

async fn holders_never_exceed_the_limit(env: Env) {
    const LIMIT: u32 = 4;
    let running = Arc::new(AtomicU32::new(0));
    let most = Arc::new(AtomicU32::new(0));
    let mut holders = Vec::new();
    for h in 0..12 {
        let l = env.broker.backend_limiter("model", limits(LIMIT)).unwrap();
        let (running, most) = (running.clone(), most.clone());
        holders.push(tokio::spawn(async move {
            for call in 0..10 {
                let p = acquire(&l, &format!("h{h}-{call}")).await;
                assert!(p.in_use <= LIMIT, "Redis counted {} permits", p.in_use);
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::task::yield_now().await;
                running.fetch_sub(1, Ordering::SeqCst);
                l.release(&p, CallOutcome::Succeeded, Duration::ZERO, None)
                    .await
                    .unwrap();
            }
        }));
    }
    for h in holders {
        h.await.unwrap();
    }
    let most = most.load(Ordering::SeqCst);
    assert!(
        most <= LIMIT,
        "{most} calls ran at once under a limit of {LIMIT}"
    );
    let state = env.broker.backend_limit_state("model").await.unwrap();
    assert_eq!(state.in_use, 0, "every permit was given back");
}
on_both!(never_exceeds, holders_never_exceed_the_limit);

/// Three brokers (three executors' connections) share one key; a fourth key is separate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executors_share_a_key_and_keys_are_separate() {
    let env = Env::single().await;
    let url = match &env.redis {
        common::Backing::Single(s) => s.url(),
        common::Backing::Cluster(_) => unreachable!(),
    };
    let mut brokers: Vec<Broker> = Vec::new();
    for _ in 0..3 {
        brokers.push(broker_for(url.parse().unwrap(), test_queues()).await);
    }
    let ls: Vec<_> = brokers
        .iter()
        .map(|b| b.backend_limiter("shared", limits(2)).unwrap())
        .collect();
    let a = granted(ls[0].try_acquire("a").await.unwrap());
    granted(ls[1].try_acquire("b").await.unwrap());
    assert_eq!(
        ls[2].try_acquire("c").await.unwrap(),
        Admission::Full {
            limit: 2,
            in_use: 2
        }
    );
    let other = brokers[2].backend_limiter("other", limits(2)).unwrap();
    granted(other.try_acquire("c").await.unwrap());
    ls[0]
        .release(&a, CallOutcome::Succeeded, Duration::ZERO, None)
        .await
        .unwrap();
    granted(ls[2].try_acquire("c").await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_holders_permit_comes_back_after_its_lease() {
    let env = Env::single().await;
    let lease = Duration::from_millis(400);
    let l = env
        .broker
        .backend_limiter(
            "model",
            BackendLimits {
                max_concurrent: 2,
                ..BackendLimits::none(lease)
            },
        )
        .unwrap();
    let alive = granted(l.try_acquire("alive").await.unwrap());
    let dead = granted(l.try_acquire("dead").await.unwrap());
    // The live holder renews while its call runs; the dead one never does.
    let renewing = {
        let (l, alive) = (l.clone(), alive.clone());
        tokio::spawn(async move {
            loop {
                assert!(
                    l.renew(&alive).await.unwrap(),
                    "a renewed permit stays held"
                );
                tokio::time::sleep(lease / 4).await;
            }
        })
    };
    let back = loop {
        match l.try_acquire("next").await.unwrap() {
            Admission::Granted(p) => break p,
            Admission::Full {
                limit: 2,
                in_use: 2,
            } => tokio::time::sleep(lease / 8).await,
            other => panic!("unexpected {other:?}"),
        }
    };
    // Not before the dead holder's lease ran out (server time), and only its permit.
    assert!(
        back.granted_at_ms >= dead.granted_at_ms + 400,
        "{back:?} vs {dead:?}"
    );
    assert_eq!(back.in_use, 2);
    assert!(matches!(
        l.try_acquire("one-more").await.unwrap(),
        Admission::Full { .. }
    ));
    renewing.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_per_minute_hold() {
    let env = Env::single().await;
    let rpm = BackendLimits {
        requests_per_minute: 30,
        ..BackendLimits::none(LEASE)
    };
    let l = env.broker.backend_limiter("hosted", rpm).unwrap();
    // A burst of a tenth of a minute's requests, then one every two seconds.
    for i in 0..3 {
        let p = granted(l.try_acquire(&format!("r{i}")).await.unwrap());
        l.release(&p, CallOutcome::Succeeded, Duration::ZERO, None)
            .await
            .unwrap();
    }
    match l.try_acquire("r3").await.unwrap() {
        Admission::RateLimited(wait) => {
            assert!(
                wait > Duration::ZERO && wait <= Duration::from_secs(2),
                "{wait:?}"
            )
        }
        other => panic!("expected a rate limit, got {other:?}"),
    }
    // A refused request spends nothing: the state shows no permit.
    assert_eq!(
        env.broker
            .backend_limit_state("hosted")
            .await
            .unwrap()
            .in_use,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_per_minute_hold_and_are_corrected_by_usage() {
    let env = Env::single().await;
    let tpm = BackendLimits {
        tokens_per_minute: 6000,
        ..BackendLimits::none(LEASE)
    };
    let l = env.broker.backend_limiter("hosted", tpm).unwrap();
    // The bucket holds 600 tokens: a call of 500, then one of 500 that goes into debt.
    let a = granted(l.try_acquire_tokens("a", 500).await.unwrap());
    let b = granted(l.try_acquire_tokens("b", 500).await.unwrap());
    assert_eq!((a.tokens, b.tokens), (500, 500));
    match l.try_acquire_tokens("c", 10).await.unwrap() {
        // 400 tokens of debt at 100 a second.
        Admission::RateLimited(wait) => assert!(
            wait > Duration::from_secs(3) && wait <= Duration::from_millis(4100),
            "{wait:?}"
        ),
        other => panic!("expected a rate limit, got {other:?}"),
    }
    // `b` used 50 tokens, not 500: 450 come back, and the budget is above zero again.
    l.release_used(&b, CallOutcome::Succeeded, Duration::ZERO, None, Some(50))
        .await
        .unwrap();
    granted(l.try_acquire_tokens("c", 10).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_holds_every_caller_of_the_key() {
    let env = Env::single().await;
    let one = env.broker.backend_limiter("model", limits(8)).unwrap();
    let two = env.broker.backend_limiter("model", limits(8)).unwrap();
    let p = granted(one.try_acquire("p").await.unwrap());
    let q = granted(two.try_acquire("q").await.unwrap());
    let released = one
        .release(
            &p,
            CallOutcome::Overloaded,
            Duration::from_millis(5),
            Some(Duration::from_secs(20)),
        )
        .await
        .unwrap();
    assert_eq!(released.in_use, 1);
    // A shorter pause never shortens a longer one.
    two.release(
        &q,
        CallOutcome::Overloaded,
        Duration::from_millis(5),
        Some(Duration::from_millis(1)),
    )
    .await
    .unwrap();
    for l in [&one, &two] {
        match l.try_acquire("r").await.unwrap() {
            Admission::Paused(wait) => assert!(
                wait > Duration::from_secs(1) && wait <= Duration::from_secs(20),
                "{wait:?}"
            ),
            other => panic!("expected a pause, got {other:?}"),
        }
    }
    let state = env.broker.backend_limit_state("model").await.unwrap();
    assert!(state.paused_for > Duration::ZERO);
    assert_eq!(state.in_use, 0, "a paused call takes no permit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_adaptive_limit_moves_by_aimd() {
    let env = Env::single().await;
    let l = env
        .broker
        .backend_limiter(
            "gpu",
            BackendLimits {
                max_concurrent: 16,
                adaptive: Some(Adaptive {
                    min: 2,
                    latency_factor: 2.0,
                }),
                ..BackendLimits::none(LEASE)
            },
        )
        .unwrap();
    let limit = || async { env.broker.backend_limit_state("gpu").await.unwrap() };
    let ms = Duration::from_millis;

    // Slow start: the limit starts at the floor, and until its first cut every success with
    // at least half the limit in use adds one, so rounds of calls that fill the limit grow it
    // by about half each, up to the ceiling.
    let mut rounds = Vec::new();
    let mut at = limit().await;
    assert_eq!((at.adaptive_limit, at.probing), (None, true));
    let mut current = 2;
    for round in 0..12 {
        let mut calls = Vec::new();
        for i in 0..current {
            calls.push(granted(
                l.try_acquire(&format!("s{round}-{i}")).await.unwrap(),
            ));
        }
        assert_eq!(calls[0].limit, current, "round {round}");
        for c in &calls {
            l.release(c, CallOutcome::Succeeded, ms(100), None)
                .await
                .unwrap();
        }
        at = limit().await;
        current = at.adaptive_limit.unwrap().floor() as u32;
        rounds.push(current);
        if current == 16 {
            break;
        }
    }
    assert_eq!(rounds, [3, 5, 7, 10, 14, 16], "the limit after each round");
    assert!(at.probing);

    // Two calls of one round both fail: the limit halves once, not twice, and slow start
    // is over.
    let a = granted(l.try_acquire("a").await.unwrap());
    let b = granted(l.try_acquire("b").await.unwrap());
    assert_eq!(a.limit, 16);
    l.release(&a, CallOutcome::Overloaded, ms(10), None)
        .await
        .unwrap();
    let r = l
        .release(&b, CallOutcome::Overloaded, ms(10), None)
        .await
        .unwrap();
    assert_eq!(r.limit, 8);
    assert!(!limit().await.probing);
    // A call admitted after the cut may cut again; the floor holds.
    for (i, want) in [4, 2, 2].into_iter().enumerate() {
        let c = granted(l.try_acquire(&format!("c{i}")).await.unwrap());
        let r = l
            .release(&c, CallOutcome::Overloaded, ms(10), None)
            .await
            .unwrap();
        assert_eq!(r.limit, want);
    }
    // The floor is enforced on admission.
    let held: Vec<_> = [
        granted(l.try_acquire("h0").await.unwrap()),
        granted(l.try_acquire("h1").await.unwrap()),
    ]
    .into();
    assert_eq!(
        l.try_acquire("h2").await.unwrap(),
        Admission::Full {
            limit: 2,
            in_use: 2
        }
    );
    // Successes while the limit is in use add 1/limit each: two of them add one.
    let before = limit().await.adaptive_limit.unwrap();
    l.release(&held[0], CallOutcome::Succeeded, ms(100), None)
        .await
        .unwrap();
    let h = granted(l.try_acquire("h3").await.unwrap());
    l.release(&h, CallOutcome::Succeeded, ms(100), None)
        .await
        .unwrap();
    let after = limit().await;
    assert!(
        after.adaptive_limit.unwrap() >= before + 0.9,
        "{before} -> {after:?}"
    );
    assert_eq!(after.base_latency_ms, Some(100.0));
    // A success far slower than the no-load latency counts as overload (a tenth off).
    let slow = granted(l.try_acquire("slow").await.unwrap());
    let at = limit().await.adaptive_limit.unwrap();
    l.release(&slow, CallOutcome::Succeeded, ms(1000), None)
        .await
        .unwrap();
    let cut = limit().await.adaptive_limit.unwrap();
    assert!((cut - (at * 0.9).max(2.0)).abs() < 1e-9, "{at} -> {cut}");
    // Outcomes that say nothing about load leave it be.
    l.release(&held[1], CallOutcome::Other, ms(1), None)
        .await
        .unwrap();
    assert_eq!(limit().await.adaptive_limit.unwrap(), cut);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_start_ends_when_the_latency_rises() {
    let env = Env::single().await;
    let l = env
        .broker
        .backend_limiter(
            "vllm",
            BackendLimits {
                max_concurrent: 64,
                adaptive: Some(Adaptive {
                    min: 2,
                    latency_factor: 2.0,
                }),
                ..BackendLimits::none(LEASE)
            },
        )
        .unwrap();
    let state = || async { env.broker.backend_limit_state("vllm").await.unwrap() };
    let ms = Duration::from_millis;
    let round = |latency: u64, tag: &'static str| {
        let l = l.clone();
        async move {
            let mut calls = Vec::new();
            while let Admission::Granted(p) = l
                .try_acquire(&format!("{tag}{}", calls.len()))
                .await
                .unwrap()
            {
                calls.push(p);
            }
            for c in &calls {
                l.release(c, CallOutcome::Succeeded, ms(latency), None)
                    .await
                    .unwrap();
            }
        }
    };
    // A round at the no-load latency: one more per success with half the limit in use.
    round(100, "a").await;
    let a = state().await;
    assert_eq!((a.adaptive_limit, a.probing), (Some(3.0), true));
    // 1.6 times the no-load latency: not slow enough to cut (2 times), but rising: slow start
    // is over and the round adds 1/limit per success instead of one.
    round(160, "b").await;
    let b = state().await;
    assert!(!b.probing, "{b:?}");
    let limit = b.adaptive_limit.unwrap();
    assert!(limit > 3.0 && limit < 4.0, "{b:?}");
}

#[tokio::test]
async fn limits_are_validated() {
    let env = Env::single().await;
    let adaptive = |max, min| BackendLimits {
        max_concurrent: max,
        adaptive: Some(Adaptive {
            min,
            latency_factor: 2.0,
        }),
        ..BackendLimits::none(LEASE)
    };
    for (bad, why) in [
        (adaptive(0, 1), "adaptive without maxConcurrent"),
        (adaptive(4, 0), "a floor of 0"),
        (adaptive(4, 5), "a floor above the ceiling"),
        (BackendLimits::none(Duration::ZERO), "no lease"),
    ] {
        assert!(env.broker.backend_limiter("k", bad).is_err(), "{why}");
    }
    assert!(env.broker.backend_limiter("a{b}", limits(1)).is_err());
    assert!(env.broker.backend_limiter("k", adaptive(4, 4)).is_ok());
}
