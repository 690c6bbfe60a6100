//! Executors run one attempt each. The worker picks one by the task's kind.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::proto::{Assignment, Builtin, ErrorKind, ObjectKey, Outcome, TaskError, TaskKind};
use crate::store::SharedPinned;

/// A boxed, sendable outcome future.
pub type OutcomeFuture = Pin<Box<dyn Future<Output = Outcome> + Send + 'static>>;

/// Runs attempts of some task kinds.
pub trait Executor: Send + Sync + 'static {
    /// Runs one attempt with the pinned objects it needs (in the order of
    /// `assignment.needs`). Dropping the future stops it.
    fn run(&self, assignment: Assignment, pins: Vec<SharedPinned>) -> OutcomeFuture;

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

    fn forget(&self, tenant: &str, key: &ObjectKey) {
        self.python.forget(tenant, key);
    }
}
