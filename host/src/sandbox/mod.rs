//! Executors that run tenant code in sandboxes.
//!
//! - [`python`]: warm, pooled CPython children per tenant.
//! - [`wasm`]: WebAssembly tasks in wasmtime, one engine per worker.

pub mod python;
pub mod wasm;
