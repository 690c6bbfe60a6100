//! Sandboxed executors (WebAssembly and pooled CPython); filled in by their issues.
