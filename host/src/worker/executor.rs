//! Executors run one attempt each. The worker picks one by the task's kind.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::proto::{Assignment, AttemptId, AttemptResult, Builtin, ErrorKind, ObjectKey, Outcome, TaskError, TaskKind};
use crate::store::SharedPinned;

/// A boxed, sendable outcome future.
pub type OutcomeFuture = Pin<Box<dyn Future<Output = Outcome> + Send + 'static>>;

/// A boxed, sendable future of a run ([`Executor::run_sequence`]).
pub type RunFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// One attempt of a run, with the pinned objects it needs.
pub type RunMember = (Assignment, Vec<SharedPinned>);

/// Where a run reports each attempt as it ends; called from any thread.
pub type Report = Box<dyn Fn(AttemptResult) + Send + Sync + 'static>;

/// The attempts of a run that were cancelled before the run reached them.
#[derive(Debug, Default)]
pub struct Skips(Mutex<HashSet<AttemptId>>);

impl Skips {
    /// Marks `attempt` to be skipped.
    pub fn skip(&self, attempt: AttemptId) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).insert(attempt);
    }

    /// Whether `attempt` is to be skipped.
    pub fn contains(&self, attempt: AttemptId) -> bool {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).contains(&attempt)
    }
}

/// Runs attempts of some task kinds.
pub trait Executor: Send + Sync + 'static {
    /// Runs one attempt with the pinned objects it needs (in the order of
    /// `assignment.needs`). Dropping the future stops it.
    fn run(&self, assignment: Assignment, pins: Vec<SharedPinned>) -> OutcomeFuture;

    /// Runs the attempts of a run one after another, calling `report` as each ends, with
    /// its own run time; attempts in `skips` when the run reaches them are dropped
    /// unreported (the worker has reported them cancelled). The future ends with the
    /// run. The default awaits [`run`](Self::run) for each in turn; executors of kinds
    /// that run back to back ([`runs_back_to_back`](super::state::runs_back_to_back))
    /// do better.
    fn run_sequence(&self, members: Vec<RunMember>, skips: Arc<Skips>, report: Report) -> RunFuture {
        one_by_one(self, members, skips, report)
    }

    /// Runs one attempt that the worker pipelined behind the running attempt `behind`
    /// ([`WorkerAction::StartBehind`](super::state::WorkerAction::StartBehind)), calling
    /// `report` when it ends, with its own run time (from when it could start). Aborting
    /// the future stops it. The worker pipelines only Python attempts, which the Python
    /// executor queues in the child running `behind`; the default runs the attempt at
    /// once, as [`run`](Self::run) would (beyond the slots, for a long task).
    fn run_behind(
        &self,
        assignment: Assignment,
        pins: Vec<SharedPinned>,
        _behind: AttemptId,
        report: Report,
    ) -> RunFuture {
        at_once(self, assignment, pins, report)
    }

    /// The worker now holds `object` for `tenant`: prepare what tasks will derive from
    /// it, so that the first task does not pay for it. Must not block.
    fn prepare(&self, _tenant: &str, _object: &SharedPinned) {}

    /// The worker dropped an object: let go of anything derived from it.
    fn forget(&self, _tenant: &str, _key: &ObjectKey) {}
}

/// The built-in kinds: `noop`, `sleep`, `echo`, `fail`.
#[derive(Debug, Default, Clone, Copy)]
pub struct BuiltinExecutor;

