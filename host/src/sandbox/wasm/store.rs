//! The state of one call (the data of its `Store`) and the host functions that the guest
//! imports: its input and output, pinned archives, its memory limit and WASI with nothing
//! granted.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use stockade_guest::abi;
use wasmtime::{Caller, Extern, Linker, ResourceLimiter};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::WasiCtxBuilder;

use super::output::CapturedOutput;
use super::{Pins, WasmLimits};

/// Table elements an instance may have; Rust guests use a few hundred to a few thousand.
pub(super) const TABLE_ELEMENTS: usize = 100_000;

/// At most this much of a panic message is kept.
const PANIC_MESSAGE_BYTES: usize = 64 * 1024;

/// Everything one call owns; dropped with its `Store` when the call ends.
pub(super) struct CallState {
    /// WASI preview 1: no preopened directories, no environment, no arguments, no
    /// sockets, stdin closed, stdout and stderr captured.
    pub(super) wasi: WasiP1Ctx,
    pub(super) limiter: MemoryLimiter,
    input: Vec<u8>,
    pub(super) output: Option<Vec<u8>>,
    pub(super) error: Option<String>,
    pub(super) panic: Option<String>,
    output_limit: usize,
    pub(super) output_limit_hit: bool,
    pins: Arc<dyn Pins>,
    /// When the call's wall time runs out; host functions that wait respect it.
    deadline: Instant,
    /// A host function (a sleep) ran into the deadline.
    pub(super) deadline_hit: bool,
    pub(super) stdout: CapturedOutput,
    pub(super) stderr: CapturedOutput,
}

impl CallState {
    /// The state of a call with `input` and access to `pins`, starting now.
    pub(super) fn new(limits: &WasmLimits, input: Vec<u8>, pins: Arc<dyn Pins>) -> Self {
        let stdout = CapturedOutput::new(limits.log_bytes);
        let stderr = CapturedOutput::new(limits.log_bytes);
        // The builder's defaults already grant nothing; sockets are refused explicitly so
        // that a later default cannot widen them.
        let wasi = WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build_p1();
        CallState {
            wasi,
            limiter: MemoryLimiter { limit: limits.memory_bytes, exceeded: false },
            input,
            output: None,
            error: None,
            panic: None,
            output_limit: limits.output_bytes,
            output_limit_hit: false,
            pins,
            deadline: Instant::now() + limits.wall_time,
            deadline_hit: false,
            stdout,
            stderr,
        }
    }
}

/// Refuses linear memory beyond the limit by trapping, so that the call ends with a
/// precise [`WasmError::MemoryLimit`](super::WasmError::MemoryLimit) rather than with
/// whatever the guest's allocator does when `memory.grow` fails.
pub(super) struct MemoryLimiter {
    limit: usize,
    /// The guest asked for more than the limit.
    pub(super) exceeded: bool,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.exceeded = true;
            wasmtime::bail!(
                "memory limit of {} bytes exceeded (growing from {current} to {desired} bytes)",
                self.limit
            );
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= TABLE_ELEMENTS)
    }
}

