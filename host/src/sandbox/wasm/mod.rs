//! WebAssembly tasks in a wasmtime sandbox.
//!
//! A worker holds one [`WasmSandbox`]: one wasmtime `Engine` configured for untrusted
//! code, an epoch ticker thread, and the modules it has compiled, by content hash. A task
//! runs in a fresh `Store` and instance with a memory limit, a wall-time deadline, a
//! stack limit and WASI preview 1 with nothing granted. The guest ABI is
//! [`stockade_guest::abi`].
//!
//! - `engine`: the `Config` for untrusted code, the pooling probe, the epoch ticker.
//! - `store`: the state of one call and the host functions the guest imports.
//! - `output`: the guest's stdout and stderr, captured and capped.
//! - [`error`]: [`WasmError`], and how wasmtime's errors map onto it.
//! - [`executor`]: the worker's executor of WebAssembly tasks.
//! - [`bench`]: instantiation, throughput and epoch-overhead measurements.
//!
//! Threads: [`WasmSandbox::call`] blocks and may run on many threads at once; each call
//! needs its thread to have at least [`WasmLimits::stack_bytes`] plus 256 KiB of free
//! stack (wasm runs on the caller's stack; tokio's blocking threads, 2 MiB, qualify for
//! the default limits). Call it from plain threads or tokio's `spawn_blocking`, never on
//! an async task: WASI's host calls block on tokio themselves.

pub mod bench;
mod engine;
pub mod error;
pub mod executor;
mod output;
mod store;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use stockade_guest::abi;
use wasmtime::{
    Engine, ExternType, InstancePre, Linker, Module, ModuleExport, PoolConcurrencyLimitError, Store, Trap, ValType,
};

use self::engine::{EngineOptions, EpochTicker, EPOCH_TICK};
use self::error::describe;
pub use self::error::WasmError;
use self::store::CallState;

/// The limits every task and every module load of a sandbox obey.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WasmLimits {
    /// Linear memory per instance, in bytes (at most 4 GiB, a 32-bit memory).
    pub memory_bytes: usize,
    /// Wall time per task, from instantiation to return (granularity 10 ms).
    pub wall_time: Duration,
    /// Wasm stack per task, in bytes; deeper recursion traps with "stack overflow".
    pub stack_bytes: usize,
    /// The largest task output, in bytes (larger: [`WasmError::OutputLimit`]); also caps
    /// a task's error message.
    pub output_bytes: usize,
    /// How much of the guest's stdout and of its stderr is kept, in bytes each.
    pub log_bytes: usize,
    /// The largest module accepted, in bytes.
    pub module_bytes: usize,
    /// The largest function body accepted, in bytes. With `module_bytes` this bounds the
    /// compiler's memory, which grows with the size of the function it compiles.
    pub function_bytes: usize,
    /// Wall time to compile one module; past it the module is refused (the compilation
    /// finishes in the background and is discarded).
    pub compile_time: Duration,
    /// Instances that may exist at once: the size of the instance pool. At least the
    /// number of threads calling [`WasmSandbox::call`] at once, plus one for
    /// [`WasmSandbox::module`]'s check.
    pub instances: u32,
    /// Compiled modules kept; the oldest loaded is dropped first.
    pub modules: usize,
}

impl Default for WasmLimits {
    fn default() -> Self {
        WasmLimits {
            memory_bytes: 256 << 20,
            wall_time: Duration::from_secs(60),
            stack_bytes: 512 << 10,
            output_bytes: 16 << 20,
            log_bytes: 64 << 10,
            module_bytes: 32 << 20,
            function_bytes: 1 << 20,
            compile_time: Duration::from_secs(60),
            instances: 64,
            modules: 64,
        }
    }
}

impl WasmLimits {
    fn check(&self) -> Result<(), WasmError> {
        let problem = if self.memory_bytes == 0 || self.memory_bytes as u64 > 1 << 32 {
            "memory_bytes must be between 1 byte and 4 GiB"
        } else if self.stack_bytes == 0 {
            "stack_bytes must not be zero"
        } else if self.instances == 0 {
            "instances must not be zero"
        } else if self.wall_time.is_zero() || self.compile_time.is_zero() {
            "wall_time and compile_time must not be zero"
        } else {
            return Ok(());
        };
        Err(WasmError::Engine { reason: problem.to_string() })
    }
}

