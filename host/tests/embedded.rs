//! A scheduler embedded in this process (what `stockade.LocalCluster` runs in Python):
//! its own process's clients and workers come in through its door, other processes
//! over QUIC, and all see the same scheduler. Tests run on two runtime threads: one
//! serves the scheduler while the test waits for a worker process to register.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::path::PathBuf;

use common::{bounded, start_worker, test_dir, Proc, WAIT};
use stockade::cli::{EmbeddedScheduler, EmbeddedWorker};
use stockade::client::{Client, ClientError, ClientOptions};
use stockade::net::Target;
use stockade::proto::{Builtin, ErrorKind, Outcome, TaskKind};

struct Embedded {
    dir: PathBuf,
    scheduler: EmbeddedScheduler,
    workers: Vec<Proc>,
}

impl Embedded {
    fn start(workers: usize) -> Self {
        let dir = test_dir();
        let file = dir.join("scheduler.json");
        let args = ["--port", "0", "--scheduler-file", file.to_str().expect("utf-8 path")].map(String::from);
        let scheduler = EmbeddedScheduler::start(&args).expect("the scheduler starts");
        let workers = (1..=workers).map(|i| start_worker(&dir, &file, &format!("worker{i}"), 1, &[])).collect();
        Self { dir, scheduler, workers }
    }

    fn options(&self, token: Option<&str>) -> ClientOptions {
        let target = Target::resolve(None, Some(self.scheduler.scheduler_file()), token.map(String::from), None)
            .expect("target");
        ClientOptions { target, name: "test".into(), connect_timeout: WAIT, share_store: true }
    }

    async fn client(&self) -> Client {
        Client::connect(self.options(None)).await.expect("client connects")
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        for w in &mut self.workers {
            w.kill9();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_of_the_schedulers_process_runs_tasks_through_the_door() {
    let cluster = Embedded::start(2);
    let client = cluster.client().await;
    assert!(client.is_local(), "a client of this process should not use the network");
    let tasks: Vec<_> = (0..2_000u32).map(|i| (TaskKind::Builtin(Builtin::Echo), i.to_le_bytes().to_vec())).collect();
    let handles = client.submit_many(tasks).expect("submit");
    for (i, handle) in handles.into_iter().enumerate() {
        let outcome = bounded("a task", handle).await.expect("result");
        assert_eq!(outcome, Outcome::Ok((i as u32).to_le_bytes().to_vec()));
    }
    let failing = client.submit(TaskKind::Builtin(Builtin::Fail), b"boom".to_vec()).expect("submit");
    match bounded("failing task", failing).await.expect("outcome") {
        Outcome::Err(e) => assert_eq!((e.kind, e.message.as_str()), (ErrorKind::Failed, "boom")),
        other => panic!("expected an error, got {other:?}"),
    }
    let info = client.scheduler_info(WAIT).await.expect("info");
    assert_eq!((info.tasks.done, info.workers.len(), info.sessions.len()), (2_000, 2, 1));
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_door_checks_the_token() {
    let cluster = Embedded::start(0);
    match Client::connect(cluster.options(Some("not-the-token"))).await {
        Err(ClientError::Connect(message)) => assert!(message.contains("token was not accepted"), "{message}"),
        Err(other) => panic!("expected a refusal, got {other}"),
        Ok(_) => panic!("a wrong token was let in"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_client_that_closes_leaves_nothing_behind() {
    let cluster = Embedded::start(1);
    let leaving = cluster.client().await;
    let long: Vec<_> = (0..4).map(|_| (TaskKind::Builtin(Builtin::Sleep), b"60000".to_vec())).collect();
    let handles = leaving.submit_many(long).expect("submit");
    let observer = cluster.client().await;
    bounded("the task to start", async {
        while observer.scheduler_info(WAIT).await.expect("info").tasks.running == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    leaving.close().await;
    for handle in handles {
        assert!(matches!(bounded("a closed client's task", handle).await, Err(ClientError::Closed)));
    }
    bounded("the session's tasks to go", async {
        loop {
            let info = observer.scheduler_info(WAIT).await.expect("info");
            if info.tasks.queued == 0 && info.tasks.running == 0 && info.sessions.len() == 1 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    let echo = observer.submit(TaskKind::Builtin(Builtin::Echo), b"x".to_vec()).expect("submit");
    assert_eq!(bounded("echo", echo).await.expect("outcome"), Outcome::Ok(b"x".to_vec()));
    observer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_scheduler_fails_what_its_local_clients_wait_for() {
    let mut cluster = Embedded::start(1);
    let client = cluster.client().await;
    let waiting = client.submit(TaskKind::Builtin(Builtin::Sleep), b"60000".to_vec()).expect("submit");
    let mut later = cluster.options(None);
    bounded("the scheduler to stop", cluster.scheduler.stop()).await;
    match bounded("the task of a stopped scheduler", waiting).await {
        Err(ClientError::ConnectionLost(message)) => assert!(message.contains("stopped"), "{message}"),
        other => panic!("expected ConnectionLost, got {other:?}"),
    }
    assert!(client.submit(TaskKind::Builtin(Builtin::Noop), Vec::new()).is_err(), "a dead client refuses work");
    assert!(!cluster.scheduler.scheduler_file().exists(), "its scheduler file is removed");
    // Its address no longer leads to a door: a new client tries the network and fails.
    later.connect_timeout = std::time::Duration::from_secs(2);
    assert!(Client::connect(later).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_of_the_schedulers_process_comes_in_through_the_door() {
    let cluster = Embedded::start(0);
    let file = cluster.scheduler.scheduler_file().to_str().expect("utf-8 path").to_string();
    let args = ["--scheduler-file", &file, "--slots", "2", "--name", "inside"].map(String::from);
    let mut worker = EmbeddedWorker::start(&args, Vec::new()).await.expect("the worker starts");
    let client = cluster.client().await;
    let tasks: Vec<_> = (0..500u32).map(|i| (TaskKind::Builtin(Builtin::Echo), i.to_le_bytes().to_vec())).collect();
    for (i, handle) in client.submit_many(tasks).expect("submit").into_iter().enumerate() {
        assert_eq!(bounded("a task", handle).await.expect("result"), Outcome::Ok((i as u32).to_le_bytes().to_vec()));
    }
    let info = client.scheduler_info(WAIT).await.expect("info");
    let listed: Vec<_> = info.workers.iter().map(|w| (w.id, w.name.as_str(), w.address.as_str(), w.done)).collect();
    assert_eq!(listed, [(worker.id(), "inside", "in-process", 500)]);
    // A stopped worker leaves; work queued meanwhile waits for another worker.
    bounded("the worker to stop", worker.stop()).await;
    bounded("the worker to leave", async {
        while !client.scheduler_info(WAIT).await.expect("info").workers.is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    let queued = client.submit(TaskKind::Builtin(Builtin::Echo), b"later".to_vec()).expect("submit");
    let mut process = start_worker(&cluster.dir, cluster.scheduler.scheduler_file(), "outside", 1, &[]);
    assert_eq!(bounded("the queued task", queued).await.expect("outcome"), Outcome::Ok(b"later".to_vec()));
    client.close().await;
    process.kill9();
}
