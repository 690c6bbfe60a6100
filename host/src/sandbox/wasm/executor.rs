//! The worker's executor of [`TaskKind::Wasm`](crate::proto::TaskKind::Wasm) tasks:
//! decodes the [`WasmCall`], takes the module and the objects the task reads from the
//! pins the worker resolved, and runs the call on a blocking thread; a run of short tasks
//! goes back to back on one.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::{Pins, WasmError, WasmSandbox};
use crate::proto::frame::decode;
use crate::proto::{Assignment, AttemptId, AttemptResult, ErrorKind, ObjectKind, Outcome, TaskError, WasmCall};
use crate::store::SharedPinned;
use crate::worker::executor::{failed, Executor, OutcomeFuture, Report, RunFuture, RunMember, Skips};

/// The first bytes of every WebAssembly binary module.
const WASM_MAGIC: &[u8] = b"\0asm";

/// Runs WebAssembly tasks in one [`WasmSandbox`].
#[derive(Clone)]
pub struct WasmExecutor {
    sandbox: Arc<WasmSandbox>,
}

impl WasmExecutor {
    /// An executor around a sandbox.
    pub fn new(sandbox: WasmSandbox) -> Self {
        Self { sandbox: Arc::new(sandbox) }
    }
}

/// The pinned objects of one task, by key.
struct TaskPins(Vec<SharedPinned>);

impl Pins for TaskPins {
    fn get(&self, key: &[u8; 32]) -> Option<&[u8]> {
        self.0.iter().find(|p| p.header().key == *key).map(|p| p.bytes())
    }
}

impl WasmExecutor {
    /// Runs one attempt on this (blocking) thread; the run time leaves out compiling the
    /// module, a one-off cost that would mislead the schedulers' task-time estimates.
    fn call(&self, assignment: &Assignment, pins: Vec<SharedPinned>) -> (Outcome, u64) {
        let call: WasmCall = match decode(&assignment.payload) {
            Ok(call) => call,
            Err(e) => return (failed(ErrorKind::Rejected, format!("malformed WebAssembly call: {e}")), 0),
        };
        let pins = Arc::new(TaskPins(pins));
        let module = pins
            .get(&call.module)
            .ok_or_else(|| WasmError::BadModule { reason: "the module is not among the task's pinned objects".into() })
            .and_then(|bytes| self.sandbox.module(call.module, bytes));
        let started = Instant::now();
        let output = module.and_then(|module| self.sandbox.call(&module, &call.task, &call.input, pins));
        let run_micros = started.elapsed().as_micros() as u64;
        let outcome = match output {
            Ok(output) => Outcome::Ok(output),
            Err(e) => Outcome::Err(TaskError { kind: kind_of(&e), message: e.to_string(), detail: Vec::new() }),
        };
        (outcome, run_micros)
    }
}

impl Executor for WasmExecutor {
    fn run(&self, assignment: Assignment, pins: Vec<SharedPinned>) -> OutcomeFuture {
        let executor = self.clone();
        // Compiling and running block: a blocking thread does both (the wall-time limit
        // bounds a call even if its task is cancelled meanwhile).
        let ran = tokio::task::spawn_blocking(move || executor.call(&assignment, pins).0);
        Box::pin(async move { ran.await.unwrap_or_else(|e| thread_failed(&e)) })
    }

    /// A pinned WebAssembly module is compiled at once, on a blocking thread, under the
    /// sandbox's compile budget: its first task then finds it ready (a task that comes
    /// sooner waits for this compilation rather than starting another).
    fn prepare(&self, _tenant: &str, object: &SharedPinned) {
        if object.header().kind != ObjectKind::Raw || !object.bytes().starts_with(WASM_MAGIC) {
            return;
        }
        let (sandbox, object) = (self.sandbox.clone(), object.clone());
        tokio::task::spawn_blocking(move || {
            // A refusal is cached and reported to the tasks that use the module.
            let _ = sandbox.module(object.header().key, object.bytes());
        });
    }

    /// One blocking thread runs the whole run: each attempt costs a sandbox call, not a
    /// hand-off between threads.
    fn run_sequence(&self, members: Vec<RunMember>, skips: Arc<Skips>, report: Report) -> RunFuture {
        let executor = self.clone();
        let attempts: Vec<AttemptId> = members.iter().map(|(a, _)| a.attempt).collect();
        let reported = Arc::new(AtomicUsize::new(0));
        let progress = reported.clone();
        let report = Arc::new(report);
        let reporter = report.clone();
        let ran = tokio::task::spawn_blocking(move || {
            for (assignment, pins) in members {
                if !skips.contains(assignment.attempt) {
                    let (outcome, run_micros) = executor.call(&assignment, pins);
                    reporter(AttemptResult { attempt: assignment.attempt, outcome, run_micros });
                }
                progress.fetch_add(1, Ordering::Relaxed);
            }
        });
        Box::pin(async move {
            if let Err(e) = ran.await {
                // The thread died (a panic): the attempts it did not reach fail.
                for &attempt in &attempts[reported.load(Ordering::Relaxed)..] {
                    report(AttemptResult { attempt, outcome: thread_failed(&e), run_micros: 0 });
                }
            }
        })
    }
}

fn thread_failed(e: &tokio::task::JoinError) -> Outcome {
    failed(ErrorKind::WorkerLost, format!("the sandbox thread failed: {e}"))
}

/// The task error kind of a sandbox error.
fn kind_of(e: &WasmError) -> ErrorKind {
    match e {
        WasmError::Trap { .. } => ErrorKind::Trap,
        WasmError::Timeout { .. } | WasmError::CompileTimeout { .. } => ErrorKind::Timeout,
        WasmError::MemoryLimit { .. } | WasmError::OutputLimit { .. } => ErrorKind::MemoryLimit,
        WasmError::BadModule { .. } => ErrorKind::BadModule,
        WasmError::NoSuchTask { .. } => ErrorKind::NoSuchTask,
        WasmError::Failed { .. } => ErrorKind::Failed,
        // Every instance slot busy: another worker (or a later attempt) can run it.
        WasmError::Busy { .. } => ErrorKind::WorkerLost,
        WasmError::Engine { .. } => ErrorKind::Rejected,
    }
}