/// Pinned objects a task may read, by content hash (see [`stockade_guest::pinned`]).
pub trait Pins: Send + Sync {
    /// The archive pinned under `key`, if any.
    fn get(&self, key: &[u8; 32]) -> Option<&[u8]>;
}

/// No pinned objects.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoPins;

impl Pins for NoPins {
    fn get(&self, _key: &[u8; 32]) -> Option<&[u8]> {
        None
    }
}

impl<S: std::hash::BuildHasher + Send + Sync> Pins for HashMap<[u8; 32], Vec<u8>, S> {
    fn get(&self, key: &[u8; 32]) -> Option<&[u8]> {
        HashMap::get(self, key).map(Vec::as_slice)
    }
}

/// A compiled, checked module, ready to instantiate.
pub struct WasmModule {
    key: [u8; 32],
    pre: InstancePre<CallState>,
    /// Task name to its export.
    tasks: BTreeMap<String, ModuleExport>,
    /// The WASI reactor constructor, if the module has one.
    initialize: Option<ModuleExport>,
}

impl WasmModule {
    /// The module's content hash.
    pub fn key(&self) -> &[u8; 32] {
        &self.key
    }

    /// The names of the tasks it exports, sorted.
    pub fn tasks(&self) -> impl Iterator<Item = &str> {
        self.tasks.keys().map(String::as_str)
    }
}

impl std::fmt::Debug for WasmModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmModule").field("key", &hex::encode(self.key)).field("tasks", &self.tasks.keys()).finish()
    }
}

/// One worker's WebAssembly executor: the engine, its epoch ticker and the compiled
/// modules. [`call`](Self::call) is safe to run from many threads at once.
pub struct WasmSandbox {
    // Field order matters for drop: the ticker stops before the engine goes.
    ticker: Option<EpochTicker>,
    engine: Engine,
    pooling: bool,
    linker: Linker<CallState>,
    limits: WasmLimits,
    /// The store's epoch deadline in ticks, when epoch interruption is on.
    deadline_ticks: Option<u64>,
    modules: Mutex<ModuleCache>,
}

impl WasmSandbox {
    /// A sandbox with these limits; starts the epoch ticker thread (stopped on drop).
    ///
    /// # Errors
    ///
    /// [`WasmError::Engine`] when the limits are unusable or wasmtime refuses the
    /// configuration.
    pub fn new(limits: WasmLimits) -> Result<Self, WasmError> {
        Self::with_options(limits, EngineOptions::default())
    }

    fn with_options(limits: WasmLimits, options: EngineOptions) -> Result<Self, WasmError> {
        limits.check()?;
        let built = engine::build(&limits, options)?;
        let mut linker = Linker::new(&built.engine);
        store::add_imports(&mut linker).map_err(|err| WasmError::Engine { reason: describe(&err) })?;
        let (ticker, deadline_ticks) = if options.epoch_interruption {
            // One tick more than the limit: the epoch may advance just after the deadline
            // is set, and the task must get at least its whole wall time.
            let ticks = limits.wall_time.as_nanos().div_ceil(EPOCH_TICK.as_nanos()) + 1;
            (Some(EpochTicker::start(&built.engine)?), Some(u64::try_from(ticks).unwrap_or(u64::MAX)))
        } else {
            (None, None)
        };
        tracing::info!(
            pooling = built.pooling,
            memory_bytes = limits.memory_bytes,
            wall_time = ?limits.wall_time,
            instances = limits.instances,
            "wasm: sandbox ready"
        );
        Ok(WasmSandbox {
            ticker,
            engine: built.engine,
            pooling: built.pooling,
            linker,
            limits,
            deadline_ticks,
            modules: Mutex::new(ModuleCache::default()),
        })
    }

    /// Whether instances come from the pooling allocator (else the probe failed and they
    /// are allocated on demand).
    pub fn pooling(&self) -> bool {
        self.pooling
    }

    /// The limits of this sandbox.
    pub fn limits(&self) -> &WasmLimits {
        &self.limits
    }

