//! Object streams: one pinned object per unidirectional QUIC stream, an
//! [`ObjectHeader`] frame and then exactly `size` bytes (see [`crate::proto`]).

use crate::proto::frame::{decode, encode};
use crate::proto::{FrameError, ObjectHeader, HANDSHAKE_MAX_FRAME};

use super::{ObjectWriter, Pinned, StoreError};

/// Errors moving an object.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The connection or stream failed.
    #[error("object stream: {0}")]
    Transport(String),
    /// The header frame is invalid.
    #[error("object stream header: {0}")]
    Frame(#[from] FrameError),
    /// The bytes could not be stored.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn transport(e: impl std::fmt::Display) -> StreamError {
    StreamError::Transport(e.to_string())
}

/// Sends an object on a new stream; returns the bytes sent.
pub async fn send(conn: &quinn::Connection, header: &ObjectHeader, bytes: &[u8]) -> Result<u64, StreamError> {
    let mut stream = conn.open_uni().await.map_err(transport)?;
    let frame = encode(header)?;
    let len = u32::try_from(frame.len()).map_err(transport)?;
    stream.write_all(&len.to_le_bytes()).await.map_err(transport)?;
    stream.write_all(&frame).await.map_err(transport)?;
    stream.write_all(bytes).await.map_err(transport)?;
    stream.finish().map_err(transport)?;
    Ok(bytes.len() as u64)
}

/// Reads the header of an incoming object stream.
pub async fn receive_header(stream: &mut quinn::RecvStream) -> Result<ObjectHeader, StreamError> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await.map_err(transport)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > HANDSHAKE_MAX_FRAME {
        return Err(FrameError::TooLarge { len, max: HANDSHAKE_MAX_FRAME }.into());
    }
    let mut frame = vec![0u8; len];
    stream.read_exact(&mut frame).await.map_err(transport)?;
    Ok(decode(&frame)?)
}

/// Reads the rest of an object stream into `writer` and pins the result.
pub async fn receive_body(
    stream: &mut quinn::RecvStream,
    mut writer: ObjectWriter,
    header: &ObjectHeader,
) -> Result<Pinned, StreamError> {
    use std::io::Write;
    while let Some(chunk) = stream.read_chunk(1 << 20, true).await.map_err(transport)? {
        writer.write_all(&chunk.bytes).map_err(transport)?;
    }
    if writer.written() != header.size {
        return Err(transport(format!("the stream ended after {} of {} bytes", writer.written(), header.size)));
    }
    Ok(writer.finish(header.kind)?)
}
