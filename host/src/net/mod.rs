//! QUIC endpoints with TLS, and the scheduler file that tells clients where and how to
//! connect.
//!
//! - [`tls`]: the scheduler's certificate (generated or loaded) and the client-side
//!   verification (a pinned SHA-256 fingerprint, or a CA file).
//! - [`scheduler_file`]: the JSON file with address, fingerprint and token.
//! - [`endpoint`]: quinn endpoints and the transport settings both sides share.
//! - [`mod@dial`]: the connecting side: resolve the target, verify it, pass the handshake.

pub mod dial;
pub mod endpoint;
pub mod scheduler_file;
pub mod tls;

pub use dial::{dial, Connected, DialError, Target};
pub use endpoint::{client_endpoint, server_endpoint, NetError};
pub use scheduler_file::SchedulerFile;
pub use tls::{Identity, ServerTrust};