    /// The module with content hash `key` (blake3 of `bytes`): compiled, checked and
    /// cached on first use, from the cache afterwards (`bytes` is then not read at
    /// all). Refusals are cached too, so a bad module is compiled once.
    ///
    /// # Errors
    ///
    /// [`WasmError::BadModule`] when `bytes` do not hash to `key`, are not a usable
    /// guest (see the variant), or its ABI version differs;
    /// [`WasmError::CompileTimeout`] past the compile budget; [`WasmError::Busy`] when no
    /// instance slot is free for the ABI check (not cached).
    pub fn module(&self, key: [u8; 32], bytes: &[u8]) -> Result<Arc<WasmModule>, WasmError> {
        let slot = lock(&self.modules).slot(key, self.limits.modules);
        let mut slot = lock(&slot);
        if let Some(loaded) = &*slot {
            return loaded.clone();
        }
        // Checked once, before compiling: a cached module was checked when it was loaded,
        // so calls do not hash the whole module again.
        if *blake3::hash(bytes).as_bytes() != key {
            return Err(WasmError::BadModule {
                reason: format!("its bytes do not hash to its key {}", hex::encode(key)),
            });
        }
        let started = Instant::now();
        let loaded = self.load(key, bytes);
        match &loaded {
            Ok(module) => tracing::info!(
                key = %hex::encode(key),
                tasks = ?module.tasks.keys(),
                elapsed = ?started.elapsed(),
                "wasm: module compiled"
            ),
            Err(err) => tracing::warn!(key = %hex::encode(key), %err, "wasm: module refused"),
        }
        if !matches!(loaded, Err(WasmError::Busy { .. })) {
            *slot = Some(loaded.clone());
        }
        loaded
    }

    /// Runs `task` of `module` on `input` (JSON, see [`stockade_guest::abi`]) and returns
    /// its output. Blocks until the task ends; safe to call from many threads at once.
    ///
    /// # Errors
    ///
    /// [`WasmError::NoSuchTask`], [`WasmError::Failed`] (the task returned an error),
    /// [`WasmError::Trap`], [`WasmError::Timeout`], [`WasmError::MemoryLimit`],
    /// [`WasmError::OutputLimit`], [`WasmError::Busy`]; [`WasmError::BadModule`] for a
    /// module loaded by another sandbox.
    pub fn call(
        &self,
        module: &WasmModule,
        task: &str,
        input: &[u8],
        pins: Arc<dyn Pins>,
    ) -> Result<Vec<u8>, WasmError> {
        let Some(export) = module.tasks.get(task) else {
            return Err(WasmError::NoSuchTask {
                name: task.to_string(),
                available: module.tasks.keys().cloned().collect(),
            });
        };
        if !Engine::same(module.pre.module().engine(), &self.engine) {
            return Err(WasmError::BadModule { reason: "it was loaded by another sandbox".to_string() });
        }
        // An input cannot fill the whole memory (this also keeps its length within the
        // ABI's 32 bits).
        if input.len() >= self.limits.memory_bytes {
            return Err(WasmError::MemoryLimit { limit: self.limits.memory_bytes });
        }
        let mut store = self.store(CallState::new(&self.limits, input.to_vec(), pins));
        let status = call_export(&mut store, module, export, true);
        let state = store.into_data();
        let (stdout, stderr) = (state.stdout.text(), state.stderr.text());
        if !stdout.is_empty() || !stderr.is_empty() {
            tracing::debug!(task, %stdout, %stderr, "wasm: guest output");
        }
        match status {
            Ok(abi::TASK_OK) => Ok(state.output.unwrap_or_default()),
            Ok(abi::TASK_FAILED) => Err(WasmError::Failed {
                message: state.error.unwrap_or_else(|| "the task failed and gave no message".to_string()),
            }),
            Ok(other) => Err(WasmError::Trap {
                message: format!("the task export returned {other}, which the guest ABI does not define"),
            }),
            Err(err) => Err(self.classify(&err, &state, &stderr)),
        }
    }

