//! The `ProxyHttp` implementation: one method per request-lifecycle phase, each calling the
//! module that owns the concern (routing, upstream selection, headers, errors, logging).

mod messages;
mod timeouts;

use crate::access_log;
use crate::client_ip::client_ip;
use crate::config::{RouteAction, RuntimeConfig};
use crate::context::RequestContext;
use crate::dispatch::dispatch;
use crate::errors::{
    status_for_error, upstream_error_kind, write_error, write_generated_response,
    CLIENT_CLOSED_REQUEST,
};
use crate::headers::{
    generate_request_id, is_valid_request_id, remove_connection_nominated,
    remove_unannounced_upgrade, X_FORWARDED_FOR, X_FORWARDED_FOR_TITLE, X_FORWARDED_HOST,
    X_FORWARDED_HOST_TITLE, X_FORWARDED_PROTO_TITLE, X_REQUEST_ID, X_REQUEST_ID_TITLE,
};
use crate::limits::client_deadlines::StreamControl;
use crate::limits::connections::CountedStream;
use crate::metrics::metrics;
use crate::upstream::{HashKey, InFlight};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::BytesMut;
use http::{header, HeaderValue, StatusCode};
use messages::{
    collapse_content_length, frame_for_http1_client, is_tls, missing_required_host,
    origin_form_target, request_host,
};
use pingora_core::upstreams::peer::{HttpPeer, HttpUpstreamRequestPolicy};
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};
pub use timeouts::record_outcome;
use timeouts::{apply_downstream_timeouts, is_timeout};

/// Returns the header-deadline state of the client stream, for HTTP/1 connections.
fn stream_control(session: &Session) -> Option<&Arc<StreamControl>> {
    session
        .as_downstream()
        .stream()
        .and_then(|stream| (**stream).as_any().downcast_ref::<CountedStream>())
        .map(CountedStream::stream_control)
}

/// The gateway: the current compiled config, swapped whole on reload.
pub struct Gateway {
    config: Arc<ArcSwap<RuntimeConfig>>,
    lifecycle: Arc<crate::lifecycle::Lifecycle>,
}

impl Gateway {
    pub fn new(
        config: Arc<ArcSwap<RuntimeConfig>>,
        lifecycle: Arc<crate::lifecycle::Lifecycle>,
    ) -> Self {
        Gateway { config, lifecycle }
    }
}

/// Outcome of routing in `request_filter`, computed while the request header is borrowed.
enum Decision {
    BadRequest,
    NoRoute,
    Respond,
    Proxy,
}

impl Gateway {
    /// Routes the request and records the result in `ctx`.
    fn decide(&self, session: &Session, ctx: &mut RequestContext) -> Decision {
        let request = session.req_header();
        let target = origin_form_target(request);
        let dispatched = dispatch(
            &ctx.config,
            &request.method,
            &target,
            request_host(request),
            &request.headers,
        );
        let found = match dispatched {
            Err(_) => return Decision::BadRequest,
            Ok(None) => return Decision::NoRoute,
            Ok(Some(found)) => found,
        };
        let route = found.route;
        let decision = match &route.action {
            RouteAction::Respond(_) => Decision::Respond,
            RouteAction::Proxy(upstream) => {
                // An absolute-form target is always rewritten to origin-form.
                ctx.forward_target = match found.forward_target {
                    Some(forward) => Some(forward),
                    None if target.as_ref() != request.raw_path() => Some(target.to_vec()),
                    None => None,
                };
                if upstream.hash_key == Some(HashKey::Path) {
                    ctx.normalized_path = Some(found.normalized_path.into_owned());
                }
                ctx.upstream = Some(upstream.clone());
                Decision::Proxy
            }
        };
        ctx.route = Some(route);
        decision
    }

