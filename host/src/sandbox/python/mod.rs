//! The pooled CPython executor.
//!
//! Each tenant has its own warm children (never two tenants in one child), started with
//! the configured interpreter running the embedded `child.py`. A child is reused across
//! tasks and recycled after `max_tasks_per_child`. A child that dies mid-task fails that
//! attempt with [`ErrorKind::WorkerLost`], so the scheduler requeues it as it would for a
//! lost worker; the worker itself lives on. Dropping a task's future (cancellation)
//! kills the child running it. The worker never unpickles: it moves bytes.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::proto::{Assignment, ErrorKind, Outcome, TaskError, DEFAULT_MAX_FRAME};
use crate::worker::executor::{failed, Executor, OutcomeFuture};

/// The child's source, run with `python -c`.
const CHILD_SOURCE: &str = include_str!("child.py");

/// Answer status: the callable returned.
const STATUS_OK: u8 = 0;
/// Answer status: the callable raised.
const STATUS_RAISED: u8 = 1;
/// Answer status: refused before running (the client's Python or cloudpickle differ).
const STATUS_REFUSED: u8 = 2;

/// How Python children are started.
#[derive(Debug, Clone)]
pub struct PythonConfig {
    /// Interpreter to run (`python3` on PATH by default).
    pub python: String,
    /// A child is replaced after this many tasks.
    pub max_tasks_per_child: u32,
    /// A child whose resident memory exceeds this many bytes after a task is replaced.
    pub max_child_memory: Option<u64>,
}

impl Default for PythonConfig {
    fn default() -> Self {
        Self { python: "python3".into(), max_tasks_per_child: 10_000, max_child_memory: None }
    }
}

/// What a child reports about itself when it starts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct ChildHello {
    /// `major.minor.micro` of its interpreter.
    pub python: String,
    /// Its cloudpickle version.
    pub cloudpickle: String,
    /// Its process id.
    pub pid: u32,
}

/// Errors of a child; all of them end the child.
#[derive(Debug, thiserror::Error)]
enum ChildError {
    #[error(
        "cannot start {python}: {source}; hint: pass --python PATH to an interpreter that has cloudpickle installed"
    )]
    Spawn { python: String, source: std::io::Error },
    #[error("{python} did not start the Stockade child ({detail}); hint: install cloudpickle in that environment (pip install cloudpickle)")]
    Hello { python: String, detail: String },
    #[error("the Python process running the task (pid {pid}) died: {status}")]
    Died { pid: u32, status: String },
    #[error("the Python process (pid {pid}) sent a malformed answer: {detail}")]
    Protocol { pid: u32, detail: String },
}

struct PyChild {
    process: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
    hello: ChildHello,
    tasks: u32,
}

impl PyChild {
    async fn spawn(config: &PythonConfig) -> Result<Self, ChildError> {
        let mut process = Command::new(&config.python)
            .arg("-c")
            .arg(CHILD_SOURCE)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| ChildError::Spawn { python: config.python.clone(), source })?;
        let hello_err = |detail: String| ChildError::Hello { python: config.python.clone(), detail };
        let (Some(stdin), Some(mut stdout)) = (process.stdin.take(), process.stdout.take()) else {
            return Err(hello_err("no pipes".into()));
        };
        let frame = read_frame(&mut stdout, 64 * 1024).await.map_err(|e| hello_err(e.to_string()))?;
        let hello: ChildHello = serde_json::from_slice(&frame).map_err(|e| hello_err(format!("bad hello: {e}")))?;
        tracing::debug!(pid = hello.pid, python = %hello.python, cloudpickle = %hello.cloudpickle, "python child started");
        Ok(Self { process, stdin, stdout, hello, tasks: 0 })
    }

    /// Sends one payload and reads the answer.
    async fn call(&mut self, payload: &[u8]) -> Result<Outcome, ChildError> {
        let io = async {
            let len = u32::try_from(payload.len()).map_err(|_| std::io::Error::other("payload over 4 GiB"))?;
            if payload.len() < 64 * 1024 {
                // One write: the child wakes once per task.
                let mut frame = Vec::with_capacity(4 + payload.len());
                frame.extend_from_slice(&len.to_le_bytes());
                frame.extend_from_slice(payload);
                self.stdin.write_all(&frame).await?;
            } else {
                self.stdin.write_all(&len.to_le_bytes()).await?;
                self.stdin.write_all(payload).await?;
            }
            self.stdin.flush().await?;
            read_frame(&mut self.stdout, DEFAULT_MAX_FRAME).await
        };
        let answer = match io.await {
            Ok(answer) => answer,
            Err(_) => return Err(self.died().await),
        };
        self.tasks += 1;
        let pid = self.hello.pid;
        let Some((&status, body)) = answer.split_first() else {
            return Err(ChildError::Protocol { pid, detail: "empty answer".into() });
        };
        match status {
            STATUS_OK => Ok(Outcome::Ok(body.to_vec())),
            STATUS_RAISED => Ok(Outcome::Err(TaskError {
                kind: ErrorKind::Failed,
                message: "the task raised an exception (see detail)".into(),
                detail: body.to_vec(),
            })),
            STATUS_REFUSED => Ok(Outcome::Err(TaskError {
                kind: ErrorKind::Rejected,
                message: String::from_utf8_lossy(body).into_owned(),
                detail: Vec::new(),
            })),
            other => Err(ChildError::Protocol { pid, detail: format!("unknown status {other}") }),
        }
    }

    async fn died(&mut self) -> ChildError {
        let status = match tokio::time::timeout(std::time::Duration::from_secs(5), self.process.wait()).await {
            Ok(Ok(status)) => describe(status),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "it stopped answering".into(),
        };
        ChildError::Died { pid: self.hello.pid, status }
    }
}

fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => status.to_string(),
    }
}

/// Resident memory of a process, from `/proc/PID/statm` (Linux).
fn resident_bytes(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

async fn read_frame(stdout: &mut ChildStdout, max: usize) -> std::io::Result<Vec<u8>> {
    let mut header = [0u8; 4];
    stdout.read_exact(&mut header).await?;
    let len = u32::from_le_bytes(header) as usize;
    if len > max {
        return Err(std::io::Error::other(format!("answer of {len} bytes exceeds the limit of {max}")));
    }
    let mut body = vec![0u8; len];
    stdout.read_exact(&mut body).await?;
    Ok(body)
}

/// Warm children per tenant.
#[derive(Clone)]
pub struct PythonExecutor {
    config: Arc<PythonConfig>,
    idle: Arc<Mutex<HashMap<String, Vec<PyChild>>>>,
}

impl PythonExecutor {
    /// An executor with no children yet; they start on first use.
    pub fn new(config: PythonConfig) -> Self {
        Self { config: Arc::new(config), idle: Arc::new(Mutex::new(HashMap::new())) }
    }

    fn take_idle(&self, tenant: &str) -> Option<PyChild> {
        self.idle.lock().ok()?.get_mut(tenant)?.pop()
    }

    fn give_back(&self, tenant: String, child: PyChild) {
        // Dropping a child kills it; the next task of the tenant starts a fresh one.
        if child.tasks >= self.config.max_tasks_per_child {
            tracing::debug!(pid = child.hello.pid, tasks = child.tasks, "recycling python child after its task limit");
            return;
        }
        if let (Some(limit), Some(rss)) = (self.config.max_child_memory, resident_bytes(child.hello.pid)) {
            if rss > limit {
                tracing::info!(pid = child.hello.pid, rss, limit, "recycling python child over its memory limit");
                return;
            }
        }
        if let Ok(mut idle) = self.idle.lock() {
            idle.entry(tenant).or_default().push(child);
        }
    }

    /// Number of idle children of a tenant (for tests and status).
    pub fn idle_children(&self, tenant: &str) -> usize {
        self.idle.lock().map(|i| i.get(tenant).map_or(0, Vec::len)).unwrap_or(0)
    }
}

impl Executor for PythonExecutor {
    fn run(&self, assignment: Assignment) -> OutcomeFuture {
        let this = self.clone();
        Box::pin(async move {
            let tenant = assignment.tenant;
            let mut child = match this.take_idle(&tenant) {
                Some(child) => child,
                None => match PyChild::spawn(&this.config).await {
                    Ok(child) => child,
                    Err(e) => return failed(ErrorKind::WorkerLost, e.to_string()),
                },
            };
            match child.call(&assignment.payload).await {
                Ok(outcome) => {
                    this.give_back(tenant, child);
                    outcome
                }
                Err(e) => {
                    tracing::warn!(error = %e, "python child failed");
                    failed(ErrorKind::WorkerLost, e.to_string())
                }
            }
        })
    }
}