    /// A fresh store for one call, with its memory limit and deadline.
    fn store(&self, state: CallState) -> Store<CallState> {
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limiter);
        if let Some(ticks) = self.deadline_ticks {
            store.set_epoch_deadline(ticks);
            store.epoch_deadline_trap();
        }
        store
    }

    /// What a failed call amounts to: the limit it hit, or the trap with the best message
    /// at hand (the panic message, else wasmtime's description and the guest's stderr).
    fn classify(&self, err: &wasmtime::Error, state: &CallState, stderr: &str) -> WasmError {
        let trap = err.downcast_ref::<Trap>();
        if state.limiter.exceeded {
            return WasmError::MemoryLimit { limit: self.limits.memory_bytes };
        }
        if state.output_limit_hit {
            return WasmError::OutputLimit { limit: self.limits.output_bytes };
        }
        if state.deadline_hit || trap == Some(&Trap::Interrupt) {
            return WasmError::Timeout { limit: self.limits.wall_time };
        }
        if err.is::<PoolConcurrencyLimitError>() {
            return WasmError::Busy { limit: self.limits.instances };
        }
        if let Some(panic) = &state.panic {
            return WasmError::Trap { message: panic.clone() };
        }
        let message = if trap == Some(&Trap::StackOverflow) {
            format!("stack overflow: the guest used more than its {} bytes of wasm stack", self.limits.stack_bytes)
        } else if let Some(exit) = err.downcast_ref::<wasmtime_wasi::I32Exit>() {
            format!("the guest called exit({})", exit.0)
        } else {
            describe(err)
        };
        let message = if stderr.is_empty() { message } else { format!("{message}\nguest stderr:\n{stderr}") };
        WasmError::Trap { message }
    }

    /// Compiles and checks a module (the uncached part of [`module`](Self::module)).
    fn load(&self, key: [u8; 32], bytes: &[u8]) -> Result<Arc<WasmModule>, WasmError> {
        check_sizes(bytes, &self.limits)?;
        let module = self.compile(bytes)?;
        let bad = |reason: String| WasmError::BadModule { reason };
        let mut tasks = BTreeMap::new();
        let mut has_memory = false;
        for export in module.exports() {
            let name = export.name();
            let ty = export.ty();
            if name == abi::MEMORY_EXPORT {
                has_memory = matches!(ty, ExternType::Memory(_));
            }
            let Some(task) = abi::task_name(name) else { continue };
            if !returns_status(&ty) {
                return Err(bad(format!("its task export {name:?} is not a function `() -> i32`")));
            }
            let index = module.get_export_index(name).ok_or_else(|| bad(format!("its export {name:?} vanished")))?;
            tasks.insert(task.to_string(), index);
        }
        if !has_memory {
            return Err(bad(format!("it exports no memory named {:?}", abi::MEMORY_EXPORT)));
        }
        let initialize = module.get_export_index(abi::INITIALIZE_EXPORT);
        let pre = self
            .linker
            .instantiate_pre(&module)
            .map_err(|err| bad(format!("it imports what the host does not provide: {err:#}")))?;
        let module = WasmModule { key, pre, tasks, initialize };
        self.check_abi_version(&module)?;
        Ok(Arc::new(module))
    }

    /// Instantiates the module once and asks for its ABI version; this also proves that it
    /// instantiates within the limits.
    fn check_abi_version(&self, module: &WasmModule) -> Result<(), WasmError> {
        let bad = |reason: String| WasmError::BadModule { reason };
        let name = abi::ABI_VERSION_EXPORT;
        let compiled = module.pre.module();
        let export = match (compiled.get_export(name), compiled.get_export_index(name)) {
            (Some(ty), Some(export)) if returns_status(&ty) => export,
            (Some(_), Some(_)) => return Err(bad(format!("its export {name:?} is not a function `() -> i32`"))),
            _ => return Err(bad(format!("it does not export {name:?}: build it with the stockade-guest SDK"))),
        };
        let mut store = self.store(CallState::new(&self.limits, Vec::new(), Arc::new(NoPins)));
        match call_export(&mut store, module, &export, false) {
            Ok(abi::ABI_VERSION) => Ok(()),
            Ok(version) => Err(bad(format!(
                "it was built for guest ABI version {version}, this host speaks version {}; rebuild it with a matching stockade-guest",
                abi::ABI_VERSION
            ))),
            Err(err) => match self.classify(&err, store.data(), "") {
                busy @ WasmError::Busy { .. } => Err(busy),
                other => Err(bad(format!("it does not start: {other}"))),
            },
        }
    }

    /// Compiles on a helper thread so that a module that compiles too slowly is refused
    /// after `compile_time` instead of holding the caller.
    fn compile(&self, bytes: &[u8]) -> Result<Module, WasmError> {
        let (done, compiled) = mpsc::sync_channel(1);
        let engine = self.engine.clone();
        let bytes = bytes.to_vec();
        std::thread::Builder::new()
            .name("wasm-compile".into())
            .spawn(move || {
                // The receiver is gone when the budget ran out; the result is discarded.
                let _ = done.send(Module::from_binary(&engine, &bytes));
            })
            .map_err(|err| WasmError::Engine { reason: format!("cannot start a compiler thread: {err}") })?;
        match compiled.recv_timeout(self.limits.compile_time) {
            Ok(Ok(module)) => Ok(module),
            Ok(Err(err)) => Err(WasmError::BadModule { reason: format!("it does not compile: {err:#}") }),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(WasmError::CompileTimeout { limit: self.limits.compile_time }),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                Err(WasmError::BadModule { reason: "the compiler stopped without a result".to_string() })
            }
        }
    }
}

