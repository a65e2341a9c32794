//! The process-wide cap on downstream connections (`limits.max_connections`) and the
//! `gatehouse_downstream_connections{listener}` gauge.
//!
//! Pingora has no hook for a connection's end, so the proxy app is wrapped: a new connection
//! is admitted or closed at once, before any request is read, and its stream is wrapped in
//! [`CountedStream`], whose drop releases the count. The connection is then served in a task
//! of its own: HTTP/1 by the keep-alive loop in [`crate::keepalive`], HTTP/2 by Pingora's.
//!
//! NOTE: on a TLS listener the check runs after the TLS handshake, because Pingora performs
//! the handshake before it calls the app; connections still in their handshake are not
//! counted (Pingora bounds a handshake to 60 s).

use crate::config::RuntimeConfig;
use crate::keepalive::serve_http1;
use crate::limits::client_deadlines::{HeaderDeadline, RequestDeadline, StreamControl};
use crate::metrics::metrics;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_core::apps::{HttpServerApp, ServerApp};
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::tls::{SslDigest, TlsRef};
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora_core::server::ShutdownWatch;
use prometheus::IntGauge;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How long keep-alive connections may still send one more request after a graceful shutdown
/// or upgrade has started.
const KEEPALIVE_SHUTDOWN_WINDOW: Duration = Duration::from_secs(1);

/// Minimum of that window: time for the task of a just-accepted connection to start.
const ACCEPTED_SETTLE_TIME: Duration = Duration::from_millis(100);

/// Connections held by the whole process, against `limits.max_connections`.
#[derive(Debug)]
pub struct ConnectionTracker {
    current: AtomicU64,
    max: u64,
    /// Woken when the last open connection closes.
    all_closed: tokio::sync::Notify,
    /// Set once a shutdown has closed the listeners and every connection that was waiting
    /// for a next request. From then on no new connection can be counted.
    listeners_closed: tokio::sync::watch::Sender<bool>,
}

impl ConnectionTracker {
    pub fn new(max: Option<u64>) -> Self {
        ConnectionTracker {
            current: AtomicU64::new(0),
            max: max.unwrap_or(u64::MAX),
            all_closed: tokio::sync::Notify::new(),
            listeners_closed: tokio::sync::watch::Sender::new(false),
        }
    }

    /// Waits until a shutdown has closed the listeners and the idle keep-alive connections.
    pub async fn wait_until_listeners_closed(&self) {
        let mut closed = self.listeners_closed.subscribe();
        let _ = closed.wait_for(|closed| *closed).await;
    }

    /// Client connections open now.
    pub fn open(&self) -> u64 {
        self.current.load(Ordering::Acquire)
    }

    /// Waits until no client connection is open.
    pub async fn wait_until_all_closed(&self) {
        loop {
            let notified = self.all_closed.notified();
            tokio::pin!(notified);
            // Registered before the check, so a close between the check and the wait wakes it.
            notified.as_mut().enable();
            if self.open() == 0 {
                return;
            }
            notified.await;
        }
    }

    fn try_admit(self: &Arc<Self>, gauge: IntGauge) -> Option<ConnectionSlot> {
        self.current
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()?;
        gauge.inc();
        Some(ConnectionSlot {
            tracker: self.clone(),
            gauge,
        })
    }
}

/// One admitted connection; dropping it releases the count.
#[derive(Debug)]
struct ConnectionSlot {
    tracker: Arc<ConnectionTracker>,
    gauge: IntGauge,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        if self.tracker.current.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.tracker.all_closed.notify_waiters();
        }
        self.gauge.dec();
    }
}

/// A downstream stream with its connection's slot and its client-side deadlines.
#[derive(Debug)]
pub struct CountedStream {
    inner: Stream,
    header_deadline: HeaderDeadline,
    request_deadline: RequestDeadline,
    /// Bytes read ahead while the connection waited for its next request, returned by the
    /// next reads. Allocated at the first such wait and kept for the connection's life.
    read_ahead: Option<Box<ReadAhead>>,
    _slot: ConnectionSlot,
}

/// Room for the first bytes of a next request. A whole header from an API client or a load
/// generator fits, and Pingora then parses it without another system call. A larger header
/// takes one more read.
const READ_AHEAD_CAPACITY: usize = 1024;

