//! Header rewriting: the route's `set`/`add`/`remove` operations, hop-by-hop stripping, the
//! `X-Forwarded-*` headers and `X-Request-Id`.

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use pingora_http::{IntoCaseHeaderName, RequestHeader, ResponseHeader};

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The same names as sent on the wire. Pingora copies a `HeaderName` that it has no spelling
/// for into a new buffer on every insert, and stores a `&'static str` without copying.
pub const X_FORWARDED_FOR_TITLE: &str = "X-Forwarded-For";
pub const X_FORWARDED_PROTO_TITLE: &str = "X-Forwarded-Proto";
pub const X_FORWARDED_HOST_TITLE: &str = "X-Forwarded-Host";
pub const X_REQUEST_ID_TITLE: &str = "X-Request-Id";
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The most `Connection` tokens honoured per request, so a huge header cannot make the gateway
/// do unbounded work. Tokens past it are ignored.
const MAX_CONNECTION_TOKENS: usize = 32;

/// Compiled `request_headers` or `response_headers` of a route.
#[derive(Debug, Clone, Default)]
pub struct HeaderOps {
    set: Vec<HeaderEntry>,
    add: Vec<HeaderEntry>,
    remove: Vec<HeaderName>,
}

/// A header that a route sets or adds. Its wire spelling is made once at config load, because
/// Pingora copies the spelling of a `HeaderName` into a new buffer on every insert.
#[derive(Debug, Clone)]
struct HeaderEntry {
    wire_name: Bytes,
    value: HeaderValue,
}

impl HeaderEntry {
    fn new((name, value): (HeaderName, HeaderValue)) -> Self {
        HeaderEntry {
            wire_name: Bytes::copy_from_slice(name.into_case_header_name().as_slice()),
            value,
        }
    }
}

/// Headers that describe one connection or framing and are never copied between hops.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
        || name == header::TE
        || name == header::TRAILER
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
}

impl HeaderOps {
    /// Builds the operations from names and values validated at config load.
    pub fn new(
        set: Vec<(HeaderName, HeaderValue)>,
        add: Vec<(HeaderName, HeaderValue)>,
        remove: Vec<HeaderName>,
    ) -> Self {
        HeaderOps {
            set: set.into_iter().map(HeaderEntry::new).collect(),
            add: add.into_iter().map(HeaderEntry::new).collect(),
            remove,
        }
    }

    /// Applies remove, then set, then add. Pingora's header types keep the original name
    /// casing, which is why this goes through their methods.
    pub fn apply_to_request(&self, request: &mut RequestHeader) {
        for name in &self.remove {
            request.remove_header(name);
        }
        for entry in &self.set {
            // Names and values were validated at load, so an error would drop only this header.
            let _ = request.insert_header(entry.wire_name.clone(), entry.value.clone());
        }
        for entry in &self.add {
            let _ = request.append_header(entry.wire_name.clone(), entry.value.clone());
        }
    }

    pub fn apply_to_response(&self, response: &mut ResponseHeader) {
        for name in &self.remove {
            response.remove_header(name);
        }
        for entry in &self.set {
            let _ = response.insert_header(entry.wire_name.clone(), entry.value.clone());
        }
        for entry in &self.add {
            let _ = response.append_header(entry.wire_name.clone(), entry.value.clone());
        }
    }
}

/// Removes from the upstream request every header that the client's `Connection` header names.
///
/// Pingora's own hop-by-hop policy has already removed the standard hop-by-hop headers and the
/// `Connection` header itself (keeping `Connection: Upgrade` for a WebSocket upgrade), so the
/// tokens are read from the original client request. The gateway adds its own headers after
/// this step, so a client that names `X-Forwarded-For` only drops the value it sent itself.
pub fn remove_connection_nominated(client: &RequestHeader, upstream: &mut RequestHeader) {
    for token in connection_tokens(&client.headers) {
        let Ok(name) = HeaderName::from_bytes(token) else {
            continue;
        };
        // Host must reach the upstream, and the upgrade handshake is Pingora's to keep.
        if name == header::HOST || name == header::UPGRADE || name == header::CONNECTION {
            continue;
        }
        upstream.remove_header(&name);
    }
}