impl Drop for WasmSandbox {
    fn drop(&mut self) {
        // Stop and join the ticker before the engine and the instances go.
        self.ticker.take();
    }
}

/// Instantiates `module` in `store` and calls `export` (a `() -> i32` function), after
/// the module's WASI constructor when `initialize` is set.
fn call_export(
    store: &mut Store<CallState>,
    module: &WasmModule,
    export: &ModuleExport,
    initialize: bool,
) -> wasmtime::Result<i32> {
    let instance = module.pre.instantiate(&mut *store)?;
    if let Some(initialize) = module.initialize.as_ref().filter(|_| initialize) {
        if let Some(func) = instance.get_module_export(&mut *store, initialize).and_then(|e| e.into_func()) {
            func.typed::<(), ()>(&*store)?.call(&mut *store, ())?;
        }
    }
    let Some(func) = instance.get_module_export(&mut *store, export).and_then(|e| e.into_func()) else {
        wasmtime::bail!("the export is not a function");
    };
    func.typed::<(), i32>(&*store)?.call(&mut *store, ())
}

/// Whether an export has the type of a task or of the ABI version export: `() -> i32`.
fn returns_status(ty: &ExternType) -> bool {
    let ExternType::Func(func) = ty else { return false };
    func.params().len() == 0 && matches!(func.results().collect::<Vec<_>>().as_slice(), [ValType::I32])
}

