//! Deadlines enforced on the client stream itself: `downstream_header`, a limit on the time a
//! client takes to send a whole request header, and `request`, a limit on the whole request.
//! After a protocol upgrade the request deadline's timer bounds the tunnel's idle time instead
//! (`StreamControl::start_tunnel`).
//!
//! Pingora bounds each read of a request header, not the header as a whole, so a client that
//! sends one byte just under every read timeout (slowloris) would hold its connection for as
//! long as it likes. So the client stream wrapper ([`super::connections::CountedStream`])
//! carries a [`HeaderDeadline`]. On a new connection it is armed at once. On a kept-alive
//! connection it is armed when the first byte of the next request arrives, because the wait
//! before that byte is `downstream_idle`. The proxy marks the header complete in
//! `early_request_filter`, which disarms the deadline, and marks the request finished in
//! `logging`, which makes the next byte re-arm it.
//!
//! When the header deadline expires, the stream writes a `408 Request Timeout` if it can do so
//! without waiting, and fails the read, which makes Pingora close the connection. A config
//! reload does not change the timeout of connections already open.
//!
//! HTTP/2 connections are not covered: their streams are multiplexed, and h2 frames its own
//! headers.

use crate::metrics::metrics;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
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
    /// Reading a header under the timer in [`HeaderDeadline::sleep`].
    Armed,
    /// The deadline fired; every further read fails.
    Expired,
}

/// State of the current request shared between the client stream and the proxy: the header
/// state, and the request deadline.
#[derive(Debug, Default)]
pub struct StreamControl {
    state: AtomicU8,
    /// The request deadline in nanoseconds after [`clock_origin`], or 0 for none.
    request_deadline: AtomicU64,
    /// Set when the request deadline failed a read.
    request_deadline_fired: AtomicBool,
    /// How long the connection may wait for its next request, in milliseconds, or 0 when no
    /// request has set it yet.
    idle_timeout_millis: AtomicU64,
    /// After a protocol upgrade, how long the tunnel may carry no bytes either way, in
    /// milliseconds, or 0 before an upgrade.
    tunnel_idle_millis: AtomicU64,
    /// Set when the tunnel's idle time failed a read.
    tunnel_idle_fired: AtomicBool,
}

/// The wait for a next request when no request has set one: Pingora's default keep-alive.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Returns `duration` in whole milliseconds, at least 1, because 0 stands for "not set" in the
/// fields that store it.
fn nonzero_millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// Returns the process-wide origin of the deadlines stored as integers.
fn clock_origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// The stream is reading a request header under the deadline.
const READING: u8 = 0;
/// The proxy has parsed the header.
const COMPLETE: u8 = 1;
/// The proxy has finished the request; a next request may follow on this connection.
const FINISHED: u8 = 2;

impl StreamControl {
    /// Called by the proxy once the request header has been parsed.
    pub fn mark_complete(&self) {
        self.state.store(COMPLETE, Ordering::Release);
    }

    /// Called by the proxy when a request ends, so the next request on a kept-alive
    /// connection gets a deadline of its own from its first byte. Clears the request deadline.
    pub fn mark_finished(&self) {
        self.request_deadline.store(0, Ordering::Release);
        self.request_deadline_fired.store(false, Ordering::Release);
        self.state.store(FINISHED, Ordering::Release);
    }

    /// Sets the deadline by which the current request must be complete.
    pub fn set_request_deadline(&self, deadline: std::time::Instant) {
        let nanos = Instant::from_std(deadline)
            .saturating_duration_since(clock_origin())
            .as_nanos()
            .max(1) as u64;
        self.request_deadline.store(nanos, Ordering::Release);
    }

    /// Turns the connection into a tunnel after a protocol upgrade (101). The request deadline
    /// ends, and from now on the connection may carry no bytes in either direction for at most
    /// `idle`: every byte read from or written to the client moves the deadline.
    pub fn start_tunnel(&self, idle: Duration) {
        self.tunnel_idle_millis
            .store(nonzero_millis(idle), Ordering::Release);
        self.extend_tunnel();
    }

    /// Moves the tunnel's idle deadline to its idle time from now. Does nothing before an
    /// upgrade.
    pub fn extend_tunnel(&self) {
        let millis = self.tunnel_idle_millis.load(Ordering::Acquire);
        if millis != 0 {
            let deadline = std::time::Instant::now() + Duration::from_millis(millis);
            self.set_request_deadline(deadline);
        }
    }

