//! Answers streamed by an OpenAI-compatible model server reach the queue's events as they are
//! generated: pieces numbered within their attempt, coalesced, adding up to the stored result;
//! a cancel closes the model request, and a `ragpool-executor` killed mid-answer leaves a
//! second attempt to stream the whole answer again under its own number.

use std::time::Duration;

use ragpool_queue::{Delta, TaskEvent, TaskId, TaskState};
use serde_json::json;

mod loop_support;
use loop_support::{
    Env, Events, ExecutorProcess, FakeModel, InProcess, PATIENCE, Streaming, fake_usage,
    quick_queues, settings,
};

fn openai_executor(env: &Env, model: &FakeModel) -> InProcess {
    let base = format!("{}/v1", model.url);
    InProcess::start(settings(
        &env.url(),
        &[
            "--backend",
            "openai",
            "--openai-base-url",
            &base,
            "--openai-model",
            "answer-model",
            "--worker-id",
            "executor-stream",
        ],
    ))
}

/// The next event of task `id` the hub passes on.
async fn next_event(
    hub: &mut tokio::sync::broadcast::Receiver<TaskEvent>,
    id: &TaskId,
) -> TaskEvent {
    loop {
        let event = tokio::time::timeout(PATIENCE, hub.recv())
            .await
            .expect("an event")
            .expect("the hub");
        if event.task_id == id.as_str() {
            return event;
        }
    }
}

/// The pieces of text among `events`, in order.
fn deltas(events: &[TaskEvent]) -> Vec<Delta> {
    events.iter().filter_map(|e| e.delta.clone()).collect()
}

