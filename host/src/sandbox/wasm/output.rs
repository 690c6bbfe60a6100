//! The guest's stdout and stderr: kept in memory up to a cap, the rest counted and
//! dropped. The guest never fails because it printed too much; the host logs what was
//! kept and quotes stderr in trap messages.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// One captured output stream; clones share the same buffer.
#[derive(Clone)]
pub(super) struct CapturedOutput {
    inner: Arc<Mutex<Captured>>,
}

struct Captured {
    kept: Vec<u8>,
    cap: usize,
    dropped: usize,
}

/// How much the guest may write per readiness check; any positive number works since
/// writes never block.
const WRITE_PERMIT: usize = 64 * 1024;

impl CapturedOutput {
    /// A stream that keeps at most `cap` bytes.
    pub(super) fn new(cap: usize) -> Self {
        CapturedOutput { inner: Arc::new(Mutex::new(Captured { kept: Vec::new(), cap, dropped: 0 })) }
    }

    fn lock(&self) -> MutexGuard<'_, Captured> {
        // Writers only append; a panic while holding the lock leaves a usable buffer.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn append(&self, bytes: &[u8]) {
        let mut captured = self.lock();
        let room = captured.cap.saturating_sub(captured.kept.len());
        let kept = bytes.len().min(room);
        captured.kept.extend_from_slice(&bytes[..kept]);
        captured.dropped += bytes.len() - kept;
    }

    /// What was kept, as text, with a note of how much was dropped; empty if nothing was
    /// written.
    pub(super) fn text(&self) -> String {
        let captured = self.lock();
        let mut text = String::from_utf8_lossy(&captured.kept).into_owned();
        if captured.dropped > 0 {
            text.push_str(&format!("\n[{} more bytes not kept]", captured.dropped));
        }
        text
    }
}

impl IsTerminal for CapturedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CapturedOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for CapturedOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.append(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_PERMIT)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CapturedOutput {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for CapturedOutput {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.append(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_up_to_the_cap_and_counts_the_rest() {
        let out = CapturedOutput::new(5);
        out.append(b"hel");
        out.append(b"lo world");
        assert_eq!(out.text(), "hello\n[6 more bytes not kept]");
        assert_eq!(CapturedOutput::new(5).text(), "");
    }
}
