//! The pooled CPython executor.
//!
//! Each tenant has its own warm children (never two tenants in one child), started with
//! the configured interpreter running the embedded `child.py`. A child is reused across
//! tasks for as long as it lives (as loky's, dask's and Ray's are), or, with
//! `max_tasks_per_child`, recycled after that many: its replacement starts in the
//! background while it goes on serving, so recycling costs no task a cold start. A
//! child that dies mid-task fails that attempt with [`ErrorKind::WorkerLost`], so the
//! scheduler requeues it as it would for a lost worker; the worker itself lives on.
//! Dropping a task's future (cancellation) kills the child running it. The worker never
//! unpickles: it moves bytes.
//!
//! Pipelining: an attempt the worker starts behind a running one
//! ([`Executor::run_behind`]) writes its request into that attempt's child at once; the
//! child reads it the moment it has answered, without sleeping in between, and the
//! attempt then takes the child over and reads its own answer. If the leader's child dies
//! or the leader is cancelled first, the request was lost with the child and the attempt
//! runs on another child; if the follower is cancelled first, its request cannot be taken
//! back, so the child is let go once the leader's answer is in (the cancelled task may
//! have begun by then, as a running task that is cancelled has). A child over a limit
//! after a task still runs the one already queued in it, then goes.
//!
//! Pinned objects reach a child as file locations: with a task that needs them, the
//! worker tells the child (once per child) where each object's file is and where its
//! pickle and buffers sit in it; the child maps the file read-only and rebuilds the
//! object over the mapping (numpy arrays without a copy). When the worker drops an
//! object, its children drop their mappings too, idle ones at once, busy ones after
//! their task.

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::{mpsc, oneshot};

use crate::proto::{Assignment, AttemptId, AttemptResult, ErrorKind, ObjectKey, Outcome, TaskError, DEFAULT_MAX_FRAME};
use crate::store::SharedPinned;
use crate::worker::executor::{failed, Executor, OutcomeFuture, Report, RunFuture};

/// The child's source, run with `python -c`.
const CHILD_SOURCE: &str = include_str!("child.py");

/// Answer status: the callable returned.
const STATUS_OK: u8 = 0;
/// Answer status: the callable raised.
const STATUS_RAISED: u8 = 1;
/// Answer status: refused before running (the client's Python or cloudpickle differ).
const STATUS_REFUSED: u8 = 2;
/// Answer status: a request without a task (only object updates) was applied.
const STATUS_DONE: u8 = 3;

/// How Python children are started.
#[derive(Debug, Clone)]
pub struct PythonConfig {
    /// Interpreter to run (`python3` on PATH by default).
    pub python: String,
    /// A child is replaced after this many tasks; `None` (the default) keeps it for
    /// as long as it lives. Each replacement costs a cold start (the interpreter and
    /// the task's imports) on a core the tasks share, so it is a remedy for tasks that
    /// leak, as `max_child_memory` is, not a default.
    pub max_tasks_per_child: Option<u32>,
    /// A child whose resident memory exceeds this many bytes after a task is replaced
    /// (once the task already queued in its pipe, if any, has run too).
    pub max_child_memory: Option<u64>,
    /// Threads each child's numeric libraries may start (OpenMP, OpenBLAS, MKL,
    /// Accelerate, numexpr), as loky gives its workers: [`THREAD_LIMIT_VARS`] not set in
    /// the worker's own environment are set to this. `None` leaves them alone.
    pub threads_per_child: Option<u32>,
    /// Added to every child's environment (a worker inside the client's process gets
    /// the client's `sys.path` this way).
    pub child_env: Vec<(String, String)>,
}

impl Default for PythonConfig {
    fn default() -> Self {
        Self {
            python: "python3".into(),
            max_tasks_per_child: None,
            max_child_memory: None,
            threads_per_child: None,
            child_env: Vec::new(),
        }
    }
}

/// The environment variables that bound the thread pools of numeric libraries.
pub const THREAD_LIMIT_VARS: [&str; 5] =
    ["OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS"];

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
    /// Where requests go (shared with the attempts queued in this child).
    input: Arc<ChildInput>,
    /// Buffered: a small answer's length and body come in one read.
    stdout: BufReader<ChildStdout>,
    hello: ChildHello,
    /// `/proc/PID/statm`, opened once and read again for each memory check (Linux).
    statm: Option<std::fs::File>,
    tasks: u32,
    /// Set once the child reached its task limit; becomes true when its replacement is
    /// in the pool (or failed to start), and the child is then let go.
    successor: Option<Arc<AtomicBool>>,
}

