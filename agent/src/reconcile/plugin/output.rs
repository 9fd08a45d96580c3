//! A plugin's stdout and stderr: kept in memory up to a cap, cleared at
//! the start of every call, and never full.
//!
//! Only the output of a failed call is shown (a panic message, say). A
//! fixed-size pipe that is never drained once made a policy printing about
//! 2 KB per call trap on every third call; here writes past the cap are
//! dropped, not refused.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// Most output kept per call.
pub const KEPT_BYTES: usize = 4096;
/// What a single write may offer (the guest asks before writing).
const WRITE_PERMIT: usize = 64 * 1024;

#[derive(Clone, Default)]
pub struct PluginOutput {
    kept: Arc<Mutex<Vec<u8>>>,
}

impl PluginOutput {
    /// Forgets what earlier calls wrote.
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// What the current call wrote, up to [`KEPT_BYTES`].
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.lock()).trim().to_owned()
    }

    fn keep(&self, bytes: &[u8]) {
        let mut kept = self.lock();
        let room = KEPT_BYTES.saturating_sub(kept.len());
        kept.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl IsTerminal for PluginOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for PluginOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for PluginOutput {
    fn write(&mut self, bytes: bytes::Bytes) -> Result<(), StreamError> {
        self.keep(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }
    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(WRITE_PERMIT)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for PluginOutput {
    async fn ready(&mut self) {}
}

impl AsyncWrite for PluginOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.keep(buf);
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
    fn keeps_up_to_the_cap_never_refuses_and_clears() {
        let mut out = PluginOutput::default();
        for _ in 0..10 {
            OutputStream::write(&mut out, bytes::Bytes::from(vec![b'x'; 2000])).unwrap();
            assert_eq!(out.check_write().unwrap(), WRITE_PERMIT);
        }
        assert_eq!(out.text().len(), KEPT_BYTES);
        out.clear();
        OutputStream::write(&mut out, bytes::Bytes::from_static(b"panicked at x\n")).unwrap();
        assert_eq!(out.text(), "panicked at x");
    }
}
