//! The access log and the per-request metrics, both recorded once per request in the
//! `logging` phase.
//!
//! Access log lines are `tracing` events with target `access`; the subscriber set up in
//! [`crate::logging`] writes them as one JSON object per line on standard output, through a
//! writer thread so that no worker thread blocks on the terminal or a pipe.

use crate::context::RequestContext;
use crate::errors::CLIENT_CLOSED_REQUEST;
use crate::metrics::{code_label, method_label, metrics};
use pingora_error::Error;
use pingora_proxy::Session;

/// Returns the status to record: the one sent, else the one `fail_to_proxy` chose, else 499
/// for a request that ended on an error before any response.
fn final_status(session: &Session, error: Option<&Error>, ctx: &RequestContext) -> u16 {
    if let Some(response) = session.response_written() {
        return response.status.as_u16();
    }
    match (ctx.error_status, error) {
        (Some(code), _) => code,
        (None, Some(_)) => CLIENT_CLOSED_REQUEST,
        (None, None) => 0,
    }
}

/// Records metrics and writes the access log line for a finished request.
pub fn record(session: &Session, error: Option<&Error>, ctx: &RequestContext) {
    let status = final_status(session, error, ctx);
    let request = session.req_header();
    let route = ctx.route_name();
    let duration = ctx.started.elapsed().as_secs_f64();
    let bytes_in = session.body_bytes_read();
    let bytes_out = session.body_bytes_sent();

    let m = metrics();
    m.requests_total
        .with_label_values(&[route, method_label(&request.method), &code_label(status)])
        .inc();
    m.request_duration
        .with_label_values(&[route])
        .observe(duration);
    m.received_bytes_total
        .with_label_values(&[route])
        .inc_by(bytes_in as u64);
    m.sent_bytes_total
        .with_label_values(&[route])
        .inc_by(bytes_out as u64);
    let upstream_name = ctx.upstream.as_deref().map(|u| u.name.as_str());
    if let (Some(upstream), Some(upstream_duration)) = (upstream_name, ctx.upstream_duration) {
        m.upstream_duration
            .with_label_values(&[route, upstream])
            .observe(upstream_duration.as_secs_f64());
    }

    let target = match (&ctx.upstream, ctx.target) {
        (Some(upstream), Some(index)) => Some(upstream.targets[index].text.as_str()),
        _ => None,
    };
    let client = ctx.client_ip.map(|ip| ip.to_string());
    tracing::info!(
        target: "access",
        request_id = ctx.request_id.as_ref().and_then(|v| v.to_str().ok()),
        client = client.as_deref(),
        method = request.method.as_str(),
        path = %String::from_utf8_lossy(request.raw_path()),
        route,
        upstream = upstream_name,
        target,
        status,
        bytes_in,
        bytes_out,
        duration_s = duration,
        upstream_duration_s = ctx.upstream_duration.map(|d| d.as_secs_f64()),
        error = error.map(|e| e.etype().as_str()),
    );
}
