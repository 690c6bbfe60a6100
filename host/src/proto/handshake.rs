//! The preamble and the first exchange of a control stream.
//!
//! The preamble is 16 fixed bytes, independent of rkyv and of the protocol version:
//! `MAGIC` (8 bytes), version (`u16` little-endian), 6 reserved zero bytes. The
//! scheduler reads it before anything else, so a peer of another version or another
//! protocol gets a readable rejection.

use super::{CloseCode, MAGIC, PROTOCOL_VERSION};

/// Errors of the handshake, on either side.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The first bytes are not a Stockade preamble: the peer is not a Stockade process.
    #[error("not a Stockade peer (bad preamble)")]
    BadMagic,
    /// The peer speaks another protocol version. Upgrade one side; no retry helps.
    #[error("protocol version {peer} is not supported (this side speaks {ours}); hint: run the same Stockade version on the client, scheduler and workers")]
    VersionMismatch {
        /// The peer's version.
        peer: u16,
        /// Ours.
        ours: u16,
    },
    /// The token is unknown.
    #[error(
        "the token was not accepted; hint: pass the token from the scheduler file (--scheduler-file or STOCKADE_TOKEN)"
    )]
    Unauthorized,
}

impl HandshakeError {
    /// The close code the peer gets.
    pub fn close_code(&self) -> CloseCode {
        match self {
            Self::BadMagic => CloseCode::ProtocolError,
            Self::VersionMismatch { .. } => CloseCode::VersionMismatch,
            Self::Unauthorized => CloseCode::Unauthorized,
        }
    }
}

/// The 16-byte preamble.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preamble {
    /// Protocol version the sender speaks.
    pub version: u16,
}

impl Preamble {
    /// Length on the wire.
    pub const LEN: usize = 16;

    /// This build's preamble.
    pub fn current() -> Self {
        Self { version: PROTOCOL_VERSION }
    }

    /// Bytes on the wire.
    pub fn to_bytes(self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[..8].copy_from_slice(&MAGIC);
        out[8..10].copy_from_slice(&self.version.to_le_bytes());
        out
    }

    /// Parses a preamble without judging the version.
    pub fn parse(bytes: &[u8; Self::LEN]) -> Result<Self, HandshakeError> {
        if bytes[..8] != MAGIC {
            return Err(HandshakeError::BadMagic);
        }
        Ok(Self { version: u16::from_le_bytes([bytes[8], bytes[9]]) })
    }

    /// Parses a preamble and checks that its version is ours.
    pub fn check(bytes: &[u8; Self::LEN]) -> Result<Self, HandshakeError> {
        let preamble = Self::parse(bytes)?;
        if preamble.version != PROTOCOL_VERSION {
            return Err(HandshakeError::VersionMismatch { peer: preamble.version, ours: PROTOCOL_VERSION });
        }
        Ok(preamble)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preamble_round_trips_and_rejects() {
        let bytes = Preamble::current().to_bytes();
        assert_eq!(&bytes[..8], b"STOCKADE");
        assert_eq!(Preamble::check(&bytes).unwrap(), Preamble::current());

        let mut other = bytes;
        other[8] = other[8].wrapping_add(1);
        let err = Preamble::check(&other).unwrap_err();
        assert!(matches!(err, HandshakeError::VersionMismatch { .. }));
        assert!(err.to_string().contains("hint:"));

        let junk = [7u8; Preamble::LEN];
        assert!(matches!(Preamble::check(&junk), Err(HandshakeError::BadMagic)));
    }
}
