//! The access log and the per-request metrics, both recorded once per request in the
//! `logging` phase.
//!
//! Each access log line is one JSON object with the same keys for every request, and `null`
//! where a value does not apply. Lines go to standard output through the writer thread that
//! [`crate::logging::init`] starts, so no worker thread blocks on the terminal or a pipe.

use crate::context::RequestContext;
use crate::errors::CLIENT_CLOSED_REQUEST;
use crate::metrics::{code_label, method_label, metrics};
use arc_swap::ArcSwapOption;
use pingora_error::Error;
use pingora_proxy::Session;
use serde::Serialize;
use std::io::Write;
use std::sync::Arc;
use tracing_appender::non_blocking::NonBlocking;

static WRITER: ArcSwapOption<NonBlocking> = ArcSwapOption::const_empty();

/// Sets where access log lines go. Until it is called, no lines are written.
pub fn set_writer(writer: NonBlocking) {
    WRITER.store(Some(Arc::new(writer)));
}

/// The current time as RFC 3339 in UTC with microseconds, e.g. `2026-12-04T23:21:47.296063Z`.
struct Timestamp {
    seconds: i64,
    micros: u32,
}

thread_local! {
    /// The date and time part of the last second formatted on this thread.
    static FORMATTED_SECOND: std::cell::RefCell<(i64, String)> =
        const { std::cell::RefCell::new((i64::MIN, String::new())) };
}

impl Timestamp {
    fn now() -> Self {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp {
            seconds: i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX),
            micros: since_epoch.subsec_micros(),
        }
    }
}

impl Serialize for Timestamp {
    /// Formats the date and time once per second and thread, and only the microseconds for
    /// every line.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        FORMATTED_SECOND.with(|cache| {
            let mut cache = cache.borrow_mut();
            if cache.0 != self.seconds {
                let time = chrono::DateTime::from_timestamp(self.seconds, 0).unwrap_or_default();
                cache.1 = time.format("%Y-%m-%dT%H:%M:%S").to_string();
                cache.0 = self.seconds;
            }
            serializer.collect_str(&format_args!("{}.{:06}Z", cache.1, self.micros))
        })
    }
}

/// An IP address written into the line without an intermediate `String`.
struct ClientAddress(std::net::IpAddr);

impl Serialize for ClientAddress {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

/// One access log line.
#[derive(Serialize)]
struct AccessRecord<'a> {
    timestamp: Timestamp,
    request_id: Option<&'a str>,
    client: Option<ClientAddress>,
    method: &'a str,
    path: std::borrow::Cow<'a, str>,
    route: &'a str,
    upstream: Option<&'a str>,
    /// Address of the upstream target tried last.
    target: Option<&'a str>,
    status: u16,
    /// Request body bytes read from the client.
    bytes_in: usize,
    /// Response body bytes sent to the client.
    bytes_out: usize,
    duration_s: f64,
    upstream_duration_s: Option<f64>,
    /// Pingora's error type when the request ended on an error.
    error: Option<&'static str>,
}

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

    crate::proxy::record_outcome(error, status, ctx);
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
    let writer = WRITER.load();
    let Some(writer) = writer.as_ref() else {
        return;
    };
    let record = AccessRecord {
        timestamp: Timestamp::now(),
        request_id: ctx.request_id.as_ref().and_then(|v| v.to_str().ok()),
        client: ctx.client_ip.map(ClientAddress),
        method: request.method.as_str(),
        path: String::from_utf8_lossy(request.raw_path()),
        route,
        upstream: upstream_name,
        target,
        status,
        bytes_in,
        bytes_out,
        duration_s: duration,
        upstream_duration_s: ctx.upstream_duration.map(|d| d.as_secs_f64()),
        error: error.map(|e| e.etype().as_str()),
    };
    let mut line = Vec::with_capacity(512);
    if serde_json::to_writer(&mut line, &record).is_ok() {
        line.push(b'\n');
        // NonBlocking queues each write call as one message, so a line is never split. A
        // failed write (the writer thread is gone at exit) loses only this line.
        let _ = NonBlocking::clone(writer).write_all(&line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_is_rfc3339_with_micros() {
        let first = Timestamp {
            seconds: 1_796_426_507,
            micros: 42,
        };
        let same_second = Timestamp {
            seconds: 1_796_426_507,
            micros: 999_999,
        };
        let next_second = Timestamp {
            seconds: 1_796_426_508,
            micros: 0,
        };
        assert_eq!(
            serde_json::to_string(&first).unwrap(),
            "\"2026-12-04T23:21:47.000042Z\""
        );
        assert_eq!(
            serde_json::to_string(&same_second).unwrap(),
            "\"2026-12-04T23:21:47.999999Z\""
        );
        assert_eq!(
            serde_json::to_string(&next_second).unwrap(),
            "\"2026-12-04T23:21:48.000000Z\""
        );
    }
}
