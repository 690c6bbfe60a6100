//! Test harness: real `stockade` processes on 127.0.0.1:0, a log file per process
//! (printed when a test fails), a bound on every wait, and every process stopped by
//! its id at the end.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use stockade::client::{Client, ClientOptions};
use stockade::net::Target;

/// Upper bound on any single wait in these tests.
pub const WAIT: Duration = Duration::from_secs(60);

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, as an operator's `kill -9`.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Cluster {
    pub dir: PathBuf,
    pub scheduler_file: PathBuf,
    pub address: String,
    pub scheduler: Proc,
    pub workers: Vec<Proc>,
    pub worker_args: Vec<String>,
    /// Whether each process gets its own object store (as on separate machines).
    pub separate_stores: bool,
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_stockade")
}

/// Starts a process and waits for its JSON ready line on stdout.
fn spawn(dir: &Path, name: &str, args: &[String]) -> (Proc, serde_json::Value) {
    let log = dir.join(format!("{name}.log"));
    let stderr = std::fs::File::create(&log).expect("log file");
    let mut child = Command::new(bin())
        .args(args)
        .env("STOCKADE_RUNTIME_DIR", dir)
        .env("RUST_LOG", std::env::var("STOCKADE_TEST_LOG").unwrap_or_else(|_| "info".into()))
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("start stockade");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let proc = Proc { name: name.to_string(), child, log };
    match rx.recv_timeout(WAIT) {
        Ok(line) => {
            let ready: serde_json::Value = serde_json::from_str(&line).expect("ready line is JSON");
            assert_eq!(ready["event"], "ready", "{line}");
            (proc, ready)
        }
        Err(_) => {
            let log = std::fs::read_to_string(&proc.log).unwrap_or_default();
            panic!("{name} did not become ready within {WAIT:?}; its log:\n{log}");
        }
    }
}

/// Starts a worker process `name` for the scheduler of `scheduler_file` and waits until
/// it is registered.
pub fn start_worker(dir: &Path, scheduler_file: &Path, name: &str, slots: u32, extra: &[String]) -> Proc {
    let mut args: Vec<String> = vec![
        "worker".into(),
        "--scheduler-file".into(),
        scheduler_file.display().to_string(),
        "--slots".into(),
        slots.to_string(),
        "--name".into(),
        name.to_string(),
    ];
    args.extend(extra.iter().cloned());
    spawn(dir, name, &args).0
}

/// A fresh directory for one test's files.
pub fn test_dir() -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("stockade-it-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

impl Cluster {
    /// A scheduler (with extra arguments) and `workers` workers of `slots` slots.
    pub fn start(workers: usize, slots: u32, scheduler_args: &[&str]) -> Self {
        Self::start_with(workers, slots, scheduler_args, &[])
    }

    /// As [`Cluster::start`], with extra arguments for every worker.
    pub fn start_with(workers: usize, slots: u32, scheduler_args: &[&str], worker_args: &[&str]) -> Self {
        Self::start_full(workers, slots, scheduler_args, worker_args, false)
    }

    /// As [`Cluster::start_with`]; with `separate_stores`, every process keeps pinned
    /// objects in its own directory, so objects travel as between machines.
    pub fn start_full(
        workers: usize,
        slots: u32,
        scheduler_args: &[&str],
        worker_args: &[&str],
        separate_stores: bool,
    ) -> Self {
        let dir = test_dir();
        let scheduler_file = dir.join("scheduler.json");
        let mut args: Vec<String> = vec!["scheduler".into(), "--port".into(), "0".into(), "--scheduler-file".into()];
        args.push(scheduler_file.display().to_string());
        args.extend(scheduler_args.iter().map(|s| s.to_string()));
        if separate_stores {
            args.extend(["--store-dir".to_string(), dir.join("store-scheduler").display().to_string()]);
        }
        let (scheduler, ready) = spawn(&dir, "scheduler", &args);
        let address = ready["address"].as_str().expect("address").to_string();
        let worker_args = worker_args.iter().map(|s| s.to_string()).collect();
        let mut cluster =
            Self { dir, scheduler_file, address, scheduler, workers: Vec::new(), worker_args, separate_stores };
        for _ in 0..workers {
            cluster.add_worker(slots);
        }
        cluster
    }

    pub fn add_worker(&mut self, slots: u32) -> &mut Proc {
        let name = format!("worker{}", self.workers.len() + 1);
        let mut extra = self.worker_args.clone();
        if self.separate_stores {
            extra.extend(["--store-dir".to_string(), self.store_dir(&name).display().to_string()]);
        }
        let proc = start_worker(&self.dir, &self.scheduler_file, &name, slots, &extra);
        self.workers.push(proc);
        self.workers.last_mut().expect("just pushed")
    }

    pub fn target(&self) -> Target {
        Target::resolve(None, Some(&self.scheduler_file), None, None).expect("target")
    }

    pub async fn client(&self) -> Client {
        self.client_with(true).await
    }

    /// A client that writes pinned objects into the scheduler's store (`share_store`)
    /// or streams them as a client on another machine would.
    pub async fn client_with(&self, share_store: bool) -> Client {
        let options = ClientOptions { target: self.target(), name: "test".into(), connect_timeout: WAIT, share_store };
        Client::connect(options).await.expect("client connects")
    }

    /// The store directory of a process started with [`Cluster::separate_stores`].
    pub fn store_dir(&self, process: &str) -> PathBuf {
        self.dir.join(format!("store-{process}"))
    }

    /// Runs the `stockade` binary against this cluster and returns (status, stdout, stderr).
    pub fn run_cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(bin()).args(args).env("STOCKADE_RUNTIME_DIR", &self.dir).output().expect("run stockade");
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for p in std::iter::once(&self.scheduler).chain(&self.workers) {
            out.push_str(&format!("----- {} (pid {}) -----\n", p.name, p.child.id()));
            out.push_str(&std::fs::read_to_string(&p.log).unwrap_or_default());
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        for p in self.workers.iter_mut().chain(std::iter::once(&mut self.scheduler)) {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Awaits `f` with the test-wide bound.
pub async fn bounded<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, f).await {
        Ok(v) => v,
        Err(_) => panic!("{what} did not finish within {WAIT:?}"),
    }
}
