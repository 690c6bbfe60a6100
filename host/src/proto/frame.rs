//! Frames: `u32` little-endian length, then one rkyv archive.
//!
//! [`FrameReader`] checks the length against its cap before allocating and validates
//! every archive before decoding it. [`FrameWriter`] buffers frames so that a burst of
//! messages leaves in one write.

use rkyv::{
    api::high::{HighDeserializer, HighSerializer, HighValidator},
    bytecheck::CheckBytes,
    rancor,
    ser::allocator::ArenaHandle,
    util::AlignedVec,
    Archive, Deserialize, Serialize,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Errors reading or writing frames.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The transport failed; the connection is unusable. Retrying on a new connection may help.
    #[error("transport error: {0}")]
    Io(#[from] std::io::Error),
    /// The peer announced a frame longer than allowed. The peer is misbehaving; no retry.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame ({got} of {expected} bytes)")]
    Truncated {
        /// Bytes received.
        got: usize,
        /// Bytes announced.
        expected: usize,
    },
    /// The bytes are not a valid archive of the expected message.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// A message could not be encoded (a bug, not a peer's fault).
    #[error("could not encode message: {0}")]
    Encode(String),
}

impl FrameError {
    /// The close code a peer gets when this error comes from its bytes.
    pub fn close_code(&self) -> super::CloseCode {
        match self {
            Self::TooLarge { .. } => super::CloseCode::FrameTooLarge,
            Self::Malformed(_) | Self::Truncated { .. } => super::CloseCode::MalformedFrame,
            Self::Io(_) | Self::Encode(_) => super::CloseCode::ProtocolError,
        }
    }
}

/// Archives a message.
pub fn encode<T>(msg: &T) -> Result<AlignedVec, FrameError>
where
    T: for<'a> Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>,
{
    rkyv::to_bytes::<rancor::Error>(msg).map_err(|e| FrameError::Encode(e.to_string()))
}

/// Validates an archive and decodes it. `bytes` should be 16-byte aligned (as
/// [`FrameReader`] produces them); unaligned input is copied once to align it.
pub fn decode<T>(bytes: &[u8]) -> Result<T, FrameError>
where
    T: Archive,
    T::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>> + Deserialize<T, HighDeserializer<rancor::Error>>,
{
    let aligned;
    let bytes = if (bytes.as_ptr() as usize).is_multiple_of(16) {
        bytes
    } else {
        let mut copy = AlignedVec::<16>::with_capacity(bytes.len());
        copy.extend_from_slice(bytes);
        aligned = copy;
        aligned.as_slice()
    };
    rkyv::from_bytes::<T, rancor::Error>(bytes).map_err(|e| FrameError::Malformed(e.to_string()))
}

/// Reads frames from a stream.
pub struct FrameReader<R> {
    inner: R,
    max_frame: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Wraps a stream; frames longer than `max_frame` are refused.
    pub fn new(inner: R, max_frame: usize) -> Self {
        Self { inner, max_frame }
    }

    /// Changes the cap (after the handshake, a peer may send larger frames).
    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.max_frame = max_frame;
    }

    /// The underlying stream.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Reads the next frame's bytes; `Ok(None)` on a clean end of stream between frames.
    pub async fn next_bytes(&mut self) -> Result<Option<AlignedVec>, FrameError> {
        let mut header = [0u8; 4];
        let mut got = 0;
        while got < header.len() {
            let n = self.inner.read(&mut header[got..]).await?;
            if n == 0 {
                if got == 0 {
                    return Ok(None);
                }
                return Err(FrameError::Truncated { got, expected: header.len() });
            }
            got += n;
        }
        let len = u32::from_le_bytes(header) as usize;
        if len > self.max_frame {
            return Err(FrameError::TooLarge { len, max: self.max_frame });
        }
        let mut buf = AlignedVec::<16>::with_capacity(len);
        buf.resize(len, 0);
        let mut got = 0;
        while got < len {
            let n = self.inner.read(&mut buf[got..]).await?;
            if n == 0 {
                return Err(FrameError::Truncated { got, expected: len });
            }
            got += n;
        }
        Ok(Some(buf))
    }

    /// Reads and decodes the next message; `Ok(None)` on a clean end of stream.
    pub async fn next<T>(&mut self) -> Result<Option<T>, FrameError>
    where
        T: Archive,
        T::Archived:
            for<'a> CheckBytes<HighValidator<'a, rancor::Error>> + Deserialize<T, HighDeserializer<rancor::Error>>,
    {
        match self.next_bytes().await? {
            Some(bytes) => decode(&bytes).map(Some),
            None => Ok(None),
        }
    }
}

