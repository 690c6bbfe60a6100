//! Pinned objects on a real cluster: transfer once per worker, workers joining later,
//! the pinned-memory limit, sharing between sessions, release.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::io::Write;
use std::time::Duration;

use common::{bounded, Cluster, WAIT};
use stockade::client::{Client, ClientError, NewTask};
use stockade::proto::{Builtin, ErrorKind, ObjectKey, ObjectKind, Outcome, SchedulerInfo, TaskKind};

fn bytes(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

async fn pin(client: &Client, data: &[u8]) -> Result<(ObjectKey, u32), ClientError> {
    let prepared = client.prepare_object(ObjectKind::Raw, |w| w.write_all(data))?;
    let key = prepared.key();
    let workers = bounded("a pin", client.pin(prepared, WAIT)).await?;
    Ok((key, workers))
}

/// Echo tasks that need `key`; checks every one succeeds.
async fn run_needing(client: &Client, key: ObjectKey, n: usize) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let tasks = (0..n)
        .map(|i| {
            let tx = tx.clone();
            let task = NewTask { kind: TaskKind::Builtin(Builtin::Echo), payload: vec![i as u8], needs: vec![key] };
            let completion: stockade::client::Completion = Box::new(move |_, r| {
                let _ = tx.send(r);
            });
            (task, completion)
        })
        .collect();
    client.submit_with(tasks).unwrap();
    for _ in 0..n {
        let outcome = bounded("a task", rx.recv()).await.unwrap().unwrap();
        assert!(matches!(outcome, Outcome::Ok(_)), "{outcome:?}");
    }
}

