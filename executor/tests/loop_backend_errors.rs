//! A task whose model server or RAG service cannot be reached fails with an error that names
//! the kind of failure and nothing of the server: not its credentials, host, port or path,
//! neither in the task (which the submitter reads) nor in the executor's log.

use std::time::Duration;

use ragpool_queue::testing::SECRET;

mod loop_support;
use loop_support::{Env, ExecutorProcess, answer_queue};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_backends_are_reported_without_their_address() {
    let port = closed_port().await;
    let address = format!("127.0.0.1:{port}");
    let path = "private-rag-path";
    let url = format!("http://user:{SECRET}@{address}/{path}");
    for (backend, variable) in [
        ("http", "RAGPOOL_HTTP_URL"),
        ("openai", "RAGPOOL_OPENAI_BASE_URL"),
    ] {
        let env = Env::start(vec![answer_queue(1, Duration::from_secs(60))]).await;
        let redis_url = env.url();
        let executor = ExecutorProcess::start(&[
            ("RAGPOOL_REDIS_URL", redis_url.as_str()),
            ("RAGPOOL_QUEUES", "answer_generation"),
            ("RAGPOOL_BACKEND", backend),
            (variable, url.as_str()),
            ("RAGPOOL_OPENAI_MODEL", "m"),
            ("RAGPOOL_LOG", "info,ragpool_executor=debug"),
        ])
        .await;
        let id = env.ask("anyone there?").await;
        let task = env.ended(&id).await;
        let error = task.error.expect("a failed task has an error");
        assert_eq!(error.kind, "backend_unavailable", "{backend}: {error:?}");
        assert!(
            error
                .message
                .contains("could not be reached: connection refused"),
            "{backend}: {error:?}"
        );
        executor.sigterm();
        let (status, log) = executor.exit().await;
        assert!(status.success(), "{status}\n{log}");
        for (what, text) in [("task error", error.message.as_str()), ("log", &log)] {
            for hidden in [SECRET, "user:", address.as_str(), path] {
                assert!(
                    !text.contains(hidden),
                    "{backend}: the {what} shows {hidden:?}:\n{text}"
                );
            }
        }
    }
}

/// A loopback port nothing listens on.
async fn closed_port() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    listener.local_addr().expect("local addr").port()
}
