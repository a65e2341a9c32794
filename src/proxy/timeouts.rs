//! Client-side timeouts set on the session once the request header is read, and the
//! classification of timeouts for `gatehouse_timeouts_total`.
//!
//! - `downstream_body`: Pingora's read timeout, which bounds each wait for request body bytes.
//!   When it expires the request fails with 408 (if no response was sent yet) and the
//!   upstream request is aborted.
//! - `downstream_write`: Pingora's write timeout, which bounds each wait for the client to
//!   take response bytes. When it expires the client connection is closed.
//! - `downstream_idle`: on HTTP/1, the wait for the first byte of the next request on a
//!   kept-alive connection (`crate::keepalive`). The rest of that header is bounded by
//!   `downstream_header`, so Pingora's own keep-alive timeout, which would bound each read of
//!   the header and close the connection without a response, is set to no limit.
//!
//! All three bound single waits (an idle time), not a total. `downstream_header` and `request`
//! are deadlines; they run on the client stream, see `limits::client_deadlines`.

use crate::context::RequestContext;
use crate::errors::CLIENT_CLOSED_REQUEST;
use pingora_error::{Error, ErrorSource, ErrorType};
use pingora_proxy::Session;

/// Sets the body read, response write and keep-alive idle timeouts for this request, from
/// its route or, for requests that match none, from the top-level `timeouts`. While the
/// process shuts down, the connection closes after this response instead.
pub fn apply_downstream_timeouts(session: &mut Session, ctx: &RequestContext, shutting_down: bool) {
    let timeouts = ctx
        .route
        .as_ref()
        .map_or(ctx.config.timeouts, |route| route.timeouts);
    session.set_read_timeout(Some(timeouts.downstream_body));
    session.set_write_timeout(Some(timeouts.downstream_write));
    if shutting_down {
        session.set_keepalive(None);
        return;
    }
    // Pingora has already turned keep-alive off where the request rules it out: `Connection:
    // close`, HTTP/1.0 without `Connection: keep-alive`, or both Content-Length and
    // Transfer-Encoding. Setting a timeout now would turn it back on.
    if session.as_downstream().get_keepalive().is_none() {
        return;
    }
    // The wait before the next request's first byte runs in `keepalive`.
    let in_keepalive_loop = super::stream_control(session)
        .map(|control| control.set_idle_timeout(timeouts.downstream_idle))
        .is_some();
    if in_keepalive_loop {
        // 0: Pingora sets no limit of its own on the reads of the next header.
        session.set_keepalive(Some(0));
    } else {
        // HTTP/2, where Pingora ignores it, or an HTTP/1 stream that is not wrapped (not
        // expected). Pingora's timeout, in whole seconds, then bounds the wait.
        let idle_seconds = timeouts.downstream_idle.as_millis().div_ceil(1000).max(1) as u64;
        session.set_keepalive(Some(idle_seconds));
    }
}

/// Names the timeout that ended a request, as the `kind` label of `gatehouse_timeouts_total`,
/// or None when the error was not a timeout.
pub fn timeout_kind(error: &Error) -> Option<&'static str> {
    match (error.esource(), error.etype()) {
        (ErrorSource::Upstream, ErrorType::ConnectTimedout) => Some("connect"),
        (ErrorSource::Upstream, ErrorType::TLSHandshakeTimedout) => Some("connect"),
        (ErrorSource::Upstream, ErrorType::ReadTimedout) => Some("upstream_read"),
        (ErrorSource::Upstream, ErrorType::WriteTimedout) => Some("upstream_write"),
        (ErrorSource::Downstream, ErrorType::ReadTimedout) => Some("downstream_body"),
        (ErrorSource::Downstream, ErrorType::WriteTimedout) => Some("downstream_write"),
        _ => None,
    }
}

/// True for an error that a timeout raised, on either side.
pub fn is_timeout(error: &Error) -> bool {
    timeout_kind(error).is_some()
}

/// Records a request's timeout or client disconnect in the metrics.
pub fn record_outcome(error: Option<&Error>, status: u16, ctx: &RequestContext) {
    let m = crate::metrics::metrics();
    let route = ctx.route_name();
    if ctx.tunnel_idle_expired {
        m.timeouts_total
            .with_label_values(&[route, "upstream_read"])
            .inc();
    } else if ctx.request_deadline_expired {
        m.timeouts_total
            .with_label_values(&[route, "request"])
            .inc();
    } else if let Some(kind) = error.and_then(timeout_kind) {
        m.timeouts_total.with_label_values(&[route, kind]).inc();
    } else if status == CLIENT_CLOSED_REQUEST {
        m.client_disconnects_total.with_label_values(&[route]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_follow_side_and_type() {
        let up = |t| Error::new_up(t);
        let down = |t| Error::new_down(t);
        assert_eq!(
            timeout_kind(&up(ErrorType::ConnectTimedout)),
            Some("connect")
        );
        assert_eq!(
            timeout_kind(&up(ErrorType::ReadTimedout)),
            Some("upstream_read")
        );
        assert_eq!(
            timeout_kind(&up(ErrorType::WriteTimedout)),
            Some("upstream_write")
        );
        assert_eq!(
            timeout_kind(&down(ErrorType::ReadTimedout)),
            Some("downstream_body")
        );
        assert_eq!(
            timeout_kind(&down(ErrorType::WriteTimedout)),
            Some("downstream_write")
        );
        assert_eq!(timeout_kind(&up(ErrorType::ConnectRefused)), None);
    }
}