/// Polls the scheduler until `done` holds (bounded).
async fn wait_info(client: &Client, what: &str, done: impl Fn(&SchedulerInfo) -> bool) -> SchedulerInfo {
    bounded(what, async {
        loop {
            let info = client.scheduler_info(WAIT).await.unwrap();
            if done(&info) {
                return info;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

#[tokio::test]
async fn an_object_crosses_the_network_once_per_worker() {
    let cluster = Cluster::start_full(2, 1, &[], &[], true);
    let client = cluster.client_with(false).await;
    wait_info(&client, "two workers", |i| i.workers.len() == 2).await;
    let data = bytes(8 << 20, 1);
    let (key, workers) = pin(&client, &data).await.unwrap();
    assert_eq!(workers, 2);
    run_needing(&client, key, 40).await;
    let info = client.scheduler_info(WAIT).await.unwrap();
    assert_eq!(info.object_bytes_received, data.len() as u64, "uploaded once");
    for w in &info.workers {
        assert_eq!(w.object_bytes_sent, data.len() as u64, "sent once to {}", w.name);
        assert_eq!(w.pinned_bytes, data.len() as u64);
    }
    assert_eq!(info.pinned.len(), 1);
    assert_eq!(info.pinned[0].key, hex::encode(key));
    assert_eq!(info.pinned[0].workers.len(), 2);
    assert_eq!(info.pinned[0].session, client.session());

    // Every worker wrote it into its own store; releasing frees every copy.
    let file = |process: &str| {
        let dir = cluster.store_dir(process);
        let mut found = Vec::new();
        for tenant in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = tenant.path().join(hex::encode(key));
            if path.exists() {
                found.push(path);
            }
        }
        found
    };
    for p in ["worker1", "worker2", "scheduler"] {
        assert_eq!(file(p).len(), 1, "{p} holds one copy");
    }
    client.release(vec![key]).unwrap();
    wait_info(&client, "the pin to go", |i| i.pinned.is_empty()).await;
    bounded("the files to go", async {
        while ["worker1", "worker2", "scheduler"].iter().any(|p| !file(p).is_empty()) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    client.close().await;
}

#[tokio::test]
async fn a_shared_store_means_no_transfer_at_all() {
    let cluster = Cluster::start(2, 1, &[]);
    let client = cluster.client().await;
    wait_info(&client, "two workers", |i| i.workers.len() == 2).await;
    let (key, workers) = pin(&client, &bytes(1 << 20, 2)).await.unwrap();
    assert_eq!(workers, 2);
    run_needing(&client, key, 10).await;
    let info = client.scheduler_info(WAIT).await.unwrap();
    assert_eq!(info.object_bytes_received, 0);
    assert!(info.workers.iter().all(|w| w.object_bytes_sent == 0));
    client.close().await;
}

#[tokio::test]
async fn a_worker_joining_later_receives_the_pins_before_tasks() {
    let mut cluster = Cluster::start_full(1, 1, &[], &[], true);
    let client = cluster.client_with(false).await;
    let (key, workers) = pin(&client, &bytes(2 << 20, 3)).await.unwrap();
    assert_eq!(workers, 1);
    cluster.add_worker(1);
    let info = wait_info(&client, "the new worker to hold the pin", |i| {
        i.pinned.first().is_some_and(|p| p.workers.len() == 2)
    })
    .await;
    assert_eq!(info.workers.len(), 2);
    run_needing(&client, key, 20).await;
    client.close().await;
}

#[tokio::test]
async fn the_pinned_memory_limit_gives_its_error() {
    let cluster = Cluster::start_with(2, 1, &[], &["--memory-limit", "3MiB"]);
    let client = cluster.client().await;
    wait_info(&client, "two workers", |i| i.workers.len() == 2).await;
    let err = pin(&client, &bytes(4 << 20, 4)).await.unwrap_err();
    match err {
        ClientError::Pin { kind, message } => {
            assert_eq!(kind, ErrorKind::PinnedMemoryExceeded);
            assert!(message.contains("--memory-limit"), "{message}");
        }
        other => panic!("expected a pin error, got {other:?}"),
    }
    wait_info(&client, "the failed pin to be gone", |i| i.pinned.is_empty()).await;
    // Within the limit it works, and tasks run.
    let (key, workers) = pin(&client, &bytes(2 << 20, 5)).await.unwrap();
    assert_eq!(workers, 2);
    run_needing(&client, key, 4).await;
    // A second object over the rest of the limit fails; the first stays usable.
    let err = pin(&client, &bytes(2 << 20, 6)).await.unwrap_err();
    assert!(matches!(err, ClientError::Pin { kind: ErrorKind::PinnedMemoryExceeded, .. }), "{err:?}");
    run_needing(&client, key, 4).await;
    client.close().await;
}

#[tokio::test]
async fn two_sessions_pinning_the_same_object_share_one_pin() {
    let cluster = Cluster::start(1, 1, &[]);
    let a = cluster.client().await;
    let b = cluster.client().await;
    let data = bytes(1 << 20, 7);
    let (key_a, _) = pin(&a, &data).await.unwrap();
    let (key_b, _) = pin(&b, &data).await.unwrap();
    assert_eq!(key_a, key_b);
    let info = a.scheduler_info(WAIT).await.unwrap();
    assert_eq!(info.pinned.len(), 1);
    assert_eq!(info.pinned[0].sessions, vec![a.session(), b.session()]);
    a.close().await;
    let info = wait_info(&b, "a's hold to go", |i| i.sessions.len() == 1).await;
    assert_eq!(info.pinned.len(), 1, "b still holds it");
    run_needing(&b, key_b, 3).await;
    b.close().await;
}

#[tokio::test]
async fn tasks_needing_objects_not_pinned_in_the_session_are_rejected() {
    let cluster = Cluster::start(1, 1, &[]);
    let owner = cluster.client().await;
    let other = cluster.client().await;
    let (key, _) = pin(&owner, &bytes(1000, 8)).await.unwrap();
    let task = NewTask { kind: TaskKind::Builtin(Builtin::Noop), payload: vec![], needs: vec![key] };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let completion: stockade::client::Completion = Box::new(move |_, r| {
        let _ = tx.send(r);
    });
    other.submit_with(vec![(task, completion)]).unwrap();
    match bounded("the rejection", rx).await.unwrap().unwrap() {
        Outcome::Err(e) => {
            assert_eq!(e.kind, ErrorKind::Rejected);
            assert!(e.message.contains("not pinned in this session"), "{}", e.message);
        }
        ok => panic!("expected a rejection, got {ok:?}"),
    }
    owner.close().await;
    other.close().await;
}

/// A WebAssembly module is compiled on every worker when it is pinned, before any task
/// needs it; its first task then runs it.
#[tokio::test]
async fn a_pinned_module_is_compiled_before_its_first_task() {
    let dir = std::env::var_os("STOCKADE_TEST_GUESTS").expect("STOCKADE_TEST_GUESTS (`just test` sets it)");
    let module = std::fs::read(std::path::Path::new(&dir).join("fixtures.wasm")).expect("run `just guests`");
    let cluster = Cluster::start_full(2, 1, &[], &[], true);
    let client = cluster.client().await;
    let (key, workers) = pin(&client, &module).await.unwrap();
    assert_eq!(workers, 2);
    let expected = format!("wasm: module compiled key={}", hex::encode(key));
    for worker in &cluster.workers {
        bounded("the worker's compilation", async {
            while !std::fs::read_to_string(&worker.log).unwrap_or_default().contains(&expected) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }
    let call = stockade::proto::WasmCall { module: key, task: "echo".into(), input: b"[1,2]".to_vec() };
    let payload = stockade::proto::frame::encode(&call).unwrap().to_vec();
    let mut handles = client.submit_tasks(vec![NewTask { kind: TaskKind::Wasm, payload, needs: vec![key] }]).unwrap();
    let outcome = bounded("the task", handles.pop().unwrap()).await.unwrap();
    assert_eq!(outcome, Outcome::Ok(b"[1,2]".to_vec()));
    // Compiled once per worker: the task found the module ready.
    for worker in &cluster.workers {
        assert_eq!(std::fs::read_to_string(&worker.log).unwrap().matches(&expected).count(), 1);
    }
}
