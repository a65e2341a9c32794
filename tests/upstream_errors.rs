//! Responses the gateway generates when the upstream fails, and malformed client requests.

mod common;

use std::time::{Duration, Instant};

use common::{closed_port, EchoBackend, Gateway, HttpClient, Request, ResetBackend, SilentBackend};

/// Starts a gateway with one upstream `broken` (single target `address`) routed at
/// `/broken`, and a working echo upstream routed at `/ok`. `timeouts_yaml` is inserted at
/// the top level and `route_yaml` into the `/broken` route; either may be empty.
async fn start_gateway(
    address: &str,
    echo: &EchoBackend,
    timeouts_yaml: &str,
    route_yaml: &str,
) -> Gateway {
    let yaml = format!(
        "listen:
  - address: {{listen}}
admin:
  address: {{admin}}
{timeouts_yaml}upstreams:
  - name: broken
    targets:
      - {{ address: {address} }}
  - name: echo
    targets:
      - {{ address: {echo_address} }}
routes:
  - name: broken
    match: {{ path_prefix: /broken }}
    upstream: broken
{route_yaml}  - name: ok
    match: {{ path_prefix: /ok }}
    upstream: echo
",
        echo_address = echo.address(),
    );
    Gateway::start(&yaml).await
}

/// Asserts that `body` contains no IPv4 address and no part of the upstream address
/// `address` (host or port).
fn assert_no_address(body: &str, address: &str) {
    let (host, port) = address.rsplit_once(':').expect("address has a port");
    assert!(
        !body.contains(host),
        "error body must not contain the upstream host: {body:?}"
    );
    assert!(
        !body.contains(port),
        "error body must not contain the upstream port: {body:?}"
    );
    let ipv4 = regex::Regex::new(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}").expect("valid regex");
    assert!(
        !ipv4.is_match(body),
        "error body must not contain an IPv4 address: {body:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_connection_502() {
    let echo = EchoBackend::start("echo").await;
    let address = closed_port().to_string();
    let gateway = start_gateway(&address, &echo, "", "").await;

    let response = gateway.get("/broken").await;
    assert_eq!(response.status, 502, "GET /broken on a closed port status");
    assert_eq!(response.body_text(), "502 Bad Gateway\n", "502 body");
    assert_no_address(&response.body_text(), &address);
    assert!(
        response.header("x-request-id").is_some(),
        "a 502 response carries x-request-id; headers {:?}",
        response.headers
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn reset_connection_502() {
    let echo = EchoBackend::start("echo").await;
    let reset = ResetBackend::start().await;
    let gateway = start_gateway(&reset.address(), &echo, "", "").await;

    let response = gateway.get("/broken").await;
    assert_eq!(
        response.status, 502,
        "GET /broken on a resetting upstream status"
    );
    assert_eq!(response.body_text(), "502 Bad Gateway\n", "502 body");
    assert_no_address(&response.body_text(), &reset.address());
    assert!(
        reset.connection_count() >= 1,
        "the gateway connected to the upstream"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_read_timeout_504() {
    let echo = EchoBackend::start("echo").await;
    let silent = SilentBackend::start().await;
    let gateway = start_gateway(
        &silent.address(),
        &echo,
        "timeouts:\n  upstream_read: 1s\n",
        "",
    )
    .await;

    let mut client = gateway.client().await;
    let started = Instant::now();
    let response = client.send(&Request::get("/broken")).await;
    let elapsed = started.elapsed();

    assert_eq!(
        response.status, 504,
        "GET /broken on a silent upstream status"
    );
    assert_eq!(response.body_text(), "504 Gateway Timeout\n", "504 body");
    assert_no_address(&response.body_text(), &silent.address());
    // Tolerance: the 504 may arrive up to 500 ms after the 1 s timeout, never before it.
    assert!(
        elapsed >= Duration::from_secs(1),
        "504 arrived after {elapsed:?}, before the 1 s upstream_read timeout"
    );
    assert!(
        elapsed < Duration::from_millis(1500),
        "504 arrived after {elapsed:?}, expected before 1.5 s"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn route_upstream_read_timeout_overrides() {
    let echo = EchoBackend::start("echo").await;
    let silent = SilentBackend::start().await;
    let gateway = start_gateway(
        &silent.address(),
        &echo,
        "timeouts:\n  upstream_read: 30s\n",
        "    timeouts: { upstream_read: 1s }\n",
    )
    .await;

    let mut client = gateway.client().await;
    let started = Instant::now();
    let response = client.send(&Request::get("/broken")).await;
    let elapsed = started.elapsed();

    assert_eq!(
        response.status, 504,
        "GET /broken with a route timeout of 1s status"
    );
    assert_eq!(response.body_text(), "504 Gateway Timeout\n", "504 body");
    // Tolerance: the 504 may arrive up to 500 ms after the route's 1 s timeout, never
    // before it, and long before the top-level 30 s.
    assert!(
        elapsed >= Duration::from_secs(1),
        "504 arrived after {elapsed:?}, before the route's 1 s upstream_read timeout"
    );
    assert!(
        elapsed < Duration::from_millis(1500),
        "504 arrived after {elapsed:?}, expected before 1.5 s"
    );
}

/// Sends `raw` on a new connection and asserts that the gateway responds with a 4xx status
/// or closes the connection within the client's I/O timeout, then that a well-formed
/// request on a new connection still gets 200.
async fn assert_rejected_then_serving(gateway: &Gateway, raw: &[u8]) {
    let mut client = HttpClient::connect(gateway.listen_addr()).await;
    // The gateway may reset the connection before reading all of it, so a write error is
    // one of the accepted outcomes.
    let sent = client.send_raw(raw).await;
    if sent.is_ok() {
        match client.read_response(false).await {
            Ok(response) => assert!(
                (400..500).contains(&response.status),
                "malformed request {:?} got status {}, expected 4xx",
                String::from_utf8_lossy(raw),
                response.status
            ),
            Err(error) => assert_ne!(
                error.kind(),
                std::io::ErrorKind::TimedOut,
                "malformed request {:?} got neither a response nor a close: {error}",
                String::from_utf8_lossy(raw)
            ),
        }
    }

    let next = gateway.get("/ok").await;
    assert_eq!(
        next.status, 200,
        "GET /ok on a new connection after a malformed request"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_content_length_rejected() {
    let echo = EchoBackend::start("echo").await;
    let gateway = start_gateway(&echo.address(), &echo, "", "").await;

    assert_rejected_then_serving(
        &gateway,
        b"GET /ok HTTP/1.1\r\nHost: a\r\nContent-Length: abc\r\n\r\n",
    )
    .await;
    assert_eq!(
        echo.request_count(),
        1,
        "only the well-formed request reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_request_line_rejected() {
    let echo = EchoBackend::start("echo").await;
    let gateway = start_gateway(&echo.address(), &echo, "", "").await;

    assert_rejected_then_serving(&gateway, b"\x01\x02 not http at all\r\n\r\n").await;
    assert_rejected_then_serving(&gateway, b"GET\r\n\r\n").await;
    assert_eq!(
        echo.request_count(),
        2,
        "only the well-formed requests reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn conflicting_content_length_rejected() {
    let echo = EchoBackend::start("echo").await;
    let gateway = start_gateway(&echo.address(), &echo, "", "").await;

    // Two different lengths make the framing ambiguous (request smuggling), RFC 9112 6.3.
    assert_rejected_then_serving(
        &gateway,
        b"POST /ok HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde",
    )
    .await;
    assert_eq!(
        echo.request_count(),
        1,
        "only the well-formed request reached the upstream"
    );
}