struct ReadAhead {
    bytes: [u8; READ_AHEAD_CAPACITY],
    /// The unread bytes are `bytes[start..end]`.
    start: usize,
    end: usize,
}

impl std::fmt::Debug for ReadAhead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadAhead")
            .field("unread", &(self.end - self.start))
            .finish_non_exhaustive()
    }
}

impl CountedStream {
    /// Progress flag of the current request header, for the proxy to mark it complete.
    pub fn stream_control(&self) -> &Arc<StreamControl> {
        self.header_deadline.progress()
    }

    /// Waits for the first bytes of the client's next request and keeps them for the next
    /// reads, so that nothing of the request is allocated while the connection is idle.
    /// Resolves to the number of bytes read: 0 when the client has closed the connection.
    pub fn poll_read_ahead(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        let ahead = self.read_ahead.get_or_insert_with(|| {
            Box::new(ReadAhead {
                bytes: [0; READ_AHEAD_CAPACITY],
                start: 0,
                end: 0,
            })
        });
        if ahead.start < ahead.end {
            return Poll::Ready(Ok(ahead.end - ahead.start));
        }
        let mut buf = ReadBuf::new(&mut ahead.bytes);
        // Through the header deadline, whose timer starts with the first byte.
        std::task::ready!(self
            .header_deadline
            .poll_read(&mut self.inner, cx, &mut buf))?;
        let read = buf.filled().len();
        ahead.start = 0;
        ahead.end = read;
        Poll::Ready(Ok(read))
    }
}

/// A listener address and its label in `gatehouse_downstream_connections`.
#[derive(Debug, Clone)]
pub struct ListenerLabel {
    pub addr: SocketAddr,
    pub gauge: IntGauge,
}

/// Wraps the proxy app to enforce [`ConnectionTracker`] on new connections.
pub struct ConnectionLimitedApp<A> {
    inner: Arc<A>,
    /// The running config, for the current `timeouts.downstream_header`.
    config: Arc<ArcSwap<RuntimeConfig>>,
    tracker: Arc<ConnectionTracker>,
    listeners: Vec<ListenerLabel>,
    /// Gauge for a connection whose local address matches no listener (not expected).
    fallback: IntGauge,
    /// Turns true when the connections that wait for a next request are to close.
    close_idle: tokio::sync::watch::Sender<bool>,
}

impl<A> ConnectionLimitedApp<A> {
    /// `listeners` pairs each configured listener address with its label.
    pub fn new(
        inner: A,
        config: Arc<ArcSwap<RuntimeConfig>>,
        tracker: Arc<ConnectionTracker>,
        listeners: &[(SocketAddr, String)],
    ) -> Self {
        let gauge = |label: &str| metrics().downstream_connections.with_label_values(&[label]);
        ConnectionLimitedApp {
            inner: Arc::new(inner),
            config,
            tracker,
            listeners: listeners
                .iter()
                .map(|(addr, label)| ListenerLabel {
                    addr: *addr,
                    gauge: gauge(label),
                })
                .collect(),
            fallback: gauge("other"),
            close_idle: tokio::sync::watch::Sender::new(false),
        }
    }

    /// Finds the gauge of the listener that accepted a connection with this local address.
    /// A wildcard listener (`0.0.0.0:8080`) matches any local address with its port.
    fn gauge_for(&self, local: Option<SocketAddr>) -> IntGauge {
        let Some(local) = local else {
            return self.fallback.clone();
        };
        self.listeners
            .iter()
            .find(|l| l.addr == local)
            .or_else(|| {
                self.listeners
                    .iter()
                    .find(|l| l.addr.port() == local.port() && l.addr.ip().is_unspecified())
            })
            .map_or_else(|| self.fallback.clone(), |l| l.gauge.clone())
    }
}

impl<A: HttpServerApp + Send + Sync + 'static> ConnectionLimitedApp<A> {
    /// Serves an admitted connection until it closes: HTTP/1 in gatehouse's own keep-alive
    /// loop, anything else (HTTP/2, h2c) in Pingora's.
    async fn serve(&self, stream: Stream, shutdown: &ShutdownWatch) {
        let options = self.inner.server_options();
        let plain = stream.get_ssl_digest().is_none();
        let pingora_loop = options.is_some_and(|o| o.force_custom || (o.h2c && plain))
            || matches!(
                stream.selected_alpn_proto(),
                Some(ALPN::H2) | Some(ALPN::Custom(_))
            );
        // NOTE: an HTTP/1 connection in Pingora's loop would wait for its next request without
        // a limit, because the proxy turns Pingora's keep-alive timeout off for wrapped streams.
        // gatehouse sets neither h2c nor custom protocols, so only HTTP/2 takes that loop.
        if !pingora_loop {
            let closing = self.close_idle.subscribe();
            return serve_http1(&self.inner, stream, shutdown, closing).await;
        }
        let mut next = ServerApp::process_new(&self.inner, stream, shutdown).await;
        while let Some(stream) = next {
            next = ServerApp::process_new(&self.inner, stream, shutdown).await;
        }
    }
}