/// Removes an `Upgrade` header that the client's `Connection` header does not name. Such a
/// request is not a protocol upgrade (RFC 9110 section 7.8), but Pingora treats any request
/// with `Upgrade` as one and would forward a WebSocket handshake for it.
pub fn remove_unannounced_upgrade(request: &mut RequestHeader) {
    if !request.headers.contains_key(header::UPGRADE) {
        return;
    }
    let announced = request
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .take(MAX_CONNECTION_TOKENS)
        .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"upgrade"));
    if !announced {
        request.remove_header(&header::UPGRADE);
    }
}

/// Removes hop-by-hop headers of an upstream response that must not reach the client:
/// `Keep-Alive`, `Proxy-Connection`, `Upgrade` outside a 101, and the headers its
/// `Connection` header names. `Connection` and `Transfer-Encoding` themselves, and `Upgrade`
/// on a 101, are left to Pingora, which rewrites them for the client connection and needs them
/// to frame the body.
pub fn remove_response_hop_by_hop(response: &mut ResponseHeader) {
    // One pass over the names finds the ones present. Most responses carry none of them but
    // `Connection`, and removing an absent name would still hash it.
    let (mut keep_alive, mut proxy_connection, mut upgrade, mut connection) =
        (false, false, false, false);
    for name in response.headers.keys() {
        if name == header::CONNECTION {
            connection = true;
        } else if name == header::UPGRADE {
            upgrade = true;
        } else if name == KEEP_ALIVE {
            keep_alive = true;
        } else if name == PROXY_CONNECTION {
            proxy_connection = true;
        }
    }
    if keep_alive {
        response.remove_header(&KEEP_ALIVE);
    }
    if proxy_connection {
        response.remove_header(&PROXY_CONNECTION);
    }
    // Upgrade only means something on a 101.
    if upgrade && response.status != http::StatusCode::SWITCHING_PROTOCOLS {
        response.remove_header(&header::UPGRADE);
    }
    if !connection {
        return;
    }
    let nominated: Vec<HeaderName> = connection_tokens(&response.headers)
        .filter_map(|token| HeaderName::from_bytes(token).ok())
        .filter(|name| !is_hop_by_hop(name) && name != header::CONTENT_LENGTH)
        .collect();
    for name in nominated {
        response.remove_header(&name);
    }
}

/// Returns the tokens of a message's `Connection` header that may name another header, at
/// most [`MAX_CONNECTION_TOKENS`] of them. The usual values, the connection options `close`
/// and `keep-alive`, name no header to remove (`Keep-Alive` goes as a hop-by-hop header
/// anyway), so they are skipped before they cost a parse into a `HeaderName`.
fn connection_tokens(headers: &http::HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|token| !token.is_empty())
        .take(MAX_CONNECTION_TOKENS)
        .filter(|token| {
            !token.eq_ignore_ascii_case(b"close") && !token.eq_ignore_ascii_case(b"keep-alive")
        })
}

/// Returns true when a client-sent request id may be kept: 1 to 128 characters from
/// `A-Z a-z 0-9 - _ . :`.
pub fn is_valid_request_id(value: &[u8]) -> bool {
    !value.is_empty()
        && value.len() <= 128
        && value
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// Generates a random request id: a UUID version 4 in its hyphenated form.
pub fn generate_request_id() -> HeaderValue {
    let mut buffer = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let text = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buffer);
    HeaderValue::from_str(text).expect("a UUID is a valid header value")
}

