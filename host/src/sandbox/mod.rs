//! Executors that run tenant code in sandboxes.
//!
//! - [`python`]: warm, pooled CPython children per tenant.
//! - WebAssembly (wasmtime) comes with its issue.

pub mod python;
