//! The wire protocol: the one place that says what crosses the network.
//!
//! A connection carries one bidirectional QUIC stream, the *control stream*. It opens
//! with a fixed [`Preamble`] (magic and protocol version, readable by every version of
//! Stockade, so a mismatch gets a readable rejection instead of a decoding error), then
//! carries length-prefixed frames, each one rkyv archive of a message:
//!
//! ```text
//! client/worker → scheduler:  Preamble, Hello, then FromClient / FromWorker frames
//! scheduler → client/worker:  Welcome, then ToClient / ToWorker frames
//! ```
//!
//! Pinned objects travel on their own unidirectional streams (*object streams*), so a
//! large upload never delays the control stream: an [`ObjectHeader`] frame, then the
//! object's bytes.
//!
//! A frame is `u32` little-endian length, then that many bytes. The length is checked
//! against a cap before anything is allocated, and every archive is validated with
//! bytecheck before it is read. Rejections close the QUIC connection with a
//! [`CloseCode`] and a human-readable reason, so they too are version independent.
//!
//! - [`message`]: the message types.
//! - [`frame`]: encoding, decoding and async reading/writing of frames.
//! - [`handshake`]: the preamble and the first exchange.

pub mod frame;
pub mod handshake;
pub mod message;

pub use frame::{FrameError, FrameReader, FrameWriter};
pub use handshake::{HandshakeError, Preamble};
pub use message::*;

/// Version of the wire protocol. Bump it whenever a message's layout changes (the
/// golden-bytes tests in [`message`] fail when that happens without a bump).
pub const PROTOCOL_VERSION: u16 = 3;

/// The first bytes of every control stream.
pub const MAGIC: [u8; 8] = *b"STOCKADE";

/// ALPN identifier negotiated in the TLS handshake.
pub const ALPN: &[u8] = b"stockade";

/// Largest frame accepted on a control stream by default (task payloads and results
/// travel inside frames, so this bounds one task's argument or result).
pub const DEFAULT_MAX_FRAME: usize = 256 * 1024 * 1024;

/// Largest frame accepted during the handshake, before the peer is authenticated.
pub const HANDSHAKE_MAX_FRAME: usize = 64 * 1024;

/// Application error codes used when a side closes a QUIC connection.
///
/// The reason string that goes with each code is meant for humans and ends with a hint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum CloseCode {
    /// Orderly close: the peer is done.
    Normal = 0,
    /// The peer sent bytes that are not the Stockade protocol (bad magic, bad frame).
    ProtocolError = 1,
    /// The peer speaks another protocol version.
    VersionMismatch = 2,
    /// The peer's token is missing or unknown.
    Unauthorized = 3,
    /// A frame was longer than the cap.
    FrameTooLarge = 4,
    /// A frame failed validation (truncated or corrupt archive).
    MalformedFrame = 5,
    /// A worker missed its heartbeats and was declared lost.
    HeartbeatMissed = 6,
    /// The scheduler is shutting down.
    ShuttingDown = 7,
    /// The handshake did not complete in time.
    HandshakeTimeout = 8,
}

impl CloseCode {
    /// The code as sent on the wire.
    pub fn code(self) -> quinn::VarInt {
        quinn::VarInt::from_u32(self as u32)
    }

    /// Decodes a wire code; unknown codes map to `None`.
    pub fn from_code(code: quinn::VarInt) -> Option<Self> {
        Some(match code.into_inner() {
            0 => Self::Normal,
            1 => Self::ProtocolError,
            2 => Self::VersionMismatch,
            3 => Self::Unauthorized,
            4 => Self::FrameTooLarge,
            5 => Self::MalformedFrame,
            6 => Self::HeartbeatMissed,
            7 => Self::ShuttingDown,
            8 => Self::HandshakeTimeout,
            _ => return None,
        })
    }
}
