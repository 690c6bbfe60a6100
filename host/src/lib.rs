//! Stockade: a QUIC scheduler, workers and a client for joblib and WebAssembly tasks.
//!
//! Map of the crate:
//! - [`proto`]: the wire protocol (preamble, rkyv messages, frames). The one place that
//!   says what crosses the network.
//! - [`net`]: quinn endpoints, TLS, the scheduler file, dialing and the handshake.
//! - [`scheduler`]: the sans-IO scheduler core (`state`) and its async driver.
//! - [`worker`]: the sans-IO worker core, its driver and the executors.
//! - [`client`]: the Rust client API (wrapped by the Python package).
//! - [`tenancy`]: tokens and tenants.
//! - [`sandbox`], [`store`]: executors in sandboxes and pinned data (later issues).
//! - [`cli`]: the `stockade` command.

pub mod cli;
pub mod client;
pub mod net;
pub mod proto;
pub mod sandbox;
pub mod scheduler;
pub mod store;
pub mod tenancy;
pub mod worker;
