//! What can go wrong when loading a module or running a task, and how wasmtime's errors
//! map onto it.

use std::time::Duration;

/// Why a module could not be loaded or a task did not produce an output.
///
/// Every variant ends that one task (or load) only: the sandbox and its worker carry on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WasmError {
    /// The guest trapped: it panicked (the message is the panic message), overflowed its
    /// stack (the message says "stack overflow"), accessed memory out of bounds, executed
    /// `unreachable`, called `exit`, and so on. The same input traps again; fix the guest.
    #[error("the task trapped: {message}")]
    Trap {
        /// The panic message, or what trapped (with the guest's stderr, if any).
        message: String,
    },
    /// The task ran longer than its wall-time limit and was interrupted. The same input
    /// may well time out again; raise the limit or make the task shorter.
    #[error("the task ran longer than its limit of {limit:?} and was stopped")]
    Timeout {
        /// The wall-time limit.
        limit: Duration,
    },
    /// The guest asked for more linear memory than its limit (at instantiation or by
    /// `memory.grow`). Retrying does not help; raise the limit or use less memory.
    #[error("the task needed more than its memory limit of {limit} bytes")]
    MemoryLimit {
        /// The memory limit in bytes.
        limit: usize,
    },
    /// The task's output is larger than the output limit.
    #[error("the task's output is larger than its limit of {limit} bytes")]
    OutputLimit {
        /// The output limit in bytes.
        limit: usize,
    },
    /// The module is not a usable Stockade guest: it does not validate, is too large, has
    /// a function too large to compile, imports what the host does not provide, lacks the
    /// ABI version export or has another version, or does not instantiate. Permanent for
    /// these bytes.
    #[error("the module is not a usable Stockade guest: {reason}")]
    BadModule {
        /// What is wrong with it.
        reason: String,
    },
    /// Compiling the module took longer than its budget; the module is refused (and
    /// remembered as refused by this sandbox).
    #[error("compiling the module took longer than its limit of {limit:?}")]
    CompileTimeout {
        /// The compile-time budget.
        limit: Duration,
    },
    /// The module exports no task of that name.
    #[error("the module has no task {name:?} (its tasks: {})", available.join(", "))]
    NoSuchTask {
        /// The task asked for.
        name: String,
        /// The tasks the module exports, sorted.
        available: Vec<String>,
    },
    /// The task ran and returned an error (its `Err`, or input it could not decode).
    #[error("the task failed: {message}")]
    Failed {
        /// The task's error message.
        message: String,
    },
    /// Every pooled instance slot is in use (more calls at once than
    /// [`WasmLimits::instances`](super::WasmLimits::instances)). Retrying later helps.
    #[error("all {limit} sandbox instance slots are in use")]
    Busy {
        /// The number of slots.
        limit: u32,
    },
    /// The engine could not be set up (a limit wasmtime rejects, or no thread for the
    /// epoch ticker). Only [`WasmSandbox::new`](super::WasmSandbox::new) returns it.
    #[error("the WebAssembly engine could not be set up: {reason}")]
    Engine {
        /// What failed.
        reason: String,
    },
}

/// wasmtime's error text: what trapped, then the guest's backtrace when there is one.
/// The host's own backtrace (captured when `RUST_BACKTRACE` is set) is left out: it says
/// nothing about the guest and is slow to symbolise.
pub(super) fn describe(err: &wasmtime::Error) -> String {
    match err.downcast_ref::<wasmtime::WasmBacktrace>() {
        Some(backtrace) => format!("{}\n{backtrace}", err.root_cause()),
        None => format!("{err:#}"),
    }
}