/// Appends an IP address in its usual text form. IPv4, the common case, is written without
/// going through `fmt`.
pub fn push_ip(out: &mut impl bytes::BufMut, address: std::net::IpAddr) {
    match address {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.put_u8(b'.');
                }
                out.put_slice(itoa::Buffer::new().format(octet).as_bytes());
            }
        }
        std::net::IpAddr::V6(v6) => out.put_slice(v6.to_string().as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_text_matches_display() {
        for text in [
            "0.0.0.0",
            "10.0.0.7",
            "255.255.255.255",
            "::1",
            "2001:db8::8a2e:370:7334",
        ] {
            let address: std::net::IpAddr = text.parse().unwrap();
            let mut out = Vec::new();
            push_ip(&mut out, address);
            assert_eq!(out, address.to_string().into_bytes(), "text of {text}");
        }
    }

    #[test]
    fn response_hop_by_hop_removal() {
        let response = |status: u16| {
            let mut response = ResponseHeader::build(status, None).unwrap();
            for (name, value) in [
                ("Connection", "Keep-Alive, close, X-Secret"),
                ("Keep-Alive", "timeout=5"),
                ("Proxy-Connection", "keep-alive"),
                ("Upgrade", "websocket"),
                ("X-Secret", "s"),
                ("Content-Length", "0"),
            ] {
                response.append_header(name, value).unwrap();
            }
            remove_response_hop_by_hop(&mut response);
            let mut names: Vec<&str> = response.headers.keys().map(HeaderName::as_str).collect();
            names.sort_unstable();
            names.join(" ")
        };
        assert_eq!(response(200), "connection content-length");
        assert_eq!(response(101), "connection content-length upgrade");

        let mut plain = ResponseHeader::build(200, None).unwrap();
        plain.append_header("Content-Length", "2").unwrap();
        remove_response_hop_by_hop(&mut plain);
        assert_eq!(
            plain.headers.len(),
            1,
            "a response without hop-by-hop headers"
        );
    }

    #[test]
    fn request_id_validation() {
        assert!(is_valid_request_id(b"abc-123_x.y:z"));
        assert!(!is_valid_request_id(b""));
        assert!(!is_valid_request_id(b"has space"));
        assert!(!is_valid_request_id(&[b'a'; 129]));
        assert!(is_valid_request_id(generate_request_id().as_bytes()));
    }

    #[test]
    fn route_headers_keep_their_wire_spelling() {
        let value = |v: &'static str| HeaderValue::from_static(v);
        let ops = HeaderOps::new(
            vec![
                (header::CACHE_CONTROL, value("no-cache")),
                (HeaderName::from_static("x-gateway"), value("gatehouse")),
            ],
            vec![(HeaderName::from_static("x-trace"), value("b"))],
            vec![header::COOKIE],
        );
        let mut request = RequestHeader::build("GET", b"/", None).unwrap();
        request.insert_header("Cookie", "a=1").unwrap();
        request.insert_header("X-Gateway", "old").unwrap();
        request.insert_header("X-Trace", "a").unwrap();
        ops.apply_to_request(&mut request);
        // Pingora decides the order of the header lines, so the test compares the lines only.
        let wire_lines = |wire: Vec<u8>| {
            let mut lines: Vec<String> = String::from_utf8(wire)
                .unwrap()
                .split_terminator("\r\n")
                .map(str::to_string)
                .collect();
            lines.sort();
            lines
        };
        let mut wire = Vec::new();
        request.header_to_h1_wire(&mut wire);
        assert_eq!(
            wire_lines(wire),
            [
                "Cache-Control: no-cache",
                "X-Trace: a",
                "x-gateway: gatehouse",
                "x-trace: b"
            ]
        );

        let mut response = ResponseHeader::build(200, None).unwrap();
        ops.apply_to_response(&mut response);
        let mut wire = Vec::new();
        response.header_to_h1_wire(&mut wire);
        assert_eq!(
            wire_lines(wire),
            [
                "Cache-Control: no-cache",
                "x-gateway: gatehouse",
                "x-trace: b"
            ]
        );
    }

    #[test]
    fn nominated_headers_are_removed() {
        let mut client = RequestHeader::build("GET", b"/", None).unwrap();
        client
            .insert_header("connection", "close, X-User, host, x-forwarded-for")
            .unwrap();
        let mut upstream = client.clone();
        upstream.insert_header("x-user", "u").unwrap();
        upstream.insert_header("host", "a").unwrap();
        upstream
            .insert_header("x-forwarded-for", "1.2.3.4")
            .unwrap();
        remove_connection_nominated(&client, &mut upstream);
        assert!(upstream.headers.get("x-user").is_none());
        assert!(upstream.headers.get("x-forwarded-for").is_none());
        assert_eq!(upstream.headers.get("host").unwrap(), "a");
    }
}
