//! The access log and the per-request metrics, both recorded once per request in the
//! `logging` phase.
//!
//! Each access log line is one JSON object with the same keys for every request, and `null`
//! where a value does not apply. Lines go to standard output through the writer thread that
//! [`crate::logging::init`] starts, so no worker thread blocks on the terminal or a pipe.

use crate::context::RequestContext;
use crate::errors::CLIENT_CLOSED_REQUEST;
use crate::metrics::{method_label, record_unrouted, RequestRecord};
use arc_swap::ArcSwapOption;
use pingora_error::Error;
use pingora_proxy::Session;
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
    /// The line being built, reused by every request on this thread.
    static LINE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
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

    /// Appends the timestamp as a JSON string. The date and time are formatted once per second
    /// and thread, and only the microseconds for every line.
    fn write_json(&self, out: &mut Vec<u8>) {
        FORMATTED_SECOND.with(|cache| {
            let mut cache = cache.borrow_mut();
            if cache.0 != self.seconds {
                let time = chrono::DateTime::from_timestamp(self.seconds, 0).unwrap_or_default();
                cache.1 = time.format("%Y-%m-%dT%H:%M:%S").to_string();
                cache.0 = self.seconds;
            }
            out.push(b'"');
            out.extend_from_slice(cache.1.as_bytes());
            out.push(b'.');
            push_padded(out, self.micros, 6);
            out.extend_from_slice(b"Z\"");
        });
    }
}

/// Appends `value` in decimal, with leading zeros to `width` digits.
fn push_padded(out: &mut Vec<u8>, value: u32, width: usize) {
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(value);
    out.extend(std::iter::repeat_n(
        b'0',
        width.saturating_sub(digits.len()),
    ));
    out.extend_from_slice(digits.as_bytes());
}

/// Appends `value` as a JSON string, escaping quotes, backslashes and control characters.
fn push_str(out: &mut Vec<u8>, value: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = value.as_bytes();
    // Most values need no escaping. This scan has no early exit, so the compiler can turn it
    // into vector instructions.
    let needs_escape = |byte: u8| byte < 0x20 || byte == b'"' || byte == b'\\';
    if !bytes
        .iter()
        .fold(false, |found, &byte| found | needs_escape(byte))
    {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut plain_from = 0;
    for (i, &byte) in bytes.iter().enumerate() {
        let escaped: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x00..=0x1f => &[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(byte >> 4)],
                HEX[usize::from(byte & 0xf)],
            ],
            _ => continue,
        };
        out.extend_from_slice(&bytes[plain_from..i]);
        out.extend_from_slice(escaped);
        plain_from = i + 1;
    }
    out.extend_from_slice(&bytes[plain_from..]);
    out.push(b'"');
}

/// Appends `value` with `push`, or `null` when there is none.
fn push_or_null<T>(out: &mut Vec<u8>, value: Option<T>, push: fn(&mut Vec<u8>, T)) {
    match value {
        Some(value) => push(out, value),
        None => out.extend_from_slice(b"null"),
    }
}

/// Appends `value` in decimal.
fn push_integer(out: &mut Vec<u8>, value: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

/// Appends a duration as seconds with six decimals (whole microseconds), e.g. `0.000412`.
fn push_seconds(out: &mut Vec<u8>, duration: std::time::Duration) {
    push_integer(out, duration.as_secs());
    out.push(b'.');
    push_padded(out, duration.subsec_micros(), 6);
}

/// Appends an IP address as a JSON string.
fn push_address(out: &mut Vec<u8>, address: std::net::IpAddr) {
    out.push(b'"');
    crate::headers::push_ip(out, address);
    out.push(b'"');
}

/// One access log line. Every key is written, with `null` where a value does not apply.
struct AccessRecord<'a> {
    timestamp: Timestamp,
    request_id: Option<&'a str>,
    client: Option<std::net::IpAddr>,
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
    duration: std::time::Duration,
    upstream_duration: Option<std::time::Duration>,
    /// Pingora's error type when the request ended on an error.
    error: Option<&'static str>,
}