impl Executor for BuiltinExecutor {
    fn run(&self, assignment: Assignment, _pins: Vec<SharedPinned>) -> OutcomeFuture {
        match assignment.kind {
            TaskKind::Builtin(Builtin::Noop) => Box::pin(std::future::ready(Outcome::Ok(Vec::new()))),
            TaskKind::Builtin(Builtin::Echo) => Box::pin(std::future::ready(Outcome::Ok(assignment.payload))),
            TaskKind::Builtin(Builtin::Fail) => Box::pin(std::future::ready(failed(
                ErrorKind::Failed,
                String::from_utf8_lossy(&assignment.payload).into_owned(),
            ))),
            TaskKind::Python | TaskKind::Wasm => Box::pin(std::future::ready(failed(
                ErrorKind::Rejected,
                format!("this executor does not run {:?} tasks", assignment.kind),
            ))),
            TaskKind::Builtin(Builtin::Sleep) => {
                let millis = std::str::from_utf8(&assignment.payload).ok().and_then(|s| s.trim().parse::<u64>().ok());
                match millis {
                    Some(ms) => Box::pin(async move {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        Outcome::Ok(assignment.payload)
                    }),
                    None => Box::pin(std::future::ready(failed(
                        ErrorKind::Rejected,
                        "sleep task payload must be a number of milliseconds".into(),
                    ))),
                }
            }
        }
    }
}

/// A run as a sequence of [`Executor::run`] futures.
fn one_by_one<E: Executor + ?Sized>(
    executor: &E,
    members: Vec<RunMember>,
    skips: Arc<Skips>,
    report: Report,
) -> RunFuture {
    let runs: Vec<_> = members.into_iter().map(|(a, pins)| (a.attempt, executor.run(a, pins))).collect();
    Box::pin(async move {
        for (attempt, run) in runs {
            if skips.contains(attempt) {
                continue;
            }
            let started = Instant::now();
            let outcome = run.await;
            report(AttemptResult { attempt, outcome, run_micros: started.elapsed().as_micros() as u64 });
        }
    })
}

/// One attempt run at once and reported (what [`Executor::run_behind`] does by default).
fn at_once<E: Executor + ?Sized>(
    executor: &E,
    assignment: Assignment,
    pins: Vec<SharedPinned>,
    report: Report,
) -> RunFuture {
    one_by_one(executor, vec![(assignment, pins)], Arc::default(), report)
}

/// An error outcome without detail.
pub fn failed(kind: ErrorKind, message: String) -> Outcome {
    Outcome::Err(TaskError { kind, message, detail: Vec::new() })
}

/// Routes each attempt to the executor of its kind.
#[derive(Clone)]
pub struct Executors {
    /// Built-in kinds.
    pub builtin: BuiltinExecutor,
    /// Python tasks.
    pub python: crate::sandbox::python::PythonExecutor,
    /// WebAssembly tasks (`None`: the sandbox could not be set up; they are refused).
    pub wasm: Option<crate::sandbox::wasm::executor::WasmExecutor>,
}

impl Executor for Executors {
    fn run(&self, assignment: Assignment, pins: Vec<SharedPinned>) -> OutcomeFuture {
        match assignment.kind {
            TaskKind::Builtin(_) => self.builtin.run(assignment, pins),
            TaskKind::Wasm => match &self.wasm {
                Some(wasm) => wasm.run(assignment, pins),
                None => self.builtin.run(assignment, pins),
            },
            TaskKind::Python => self.python.run(assignment, pins),
        }
    }

    fn run_sequence(&self, members: Vec<RunMember>, skips: Arc<Skips>, report: Report) -> RunFuture {
        match (&self.wasm, members.first().map(|(a, _)| &a.kind)) {
            (Some(wasm), Some(TaskKind::Wasm)) => wasm.run_sequence(members, skips, report),
            _ => one_by_one(self, members, skips, report),
        }
    }

    fn run_behind(
        &self,
        assignment: Assignment,
        pins: Vec<SharedPinned>,
        behind: AttemptId,
        report: Report,
    ) -> RunFuture {
        match assignment.kind {
            TaskKind::Python => self.python.run_behind(assignment, pins, behind, report),
            _ => at_once(self, assignment, pins, report),
        }
    }

    fn prepare(&self, tenant: &str, object: &SharedPinned) {
        if let Some(wasm) = &self.wasm {
            wasm.prepare(tenant, object);
        }
    }

    fn forget(&self, tenant: &str, key: &ObjectKey) {
        self.python.forget(tenant, key);
    }
}
