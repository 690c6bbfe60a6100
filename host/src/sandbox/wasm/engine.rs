//! The wasmtime `Engine` for untrusted code, and the thread that advances its epoch.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig};

use super::store::TABLE_ELEMENTS;
use super::{WasmError, WasmLimits};

/// The guard region after each memory allocated on demand.
const GUARD_BYTES: u64 = 64 << 10;

/// Memory (and table) bytes of each pool slot that stay mapped between instances.
const KEEP_RESIDENT: usize = 1 << 20;

/// How often the epoch advances: the granularity of wall-time limits.
pub(super) const EPOCH_TICK: Duration = Duration::from_millis(10);

/// How the engine is built; the benchmark turns epoch interruption off to measure it,
/// tests force the on-demand fallback.
#[derive(Debug, Clone, Copy)]
pub(super) struct EngineOptions {
    /// Instrument compiled code with epoch checks (needed for wall-time limits).
    pub(super) epoch_interruption: bool,
    /// Try the pooling allocator first (else go straight to on-demand allocation).
    pub(super) try_pooling: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions { epoch_interruption: true, try_pooling: true }
    }
}

/// The engine and whether it pools instances.
pub(super) struct BuiltEngine {
    pub(super) engine: Engine,
    /// Instances come from a pre-reserved pool (else they are allocated on demand).
    pub(super) pooling: bool,
}

/// Builds the engine: pooling when the probe succeeds, on-demand allocation otherwise
/// (the reason is logged).
pub(super) fn build(limits: &WasmLimits, options: EngineOptions) -> Result<BuiltEngine, WasmError> {
    if options.try_pooling {
        let mut config = untrusted_config(limits, options);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool_config(limits)));
        // The probe: creating a pooling engine reserves the whole pool's address space up
        // front, which fails where virtual memory is limited (ulimit -v, some containers).
        match Engine::new(&config) {
            Ok(engine) => return Ok(BuiltEngine { engine, pooling: true }),
            Err(err) => tracing::warn!(
                reason = %format!("{err:#}"),
                "wasm: the pooling instance allocator is unavailable; allocating instances on demand (slower instantiation)"
            ),
        }
    }
    let mut config = untrusted_config(limits, options);
    // Where address space is short, reserve only what the limit allows per memory (with
    // explicit bounds checks instead of 4 GiB of guard region).
    config
        .allocation_strategy(InstanceAllocationStrategy::OnDemand)
        .memory_reservation(limits.memory_bytes as u64)
        .memory_reservation_for_growth(0)
        .memory_guard_size(GUARD_BYTES);
    let engine = Engine::new(&config).map_err(|err| WasmError::Engine { reason: format!("{err:#}") })?;
    Ok(BuiltEngine { engine, pooling: false })
}

/// The settings for code that nobody here trusts.
fn untrusted_config(limits: &WasmLimits, options: EngineOptions) -> Config {
    let mut config = Config::new();
    config
        // Wall-time limits without fuel's cost: a load and compare at loop headers and
        // function entries, trapping once the ticker has moved the epoch past the
        // store's deadline.
        .epoch_interruption(options.epoch_interruption)
        .max_wasm_stack(limits.stack_bytes)
        // The same bits on every worker: NaN payloads and relaxed SIMD do not depend on
        // the machine.
        .cranelift_nan_canonicalization(true)
        .relaxed_simd_deterministic(true)
        // No threads (not compiled in), shared memory or 64-bit memories: one instance,
        // one thread, one 32-bit memory behind guard pages.
        .shared_memory(false)
        .wasm_memory64(false)
        .wasm_component_model(false)
        // Instantiation maps the module's initial memory image copy-on-write instead of
        // copying data segments.
        .memory_init_cow(true)
        .cranelift_opt_level(OptLevel::Speed);
    config
}

/// One pool slot per instance that may exist at once.
fn pool_config(limits: &WasmLimits) -> PoolingAllocationConfig {
    let mut pool = PoolingAllocationConfig::new();
    pool.total_core_instances(limits.instances)
        .total_memories(limits.instances)
        .total_tables(limits.instances)
        .total_component_instances(0)
        .max_memories_per_module(1)
        .max_tables_per_module(1)
        .max_memory_size(limits.memory_bytes)
        .table_elements(TABLE_ELEMENTS);
    if PoolingAllocationConfig::is_pagemap_scan_available() {
        pool.linear_memory_keep_resident(KEEP_RESIDENT).table_keep_resident(KEEP_RESIDENT).pagemap_scan(Enabled::Yes);
    }
    // A freed slot's pages that the guest wrote, up to KEEP_RESIDENT, are found with the
    // PAGEMAP_SCAN ioctl (Linux 6.7+) and rewritten in place; the rest are returned with
    // `madvise`. Without the ioctl, memory kept resident would be rewritten whole on
    // every reset, so there every page is returned with `madvise` (wasmtime's default).
    // A Rust guest writes a few dozen pages (its stack, data and heap): resetting them in
    // place instead of unmapping them and faulting them in again took a no-op call from
    // about 30 µs to 9 µs here. The cost: up to KEEP_RESIDENT of resident memory per
    // used slot.
    pool
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until dropped.
pub(super) struct EpochTicker {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    /// Starts the ticker thread.
    pub(super) fn start(engine: &Engine) -> Result<Self, WasmError> {
        let (stop, stopped) = mpsc::channel::<()>();
        // A weak reference: the ticker never keeps an engine alive on its own.
        let engine = engine.weak();
        let thread = std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(EPOCH_TICK) {
                    let Some(engine) = engine.upgrade() else { return };
                    engine.increment_epoch();
                }
            })
            .map_err(|err| WasmError::Engine { reason: format!("cannot start the epoch ticker thread: {err}") })?;
        Ok(EpochTicker { stop: Some(stop), thread: Some(thread) })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        // Dropping the sender wakes the thread, which then returns.
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::warn!("wasm: the epoch ticker thread panicked");
            }
        }
    }
}