/// Refuses modules too large to compile within reason, before compiling them.
fn check_sizes(bytes: &[u8], limits: &WasmLimits) -> Result<(), WasmError> {
    use wasmtime::wasmparser::{Encoding, Parser, Payload};

    let bad = |reason: String| WasmError::BadModule { reason };
    if bytes.len() > limits.module_bytes {
        return Err(bad(format!("it has {} bytes, more than the limit of {}", bytes.len(), limits.module_bytes)));
    }
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.map_err(|err| bad(format!("it is not a WebAssembly module: {err}")))? {
            Payload::Version { encoding: Encoding::Component, .. } => {
                return Err(bad("it is a component; Stockade runs core modules (wasm32-wasip1)".to_string()));
            }
            Payload::MemorySection(memories) => {
                for memory in memories {
                    let memory = memory.map_err(|err| bad(format!("it is not a WebAssembly module: {err}")))?;
                    let page = 1u64 << memory.page_size_log2.unwrap_or(16);
                    let initial = memory.initial.saturating_mul(page);
                    if initial > limits.memory_bytes as u64 {
                        return Err(bad(format!(
                            "its memory starts at {initial} bytes, more than the limit of {} bytes",
                            limits.memory_bytes
                        )));
                    }
                }
            }
            Payload::CodeSectionEntry(body) if body.range().len() > limits.function_bytes => {
                return Err(bad(format!(
                    "a function body has {} bytes, more than the limit of {}",
                    body.range().len(),
                    limits.function_bytes
                )));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Compiled modules by key; each slot is filled once, by the first caller, while later
/// callers of the same key wait on the slot's lock.
#[derive(Default)]
struct ModuleCache {
    slots: HashMap<[u8; 32], Arc<ModuleSlot>>,
    /// Keys in the order they were first asked for, for eviction.
    order: VecDeque<[u8; 32]>,
}

type ModuleSlot = Mutex<Option<Result<Arc<WasmModule>, WasmError>>>;

impl ModuleCache {
    /// The slot of `key`, created (and the oldest evicted beyond `capacity`) if new.
    fn slot(&mut self, key: [u8; 32], capacity: usize) -> Arc<ModuleSlot> {
        if let Some(slot) = self.slots.get(&key) {
            return Arc::clone(slot);
        }
        while self.order.len() >= capacity.max(1) {
            let Some(oldest) = self.order.pop_front() else { break };
            self.slots.remove(&oldest);
        }
        let slot = Arc::new(Mutex::new(None));
        self.slots.insert(key, Arc::clone(&slot));
        self.order.push_back(key);
        slot
    }
}

/// Locks a mutex whose data stays consistent even if a holder panicked (every update is
/// a single assignment).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A guest written against the ABI by hand: one task per limit.
    fn limits_module() -> Vec<u8> {
        let text = format!(
            r#"(module
              (memory (export "{memory}") 1)
              (func (export "{version_export}") (result i32) (i32.const {version}))
              (func (export "{prefix}noop") (result i32) (i32.const {ok}))
              (func (export "{prefix}grow") (result i32)
                (loop $more (br_if $more (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))
                (i32.const {ok}))
              (func (export "{prefix}spin") (result i32) (loop $forever (br $forever)) (i32.const {ok}))
              (func (export "{prefix}out_of_bounds") (result i32) (i32.load (i32.const -4))))"#,
            memory = abi::MEMORY_EXPORT,
            version_export = abi::ABI_VERSION_EXPORT,
            version = abi::ABI_VERSION,
            prefix = abi::TASK_EXPORT_PREFIX,
            ok = abi::TASK_OK,
        );
        wat::parse_str(text).unwrap()
    }

    /// Both allocators (the pooling one when this machine has it) enforce every limit.
    #[test]
    fn limits_hold_with_pooled_and_on_demand_instances() {
        let wasm = limits_module();
        let limits = WasmLimits {
            memory_bytes: 2 << 20,
            wall_time: Duration::from_millis(200),
            instances: 2,
            ..WasmLimits::default()
        };
        for try_pooling in [true, false] {
            let options = EngineOptions { try_pooling, ..EngineOptions::default() };
            let sandbox = WasmSandbox::with_options(limits.clone(), options).unwrap();
            if !try_pooling {
                assert!(!sandbox.pooling());
            }
            let module = sandbox.module(*blake3::hash(&wasm).as_bytes(), &wasm).unwrap();
            let call = |task| sandbox.call(&module, task, b"", Arc::new(NoPins));
            assert_eq!(call("noop"), Ok(Vec::new()));
            assert_eq!(call("grow"), Err(WasmError::MemoryLimit { limit: limits.memory_bytes }));
            assert_eq!(call("spin"), Err(WasmError::Timeout { limit: limits.wall_time }));
            let Err(WasmError::Trap { message }) = call("out_of_bounds") else { panic!("expected a trap") };
            assert!(message.starts_with("wasm trap: out of bounds memory access"), "{message}");
        }
    }

    #[test]
    fn the_module_cache_evicts_the_oldest_key() {
        let mut cache = ModuleCache::default();
        let first = cache.slot([1; 32], 2);
        assert!(Arc::ptr_eq(&first, &cache.slot([1; 32], 2)));
        cache.slot([2; 32], 2);
        cache.slot([3; 32], 2);
        assert!(!cache.slots.contains_key(&[1; 32]));
        assert_eq!(cache.order, [[2; 32], [3; 32]]);
    }

    #[test]
    fn unusable_limits_are_refused() {
        for limits in [
            WasmLimits { memory_bytes: 0, ..WasmLimits::default() },
            WasmLimits { memory_bytes: (4 << 30) + 1, ..WasmLimits::default() },
            WasmLimits { instances: 0, ..WasmLimits::default() },
            WasmLimits { wall_time: Duration::ZERO, ..WasmLimits::default() },
        ] {
            assert!(matches!(WasmSandbox::new(limits), Err(WasmError::Engine { .. })));
        }
    }
}