    /// Returns the consistent-hash key of this request.
    fn hash_key<'a>(
        &self,
        session: &'a Session,
        ctx: &'a RequestContext,
        key: &HashKey,
    ) -> Cow<'a, [u8]> {
        let headers = &session.req_header().headers;
        match key {
            HashKey::ClientIp => Cow::Owned(
                ctx.client_ip
                    .map(|ip| ip.to_string().into_bytes())
                    .unwrap_or_default(),
            ),
            HashKey::Path => Cow::Borrowed(ctx.normalized_path.as_deref().unwrap_or_default()),
            HashKey::Header(name) => {
                Cow::Borrowed(headers.get(name).map_or(&[][..], |v| v.as_bytes()))
            }
            HashKey::Cookie(name) => {
                let found = headers
                    .get_all(header::COOKIE)
                    .iter()
                    .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
                    .find_map(|pair| {
                        let pair = pair.trim_ascii();
                        let (k, v) = pair.split_at(pair.iter().position(|&b| b == b'=')?);
                        (k == name.as_bytes()).then(|| &v[1..])
                    });
                Cow::Borrowed(found.unwrap_or_default())
            }
        }
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestContext;

    fn new_ctx(&self) -> Self::CTX {
        RequestContext::new(self.config.load_full())
    }

    /// Stops the `downstream_header` deadline, assigns the request id, finds the client address
    /// and the route, and responds to requests that need no upstream: bad paths (400), no
    /// route (404) and `respond` routes.
    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        // The header is complete. This is done here rather than in `early_request_filter`,
        // which would cost another boxed future per request; between the two, Pingora reads
        // nothing from the client.
        if let Some(progress) = stream_control(session) {
            progress.mark_complete();
        }
        remove_unannounced_upgrade(session.req_header_mut());
        let request = session.req_header();
        let request_id = request
            .headers
            .get(&X_REQUEST_ID)
            .filter(|v| is_valid_request_id(v.as_bytes()))
            .cloned()
            .unwrap_or_else(generate_request_id);
        ctx.request_id = Some(request_id);
        if let Some(peer) = session.client_addr().and_then(|a| a.as_inet()) {
            ctx.client_ip = Some(client_ip(
                peer.ip(),
                &session.req_header().headers,
                &ctx.config.trusted_proxies,
            ));
        }

        let decision = if missing_required_host(session.req_header()) {
            Decision::BadRequest
        } else {
            self.decide(session, ctx)
        };
        let shutting_down = self.lifecycle.phase() != crate::lifecycle::Phase::Running;
        apply_downstream_timeouts(session, ctx, shutting_down);
        if matches!(decision, Decision::Proxy | Decision::Respond)
            && crate::limits::enforce::enforce(session, ctx).await?
        {
            return Ok(true);
        }
        match decision {
            Decision::Proxy => {
                // The 503 is written here rather than by failing `upstream_peer`, where
                // Pingora would log an error for every request while the upstream is down.
                if ctx
                    .upstream
                    .as_ref()
                    .is_some_and(|u| !u.has_healthy_target())
                {
                    let close = !session.is_body_empty();
                    write_error(
                        session,
                        StatusCode::SERVICE_UNAVAILABLE,
                        ctx.request_id.as_ref(),
                        close,
                    )
                    .await?;
                    return Ok(true);
                }
                let route = ctx.route.as_ref().expect("a proxied request has a route");
                let deadline = ctx.started + route.timeouts.request;
                ctx.request_deadline = Some(deadline);
                if let Some(control) = stream_control(session) {
                    control.set_request_deadline(deadline);
                }
                Ok(false)
            }
            Decision::BadRequest => {
                write_error(
                    session,
                    StatusCode::BAD_REQUEST,
                    ctx.request_id.as_ref(),
                    true,
                )
                .await?;
                Ok(true)
            }
            Decision::NoRoute => {
                write_error(
                    session,
                    StatusCode::NOT_FOUND,
                    ctx.request_id.as_ref(),
                    false,
                )
                .await?;
                Ok(true)
            }
            Decision::Respond => {
                let route = ctx.route.clone().expect("decide() sets the route");
                let RouteAction::Respond(direct) = &route.action else {
                    unreachable!("Decision::Respond comes from a respond route");
                };
                let mut response =
                    ResponseHeader::build(direct.status, Some(direct.headers.len() + 2))?;
                for (name, value) in &direct.headers {
                    response.append_header(name.clone(), value.clone())?;
                }
                route.response_headers.apply_to_response(&mut response);
                // A direct response ignores the request body. Reading it to the end to keep the
                // connection would let a client stream an unbounded chunked body, so a request
                // with a body gets its connection closed instead.
                let close = !session.is_body_empty();
                write_generated_response(
                    session,
                    response,
                    direct.body.clone(),
                    ctx.request_id.as_ref(),
                    close,
                )
                .await?;
                Ok(true)
            }
        }
    }

    /// Counts the request body against `limits.max_request_body`. A body sent without
    /// `Content-Length` (chunked) is only known to be too large once that much has arrived.
    /// The request then fails with 413 if no response has been sent yet.
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        _end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if let (Some(max), Some(chunk)) = (ctx.config.max_request_body, body.as_ref()) {
            ctx.body_bytes += chunk.len() as u64;
            if ctx.body_bytes > max {
                return Err(Error::explain(
                    ErrorType::HTTPStatus(413),
                    "request body larger than limits.max_request_body",
                ));
            }
        }
        Ok(())
    }

    /// Picks the target for this attempt. A retry after a connect failure prefers targets
    /// not tried yet.
    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        let (Some(route), Some(upstream)) = (ctx.route.clone(), ctx.upstream.clone()) else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "no upstream for this request",
            ));
        };
        let selected = match &upstream.hash_key {
            Some(key) => {
                let key = self.hash_key(session, ctx, key).into_owned();
                upstream.select(&key, ctx.tried_targets)
            }
            None => upstream.select(&[], ctx.tried_targets),
        };
        let Some(index) = selected else {
            return Err(Error::explain(
                ErrorType::HTTPStatus(503),
                format!("no healthy target in upstream \"{}\"", upstream.name),
            ));
        };
        if index < 64 {
            ctx.tried_targets |= 1 << index;
        }
        ctx.target = Some(index);
        if upstream.balance == crate::config::file::Balance::LeastRequests {
            ctx.in_flight = Some(InFlight::start(upstream.clone(), index));
        }

        let mut peer = upstream.peer(&upstream.targets[index]);
        let options = &mut peer.options;
        // No single wait may outlast the request deadline. On HTTP/1 the client stream also
        // enforces the deadline as a whole; on HTTP/2 these bounds are the only enforcement.
        let remaining = ctx
            .request_deadline
            .map_or(Duration::MAX, |deadline| {
                deadline.saturating_duration_since(Instant::now())
            })
            .max(Duration::from_millis(1));
        options.connection_timeout = Some(route.timeouts.connect.min(remaining));
        options.total_connection_timeout = Some(route.timeouts.connect.min(remaining));
        options.read_timeout = Some(route.timeouts.upstream_read.min(remaining));
        options.write_timeout = Some(route.timeouts.upstream_write.min(remaining));
        // Pingora strips the standard hop-by-hop headers. The headers a client names in
        // `Connection` are removed by `remove_connection_nominated` instead, because Pingora
        // rejects the whole request when one of them is X-Forwarded-For.
        options.http_upstream_request_policy = HttpUpstreamRequestPolicy {
            strip_connection_nominated: false,
            ..HttpUpstreamRequestPolicy::default()
        };
        Ok(Box::new(peer))
    }

    /// Rewrites the request sent upstream: path, Host, hop-by-hop headers, forwarding headers,
    /// request id, then the route's own header operations.
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        let client_request = session.req_header();
        remove_connection_nominated(client_request, upstream_request);

        if let Some(target) = &ctx.forward_target {
            upstream_request.set_raw_path(target)?;
        }
        let route = ctx.route.as_deref().expect("a proxied request has a route");
        if let Some(host) = &route.rewrite_host {
            upstream_request.insert_header(header::HOST, host.clone())?;
        } else if !upstream_request.headers.contains_key(header::HOST) {
            // An HTTP/1.0 client may omit Host, but the upstream request is HTTP/1.1, which
            // requires it: name the target.
            if let (Some(upstream), Some(index)) = (&ctx.upstream, ctx.target) {
                let target = upstream.targets[index].text.as_str();
                upstream_request.insert_header(header::HOST, target)?;
            }
        }
        collapse_content_length(upstream_request)?;

        if let Some(peer) = session.client_addr().and_then(|a| a.as_inet()) {
            let mut forwarded_for = BytesMut::with_capacity(64);
            for value in upstream_request.headers.get_all(&X_FORWARDED_FOR) {
                forwarded_for.extend_from_slice(value.as_bytes());
                forwarded_for.extend_from_slice(b", ");
            }
            crate::headers::push_ip(&mut forwarded_for, peer.ip());
            let value = HeaderValue::from_maybe_shared(forwarded_for.freeze())
                .map_err(|_| Error::explain(ErrorType::InvalidHTTPHeader, "bad X-Forwarded-For"))?;
            upstream_request.insert_header(X_FORWARDED_FOR_TITLE, value)?;
        }
        let proto = if is_tls(session) {
            HeaderValue::from_static("https")
        } else {
            HeaderValue::from_static("http")
        };
        upstream_request.insert_header(X_FORWARDED_PROTO_TITLE, proto)?;
        match session.req_header().headers.get(header::HOST).cloned() {
            Some(host) => upstream_request.insert_header(X_FORWARDED_HOST_TITLE, host)?,
            None => {
                upstream_request.remove_header(&X_FORWARDED_HOST);
            }
        }
        if let Some(id) = &ctx.request_id {
            upstream_request.insert_header(X_REQUEST_ID_TITLE, id.clone())?;
        }
        route.request_headers.apply_to_request(upstream_request);
        ctx.upstream_sent_at = Some(Instant::now());
        Ok(())
    }

    /// Records when the response header arrived, turns an upgraded connection into a tunnel
    /// with an idle limit, and removes the upstream's hop-by-hop headers.
    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if let (Some(sent), None) = (ctx.upstream_sent_at, ctx.upstream_duration) {
            if !upstream_response.status.is_informational() {
                ctx.upstream_duration = Some(sent.elapsed());
            }
        }
        if upstream_response.status == StatusCode::SWITCHING_PROTOCOLS
            && !session.req_header().headers.contains_key(header::UPGRADE)
        {
            // A 101 to a request that asked for no upgrade cannot open a tunnel; treat the
            // upstream as broken.
            return Err(Error::explain(
                ErrorType::InvalidHTTPHeader,
                "upstream switched protocols without an upgrade request",
            )
            .into_up());
        }
        if upstream_response.status == StatusCode::SWITCHING_PROTOCOLS {
            // The HTTP exchange ends with the 101 (`request` runs to the end of the upstream
            // response). Pingora 0.9.1 applies neither `upstream_read` nor `downstream_body` to
            // the tunnel that follows, so the client stream closes it after `upstream_read`
            // without bytes in either direction.
            ctx.request_deadline = None;
            if let (Some(control), Some(route)) = (stream_control(session), &ctx.route) {
                control.start_tunnel(route.timeouts.upstream_read);
            }
        }
        crate::headers::remove_response_hop_by_hop(upstream_response);
        if !upstream_response.status.is_informational() {
            ctx.response_buffer = ctx
                .route
                .as_ref()
                .and_then(|route| route.buffer_response)
                .map(|_| bytes::BytesMut::new());
        }
        Ok(())
    }

    /// Holds the response body back while it fits the route's `buffer_response`, so the
    /// upstream is read to its end, and its connection freed, at the upstream's pace rather
    /// than the client's. A body that outgrows the buffer is sent on as it arrives.
    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<Option<Duration>> {
        let Some(limit) = ctx.route.as_ref().and_then(|route| route.buffer_response) else {
            return Ok(None);
        };
        if let Some(buffer) = ctx.response_buffer.as_mut() {
            if let Some(chunk) = body.take() {
                buffer.extend_from_slice(&chunk);
            }
            if end_of_stream || buffer.len() > limit {
                // Send what was held: all of it at the end, or everything so far once the
                // body no longer fits, after which the rest streams.
                let held = ctx.response_buffer.take().unwrap_or_default();
                if !held.is_empty() {
                    *body = Some(held.freeze());
                }
            }
        }
        Ok(None)
    }

    /// Applies the route's response header operations, returns the request id, fixes the
    /// framing of an HTTP/1.0 upstream response for the client, and closes the connection
    /// after the response once a drain has begun.
    async fn response_filter(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if !session.as_downstream().is_http2() {
            frame_for_http1_client(session, response)?;
        }
        if self.lifecycle.phase() != crate::lifecycle::Phase::Running {
            // The drain began while this request ran. Its response closes the connection, as
            // those of requests that arrive during the drain do, so that the client does not
            // send a next request into a connection about to close.
            session.set_keepalive(None);
        }
        if let Some(route) = &ctx.route {
            route.response_headers.apply_to_response(response);
        }
        if let Some(id) = &ctx.request_id {
            response.insert_header(X_REQUEST_ID_TITLE, id.clone())?;
        }
        Ok(())
    }

    /// Counts the failure and allows a retry on another target while the upstream's
    /// `retries.attempts` budget lasts. Nothing was sent, so any method may be retried.
    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Self::CTX,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(upstream) = &ctx.upstream {
            metrics()
                .upstream_errors_total
                .with_label_values(&[upstream.name.as_str(), upstream_error_kind(&e)])
                .inc();
            if ctx.retries < upstream.retry_attempts {
                ctx.retries += 1;
                e.set_retry(true);
            } else {
                e.set_retry(false);
            }
        }
        e
    }

    /// Counts the failure and keeps Pingora's retry policy: only idempotent requests, and only
    /// on reused connections where the failure can be a stale pooled connection.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Self::CTX,
        client_reused: bool,
    ) -> Box<Error> {
        if let Some(upstream) = &ctx.upstream {
            if e.esource() == &pingora_error::ErrorSource::Upstream {
                metrics()
                    .upstream_errors_total
                    .with_label_values(&[upstream.name.as_str(), upstream_error_kind(&e)])
                    .inc();
            }
        }
        let mut e = e.more_context(format!("Peer: {peer}"));
        if !session.req_header().method.is_idempotent() || session.as_ref().retry_buffer_truncated()
        {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    /// Sends a short error for a failed request: 504 for upstream timeouts, 502 for other
    /// upstream failures, and nothing to a client that went away (logged as 499).
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Self::CTX,
    ) -> FailToProxy {
        let deadline_passed = ctx
            .request_deadline
            .is_some_and(|deadline| Instant::now() >= deadline);
        let fired_on_stream = stream_control(session).is_some_and(|c| c.request_deadline_fired());
        ctx.request_deadline_expired = fired_on_stream || (deadline_passed && is_timeout(e));
        let code = if ctx.request_deadline_expired {
            504
        } else {
            status_for_error(e)
        };
        ctx.error_status = Some(code);
        if code != CLIENT_CLOSED_REQUEST && session.response_written().is_none() {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY);
            if let Err(write_error_cause) =
                write_error(session, status, ctx.request_id.as_ref(), true).await
            {
                tracing::debug!(error = %write_error_cause, "failed to send error response");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// Leaves failures that the client caused out of the error log: it closed the connection,
    /// timed out or sent a malformed message. The access log records each with its status and
    /// the metrics count them, so a client cannot flood the error log this way.
    fn suppress_error_log(&self, _session: &Session, _ctx: &Self::CTX, error: &Error) -> bool {
        if error.esource() != &pingora_error::ErrorSource::Downstream {
            return false;
        }
        tracing::debug!(%error, "request failed on the client side");
        true
    }

    /// Records metrics and writes the access log line, once per request.
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Self::CTX) {
        let control = stream_control(session);
        ctx.tunnel_idle_expired = control.is_some_and(|c| c.tunnel_idle_fired());
        access_log::record(session, e, ctx);
        if let Some(control) = control {
            control.mark_finished();
        }
        ctx.in_flight = None;
        ctx.route_permit = None;
    }
}