fn local_address(stream: &Stream) -> Option<SocketAddr> {
    let digest = stream.get_socket_digest()?;
    digest.local_addr()?.as_inet().copied()
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> ServerApp for ConnectionLimitedApp<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let gauge = self.gauge_for(local_address(&stream));
        let Some(slot) = self.tracker.try_admit(gauge) else {
            metrics().rejected_connections_total.inc();
            // Dropping the stream closes the connection without reading from it.
            return None;
        };
        let header_deadline = if stream.selected_alpn_proto() == Some(ALPN::H2) {
            HeaderDeadline::off()
        } else {
            HeaderDeadline::armed(self.config.load().timeouts.downstream_header)
        };
        let stream: Stream = Box::new(CountedStream {
            inner: stream,
            header_deadline,
            request_deadline: RequestDeadline::default(),
            read_ahead: None,
            _slot: slot,
        });
        // Pingora's task for a connection also contains the future of its TLS handshake. The
        // connection goes on in a smaller task of its own, and Pingora's task ends here.
        let app = self.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move { app.serve(stream, &shutdown).await });
        None
    }

    async fn cleanup(&self) {
        // `close_idle` and Pingora's cleanup close every keep-alive connection that waits for
        // its next request. A client may have sent that request already and would see the
        // connection reset, so connections first get a short window in which their next
        // request is still served, with `Connection: close` because the shutdown has started.
        // The window lasts at least `ACCEPTED_SETTLE_TIME`, so that connections accepted just
        // before the listeners closed are counted and read their first request.
        tokio::time::sleep(ACCEPTED_SETTLE_TIME).await;
        let window = tokio::time::timeout(
            KEEPALIVE_SHUTDOWN_WINDOW - ACCEPTED_SETTLE_TIME,
            self.tracker.wait_until_all_closed(),
        );
        let _ = window.await;
        tracing::info!(
            open_connections = self.tracker.open(),
            "closing the client connections that wait for a next request"
        );
        self.close_idle.send_replace(true);
        self.inner.cleanup().await;
        // Pingora calls this after its accept loops have ended, and the task of a connection
        // accepted just before was spawned ahead of this one.
        // NOTE: a connection task that has not started within `ACCEPTED_SETTLE_TIME` (an
        // overloaded process) is not counted, and an early exit cuts its connection.
        self.tracker.listeners_closed.send_replace(true);
    }
}

impl AsyncRead for CountedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let control = this.header_deadline.progress();
        if let Some(error) = this.request_deadline.poll_expired(control, cx) {
            return Poll::Ready(Err(error));
        }
        if let Some(ahead) = this.read_ahead.as_mut().filter(|a| a.start < a.end) {
            let count = (ahead.end - ahead.start).min(buf.remaining());
            buf.put_slice(&ahead.bytes[ahead.start..ahead.start + count]);
            ahead.start += count;
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let result = this.header_deadline.poll_read(&mut this.inner, cx, buf);
        if buf.filled().len() > before {
            this.header_deadline.progress().extend_tunnel();
        }
        result
    }
}

impl CountedStream {
    /// Moves an upgraded connection's idle deadline when a write sent bytes to the client.
    fn extend_tunnel_after_write(&self, result: &Poll<std::io::Result<usize>>) {
        if matches!(result, Poll::Ready(Ok(written)) if *written > 0) {
            self.header_deadline.progress().extend_tunnel();
        }
    }
}

impl AsyncWrite for CountedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.extend_tunnel_after_write(&result);
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.extend_tunnel_after_write(&result);
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for CountedStream {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await;
    }
}

impl UniqueID for CountedStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for CountedStream {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for CountedStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for CountedStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for CountedStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest);
    }
}

#[async_trait]
impl Peek for CountedStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}