/// Adds WASI preview 1 and the Stockade imports ([`abi`]) to `linker`.
pub(super) fn add_imports(linker: &mut Linker<CallState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p1::add_to_linker_sync(linker, |state: &mut CallState| &mut state.wasi)?;
    // WASI's own poll_oneoff would sleep as long as the guest asks, out of reach of the
    // epoch deadline; this one stops at the call's deadline.
    linker.allow_shadowing(true);
    linker.func_wrap("wasi_snapshot_preview1", "poll_oneoff", poll_oneoff)?;
    linker.allow_shadowing(false);

    let module = abi::IMPORT_MODULE;
    linker.func_wrap(module, abi::INPUT_LEN, |caller: Caller<'_, CallState>| -> i32 {
        // `call` refuses inputs that do not fit a 32-bit memory.
        caller.data().input.len() as u32 as i32
    })?;
    linker.func_wrap(module, abi::INPUT_READ, |mut caller: Caller<'_, CallState>, dst: i32, len: i32| {
        let (memory, state) = guest_memory(&mut caller)?;
        if to_usize(len) != state.input.len() {
            wasmtime::bail!("input_read: asked for {} bytes, the input has {}", to_usize(len), state.input.len());
        }
        let range = guest_range(memory.len(), dst, to_usize(len))?;
        memory[range].copy_from_slice(&state.input);
        Ok(())
    })?;
    linker.func_wrap(module, abi::OUTPUT_WRITE, |mut caller: Caller<'_, CallState>, src: i32, len: i32| {
        let (memory, state) = guest_memory(&mut caller)?;
        if to_usize(len) > state.output_limit {
            state.output_limit_hit = true;
            wasmtime::bail!("output of {} bytes exceeds the limit of {} bytes", to_usize(len), state.output_limit);
        }
        state.output = Some(memory[guest_range(memory.len(), src, to_usize(len))?].to_vec());
        Ok(())
    })?;
    linker.func_wrap(module, abi::ERROR_WRITE, |mut caller: Caller<'_, CallState>, src: i32, len: i32| {
        let (memory, state) = guest_memory(&mut caller)?;
        let limit = state.output_limit;
        state.error = Some(guest_text(memory, src, len, limit)?);
        Ok(())
    })?;
    linker.func_wrap(module, abi::PANIC_WRITE, |mut caller: Caller<'_, CallState>, src: i32, len: i32| {
        let (memory, state) = guest_memory(&mut caller)?;
        state.panic = Some(guest_text(memory, src, len, PANIC_MESSAGE_BYTES)?);
        Ok(())
    })?;
    linker.func_wrap(module, abi::PINNED_LEN, |mut caller: Caller<'_, CallState>, key: i32| {
        let (memory, state) = guest_memory(&mut caller)?;
        let key = guest_key(memory, key)?;
        Ok(state.pins.get(&key).map_or(abi::PINNED_ABSENT, |bytes| bytes.len() as i64))
    })?;
    linker.func_wrap(module, abi::PINNED_READ, |mut caller: Caller<'_, CallState>, key: i32, dst: i32, len: i32| {
        let (memory, state) = guest_memory(&mut caller)?;
        let key = guest_key(memory, key)?;
        let Some(bytes) = state.pins.get(&key) else {
            return Ok(abi::PINNED_ABSENT as i32);
        };
        if to_usize(len) != bytes.len() {
            wasmtime::bail!("pinned_read: asked for {} bytes, the archive has {}", to_usize(len), bytes.len());
        }
        let range = guest_range(memory.len(), dst, to_usize(len))?;
        memory[range].copy_from_slice(bytes);
        Ok(0)
    })?;
    Ok(())
}

/// The guest's memory and the call's state, borrowed together.
fn guest_memory<'a>(caller: &'a mut Caller<'_, CallState>) -> wasmtime::Result<(&'a mut [u8], &'a mut CallState)> {
    let Some(Extern::Memory(memory)) = caller.get_export(abi::MEMORY_EXPORT) else {
        wasmtime::bail!("the guest exports no memory named {:?}", abi::MEMORY_EXPORT);
    };
    Ok(memory.data_and_store_mut(caller))
}

/// An ABI length or pointer (an `i32` read as unsigned).
fn to_usize(value: i32) -> usize {
    value as u32 as usize
}

/// The byte range `[ptr, ptr + len)` of a memory of `size` bytes, or a trap.
fn guest_range(size: usize, ptr: i32, len: usize) -> wasmtime::Result<Range<usize>> {
    let start = to_usize(ptr);
    match start.checked_add(len) {
        Some(end) if end <= size => Ok(start..end),
        _ => wasmtime::bail!("the guest passed {len} bytes at {start}, outside its memory of {size} bytes"),
    }
}

/// UTF-8 text from the guest (invalid sequences replaced), at most `limit` bytes kept.
fn guest_text(memory: &[u8], ptr: i32, len: i32, limit: usize) -> wasmtime::Result<String> {
    let bytes = &memory[guest_range(memory.len(), ptr, to_usize(len))?];
    Ok(String::from_utf8_lossy(&bytes[..bytes.len().min(limit)]).into_owned())
}