impl PyChild {
    /// Whether this child is to be let go (its replacement is ready).
    fn retired(&self) -> bool {
        self.successor.as_ref().is_some_and(|ready| ready.load(Ordering::Acquire))
    }
}

/// The writing side of a child: requests go through a channel to a task that writes
/// them to the child's stdin in order, so that an attempt queued behind another can put
/// its request there while the other waits for its answer.
struct ChildInput {
    requests: mpsc::UnboundedSender<Request>,
    /// Objects whose location this child was told.
    known: Mutex<HashSet<ObjectKey>>,
    /// Set when the child is to take no more queued attempts (it is over a limit).
    closed: AtomicBool,
}

/// One request to a child: length, object update and task.
struct Request {
    head: Vec<u8>,
    payload: Arc<Vec<u8>>,
}

impl ChildInput {
    /// Starts the task that writes requests to `stdin`; it ends when the child's pipe
    /// breaks or the last handle on this input goes.
    fn start(mut stdin: ChildStdin) -> Self {
        let (requests, mut rx) = mpsc::unbounded_channel::<Request>();
        tokio::spawn(async move {
            while let Some(request) = rx.recv().await {
                if write_request(&mut stdin, request).await.is_err() {
                    break; // the reading side finds the child dead
                }
            }
        });
        Self { requests, known: Mutex::default(), closed: AtomicBool::new(false) }
    }

    /// Queues a request: the update telling the child about `pins` it has not seen and
    /// to drop `forget`, then `payload` (none for an update alone). False if the child's
    /// pipe is gone; what the child knows changes only with a queued request.
    fn send(&self, pins: &[SharedPinned], forget: &[ObjectKey], payload: Arc<Vec<u8>>) -> bool {
        let mut known = lock(&self.known);
        let mut update = ObjectUpdate::default();
        let mut learnt = Vec::new();
        for pin in pins {
            let key = pin.header().key;
            if let (Some(layout), false) = (pin.layout(), known.contains(&key) || learnt.contains(&key)) {
                learnt.push(key);
                let location = ObjectLocation {
                    path: pin.path().display().to_string(),
                    pickle: layout.pickle,
                    buffers: layout.buffers.clone(),
                };
                update.pins.insert(hex::encode(key), location);
            }
        }
        let forgotten: Vec<ObjectKey> = forget.iter().filter(|key| known.contains(*key)).copied().collect();
        update.forget = forgotten.iter().map(hex::encode).collect();
        let update = if update.pins.is_empty() && update.forget.is_empty() {
            Vec::new()
        } else {
            serde_json::to_vec(&update).unwrap_or_default()
        };
        let (Ok(update_len), Ok(len)) = (u32::try_from(update.len()), u32::try_from(4 + update.len() + payload.len()))
        else {
            return false;
        };
        let mut head = Vec::with_capacity(8 + update.len());
        head.extend_from_slice(&len.to_le_bytes());
        head.extend_from_slice(&update_len.to_le_bytes());
        head.extend_from_slice(&update);
        if self.requests.send(Request { head, payload }).is_err() {
            return false;
        }
        known.extend(learnt);
        for key in &forgotten {
            known.remove(key);
        }
        true
    }

    fn knows(&self, key: &ObjectKey) -> bool {
        lock(&self.known).contains(key)
    }
}

/// Writes one request; a small one in one write, so that the child wakes once.
async fn write_request(stdin: &mut ChildStdin, request: Request) -> std::io::Result<()> {
    let Request { mut head, payload } = request;
    if payload.len() < 64 * 1024 {
        head.extend_from_slice(&payload);
        stdin.write_all(&head).await?;
    } else {
        stdin.write_all(&head).await?;
        stdin.write_all(&payload).await?;
    }
    stdin.flush().await
}

/// What a request tells the child about pinned objects, before the task (JSON).
#[derive(serde::Serialize, Default)]
struct ObjectUpdate {
    /// New objects: key (hex) → location.
    pins: HashMap<String, ObjectLocation>,
    /// Objects to let go of (hex keys).
    forget: Vec<String>,
}

#[derive(serde::Serialize)]
struct ObjectLocation {
    path: String,
    pickle: (u64, u64),
    buffers: Vec<(u64, u64)>,
}

