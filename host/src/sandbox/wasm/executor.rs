//! The worker's executor of [`TaskKind::Wasm`](crate::proto::TaskKind::Wasm) tasks:
//! decodes the [`WasmCall`], takes the module and the objects the task reads from the
//! pins the worker resolved, and runs the call on a blocking thread.

use std::sync::Arc;

use super::{Pins, WasmError, WasmSandbox};
use crate::proto::frame::decode;
use crate::proto::{Assignment, ErrorKind, Outcome, TaskError, WasmCall};
use crate::store::SharedPinned;
use crate::worker::executor::{failed, Executor, OutcomeFuture};

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

impl Executor for WasmExecutor {
    fn run(&self, assignment: Assignment, pins: Vec<SharedPinned>) -> OutcomeFuture {
        let sandbox = self.sandbox.clone();
        Box::pin(async move {
            let call: WasmCall = match decode(&assignment.payload) {
                Ok(call) => call,
                Err(e) => return failed(ErrorKind::Rejected, format!("malformed WebAssembly call: {e}")),
            };
            let pins = Arc::new(TaskPins(pins));
            // Compiling and running block: a blocking thread does both (the wall-time
            // limit bounds a call even if its task is cancelled meanwhile).
            let ran = tokio::task::spawn_blocking(move || {
                let bytes = pins.get(&call.module).ok_or_else(|| WasmError::BadModule {
                    reason: "the module is not among the task's pinned objects".into(),
                })?;
                let module = sandbox.module(call.module, bytes)?;
                sandbox.call(&module, &call.task, &call.input, pins)
            })
            .await;
            match ran {
                Ok(Ok(output)) => Outcome::Ok(output),
                Ok(Err(e)) => Outcome::Err(TaskError { kind: kind_of(&e), message: e.to_string(), detail: Vec::new() }),
                Err(e) => failed(ErrorKind::WorkerLost, format!("the sandbox thread failed: {e}")),
            }
        })
    }
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