impl AccessRecord<'_> {
    /// Appends the record as one JSON object and a newline.
    fn write_line(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"timestamp\":");
        self.timestamp.write_json(out);
        out.extend_from_slice(b",\"request_id\":");
        push_or_null(out, self.request_id, push_str);
        out.extend_from_slice(b",\"client\":");
        push_or_null(out, self.client, push_address);
        out.extend_from_slice(b",\"method\":");
        push_str(out, self.method);
        out.extend_from_slice(b",\"path\":");
        push_str(out, &self.path);
        out.extend_from_slice(b",\"route\":");
        push_str(out, self.route);
        out.extend_from_slice(b",\"upstream\":");
        push_or_null(out, self.upstream, push_str);
        out.extend_from_slice(b",\"target\":");
        push_or_null(out, self.target, push_str);
        out.extend_from_slice(b",\"status\":");
        push_integer(out, self.status);
        out.extend_from_slice(b",\"bytes_in\":");
        push_integer(out, self.bytes_in);
        out.extend_from_slice(b",\"bytes_out\":");
        push_integer(out, self.bytes_out);
        out.extend_from_slice(b",\"duration_s\":");
        push_seconds(out, self.duration);
        out.extend_from_slice(b",\"upstream_duration_s\":");
        push_or_null(out, self.upstream_duration, push_seconds);
        out.extend_from_slice(b",\"error\":");
        push_or_null(out, self.error, push_str);
        out.extend_from_slice(b"}\n");
    }
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
    let duration = ctx.started.elapsed();
    let bytes_in = session.body_bytes_read();
    let bytes_out = session.body_bytes_sent();

    crate::proxy::record_outcome(error, status, ctx);
    let measured = RequestRecord {
        method: method_label(&request.method),
        status,
        duration_s: duration.as_secs_f64(),
        received_bytes: bytes_in as u64,
        sent_bytes: bytes_out as u64,
        upstream_duration_s: ctx.upstream_duration.map(|d| d.as_secs_f64()),
    };
    match ctx.route.as_deref() {
        Some(route) => route.series().record(&measured),
        None => record_unrouted(&measured),
    }
    let upstream_name = ctx.upstream.as_deref().map(|u| u.name.as_str());

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
        client: ctx.client_ip,
        method: request.method.as_str(),
        path: String::from_utf8_lossy(request.raw_path()),
        route,
        upstream: upstream_name,
        target,
        status,
        bytes_in,
        bytes_out,
        duration,
        upstream_duration: ctx.upstream_duration,
        error: error.map(|e| e.etype().as_str()),
    };
    LINE.with(|line| {
        let mut line = line.borrow_mut();
        line.clear();
        record.write_line(&mut line);
        // NonBlocking queues each write call as one message, so a line is never split. A
        // failed write (the writer thread is gone at exit) loses only this line.
        let _ = NonBlocking::clone(writer).write_all(&line);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn timestamp_json(timestamp: &Timestamp) -> String {
        let mut out = Vec::new();
        timestamp.write_json(&mut out);
        String::from_utf8(out).unwrap()
    }

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
        assert_eq!(timestamp_json(&first), "\"2026-12-04T23:21:47.000042Z\"");
        assert_eq!(
            timestamp_json(&same_second),
            "\"2026-12-04T23:21:47.999999Z\""
        );
        assert_eq!(
            timestamp_json(&next_second),
            "\"2026-12-04T23:21:48.000000Z\""
        );
    }

    fn record<'a>(path: &'a str, client: Option<std::net::IpAddr>) -> AccessRecord<'a> {
        AccessRecord {
            timestamp: Timestamp {
                seconds: 1_796_426_507,
                micros: 5,
            },
            request_id: Some("id-1"),
            client,
            method: "GET",
            path: std::borrow::Cow::Borrowed(path),
            route: "users",
            upstream: None,
            target: Some("127.0.0.1:9001"),
            status: 200,
            bytes_in: 0,
            bytes_out: 1_234_567,
            duration: Duration::from_nanos(12_345_678_901),
            upstream_duration: Some(Duration::from_micros(412)),
            error: None,
        }
    }

    fn parsed(record: &AccessRecord) -> serde_json::Value {
        let mut line = Vec::new();
        record.write_line(&mut line);
        assert_eq!(line.last(), Some(&b'\n'), "the line ends with a newline");
        serde_json::from_slice(&line).expect("the line is one JSON object")
    }

    #[test]
    fn line_has_every_key_with_its_value() {
        let value = parsed(&record("/users/1?x=1", Some("10.0.0.7".parse().unwrap())));
        assert_eq!(
            value,
            serde_json::json!({
                "timestamp": "2026-12-04T23:21:47.000005Z",
                "request_id": "id-1",
                "client": "10.0.0.7",
                "method": "GET",
                "path": "/users/1?x=1",
                "route": "users",
                "upstream": null,
                "target": "127.0.0.1:9001",
                "status": 200,
                "bytes_in": 0,
                "bytes_out": 1_234_567,
                "duration_s": 12.345678,
                "upstream_duration_s": 0.000412,
                "error": null,
            })
        );
    }

    #[test]
    fn strings_are_escaped() {
        let path = "/a\"b\\c\n\r\t\u{1}\u{1f}é\u{7f}/";
        let value = parsed(&record(path, Some("::1".parse().unwrap())));
        assert_eq!(value["path"], path);
        assert_eq!(value["client"], "::1");
    }
}
