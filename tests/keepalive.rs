//! Kept-alive HTTP/1 connections: between two requests gatehouse waits for the next request's
//! first bytes in its own loop and reads them into a 1 KiB buffer of the client stream, which
//! Pingora's header parser then reads first. These tests send the next request in the shapes
//! that exercise that handoff: larger than the buffer, in pieces, and on many connections.
//! Requests that rule out keep-alive must close their connection after the response.

mod common;

use common::{EchoBackend, Gateway, HttpClient, Request};
use std::time::Duration;

fn config(backend: &str) -> String {
    format!(
        "listen:
  - address: {{listen}}
admin:
  address: {{admin}}
upstreams:
  - name: backend
    targets:
      - {{ address: {backend} }}
routes:
  - name: api
    match: {{ path_prefix: /api }}
    upstream: backend
"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn large_next_request_served_whole() {
    let backend = EchoBackend::start("b").await;
    let gateway = Gateway::start(&config(&backend.address())).await;
    let mut client = HttpClient::connect(gateway.listen_addr()).await;

    let first = client.send(&Request::get("/api/first")).await;
    assert_eq!(first.status, 200, "first request");
    // 3,000 bytes of header value: the next request header is about three times the buffer.
    let padding = "p".repeat(3000);
    let second = client
        .send(&Request::get("/api/second").header("X-Padding", &padding))
        .await;
    assert_eq!(second.status, 200, "second request, larger than the buffer");
    let echoed = second.echoed();
    assert_eq!(echoed.target, "/api/second");
    assert_eq!(
        echoed.header("x-padding").map(str::len),
        Some(3000),
        "the whole header value reached the backend"
    );
    let third = client.send(&Request::get("/api/third")).await;
    assert_eq!(third.status, 200, "third request on the same connection");
    assert_eq!(third.echoed().target, "/api/third");
    assert_eq!(
        backend.connection_count(),
        1,
        "one upstream connection reused"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn next_request_in_pieces_served() {
    let backend = EchoBackend::start("b").await;
    let gateway = Gateway::start(&config(&backend.address())).await;
    let mut client = HttpClient::connect(gateway.listen_addr()).await;

    let first = client.send(&Request::get("/api/first")).await;
    assert_eq!(first.status, 200, "first request");
    let bytes = Request::get("/api/pieces")
        .header("X-Piece", "three")
        .to_bytes();
    // The first byte alone, then the rest in two writes. The pauses are the client's pace,
    // so that the gateway's first read can only see the first byte; nothing waits on them.
    let (head, rest) = bytes.split_at(1);
    let (middle, tail) = rest.split_at(rest.len() / 2);
    for piece in [head, middle] {
        client.send_raw(piece).await.expect("send a piece");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    client.send_raw(tail).await.expect("send the last piece");
    let response = client.read_response(false).await.expect("response");
    assert_eq!(response.status, 200, "request sent in pieces");
    let echoed = response.echoed();
    assert_eq!(echoed.target, "/api/pieces");
    assert_eq!(echoed.header("x-piece"), Some("three"));
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_serve_next_request() {
    const CONNECTIONS: usize = 50;
    let backend = EchoBackend::start("b").await;
    let gateway = Gateway::start(&config(&backend.address())).await;

    let mut clients = Vec::with_capacity(CONNECTIONS);
    for i in 0..CONNECTIONS {
        let mut client = HttpClient::connect(gateway.listen_addr()).await;
        let response = client.send(&Request::get(&format!("/api/a{i}"))).await;
        assert_eq!(response.status, 200, "first request on connection {i}");
        clients.push(client);
    }
    // Every connection now waits for its next request. Each gets one, the last opened first.
    for (i, client) in clients.iter_mut().enumerate().rev() {
        let response = client.send(&Request::get(&format!("/api/b{i}"))).await;
        assert_eq!(response.status, 200, "second request on connection {i}");
        assert_eq!(response.echoed().target, format!("/api/b{i}"));
    }
    assert_eq!(backend.request_count(), 2 * CONNECTIONS);
}

/// Sends `request` on a new connection and returns the response head and whether the gateway
/// closed the connection after the response.
async fn response_then_close(gateway: &Gateway, request: &[u8]) -> (String, bool) {
    let mut client = HttpClient::connect(gateway.listen_addr()).await;
    client.send_raw(request).await.expect("send request");
    let response = client.read_response(false).await.expect("read response");
    let head = format!(
        "{} connection={}",
        response.status,
        response.header("connection").unwrap_or("-")
    );
    let closed = tokio::time::timeout(Duration::from_secs(2), client.read_until_close())
        .await
        .is_ok_and(|rest| rest.is_ok_and(|rest| rest.is_empty()));
    (head, closed)
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_that_rule_out_keepalive_close() {
    let backend = EchoBackend::start("b").await;
    let gateway = Gateway::start(&config(&backend.address())).await;

    let cases: [(&str, &[u8]); 3] = [
        ("HTTP/1.0", b"GET /api/a HTTP/1.0\r\nHost: b\r\n\r\n"),
        (
            "Connection: close",
            b"GET /api/a HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n",
        ),
        (
            "Content-Length with Transfer-Encoding",
            b"POST /api/a HTTP/1.1\r\nHost: b\r\nContent-Length: 3\r\n\
              Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        ),
    ];
    for (case, request) in cases {
        let (head, closed) = response_then_close(&gateway, request).await;
        assert!(head.starts_with("200 "), "{case}: status in {head}");
        assert!(
            !head.contains("keep-alive"),
            "{case}: the response announces no keep-alive: {head}"
        );
        assert!(closed, "{case}: the gateway closes the connection at once");
    }

    let (head, closed) = response_then_close(
        &gateway,
        b"GET /api/a HTTP/1.0\r\nHost: b\r\nConnection: keep-alive\r\n\r\n",
    )
    .await;
    assert_eq!(
        head, "200 connection=keep-alive",
        "HTTP/1.0 with keep-alive"
    );
    assert!(
        !closed,
        "an HTTP/1.0 client that asks for keep-alive keeps it"
    );
}
