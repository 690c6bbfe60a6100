//! The pooled CPython executor on real processes: results, exceptions with remote
//! tracebacks, warm reuse, tenant children, and a task that kills its own process.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{bounded, Cluster};
use stockade::proto::{Builtin, ErrorKind, Outcome, TaskKind};

/// The interpreter the justfile prepared (`.venv`), or `python3`.
fn python() -> String {
    let py = std::env::var("STOCKADE_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&py).args(["-c", "import cloudpickle"]).status().map(|s| s.success()).unwrap_or(false);
    assert!(ok, "{py} with cloudpickle is needed; run the tests through `just test`, which prepares .venv");
    py
}

/// cloudpickle of a zero-argument callable given as Python source of an expression.
fn pickle(py: &str, expr: &str) -> Vec<u8> {
    pickle_fn(py, &format!("f = {expr}"))
}

/// Evaluates `expr` on the unpickled value `x` and returns it as text.
fn inspect(py: &str, bytes: &[u8], expr: &str) -> String {
    let code = format!("import pickle, sys\nx = pickle.loads(sys.stdin.buffer.read())\nprint({expr})");
    let mut child =
        Command::new(py).args(["-c", &code]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("python");
    child.stdin.take().expect("stdin").write_all(bytes).expect("write");
    let out = child.wait_with_output().expect("python");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

async fn run(cluster_client: &stockade::client::Client, payload: Vec<u8>) -> Outcome {
    let handle = cluster_client.submit(TaskKind::Python, payload).expect("submit");
    bounded("python task", handle).await.expect("outcome")
}

/// The error of an outcome that must be one, with its expected kind.
fn task_error(outcome: Outcome, kind: ErrorKind) -> stockade::proto::TaskError {
    match outcome {
        Outcome::Err(e) => {
            assert_eq!(e.kind, kind, "{}", e.message);
            e
        }
        other => panic!("expected a {kind:?} error, got {other:?}"),
    }
}

#[tokio::test]
async fn python_tasks_return_results_from_warm_children() {
    let py = python();
    let cluster = Cluster::start_with(1, 1, &[], &["--python", &py]);
    let client = cluster.client().await;
    let Outcome::Ok(bytes) = run(&client, pickle(&py, "lambda: sum(range(10))")).await else { panic!("no result") };
    assert_eq!(inspect(&py, &bytes, "x"), "45");
    // Closures and captured values travel; the same child answers twice (warm reuse).
    let Outcome::Ok(a) = run(&client, pickle(&py, "(lambda k: (lambda: (os.getpid(), k * 2)))(21)")).await else {
        panic!()
    };
    let Outcome::Ok(b) = run(&client, pickle(&py, "lambda: (os.getpid(), 0)")).await else { panic!() };
    assert_eq!(inspect(&py, &a, "x[1]"), "42");
    assert_eq!(inspect(&py, &a, "x[0]"), inspect(&py, &b, "x[0]"), "a warm child is reused");
    client.close().await;
}

#[tokio::test]
async fn an_exception_comes_back_with_type_message_and_remote_traceback() {
    let py = python();
    let cluster = Cluster::start_with(1, 1, &[], &["--python", &py]);
    let client = cluster.client().await;
    let src = "(lambda: (_ for _ in ()).throw(ValueError('bad value 7')))";
    let e = task_error(run(&client, pickle(&py, src)).await, ErrorKind::Failed);
    assert_eq!(
        inspect(&py, &e.detail, "repr((type(pickle.loads(x['exception'])).__name__, x['name'], x['message']))"),
        "('ValueError', 'builtins.ValueError', 'bad value 7')"
    );
    assert!(inspect(&py, &e.detail, "x['traceback']").contains("Traceback"), "remote traceback attached");
    // The child survived its task's exception and still works.
    let Outcome::Ok(bytes) = run(&client, pickle(&py, "lambda: 'still here'")).await else { panic!() };
    assert_eq!(inspect(&py, &bytes, "x"), "still here");
    client.close().await;
}

#[tokio::test]
async fn a_task_that_kills_its_process_fails_with_worker_lost_and_the_worker_lives_on() {
    let py = python();
    let cluster = Cluster::start_with(1, 1, &["--allowed-failures", "2"], &["--python", &py]);
    let client = cluster.client().await;
    let e = task_error(run(&client, pickle(&py, "lambda: os._exit(3)")).await, ErrorKind::WorkerLost);
    assert!(e.message.contains("lost 2 workers") && e.message.contains("exit status 3"), "{}", e.message);
    let Outcome::Ok(bytes) = run(&client, pickle(&py, "lambda: 1 + 1")).await else { panic!() };
    assert_eq!(inspect(&py, &bytes, "x"), "2");
    let echo = client.submit(TaskKind::Builtin(Builtin::Echo), b"alive".to_vec()).expect("submit");
    assert_eq!(bounded("echo", echo).await.expect("outcome"), Outcome::Ok(b"alive".to_vec()));
    let info = client.scheduler_info(common::WAIT).await.expect("info");
    assert_eq!(info.workers.len(), 1, "the worker process is still registered");
    client.close().await;
}

#[tokio::test]
async fn a_missing_interpreter_is_a_clear_error() {
    let cluster = Cluster::start_with(1, 1, &["--allowed-failures", "1"], &["--python", "/nonexistent/python"]);
    let client = cluster.client().await;
    let e = task_error(run(&client, b"irrelevant".to_vec()).await, ErrorKind::WorkerLost);
    assert!(e.message.contains("cannot start /nonexistent/python") && e.message.contains("hint:"), "{}", e.message);
    client.close().await;
}

#[tokio::test]
async fn a_client_with_other_python_or_cloudpickle_versions_is_refused() {
    let py = python();
    let cluster = Cluster::start_with(1, 1, &[], &["--python", &py]);
    let client = cluster.client().await;
    let mut payload = b"stockade:python=2.7;cloudpickle=0.1.0\n".to_vec();
    payload.extend(pickle(&py, "lambda: 1"));
    let e = task_error(run(&client, payload).await, ErrorKind::Rejected);
    assert!(e.message.contains("version mismatch: the client has python=2.7;cloudpickle=0.1.0"), "{}", e.message);
    assert!(e.message.contains("hint:"), "{}", e.message);
    // The matching header is accepted.
    let ours = Command::new(&py)
        .args(["-c", "import sys, cloudpickle; print(f'python={sys.version_info[0]}.{sys.version_info[1]};cloudpickle={cloudpickle.__version__}')"])
        .output()
        .expect("python");
    let mut payload = format!("stockade:{}\n", String::from_utf8_lossy(&ours.stdout).trim()).into_bytes();
    payload.extend(pickle(&py, "lambda: 5"));
    let Outcome::Ok(bytes) = run(&client, payload).await else { panic!("matching versions must run") };
    assert_eq!(inspect(&py, &bytes, "x"), "5");
    client.close().await;
}

/// Pid of the child that ran each of `n` tasks.
async fn pids(client: &stockade::client::Client, py: &str, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        let Outcome::Ok(bytes) = run(client, pickle(py, "lambda: os.getpid()")).await else { panic!("no result") };
        out.push(inspect(py, &bytes, "x"));
    }
    out
}

#[tokio::test]
async fn children_are_recycled_after_their_task_limit() {
    let py = python();
    let cluster = Cluster::start_with(1, 1, &[], &["--python", &py, "--max-tasks-per-child", "2"]);
    let client = cluster.client().await;
    let p = pids(&client, &py, 2).await;
    assert_eq!(p[0], p[1], "reused within the limit");
    // The replacement starts in the background while the old child serves on; once it
    // takes over, the old one is gone for good.
    let replaced = tokio::time::timeout(common::WAIT, async {
        loop {
            let next = pids(&client, &py, 1).await.remove(0);
            if next != p[0] {
                return next;
            }
        }
    })
    .await
    .expect("the child was never replaced");
    let after = pids(&client, &py, 3).await;
    assert!(after.iter().all(|pid| *pid != p[0]), "the retired child ran a task: {after:?}");
    assert_eq!(after[0], replaced, "the replacement serves within its own limit");
    client.close().await;
}

#[tokio::test]
async fn children_are_recycled_over_their_memory_limit() {
    let py = python();
    // Every child is over 1 KiB resident, so each task gets a fresh one.
    let cluster = Cluster::start_with(1, 1, &[], &["--python", &py, "--max-child-memory", "1KiB"]);
    let client = cluster.client().await;
    let p = pids(&client, &py, 2).await;
    assert_ne!(p[0], p[1]);
    client.close().await;
}

// -- pipelining: an attempt started behind another, on the executor itself -----------

/// cloudpickle of the function `f` that `source` defines (in `__main__`: by value).
fn pickle_fn(py: &str, source: &str) -> Vec<u8> {
    let code = format!("import cloudpickle, sys, os\n{source}\nsys.stdout.buffer.write(cloudpickle.dumps(f))");
    let out = Command::new(py).args(["-c", &code]).output().expect("python");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// A task that creates the file `MARKER`, waits up to `PATIENCE` seconds until a request
/// is waiting in its child's request pipe, creates `MARKER.seen` if one came, then runs
/// `THEN` (a statement) and returns `(pid, whether one came)`.
const WAIT_FOR_NEXT_REQUEST: &str = r#"
def f():
    import array, fcntl, stat, termios, time
    open(MARKER, "w").close()
    def request_pipe(fd):
        try:
            st = os.fstat(fd)
            return stat.S_ISFIFO(st.st_mode) and (fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE) == os.O_RDONLY
        except OSError:
            return False
    pipes = [fd for fd in map(int, os.listdir("/proc/self/fd")) if request_pipe(fd)]
    deadline, seen = time.monotonic() + PATIENCE, False
    while not seen and time.monotonic() < deadline:
        for fd in pipes:
            waiting = array.array("i", [0])
            fcntl.ioctl(fd, termios.FIONREAD, waiting)
            seen = seen or waiting[0] > 0
        time.sleep(0.001)
    if seen:
        open(MARKER + ".seen", "w").close()
    exec(THEN)
    return (os.getpid(), seen)
"#;

mod pipelining {
    use super::*;
    use std::future::Future;
    use std::path::{Path, PathBuf};
    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};

    use stockade::proto::{Assignment, AttemptResult};
    use stockade::sandbox::python::{PythonConfig, PythonExecutor};
    use stockade::worker::executor::{Executor, OutcomeFuture, Report};
    use tokio::sync::mpsc;

    fn task(attempt: u64, payload: Vec<u8>) -> Assignment {
        Assignment { attempt, tenant: "t".into(), kind: TaskKind::Python, payload, needs: vec![] }
    }

    fn executor(py: &str) -> PythonExecutor {
        PythonExecutor::new(PythonConfig { python: py.into(), ..PythonConfig::default() })
    }

    /// Starts a run and polls it once, as the worker does: a warm child gets the
    /// request before this returns.
    fn start(executor: &PythonExecutor, assignment: Assignment) -> OutcomeFuture {
        let mut run = executor.run(assignment, vec![]);
        let mut cx = Context::from_waker(Waker::noop());
        assert!(matches!(run.as_mut().poll(&mut cx), Poll::Pending), "the task cannot have ended yet");
        run
    }

    type Behind = (Pin<Box<dyn Future<Output = ()> + Send>>, mpsc::UnboundedReceiver<AttemptResult>);

    /// Starts `assignment` behind attempt `behind`; its report comes on the receiver.
    fn behind(executor: &PythonExecutor, assignment: Assignment, behind: u64) -> Behind {
        let (tx, rx) = mpsc::unbounded_channel();
        let report: Report = Box::new(move |result| {
            let _ = tx.send(result);
        });
        (executor.run_behind(assignment, vec![], behind, report), rx)
    }

    fn getpid(py: &str) -> Vec<u8> {
        pickle(py, "lambda: os.getpid()")
    }

    async fn pid_of(py: &str, run: OutcomeFuture) -> String {
        let Outcome::Ok(bytes) = bounded("python task", run).await else { panic!("no result") };
        inspect(py, &bytes, "x")
    }

    /// A warm child's pid.
    async fn warm_up(py: &str, executor: &PythonExecutor) -> String {
        pid_of(py, executor.run(task(100, getpid(py)), vec![])).await
    }

    async fn result_of(what: &str, rx: &mut mpsc::UnboundedReceiver<AttemptResult>) -> Outcome {
        bounded(what, rx.recv()).await.expect("reported").outcome
    }

    /// A [`WAIT_FOR_NEXT_REQUEST`] task. It announces that it runs by creating a file, so
    /// that a follower's request comes while it runs (not with its own request, which
    /// the child's buffered read would take in one go), and another once it saw one.
    struct Probe {
        marker: PathBuf,
        payload: Vec<u8>,
    }

    impl Probe {
        fn with_patience(py: &str, name: &str, then: &str, patience_secs: u32) -> Self {
            let marker = std::env::temp_dir().join(format!("stockade-probe-{}-{name}", std::process::id()));
            let seen = Self::seen_path(&marker);
            for path in [&marker, &seen] {
                let _ = std::fs::remove_file(path);
            }
            let source = format!(
                "MARKER = {:?}\nTHEN = {then:?}\nPATIENCE = {patience_secs}\n{WAIT_FOR_NEXT_REQUEST}",
                marker.display().to_string()
            );
            Self { payload: pickle_fn(py, &source), marker }
        }

        fn seen_path(marker: &Path) -> PathBuf {
            PathBuf::from(format!("{}.seen", marker.display()))
        }

        async fn wait_for(what: &str, path: &Path) {
            bounded(what, async {
                while !path.exists() {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
            })
            .await;
        }

        /// Waits until the task runs.
        async fn running(&self) {
            Self::wait_for("the probe's start", &self.marker).await;
        }

        /// Waits until the task saw the next request in its pipe.
        async fn saw_request(&self) {
            Self::wait_for("the follower's request in the probe's pipe", &Self::seen_path(&self.marker)).await;
        }
    }

    impl Drop for Probe {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(Self::seen_path(&self.marker));
            let _ = std::fs::remove_file(&self.marker);
        }
    }

    /// A warm executor whose child runs a [`Probe`] as attempt 1.
    struct Scene {
        py: String,
        executor: PythonExecutor,
        /// The child's pid.
        warm: String,
        probe: Probe,
        leader: OutcomeFuture,
    }

    impl Scene {
        async fn start(name: &str, then: &str, patience_secs: u32) -> Self {
            let py = python();
            let executor = executor(&py);
            let warm = warm_up(&py, &executor).await;
            let probe = Probe::with_patience(&py, name, then, patience_secs);
            let leader = start(&executor, task(1, probe.payload.clone()));
            probe.running().await;
            Self { py, executor, warm, probe, leader }
        }
    }

    #[tokio::test]
    async fn a_task_started_behind_another_waits_in_its_childs_pipe_and_runs_in_that_child() {
        let Scene { py, executor, warm, probe: _first, leader } = Scene::start("chain-1", "pass", 30).await;
        let second = Probe::with_patience(&py, "chain-2", "pass", 30);
        // A follower, and once it leads, a follower of its own: one child runs all three.
        let (follower, mut rx) = behind(&executor, task(2, second.payload.clone()), 1);
        let follower = tokio::spawn(follower);
        let Outcome::Ok(bytes) = bounded("leader", leader).await else { panic!("the leader failed") };
        assert_eq!(inspect(&py, &bytes, "x"), format!("({warm}, True)"), "the follower's request was waiting");
        second.running().await;
        let (third, mut third_rx) = behind(&executor, task(3, getpid(&py)), 2);
        let third = tokio::spawn(third);
        let Outcome::Ok(bytes) = result_of("follower", &mut rx).await else { panic!("the follower failed") };
        assert_eq!(inspect(&py, &bytes, "x"), format!("({warm}, True)"), "the follower ran in the same child");
        let Outcome::Ok(bytes) = result_of("third", &mut third_rx).await else { panic!("the third failed") };
        assert_eq!(inspect(&py, &bytes, "x"), warm);
        for run in [follower, third] {
            bounded("a follower's run", run).await.expect("joined");
        }
        assert_eq!(executor.idle_children("t"), 1, "no other child was started");
    }

    #[tokio::test]
    async fn when_the_leaders_child_dies_the_follower_runs_in_a_new_one() {
        let Scene { py, executor, warm, probe, leader } = Scene::start("dies", "os._exit(3)", 30).await;
        let (follower, mut rx) = behind(&executor, task(2, getpid(&py)), 1);
        let follower = tokio::spawn(follower);
        probe.saw_request().await; // the follower's request dies with the child
        let e = task_error(bounded("leader", leader).await, ErrorKind::WorkerLost);
        assert!(e.message.contains("exit status 3"), "{}", e.message);
        let Outcome::Ok(bytes) = result_of("follower", &mut rx).await else { panic!("the follower was lost") };
        assert_ne!(inspect(&py, &bytes, "x"), warm);
        bounded("follower's run", follower).await.expect("joined");
    }

    #[tokio::test]
    async fn a_cancelled_follower_leaves_the_leaders_result_and_its_child_is_let_go() {
        let Scene { py, executor, warm, probe: _probe, leader } = Scene::start("cancelled-follower", "pass", 30).await;
        let (follower, mut rx) = behind(&executor, task(2, getpid(&py)), 1);
        drop(follower); // cancelled, with its request in the child's pipe
        let Outcome::Ok(bytes) = bounded("leader", leader).await else { panic!("the leader failed") };
        assert_eq!(inspect(&py, &bytes, "x"), format!("({warm}, True)"));
        let report = rx.try_recv();
        assert!(matches!(report, Err(mpsc::error::TryRecvError::Disconnected)), "a cancelled attempt reports nothing");
        assert_eq!(executor.idle_children("t"), 0, "the child holding a cancelled request went");
        assert_ne!(pid_of(&py, executor.run(task(3, getpid(&py)), vec![])).await, warm);
    }

    #[tokio::test]
    async fn a_cancelled_leader_leaves_the_follower_to_run_in_a_new_child() {
        let Scene { py, executor, warm, probe, leader } = Scene::start("cancelled-leader", "time.sleep(60)", 30).await;
        let (follower, mut rx) = behind(&executor, task(2, getpid(&py)), 1);
        let follower = tokio::spawn(follower);
        probe.saw_request().await;
        drop(leader); // cancelled: its child is killed, with the follower's request
        let Outcome::Ok(bytes) = result_of("follower", &mut rx).await else { panic!("the follower was lost") };
        assert_ne!(inspect(&py, &bytes, "x"), warm);
        bounded("follower's run", follower).await.expect("joined");
    }

    #[tokio::test]
    async fn no_task_is_queued_in_another_tenants_child() {
        // The other tenant's task must end before the probe does (it waits 1 s): then
        // it cannot have been queued behind it.
        let Scene { py, executor, warm, probe: _probe, leader } = Scene::start("tenants", "pass", 1).await;
        let other = Assignment { tenant: "u".into(), ..task(2, getpid(&py)) };
        let (follower, mut rx) = behind(&executor, other, 1);
        let follower = tokio::spawn(follower);
        let Outcome::Ok(bytes) = result_of("other tenant's task", &mut rx).await else { panic!("it failed") };
        assert_ne!(inspect(&py, &bytes, "x"), warm, "the other tenant's task ran in a child of its own");
        let Outcome::Ok(bytes) = bounded("leader", leader).await else { panic!("the leader failed") };
        assert_eq!(inspect(&py, &bytes, "x"), format!("({warm}, False)"), "nothing came into the leader's pipe");
        bounded("follower's run", follower).await.expect("joined");
    }
}
