//! A real scheduler and real workers on loopback: completion, exactly-once delivery
//! and worker loss.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{bounded, Cluster};
use stockade::proto::{Builtin, ErrorKind, Outcome, TaskKind};

#[tokio::test]
async fn ten_thousand_tasks_complete_exactly_once() {
    let cluster = Cluster::start(2, 1, &[]);
    let client = cluster.client().await;
    let tasks: Vec<_> = (0..10_000u32).map(|i| (TaskKind::Builtin(Builtin::Echo), i.to_le_bytes().to_vec())).collect();
    let handles = client.submit_many(tasks).expect("submit");
    let mut seen = HashSet::new();
    for (i, handle) in handles.into_iter().enumerate() {
        let outcome = bounded("a task", handle).await.expect("result");
        assert_eq!(outcome, Outcome::Ok((i as u32).to_le_bytes().to_vec()), "task {i} got another task's result");
        assert!(seen.insert(i));
    }
    assert_eq!(client.pending(), 0);
    let info = client.scheduler_info(common::WAIT).await.expect("info");
    assert_eq!((info.tasks.done, info.tasks.failed, info.tasks.queued, info.tasks.running), (10_000, 0, 0, 0));
    assert_eq!(info.workers.len(), 2);
    assert_eq!(info.workers.iter().map(|w| w.done).sum::<u64>(), 10_000, "each task ran once");
    client.close().await;
}

#[tokio::test]
async fn kill_9_of_a_worker_loses_no_task() {
    let mut cluster = Cluster::start(2, 2, &["--heartbeat-interval-ms", "100", "--heartbeat-timeout-ms", "1000"]);
    let client = cluster.client().await;
    let n = 60;
    let tasks: Vec<_> = (0..n).map(|_| (TaskKind::Builtin(Builtin::Sleep), b"40".to_vec())).collect();
    let mut handles = client.submit_many(tasks).expect("submit").into_iter();
    // Wait until work is under way, then kill one worker mid-run.
    for _ in 0..4 {
        let outcome = bounded("early task", handles.next().expect("handle")).await.expect("result");
        assert_eq!(outcome, Outcome::Ok(b"40".to_vec()));
    }
    cluster.workers[0].kill9();
    let mut ok = 4;
    for handle in handles {
        let outcome = bounded("task after the kill", handle).await.expect("result");
        assert_eq!(outcome, Outcome::Ok(b"40".to_vec()));
        ok += 1;
    }
    assert_eq!(ok, n);
    let info = client.scheduler_info(common::WAIT).await.expect("info");
    assert_eq!(info.tasks.done, n as u64, "every task completed exactly once");
    assert_eq!(info.tasks.failed, 0);
    assert_eq!(info.workers.len(), 1, "the killed worker is gone: {:?}", info.workers);
    client.close().await;
}

#[tokio::test]
async fn task_errors_and_cancellation_reach_the_caller() {
    let cluster = Cluster::start(1, 1, &[]);
    let client = cluster.client().await;
    let failing = client.submit(TaskKind::Builtin(Builtin::Fail), b"boom".to_vec()).expect("submit");
    match bounded("failing task", failing).await.expect("outcome") {
        Outcome::Err(e) => {
            assert_eq!(e.kind, ErrorKind::Failed);
            assert_eq!(e.message, "boom");
        }
        other => panic!("expected an error, got {other:?}"),
    }
    let long: Vec<_> = (0..3).map(|_| (TaskKind::Builtin(Builtin::Sleep), b"60000".to_vec())).collect();
    let handles = client.submit_many(long).expect("submit");
    client.cancel_all().expect("cancel");
    for h in handles {
        match bounded("cancelled task", h).await.expect("outcome") {
            Outcome::Err(e) => assert_eq!(e.kind, ErrorKind::Cancelled),
            other => panic!("expected Cancelled, got {other:?}"),
        }
    }
    // The slot is free again: a new task runs.
    let echo = client.submit(TaskKind::Builtin(Builtin::Echo), b"after".to_vec()).expect("submit");
    assert_eq!(bounded("echo", echo).await.expect("outcome"), Outcome::Ok(b"after".to_vec()));
    let info = client.scheduler_info(common::WAIT).await.expect("info");
    assert_eq!((info.tasks.queued, info.tasks.running), (0, 0));
    client.close().await;
}

#[tokio::test]
async fn a_disconnected_client_leaves_nothing_behind() {
    let cluster = Cluster::start(1, 1, &[]);
    let leaving = cluster.client().await;
    let long: Vec<_> = (0..5).map(|_| (TaskKind::Builtin(Builtin::Sleep), b"60000".to_vec())).collect();
    let _handles = leaving.submit_many(long).expect("submit");
    let observer = cluster.client().await;
    bounded("the task to start", async {
        while observer.scheduler_info(common::WAIT).await.expect("info").tasks.running == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    leaving.close().await;
    bounded("the session's tasks to go", async {
        loop {
            let info = observer.scheduler_info(common::WAIT).await.expect("info");
            if info.tasks.queued == 0 && info.tasks.running == 0 && info.sessions.len() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let echo = observer.submit(TaskKind::Builtin(Builtin::Echo), b"x".to_vec()).expect("submit");
    assert_eq!(bounded("echo", echo).await.expect("outcome"), Outcome::Ok(b"x".to_vec()));
    observer.close().await;
}

#[test]
fn status_json_lists_workers_and_counts() {
    let cluster = Cluster::start(2, 3, &[]);
    let (ok, stdout, stderr) =
        cluster.run_cli(&["status", "--json", "--scheduler-file", cluster.scheduler_file.to_str().expect("path")]);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    let workers = v["workers"].as_array().expect("workers");
    assert_eq!(workers.len(), 2);
    for w in workers {
        assert_eq!(w["slots"], 3);
        assert_eq!(w["running"], 0);
        assert!(w["name"].as_str().expect("name").starts_with("worker"));
        assert!(w["address"].as_str().expect("address").starts_with("127.0.0.1:"));
    }
    for key in ["queued", "running", "done", "failed"] {
        assert_eq!(v["tasks"][key], 0, "{key}");
    }
    // HOST:PORT alone works on the scheduler's machine (default scheduler file by port).
    let (ok, stdout, stderr) = cluster.run_cli(&["status", &cluster.address]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("workers: 2   slots: 6"), "{stdout}");
}

#[test]
fn a_bad_address_fails_fast_with_a_hint() {
    let cluster = Cluster::start(0, 1, &[]);
    let (ok, _, stderr) = cluster.run_cli(&["status", "127.0.0.1:1", "--timeout", "2"]);
    assert!(!ok);
    assert!(stderr.contains("127.0.0.1:1") && stderr.contains("hint:"), "{stderr}");
}
