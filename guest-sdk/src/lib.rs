//! Stockade guest SDK (WebAssembly tasks); filled in by the WebAssembly issue.
//!
//! [`archive`] defines the layout of pinned objects, shared by the host, the Python
//! client and guests.

pub mod archive;
