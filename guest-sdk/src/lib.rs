//! Stockade guest SDK (WebAssembly tasks); filled in by the WebAssembly issue.