    /// True when the tunnel's idle time has failed a client read.
    pub fn tunnel_idle_fired(&self) -> bool {
        self.tunnel_idle_fired.load(Ordering::Acquire)
    }

    /// Sets how long the connection may wait for its next request after this one.
    pub fn set_idle_timeout(&self, timeout: Duration) {
        self.idle_timeout_millis
            .store(nonzero_millis(timeout), Ordering::Release);
    }

    /// Returns how long the connection may wait for its next request.
    pub fn idle_timeout(&self) -> Duration {
        match self.idle_timeout_millis.load(Ordering::Acquire) {
            0 => DEFAULT_IDLE_TIMEOUT,
            millis => Duration::from_millis(millis),
        }
    }

    /// True when the request deadline has failed a client read.
    pub fn request_deadline_fired(&self) -> bool {
        self.request_deadline_fired.load(Ordering::Acquire)
    }
}

/// The `request` deadline on the client stream.
///
/// While a response streams, Pingora keeps reading the client connection to notice a
/// disconnect, so a timer polled from that read fires even when neither side sends anything.
/// When it fires, the read fails; Pingora then aborts the request on both sides, and the proxy
/// responds 504 if no response header was sent, else the client connection is closed.
#[derive(Default)]
pub struct RequestDeadline {
    armed_for: u64,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl std::fmt::Debug for RequestDeadline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestDeadline")
            .field("armed_for", &self.armed_for)
            .finish_non_exhaustive()
    }
}

impl RequestDeadline {
    /// Returns an error once the request deadline in `control` has passed.
    pub fn poll_expired(
        &mut self,
        control: &StreamControl,
        cx: &mut Context<'_>,
    ) -> Option<io::Error> {
        let nanos = control.request_deadline.load(Ordering::Acquire);
        if nanos == 0 {
            // The timer stays allocated for the next request. If it was polled, it still fires
            // at its old deadline, which costs the connection's task one spurious wakeup.
            self.armed_for = 0;
            return None;
        }
        if self.armed_for != nanos {
            let deadline = clock_origin() + Duration::from_nanos(nanos);
            // The timer of an earlier request on this connection is reused.
            match &mut self.sleep {
                Some(sleep) => sleep.as_mut().reset(deadline),
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            self.armed_for = nanos;
        }
        let sleep = self.sleep.as_mut()?;
        if sleep.deadline() > Instant::now() && sleep.as_mut().poll(cx).is_pending() {
            return None;
        }
        control.request_deadline.store(0, Ordering::Release);
        self.armed_for = 0;
        if control.tunnel_idle_millis.load(Ordering::Acquire) != 0 {
            control.tunnel_idle_fired.store(true, Ordering::Release);
            return Some(io::Error::new(
                io::ErrorKind::TimedOut,
                "the upgraded connection carried no bytes within timeouts.upstream_read",
            ));
        }
        control
            .request_deadline_fired
            .store(true, Ordering::Release);
        Some(io::Error::new(
            io::ErrorKind::TimedOut,
            "the request did not complete within timeouts.request",
        ))
    }
}

pub struct HeaderDeadline {
    timeout: Duration,
    phase: Phase,
    /// The timer of the header being read, reset for each request of the connection.
    sleep: Pin<Box<Sleep>>,
    progress: Arc<StreamControl>,
}

impl std::fmt::Debug for HeaderDeadline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderDeadline")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl HeaderDeadline {
    /// Creates a deadline armed now, for the first request of a new connection.
    pub fn armed(timeout: Duration) -> Self {
        HeaderDeadline {
            timeout,
            phase: Phase::Armed,
            sleep: Box::pin(tokio::time::sleep(timeout)),
            progress: Arc::new(StreamControl::default()),
        }
    }

    /// Creates a deadline that never fires, for HTTP/2 connections.
    pub fn off() -> Self {
        HeaderDeadline {
            timeout: Duration::ZERO,
            phase: Phase::Off,
            sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
            progress: Arc::new(StreamControl::default()),
        }
    }

    pub fn progress(&self) -> &Arc<StreamControl> {
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
                    self.sleep.as_mut().reset(Instant::now() + self.timeout);
                    self.phase = Phase::Armed;
                }
                result
            }
            Phase::Armed => {
                let sleep = &mut self.sleep;
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
