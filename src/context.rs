//! Per-request state, created when a request arrives and dropped when it ends.

use crate::config::{Route, RuntimeConfig};
use crate::limits::concurrency::InFlightPermit;
use crate::upstream::{InFlight, Upstream};
use http::HeaderValue;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct RequestContext {
    /// The config this request started on; a reload does not change it mid-request.
    pub config: Arc<RuntimeConfig>,
    pub started: Instant,
    pub request_id: Option<HeaderValue>,
    pub client_ip: Option<IpAddr>,
    pub route: Option<Arc<Route>>,
    /// Request target to send upstream when normalization or `strip_prefix` changed it.
    pub forward_target: Option<Vec<u8>>,
    /// Normalized path, kept for `hash_on: path`.
    pub normalized_path: Option<Vec<u8>>,
    pub upstream: Option<Arc<Upstream>>,
    /// Index into the upstream's targets of the current attempt.
    pub target: Option<usize>,
    /// Bit i set: target i was tried already (first 64 targets).
    pub tried_targets: u64,
    /// Retries used after connect failures.
    pub retries: u32,
    pub in_flight: Option<InFlight>,
    /// This request's place in its route's `max_concurrent_requests`.
    pub route_permit: Option<InFlightPermit>,
    /// Request body bytes seen so far, against `limits.max_request_body`.
    pub body_bytes: u64,
    /// When the `request` timeout ends this request, once it is routed to an upstream.
    pub request_deadline: Option<Instant>,
    /// Set when the request failed because its `request` deadline passed.
    pub request_deadline_expired: bool,
    /// Set when an upgraded connection ended because it carried no bytes for the route's
    /// `upstream_read`.
    pub tunnel_idle_expired: bool,
    /// Response body held back under the route's `buffer_response`; None once the body has
    /// outgrown the buffer and is streamed.
    pub response_buffer: Option<bytes::BytesMut>,
    pub upstream_sent_at: Option<Instant>,
    pub upstream_duration: Option<Duration>,
    /// Status decided by `fail_to_proxy`, for logging when no response header was written.
    pub error_status: Option<u16>,
}

impl RequestContext {
    pub fn new(config: Arc<RuntimeConfig>) -> Self {
        RequestContext {
            config,
            started: Instant::now(),
            request_id: None,
            client_ip: None,
            route: None,
            forward_target: None,
            normalized_path: None,
            upstream: None,
            target: None,
            tried_targets: 0,
            retries: 0,
            in_flight: None,
            route_permit: None,
            body_bytes: 0,
            request_deadline: None,
            request_deadline_expired: false,
            tunnel_idle_expired: false,
            response_buffer: None,
            upstream_sent_at: None,
            upstream_duration: None,
            error_status: None,
        }
    }

    pub fn route_name(&self) -> &str {
        self.route.as_deref().map_or("", |r| r.name.as_str())
    }
}
