//! Responses the gateway generates itself, and the mapping from a Pingora error to the status
//! code a client gets.

use crate::headers::X_REQUEST_ID_TITLE;
use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, StatusCode};
use pingora_error::{Error, ErrorSource, ErrorType};
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

/// The status logged for a client that went away before its response was complete. It is
/// never sent: nginx's convention, which operators' dashboards already know.
pub const CLIENT_CLOSED_REQUEST: u16 = 499;

/// Maps a request's fatal error to a status code.
///
/// Upstream timeouts give 504 and other upstream failures 502; Pingora's default maps both to
/// 502. A client that disconnected gets 499 and no response.
pub fn status_for_error(error: &Error) -> u16 {
    use ErrorType::*;
    if let HTTPStatus(code) = error.etype() {
        return *code;
    }
    match error.esource() {
        ErrorSource::Upstream => match error.etype() {
            ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout => 504,
            _ => 502,
        },
        ErrorSource::Downstream => match error.etype() {
            ReadError | WriteError | ConnectionClosed => CLIENT_CLOSED_REQUEST,
            ReadTimedout => 408,
            _ => 400,
        },
        ErrorSource::Internal | ErrorSource::Unset => 500,
    }
}

/// Names the kind of an upstream failure for `gatehouse_upstream_errors_total`.
pub fn upstream_error_kind(error: &Error) -> &'static str {
    use ErrorType::*;
    match error.etype() {
        ConnectTimedout => "connect_timeout",
        ConnectRefused => "connect_refused",
        ConnectNoRoute => "connect_no_route",
        TLSHandshakeFailure | TLSHandshakeTimedout | InvalidCert | HandshakeError
        | TLSWantX509Lookup => "tls",
        ConnectError | SocketError | BindError | ConnectProxyFailure => "connect_error",
        ReadTimedout => "read_timeout",
        WriteTimedout => "write_timeout",
        ConnectionClosed | ReadError | WriteError => "reset",
        InvalidHTTPHeader | H1Error | H2Error | InvalidH2 | H2Downgrade => "protocol",
        _ => "other",
    }
}

/// Builds the short body of a generated error: `502 Bad Gateway\n`. No peer address, cause or
/// error chain is ever included.
pub fn error_body(status: StatusCode) -> Bytes {
    let reason = status.canonical_reason().unwrap_or("Error");
    Bytes::from(format!("{} {reason}\n", status.as_u16()))
}

/// Writes a complete response the gateway generated. `close` makes Pingora close the client
/// connection afterwards, which is what a failed proxy attempt needs; the request body left
/// unread would otherwise be read as the next request.
pub async fn write_generated_response(
    session: &mut Session,
    mut response: ResponseHeader,
    body: Bytes,
    request_id: Option<&HeaderValue>,
    close: bool,
) -> pingora_error::Result<()> {
    if let Some(id) = request_id {
        response.insert_header(X_REQUEST_ID_TITLE, id.clone())?;
    }
    response.insert_header(header::CONTENT_LENGTH, body.len())?;
    if close {
        session.set_keepalive(None);
    }
    let head_only = session.req_header().method == http::Method::HEAD || body.is_empty();
    session
        .write_response_header(Box::new(response), head_only)
        .await?;
    if !head_only {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

/// Writes a plain-text error such as `404 Not Found\n`.
pub async fn write_error(
    session: &mut Session,
    status: StatusCode,
    request_id: Option<&HeaderValue>,
    close: bool,
) -> pingora_error::Result<()> {
    write_error_with_headers(session, status, &[], request_id, close).await
}

/// Writes a plain-text error with extra headers, such as `Retry-After` on a 429.
pub async fn write_error_with_headers(
    session: &mut Session,
    status: StatusCode,
    headers: &[(HeaderName, HeaderValue)],
    request_id: Option<&HeaderValue>,
    close: bool,
) -> pingora_error::Result<()> {
    let mut response = ResponseHeader::build(status, Some(4 + headers.len()))?;
    response.insert_header(header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
    response.insert_header(header::CACHE_CONTROL, "no-store")?;
    for (name, value) in headers {
        response.insert_header(name.clone(), value.clone())?;
    }
    write_generated_response(session, response, error_body(status), request_id, close).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_timeouts_are_504() {
        for etype in [
            ErrorType::ConnectTimedout,
            ErrorType::ReadTimedout,
            ErrorType::WriteTimedout,
        ] {
            let error = Error::new_up(etype);
            assert_eq!(status_for_error(&error), 504);
        }
    }

    #[test]
    fn upstream_failures_are_502() {
        for etype in [
            ErrorType::ConnectRefused,
            ErrorType::ConnectionClosed,
            ErrorType::ReadError,
        ] {
            let error = Error::new_up(etype);
            assert_eq!(status_for_error(&error), 502);
        }
    }

    #[test]
    fn client_disconnect_is_499() {
        let error = Error::new_down(ErrorType::ConnectionClosed);
        assert_eq!(status_for_error(&error), CLIENT_CLOSED_REQUEST);
    }

    #[test]
    fn error_body_is_short() {
        assert_eq!(
            error_body(StatusCode::BAD_GATEWAY),
            Bytes::from("502 Bad Gateway\n")
        );
    }
}
