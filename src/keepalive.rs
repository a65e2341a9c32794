//! The HTTP/1 requests of one client connection, served in turn, with nothing of a request
//! held while the connection waits for the next one.
//!
//! Pingora's own loop (`ServerApp for HttpServerApp`) starts each request at once: it
//! allocates the request's future (about 10 KiB) and a 4 KiB header buffer, then waits in the
//! read for the client's next request. A kept-alive connection that stays idle keeps both
//! allocated for as long as it is open. This loop first waits for the next request's first
//! bytes, read into a small buffer of the client stream ([`CountedStream::poll_read_ahead`]),
//! and starts the request only then. Pingora's first read takes those bytes from that buffer,
//! so a request header that fits costs no more system calls than before.

use crate::limits::client_deadlines::DEFAULT_IDLE_TIMEOUT;
use crate::limits::connections::CountedStream;
use pingora_core::apps::HttpServerApp;
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

/// Serves the requests of an HTTP/1 connection until it closes. `closing` turns true when the
/// process closes its idle connections.
pub async fn serve_http1<A: HttpServerApp + Send + Sync + 'static>(
    app: &Arc<A>,
    stream: Stream,
    shutdown: &ShutdownWatch,
    mut closing: watch::Receiver<bool>,
) {
    let mut session = ServerSession::new_http1(stream);
    // Keep-alive unless the shutdown has started, with no limit of Pingora's own on the reads
    // of a request header (0): the header deadline of the client stream bounds the header.
    let first_keepalive = (!*shutdown.borrow()).then_some(0);
    session.set_keepalive(first_keepalive);
    session.set_keepalive_reuses_remaining(
        app.server_options()
            .and_then(|options| options.keepalive_request_limit),
    );
    // One timer for every wait of the connection. Moving a registered timer to a later
    // deadline only records the new deadline, where a new timer per wait would be added to
    // and removed from Tokio's timer wheel each time.
    let idle_timer = tokio::time::sleep(DEFAULT_IDLE_TIMEOUT);
    tokio::pin!(idle_timer);
    loop {
        let Some(reused) = app.process_new_http(session, shutdown).await else {
            return;
        };
        let (stream, settings) = reused.consume();
        let next = wait_for_next_request(stream, idle_timer.as_mut(), &mut closing).await;
        let Some(stream) = next else {
            // The stream was dropped, which closed the connection.
            return;
        };
        session = ServerSession::new_http1(stream);
        if let Some(settings) = settings {
            settings.apply_to_session(&mut session);
        }
    }
}

/// Waits until the client sends the first bytes of its next request, for at most the idle
/// timeout of the last request, and returns the stream with those bytes kept for Pingora's
/// read. Returns None when the connection should close instead: the idle time ran out, the
/// client closed or the stream failed, or the process is closing its idle connections. A
/// request already on its way is preferred over closing.
async fn wait_for_next_request(
    stream: Stream,
    mut timer: Pin<&mut Sleep>,
    closing: &mut watch::Receiver<bool>,
) -> Option<Stream> {
    if !(*stream).as_any().is::<CountedStream>() {
        // Not expected: every admitted stream is wrapped. Pingora's read then does the wait.
        return Some(stream);
    }
    let mut counted: Box<CountedStream> = stream.into_any().downcast().ok()?;
    let idle = counted.stream_control().idle_timeout();
    timer.as_mut().reset(Instant::now() + idle);
    let read_ahead = poll_fn(|cx| counted.poll_read_ahead(cx));
    let more = tokio::select! {
        biased;
        read = read_ahead => matches!(read, Ok(read) if read > 0),
        _ = timer => false,
        _ = closing.wait_for(|closing| *closing) => false,
    };
    more.then_some(counted)
}
