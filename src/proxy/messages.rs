//! Helpers that read or adjust request and response headers for the proxy phases.

use http::{header, HeaderValue, StatusCode, Version};
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;
use std::borrow::Cow;

/// Returns the request target as origin-form bytes. An absolute-form target
/// (`GET http://host/path`) is reduced to its path and query.
pub(super) fn origin_form_target(request: &RequestHeader) -> Cow<'_, [u8]> {
    let raw = request.raw_path();
    if raw.first() == Some(&b'/') {
        return Cow::Borrowed(raw);
    }
    match request.uri.path_and_query() {
        Some(pq) if pq.as_str().starts_with('/') => Cow::Owned(pq.as_str().as_bytes().to_vec()),
        _ => Cow::Borrowed(raw),
    }
}

/// Returns the host the client asked for: the authority of an absolute-form target or of an
/// HTTP/2 request, else the Host header. RFC 9112 section 3.2.2 makes the target's authority
/// win over a Host header that disagrees with it.
pub(super) fn request_host(request: &RequestHeader) -> &str {
    request
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| {
            request
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
        })
        .unwrap_or("")
}

/// Makes an upstream response fit an HTTP/1 client connection. Pingora copies the upstream's
/// HTTP version and framing as they are, so an HTTP/1.0 upstream's close-delimited body would
/// reach an HTTP/1.1 client as `HTTP/1.0` with `Connection: keep-alive` and no length. The
/// response is sent as HTTP/1.1 with a chunked body instead; an HTTP/1.0 client gets the body
/// close-delimited and the connection closed.
pub(super) fn frame_for_http1_client(
    session: &mut Session,
    response: &mut ResponseHeader,
) -> Result<()> {
    let client_is_http11 = session.req_header().version == Version::HTTP_11;
    if client_is_http11 && response.version != Version::HTTP_11 {
        response.set_version(Version::HTTP_11);
    }
    let status = response.status;
    let bodyless = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || session.req_header().method == http::Method::HEAD;
    let framed = response.headers.contains_key(header::CONTENT_LENGTH)
        || response.headers.contains_key(header::TRANSFER_ENCODING);
    if bodyless || framed {
        return Ok(());
    }
    if client_is_http11 {
        response.insert_header(header::TRANSFER_ENCODING, "chunked")?;
    } else {
        session.set_keepalive(None);
    }
    Ok(())
}

/// Replaces a `Content-Length` sent as a list of equal values (`5, 5`, or two header lines)
/// with one value, as RFC 9110 section 8.6 allows. Pingora has already rejected lists whose
/// values differ, but forwards an equal list as it came, and many servers reject that.
pub(super) fn collapse_content_length(request: &mut RequestHeader) -> Result<()> {
    let values = request.headers.get_all(header::CONTENT_LENGTH);
    let mut iter = values.iter();
    let Some(first) = iter.next() else {
        return Ok(());
    };
    if iter.next().is_none() && !first.as_bytes().contains(&b',') {
        return Ok(());
    }
    let single = first
        .as_bytes()
        .split(|&b| b == b',')
        .next()
        .map(<[u8]>::trim_ascii)
        .unwrap_or_default()
        .to_vec();
    let value = HeaderValue::from_bytes(&single)
        .map_err(|_| Error::explain(ErrorType::InvalidHTTPHeader, "bad Content-Length"))?;
    request.insert_header(header::CONTENT_LENGTH, value)?;
    Ok(())
}

/// Returns true for an HTTP/1.1 request with neither a Host header nor an absolute-form
/// target. RFC 9112 section 3.2 requires a 400 for it, but Pingora accepts it.
pub(super) fn missing_required_host(request: &RequestHeader) -> bool {
    request.version == Version::HTTP_11
        && !request.headers.contains_key(header::HOST)
        && request.uri.authority().is_none()
}

pub(super) fn is_tls(session: &Session) -> bool {
    session
        .digest()
        .is_some_and(|digest| digest.ssl_digest.is_some())
}
