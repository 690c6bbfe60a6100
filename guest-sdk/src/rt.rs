//! The guest side of the host imports (wasm32 only): safe wrappers around [`abi::sys`].

use std::sync::Once;

use crate::abi::{self, sys, Key};

/// The length of a guest buffer as the ABI's `i32`. Buffers never exceed the 4 GiB of a
/// 32-bit memory, whose lengths the host reads back as unsigned.
fn abi_len(len: usize) -> i32 {
    len as u32 as i32
}

/// Reads the task's input.
pub(crate) fn read_input() -> Vec<u8> {
    // SAFETY: the import takes no arguments.
    let len = unsafe { sys::input_len() } as u32 as usize;
    let mut input = vec![0u8; len];
    // SAFETY: `input` is valid for `len` writable bytes, the length the host expects.
    unsafe { sys::input_read(input.as_mut_ptr(), abi_len(len)) };
    input
}

/// Sets the task's output.
pub(crate) fn write_output(bytes: &[u8]) {
    // SAFETY: the host reads `bytes.len()` bytes from a live slice.
    unsafe { sys::output_write(bytes.as_ptr(), abi_len(bytes.len())) }
}

/// Sets the task's error message.
pub(crate) fn write_error(message: &str) {
    // SAFETY: as in `write_output`.
    unsafe { sys::error_write(message.as_ptr(), abi_len(message.len())) }
}

/// Reports panics to the host before the guest aborts (wasm32 panics abort, which traps),
/// so that the trap carries the panic message.
pub(crate) fn install_panic_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let message = info.to_string();
            // SAFETY: as in `write_output`.
            unsafe { sys::panic_write(message.as_ptr(), abi_len(message.len())) }
        }))
    });
}

/// The length of the pinned archive `key`, if it is pinned.
pub(crate) fn pinned_len(key: &Key) -> Option<usize> {
    // SAFETY: the host reads 32 bytes at the key.
    let len = unsafe { sys::pinned_len(key.0.as_ptr()) };
    (len != abi::PINNED_ABSENT).then_some(len as usize)
}

/// Copies the pinned archive `key` into `dst`, whose length is the archive's; false if it
/// is not pinned.
pub(crate) fn pinned_read(key: &Key, dst: &mut [u8]) -> bool {
    // SAFETY: the host reads the key's 32 bytes and writes `dst.len()` bytes into `dst`.
    let status = unsafe { sys::pinned_read(key.0.as_ptr(), dst.as_mut_ptr(), abi_len(dst.len())) };
    i64::from(status) != abi::PINNED_ABSENT
}