impl PyChild {
    async fn spawn(config: &PythonConfig) -> Result<Self, ChildError> {
        let mut command = Command::new(&config.python);
        if let Some(threads) = config.threads_per_child {
            // Slots run side by side: a child that started a thread per core for its
            // matrix products would fight the other slots for the cores.
            for var in THREAD_LIMIT_VARS.iter().filter(|var| std::env::var_os(var).is_none()) {
                command.env(var, threads.to_string());
            }
        }
        let mut process = command
            .envs(config.child_env.iter().cloned())
            .arg("-c")
            .arg(CHILD_SOURCE)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| ChildError::Spawn { python: config.python.clone(), source })?;
        let hello_err = |detail: String| ChildError::Hello { python: config.python.clone(), detail };
        let (Some(stdin), Some(stdout)) = (process.stdin.take(), process.stdout.take()) else {
            return Err(hello_err("no pipes".into()));
        };
        let mut stdout = BufReader::with_capacity(ANSWER_BUFFER, stdout);
        let frame = read_frame(&mut stdout, HELLO_MAX).await.map_err(|e| hello_err(e.to_string()))?;
        let hello: ChildHello = serde_json::from_slice(&frame).map_err(|e| hello_err(format!("bad hello: {e}")))?;
        tracing::debug!(pid = hello.pid, python = %hello.python, cloudpickle = %hello.cloudpickle, "python child started");
        let statm = std::fs::File::open(format!("/proc/{}/statm", hello.pid)).ok();
        let input = Arc::new(ChildInput::start(stdin));
        Ok(Self { process, input, stdout, hello, statm, tasks: 0, successor: None })
    }

    /// Makes the child drop objects it knows (see [`PythonExecutor::stale`]).
    async fn forget(&mut self, keys: &[ObjectKey]) -> Result<(), ChildError> {
        if keys.is_empty() {
            return Ok(());
        }
        if !self.input.send(&[], keys, Arc::default()) {
            return Err(self.died().await);
        }
        match self.answer().await? {
            Outcome::Ok(_) => Ok(()),
            Outcome::Err(e) => Err(ChildError::Protocol { pid: self.hello.pid, detail: e.message }),
        }
    }

    /// Reads the answer to the oldest request not yet answered.
    async fn answer(&mut self) -> Result<Outcome, ChildError> {
        let answer = match read_frame(&mut self.stdout, DEFAULT_MAX_FRAME).await {
            Ok(answer) => answer,
            Err(_) => return Err(self.died().await),
        };
        self.tasks = self.tasks.saturating_add(1);
        let pid = self.hello.pid;
        let Some((&status, body)) = answer.split_first() else {
            return Err(ChildError::Protocol { pid, detail: "empty answer".into() });
        };
        match status {
            STATUS_OK => Ok(Outcome::Ok(body.to_vec())),
            STATUS_DONE => Ok(Outcome::Ok(Vec::new())),
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

    /// The child's resident memory, from its `/proc/PID/statm` (Linux), opened once:
    /// one `pread` per check, since the check follows every task.
    fn resident_bytes(&self) -> Option<u64> {
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 128];
        let n = self.statm.as_ref()?.read_at(&mut buf, 0).ok()?;
        let text = std::str::from_utf8(buf.get(..n)?).ok()?;
        let pages: u64 = text.split_whitespace().nth(1)?.parse().ok()?;
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        Some(pages * u64::try_from(page).ok()?)
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

/// Capacity of the buffer over a child's answers.
const ANSWER_BUFFER: usize = 64 * 1024;

async fn read_frame(stdout: &mut BufReader<ChildStdout>, max: usize) -> std::io::Result<Vec<u8>> {
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

/// Largest hello a child may send.
const HELLO_MAX: usize = 64 * 1024;

/// A Python attempt the worker started and that has not ended, as an attempt queued
/// behind it sees it.
struct Lane {
    tenant: String,
    /// The child its request went to (`None` until it has one).
    input: Option<Arc<ChildInput>>,
    /// The attempt queued behind it.
    follower: Option<Follower>,
}

struct Follower {
    handover: oneshot::Sender<Handover>,
    /// Whether its request is in the child of the attempt it follows.
    queued: bool,
}

/// What an attempt passes to its follower when it ends.
enum Handover {
    /// The follower's request is in this child: it reads its answer.
    Child(Box<PyChild>),
    /// The follower runs on a child of its own.
    Alone,
}

/// The lanes of the attempts running now.
type Lanes = Arc<Mutex<HashMap<AttemptId, Lane>>>;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every holder updates the maps in one step: a poisoned lock is still consistent.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An attempt's lane, removed when the attempt ends or its future is dropped; a
/// follower whose handover is dropped unsent runs alone.
struct LaneGuard {
    lanes: Lanes,
    attempt: AttemptId,
}

impl LaneGuard {
    /// The attempt has sent its request to the child of `input`.
    fn set_input(&self, input: &Arc<ChildInput>) {
        if let Some(lane) = lock(&self.lanes).get_mut(&self.attempt) {
            lane.input = Some(input.clone());
        }
    }

    /// The attempt's request was lost with its child (and so was its follower's).
    fn lose_input(&self) {
        if let Some(lane) = lock(&self.lanes).get_mut(&self.attempt) {
            lane.input = None;
            if let Some(follower) = &mut lane.follower {
                follower.queued = false;
            }
        }
    }

    /// The attempt has its answer: no request goes into its child any more. Returns the
    /// handover of the follower whose request is already there, if any (a follower
    /// that is not queued stays, to run alone once the child is back in the pool).
    fn close(&self) -> Option<oneshot::Sender<Handover>> {
        let mut lanes = lock(&self.lanes);
        let lane = lanes.get_mut(&self.attempt)?;
        lane.input = None;
        match lane.follower.take() {
            Some(Follower { handover, queued: true }) => Some(handover),
            other => {
                lane.follower = other;
                None
            }
        }
    }

    /// The attempt ended: its follower, if any.
    fn end(self) -> Option<Follower> {
        lock(&self.lanes).remove(&self.attempt).and_then(|lane| lane.follower)
        // (Drop then finds nothing to remove.)
    }
}

impl Drop for LaneGuard {
    fn drop(&mut self) {
        let lane = lock(&self.lanes).remove(&self.attempt);
        drop(lane); // outside the lock
    }
}

/// Warm children per tenant.
#[derive(Clone)]
pub struct PythonExecutor {
    config: Arc<PythonConfig>,
    idle: Arc<Mutex<HashMap<String, Vec<PyChild>>>>,
    /// Objects the worker dropped, per tenant: children that know them forget them.
    dropped: Arc<Mutex<HashMap<String, HashSet<ObjectKey>>>>,
    lanes: Lanes,
}

impl PythonExecutor {
    /// An executor with no children yet; they start on first use.
    pub fn new(config: PythonConfig) -> Self {
        Self { config: Arc::new(config), idle: Arc::default(), dropped: Arc::default(), lanes: Arc::default() }
    }

    /// Objects of `tenant` that the child of `input` knows and the worker dropped.
    fn stale(&self, tenant: &str, input: &ChildInput) -> Vec<ObjectKey> {
        let dropped = lock(&self.dropped);
        let Some(dropped) = dropped.get(tenant).filter(|d| !d.is_empty()) else {
            return Vec::new();
        };
        lock(&input.known).intersection(dropped).copied().collect()
    }

    /// Queues a task's request in the child of `input`, with the update its pins and
    /// the tenant's dropped objects call for (see [`ChildInput::send`]).
    fn send(&self, tenant: &str, input: &ChildInput, pins: &[SharedPinned], payload: Arc<Vec<u8>>) -> bool {
        input.send(pins, &self.stale(tenant, input), payload)
    }

    /// Objects in use again are no longer dropped.
    fn revive(&self, tenant: &str, pins: &[SharedPinned]) {
        if let Some(d) = lock(&self.dropped).get_mut(tenant) {
            for pin in pins {
                d.remove(&pin.header().key);
            }
        }
    }

    /// Makes a child forget dropped objects, then returns it to the pool.
    async fn settle(&self, tenant: String, mut child: PyChild) {
        let stale = self.stale(&tenant, &child.input);
        if let Err(e) = child.forget(&stale).await {
            tracing::warn!(error = %e, "python child failed while dropping objects");
            return;
        }
        self.give_back(tenant, child);
    }

    fn take_idle(&self, tenant: &str) -> Option<PyChild> {
        lock(&self.idle).get_mut(tenant)?.pop()
    }

    /// Whether `child` may serve on after a task: not once its replacement is ready, nor
    /// over its memory limit. Starts the replacement of a child at its task limit.
    fn review(&self, tenant: &str, child: &mut PyChild) -> bool {
        if child.retired() {
            tracing::debug!(pid = child.hello.pid, tasks = child.tasks, "recycled python child after its task limit");
            return false;
        }
        if let Some(limit) = self.config.max_child_memory {
            // Read only with a limit: it costs a system call per task.
            if let Some(rss) = child.resident_bytes().filter(|rss| *rss > limit) {
                tracing::info!(pid = child.hello.pid, rss, limit, "recycling python child over its memory limit");
                return false;
            }
        }
        let at_limit = self.config.max_tasks_per_child.is_some_and(|limit| child.tasks >= limit);
        if at_limit && child.successor.is_none() {
            let ready = Arc::new(AtomicBool::new(false));
            child.successor = Some(ready.clone());
            self.start_successor(tenant.to_string(), ready);
        }
        true
    }

    fn give_back(&self, tenant: String, mut child: PyChild) {
        // Dropping a child kills it; the next task of the tenant starts a fresh one.
        if self.review(&tenant, &mut child) {
            // Back under its limits: tasks may queue in it again.
            child.input.closed.store(false, Ordering::Release);
            lock(&self.idle).entry(tenant).or_default().push(child);
        }
    }

    /// Starts the replacement of a child at its task limit; the child serves on until
    /// the replacement is in the pool, then goes: at once if idle, else when its task
    /// ends (see [`Self::review`]). If the replacement cannot start, the child goes
    /// anyway and the next task starts one itself (and reports why it cannot).
    fn start_successor(&self, tenant: String, ready: Arc<AtomicBool>) {
        let this = self.clone();
        tokio::spawn(async move {
            let fresh = PyChild::spawn(&this.config).await;
            ready.store(true, Ordering::Release);
            match fresh {
                Ok(child) => this.give_back(tenant.clone(), child),
                Err(e) => tracing::warn!(error = %e, "could not start the replacement of a python child"),
            }
            this.prune(&tenant);
        });
    }

    /// Lets go of the tenant's idle children that are retired (only replaced children
    /// retire, so only [`Self::start_successor`] calls this).
    fn prune(&self, tenant: &str) {
        let retired: Vec<PyChild> = match lock(&self.idle).get_mut(tenant) {
            Some(list) if list.iter().any(PyChild::retired) => {
                let (retired, serving) = list.drain(..).partition(PyChild::retired);
                *list = serving;
                retired
            }
            _ => Vec::new(),
        };
        drop(retired); // outside the lock: dropping kills
    }

    /// Number of idle children of a tenant (for tests and status).
    pub fn idle_children(&self, tenant: &str) -> usize {
        lock(&self.idle).get(tenant).map_or(0, Vec::len)
    }

    /// Opens the lane of an attempt about to run.
    fn open_lane(&self, attempt: AttemptId, tenant: &str, input: Option<Arc<ChildInput>>) -> LaneGuard {
        lock(&self.lanes).insert(attempt, Lane { tenant: tenant.to_string(), input, follower: None });
        LaneGuard { lanes: self.lanes.clone(), attempt }
    }

    /// Queues `attempt` behind `behind`: its request goes into the child of `behind` at
    /// once if that attempt has one of the same tenant that takes more work. Returns the
    /// lane of `attempt` and, unless `behind` has ended, where its handover will come.
    fn queue_behind(
        &self,
        attempt: AttemptId,
        tenant: &str,
        pins: &[SharedPinned],
        payload: &Arc<Vec<u8>>,
        behind: AttemptId,
    ) -> (LaneGuard, Option<oneshot::Receiver<Handover>>) {
        let mut lanes = lock(&self.lanes);
        let mut queued_in = None;
        let mut handover = None;
        if let Some(lane) = lanes.get_mut(&behind).filter(|lane| lane.follower.is_none() && lane.tenant == tenant) {
            let (tx, rx) = oneshot::channel();
            let target = lane.input.clone().filter(|input| !input.closed.load(Ordering::Acquire));
            if let Some(input) = target {
                if self.send(tenant, &input, pins, payload.clone()) {
                    queued_in = Some(input);
                }
            }
            lane.follower = Some(Follower { handover: tx, queued: queued_in.is_some() });
            handover = Some(rx);
        }
        drop(lanes);
        (self.open_lane(attempt, tenant, queued_in), handover)
    }

    /// Runs an attempt on an idle child of its tenant, or a new one.
    async fn run_alone(
        &self,
        tenant: String,
        pins: Vec<SharedPinned>,
        payload: Arc<Vec<u8>>,
        lane: LaneGuard,
    ) -> Outcome {
        let mut child = match self.take_idle(&tenant) {
            Some(child) => child,
            None => match PyChild::spawn(&self.config).await {
                Ok(child) => child,
                Err(e) => return failed(ErrorKind::WorkerLost, e.to_string()),
            },
        };
        if !self.send(&tenant, &child.input, &pins, payload) {
            let e = child.died().await;
            tracing::warn!(error = %e, "python child failed");
            return failed(ErrorKind::WorkerLost, e.to_string());
        }
        lane.set_input(&child.input);
        self.finish(tenant, child, pins, lane).await
    }

    /// Reads the answer to the attempt's request, then passes the child on: to the
    /// follower whose request is queued in it, else back to the pool.
    async fn finish(&self, tenant: String, mut child: PyChild, pins: Vec<SharedPinned>, lane: LaneGuard) -> Outcome {
        let answer = child.answer().await;
        // The child maps the objects itself; it needs no handle of ours.
        drop(pins);
        let outcome = match answer {
            Ok(outcome) => outcome,
            Err(e) => {
                // A follower's request was lost with the child: it runs alone (the
                // lane's guard drops its handover).
                tracing::warn!(error = %e, "python child failed");
                return failed(ErrorKind::WorkerLost, e.to_string());
            }
        };
        if let Some(handover) = lane.close() {
            if !self.review(&tenant, &mut child) {
                // It runs the follower's task, already in its pipe, and no other.
                child.input.closed.store(true, Ordering::Release);
            }
            if let Err(unsent) = handover.send(Handover::Child(Box::new(child))) {
                // The follower was cancelled; its request cannot be taken back.
                tracing::debug!("letting a python child go: a cancelled task is queued in it");
                drop(unsent);
            }
        } else {
            self.settle(tenant, child).await;
        }
        // A follower that came while the child went back to the pool runs alone: on it.
        if let Some(Follower { handover, .. }) = lane.end() {
            let _ = handover.send(Handover::Alone);
        }
        outcome
    }
}

impl Executor for PythonExecutor {
    fn run(&self, assignment: Assignment, pins: Vec<SharedPinned>) -> OutcomeFuture {
        let this = self.clone();
        // Now, not when the future first runs: the worker may queue an attempt behind
        // this one before that.
        let lane = this.open_lane(assignment.attempt, &assignment.tenant, None);
        Box::pin(async move {
            this.revive(&assignment.tenant, &pins);
            this.run_alone(assignment.tenant, pins, Arc::new(assignment.payload), lane).await
        })
    }

    fn run_behind(
        &self,
        assignment: Assignment,
        pins: Vec<SharedPinned>,
        behind: AttemptId,
        report: Report,
    ) -> RunFuture {
        let this = self.clone();
        let Assignment { attempt, tenant, payload, .. } = assignment;
        let payload = Arc::new(payload);
        this.revive(&tenant, &pins);
        let (lane, handover) = this.queue_behind(attempt, &tenant, &pins, &payload, behind);
        Box::pin(async move {
            let handover = match handover {
                Some(handover) => handover.await.unwrap_or(Handover::Alone),
                None => Handover::Alone,
            };
            let started = Instant::now();
            let outcome = match handover {
                Handover::Child(child) => this.finish(tenant, *child, pins, lane).await,
                Handover::Alone => {
                    lane.lose_input();
                    this.run_alone(tenant, pins, payload, lane).await
                }
            };
            report(AttemptResult { attempt, outcome, run_micros: started.elapsed().as_micros() as u64 });
        })
    }

    fn forget(&self, tenant: &str, key: &ObjectKey) {
        lock(&self.dropped).entry(tenant.to_string()).or_default().insert(*key);
        // Idle children let go at once (busy ones with their next request).
        let children: Vec<PyChild> = match lock(&self.idle).get_mut(tenant) {
            Some(list) => {
                let (knowing, rest): (Vec<_>, Vec<_>) = list.drain(..).partition(|c| c.input.knows(key));
                *list = rest;
                knowing
            }
            None => Vec::new(),
        };
        for child in children {
            let (this, tenant) = (self.clone(), tenant.to_string());
            tokio::spawn(async move { this.settle(tenant, child).await });
        }
    }
}
