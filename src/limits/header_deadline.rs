//! The `downstream_header` deadline: a limit on the time a client takes to send a whole
//! request header, enforced on the client stream itself.
//!
//! Pingora bounds each read of a request header, not the header as a whole, so a client that
//! sends one byte just under every read timeout (slowloris) would hold its connection for as
//! long as it likes. The client stream wrapper ([`super::connections::CountedStream`]) carries
//! a [`HeaderDeadline`]: on a new connection it is armed at once; on a kept-alive connection it
//! is armed when the first byte of the next request arrives (the wait before that byte is
//! `downstream_idle`). The proxy marks the header complete in `early_request_filter`, which
//! disarms it, and marks the request finished in `logging`, which makes the next byte re-arm
//! it. A config reload does not change the timeout of connections already open. When it
//! expires first, the stream writes a `408 Request Timeout` if it can do so without waiting,
//! and fails the read, which makes Pingora close the connection.
//!
//! HTTP/2 connections are not covered: their streams are multiplexed, and h2 frames its own
//! headers.

use crate::metrics::metrics;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

const TIMEOUT_RESPONSE: &[u8] = b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 20\r\nConnection: close\r\n\r\n408 Request Timeout\n";

enum Phase {
    /// No deadline: the header is complete, or the connection speaks HTTP/2.
    Off,
    /// A kept-alive connection waiting for the first byte of its next request.
    AwaitingFirstByte,
    Armed(Pin<Box<Sleep>>),
    /// The deadline fired; every further read fails.
    Expired,
}

/// The header state of the current request, shared between the stream and the proxy.
#[derive(Debug, Default)]
pub struct HeaderProgress {
    state: AtomicU8,
}

/// The stream is reading a request header under the deadline.
const READING: u8 = 0;
/// The proxy has parsed the header.
const COMPLETE: u8 = 1;
/// The proxy has finished the request; a next request may follow on this connection.
const FINISHED: u8 = 2;

impl HeaderProgress {
    /// Called by the proxy once the request header has been parsed.
    pub fn mark_complete(&self) {
        self.state.store(COMPLETE, Ordering::Release);
    }

    /// Called by the proxy when a request ends, so the next request on a kept-alive
    /// connection gets a deadline of its own from its first byte.
    pub fn mark_finished(&self) {
        self.state.store(FINISHED, Ordering::Release);
    }
}

pub struct HeaderDeadline {
    timeout: Duration,
    phase: Phase,
    progress: Arc<HeaderProgress>,
}

impl std::fmt::Debug for HeaderDeadline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderDeadline")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl HeaderDeadline {
    /// A deadline armed now, for the first request of a new connection.
    pub fn armed(timeout: Duration) -> Self {
        HeaderDeadline {
            timeout,
            phase: Phase::Armed(Box::pin(tokio::time::sleep(timeout))),
            progress: Arc::new(HeaderProgress::default()),
        }
    }

    /// A deadline that never fires, for HTTP/2 connections.
    pub fn off() -> Self {
        HeaderDeadline {
            timeout: Duration::ZERO,
            phase: Phase::Off,
            progress: Arc::new(HeaderProgress::default()),
        }
    }

    pub fn progress(&self) -> &Arc<HeaderProgress> {
        &self.progress
    }

    /// Reads from `inner` under the deadline. `inner` is the client stream.
    pub fn poll_read<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        inner: &mut S,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.progress.state.load(Ordering::Acquire) {
            COMPLETE if !self.timeout.is_zero() => self.phase = Phase::Off,
            FINISHED if !self.timeout.is_zero() => {
                self.progress.state.store(READING, Ordering::Release);
                self.phase = Phase::AwaitingFirstByte;
            }
            _ => {}
        }
        match &mut self.phase {
            Phase::Off => Pin::new(inner).poll_read(cx, buf),
            Phase::Expired => Poll::Ready(Err(expired_error())),
            Phase::AwaitingFirstByte => {
                let before = buf.filled().len();
                let result = Pin::new(inner).poll_read(cx, buf);
                if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
                    self.phase = Phase::Armed(Box::pin(tokio::time::sleep(self.timeout)));
                }
                result
            }
            Phase::Armed(sleep) => {
                let expired =
                    sleep.deadline() <= Instant::now() || sleep.as_mut().poll(cx).is_ready();
                if !expired {
                    return Pin::new(inner).poll_read(cx, buf);
                }
                self.phase = Phase::Expired;
                metrics()
                    .timeouts_total
                    .with_label_values(&["", "downstream_header"])
                    .inc();
                // Best effort: a 408 goes out only if the socket takes it at once.
                if let Poll::Ready(Ok(_)) = Pin::new(&mut *inner).poll_write(cx, TIMEOUT_RESPONSE) {
                    let _ = Pin::new(&mut *inner).poll_flush(cx);
                }
                Poll::Ready(Err(expired_error()))
            }
        }
    }
}

fn expired_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "the request header did not arrive within timeouts.downstream_header",
    )
}