fn joined(deltas: &[Delta]) -> String {
    deltas.iter().map(|d| d.text.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_answer_arrives_in_numbered_pieces_that_add_up_to_the_result() {
    let env = Env::start(quick_queues()).await;
    let model = FakeModel::start(FakeModel::words(200), Duration::from_millis(10), |_| {
        Streaming::Whole
    })
    .await;
    let executor = openai_executor(&env, &model);
    let mut hub = env.broker.events().await.expect("events hub").subscribe();
    let id = env.ask("What streams?").await;

    // The first piece reaches a subscriber while the model is still early in its answer.
    let mut seen = Vec::new();
    let sent_at_first_delta = loop {
        let event = next_event(&mut hub, &id).await;
        let first = event.delta.is_some();
        seen.push(event);
        if first {
            break model.sent();
        }
    };
    assert!(
        sent_at_first_delta < 20,
        "the first piece arrived after the model sent token {sent_at_first_delta}"
    );

    // A reader arriving now gets the text so far, the pieces up to its number.
    let so_far = env
        .broker
        .streamed_text(&id)
        .await
        .expect("read")
        .expect("the task is running and has streamed");
    assert_eq!(so_far.attempt, 1);
    assert!(so_far.seq >= 1, "{so_far:?}");

    loop {
        let event = next_event(&mut hub, &id).await;
        let end = event.state.is_terminal();
        seen.push(event);
        if end {
            break;
        }
    }
    let pieces = deltas(&seen);
    let numbers: Vec<u64> = pieces.iter().map(|d| d.seq).collect();
    let expected: Vec<u64> = (1..=pieces.len() as u64).collect();
    assert_eq!(numbers, expected, "numbered from 1 without gaps");
    assert!(pieces.iter().all(|d| d.attempt == 1), "{pieces:?}");
    assert!(
        pieces.len() < 200,
        "200 tokens arrive coalesced into fewer pieces, got {}",
        pieces.len()
    );
    let upto: String = pieces
        .iter()
        .take_while(|d| d.seq <= so_far.seq)
        .map(|d| d.text.as_str())
        .collect();
    assert_eq!(
        so_far.text, upto,
        "the text so far is the pieces up to its number"
    );

    let task = env.ended(&id).await;
    assert_eq!(task.state, TaskState::Finished, "{task:?}");
    let answer = FakeModel::words(200).concat().trim().to_owned();
    assert_eq!(joined(&pieces), answer);
    assert_eq!(
        task.result,
        Some(json!({"answer": answer, "model": "served-model", "usage": fake_usage()})),
        "stored as a non-streamed answer is"
    );
    assert_eq!(
        env.broker.streamed_text(&id).await.expect("read"),
        None,
        "an ended task's text is its result"
    );
    executor.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_stops_the_model_request_mid_stream() {
    let env = Env::start(quick_queues()).await;
    let model = FakeModel::start(FakeModel::words(100), Duration::from_millis(10), |_| {
        Streaming::StallAfter(5)
    })
    .await;
    let executor = openai_executor(&env, &model);
    let mut events = Events::follow(&env.broker).await;
    let id: TaskId = env.ask("Stop me").await;
    model.until_sent(1, 5).await;
    events.until(&id, |e| e.delta.is_some()).await;
    env.broker.cancel(&id).await.expect("cancel");
    model.until_dropped().await;
    let task = env.ended(&id).await;
    assert_eq!(task.state, TaskState::Canceled, "{task:?}");
    assert_eq!(model.requests(), 1);
    executor.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_killed_mid_answer_leaves_a_second_attempt_to_stream_it_whole() {
    let env = Env::start(quick_queues()).await;
    // The first request streams 30 tokens and stalls (its executor dies holding it); the
    // second streams the whole answer.
    let model = FakeModel::start(
        FakeModel::words(200),
        Duration::from_millis(10),
        |request| {
            if request == 0 {
                Streaming::StallAfter(30)
            } else {
                Streaming::Whole
            }
        },
    )
    .await;
    let redis = env.url();
    let base = format!("{}/v1", model.url);
    let executor_env = |worker: &'static str| {
        vec![
            ("RAGPOOL_REDIS_URL", redis.clone()),
            ("RAGPOOL_BACKEND", "openai".to_owned()),
            ("RAGPOOL_OPENAI_BASE_URL", base.clone()),
            ("RAGPOOL_OPENAI_MODEL", "answer-model".to_owned()),
            ("RAGPOOL_LEASE_SECONDS", "1".to_owned()),
            ("RAGPOOL_WORKER_ID", worker.to_owned()),
        ]
    };
    let start = |vars: Vec<(&'static str, String)>| async move {
        let refs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        ExecutorProcess::start(&refs).await
    };
    let mut events = Events::follow(&env.broker).await;
    let a = start(executor_env("executor-a")).await;
    let id = env.ask("What survives a crash?").await;
    model.until_sent(1, 30).await;
    events.until(&id, |e| e.delta.is_some()).await;
    a.sigkill().await;

    let b = start(executor_env("executor-b")).await;
    let history = events.until_end(&id).await;
    let task = env.ended(&id).await;
    assert_eq!(task.state, TaskState::Finished, "{task:?}");
    assert_eq!(task.attempts, 2, "{task:?}");
    assert_eq!(task.worker.as_deref(), Some("executor-b"));

    let pieces = deltas(&history);
    let first: Vec<&Delta> = pieces.iter().filter(|d| d.attempt == 1).collect();
    let second: Vec<Delta> = pieces.iter().filter(|d| d.attempt == 2).cloned().collect();
    assert_eq!(
        first.len() + second.len(),
        pieces.len(),
        "only the two attempts streamed: {pieces:?}"
    );
    let answer = FakeModel::words(200).concat().trim().to_owned();
    let cut: String = first.iter().map(|d| d.text.as_str()).collect();
    assert!(
        !cut.is_empty() && answer.starts_with(&cut) && cut.len() < answer.len(),
        "the dead attempt streamed part of the answer: {cut:?}"
    );
    let numbers: Vec<u64> = second.iter().map(|d| d.seq).collect();
    let expected: Vec<u64> = (1..=second.len() as u64).collect();
    assert_eq!(
        numbers, expected,
        "the second attempt numbers its pieces from 1"
    );
    assert_eq!(
        joined(&second),
        answer,
        "the second attempt streamed the whole answer"
    );
    assert_eq!(
        task.result.as_ref().map(|r| &r["answer"]),
        Some(&json!(answer))
    );
    assert_eq!(model.requests(), 2);

    b.sigterm();
    let (status, output) = b.exit().await;
    assert!(status.success(), "{status}\n{output}");
}