/// The 32-byte key at `ptr`.
fn guest_key(memory: &[u8], ptr: i32) -> wasmtime::Result<[u8; abi::KEY_BYTES]> {
    let range = guest_range(memory.len(), ptr, abi::KEY_BYTES)?;
    let mut key = [0u8; abi::KEY_BYTES];
    key.copy_from_slice(&memory[range]);
    Ok(key)
}

/// WASI preview 1 layouts and codes used by [`poll_oneoff`] (from the witx definitions).
mod wasi {
    pub(super) const ERRNO_SUCCESS: i32 = 0;
    pub(super) const ERRNO_INVAL: i32 = 28;
    pub(super) const ERRNO_NOTSUP: i32 = 58;
    pub(super) const EVENTTYPE_CLOCK: u8 = 0;
    pub(super) const SUBCLOCKFLAGS_ABSTIME: u16 = 1;
    pub(super) const SUBSCRIPTION_BYTES: usize = 48;
    pub(super) const EVENT_BYTES: usize = 32;
}

/// `poll_oneoff` for relative clock subscriptions only (what `std::thread::sleep`
/// uses): sleeps until the earliest one, but never past the call's deadline, where it
/// traps as a timeout. Other subscriptions get `ENOTSUP`: a task has no files or sockets
/// to wait for.
fn poll_oneoff(
    mut caller: Caller<'_, CallState>,
    subs: i32,
    events: i32,
    count: i32,
    nevents: i32,
) -> wasmtime::Result<i32> {
    let (memory, state) = guest_memory(&mut caller)?;
    if count <= 0 {
        return Ok(wasi::ERRNO_INVAL);
    }
    let subs = guest_range(memory.len(), subs, to_usize(count) * wasi::SUBSCRIPTION_BYTES)?;
    let mut earliest: Option<(u64, u64)> = None;
    for sub in memory[subs].chunks_exact(wasi::SUBSCRIPTION_BYTES) {
        let le_u64 = |at: usize| u64::from_le_bytes(std::array::from_fn(|i| sub[at + i]));
        let flags = u16::from_le_bytes([sub[40], sub[41]]);
        if sub[8] != wasi::EVENTTYPE_CLOCK || flags & wasi::SUBCLOCKFLAGS_ABSTIME != 0 {
            return Ok(wasi::ERRNO_NOTSUP);
        }
        let (userdata, timeout) = (le_u64(0), le_u64(24));
        if earliest.is_none_or(|(_, soonest)| timeout < soonest) {
            earliest = Some((userdata, timeout));
        }
    }
    let Some((userdata, timeout)) = earliest else {
        return Ok(wasi::ERRNO_INVAL);
    };
    let wanted = Duration::from_nanos(timeout);
    let left = state.deadline.saturating_duration_since(Instant::now());
    if wanted > left {
        std::thread::sleep(left);
        state.deadline_hit = true;
        wasmtime::bail!("the guest slept past its wall-time limit");
    }
    std::thread::sleep(wanted);
    let event = guest_range(memory.len(), events, wasi::EVENT_BYTES)?;
    let event = &mut memory[event];
    event.fill(0);
    event[..8].copy_from_slice(&userdata.to_le_bytes());
    event[10] = wasi::EVENTTYPE_CLOCK;
    let nevents = guest_range(memory.len(), nevents, 4)?;
    memory[nevents].copy_from_slice(&1u32.to_le_bytes());
    Ok(wasi::ERRNO_SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_ranges_stay_inside_memory() {
        assert_eq!(guest_range(100, 10, 20).unwrap(), 10..30);
        assert!(guest_range(100, 0, 101).is_err());
        assert_eq!(guest_range(100, 100, 0).unwrap(), 100..100);
        assert!(guest_range(100, 90, 20).is_err());
        assert!(guest_range(100, -1, 2).is_err());
        assert!(guest_range(usize::MAX, -1, usize::MAX).is_err());
    }

    #[test]
    fn memory_limiter_traps_past_the_limit() {
        let mut limiter = MemoryLimiter { limit: 1 << 20, exceeded: false };
        assert!(limiter.memory_growing(0, 1 << 20, None).unwrap());
        assert!(!limiter.exceeded);
        assert!(limiter.memory_growing(1 << 20, 2 << 20, None).is_err());
        assert!(limiter.exceeded);
    }
}