/// Buffers frames and writes them out together.
pub struct FrameWriter<W> {
    inner: W,
    buf: Vec<u8>,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// Wraps a stream.
    pub fn new(inner: W) -> Self {
        Self { inner, buf: Vec::new() }
    }

    /// The underlying stream.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// Appends one message to the buffer.
    pub fn push<T>(&mut self, msg: &T) -> Result<(), FrameError>
    where
        T: for<'a> Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>,
    {
        let bytes = encode(msg)?;
        let len = u32::try_from(bytes.len())
            .map_err(|_| FrameError::Encode(format!("message of {} bytes is too large", bytes.len())))?;
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.buf.extend_from_slice(&bytes);
        Ok(())
    }

    /// Bytes buffered and not yet written.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Writes everything buffered.
    pub async fn flush(&mut self) -> Result<(), FrameError> {
        if !self.buf.is_empty() {
            self.inner.write_all(&self.buf).await?;
            self.buf.clear();
        }
        self.inner.flush().await?;
        Ok(())
    }

    /// Appends one message and writes it out.
    pub async fn send<T>(&mut self, msg: &T) -> Result<(), FrameError>
    where
        T: for<'a> Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>,
    {
        self.push(msg)?;
        self.flush().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{FromClient, ToClient};

    #[tokio::test]
    async fn frames_round_trip_in_order() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let mut w = FrameWriter::new(a);
        w.push(&FromClient::CancelAll).unwrap();
        w.push(&FromClient::QueryInfo(9)).unwrap();
        w.flush().await.unwrap();
        drop(w);
        let mut r = FrameReader::new(b, 1024);
        assert_eq!(r.next::<FromClient>().await.unwrap(), Some(FromClient::CancelAll));
        assert_eq!(r.next::<FromClient>().await.unwrap(), Some(FromClient::QueryInfo(9)));
        assert_eq!(r.next::<FromClient>().await.unwrap(), None);
    }

    #[tokio::test]
    async fn oversized_frame_is_refused_before_allocation() {
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(&u32::MAX.to_le_bytes()).await.unwrap();
        let mut r = FrameReader::new(b, 1024);
        let err = r.next_bytes().await.unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { len, max: 1024 } if len == u32::MAX as usize), "{err}");
    }

    #[tokio::test]
    async fn truncated_stream_is_an_error() {
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(&10u32.to_le_bytes()).await.unwrap();
        a.write_all(b"abc").await.unwrap();
        drop(a);
        let mut r = FrameReader::new(b, 1024);
        let err = r.next_bytes().await.unwrap_err();
        assert!(matches!(err, FrameError::Truncated { got: 3, expected: 10 }), "{err}");
    }

    #[test]
    fn truncated_or_corrupt_archives_fail_validation() {
        let bytes = encode(&ToClient::Info(3, Default::default())).unwrap();
        for cut in [0, 1, bytes.len() / 2, bytes.len() - 1] {
            let err = decode::<ToClient>(&bytes[..cut]).unwrap_err();
            assert!(matches!(err, FrameError::Malformed(_)), "cut at {cut}: {err}");
        }
        let garbage = vec![0xffu8; 64];
        assert!(matches!(decode::<ToClient>(&garbage), Err(FrameError::Malformed(_))));
    }
}
