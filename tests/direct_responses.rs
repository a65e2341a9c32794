//! Routes with `respond`, which the gateway serves without contacting an upstream.

mod common;

use common::{EchoBackend, Gateway, Request};

/// Starts a gateway with direct-response routes and one proxied route `/proxied` to an
/// echo backend, which must never see the direct-response requests.
async fn start_gateway() -> (Gateway, EchoBackend) {
    let backend = EchoBackend::start("echo").await;
    let yaml = format!(
        "listen:
  - address: {{listen}}
admin:
  address: {{admin}}
upstreams:
  - name: echo
    targets:
      - {{ address: {address} }}
routes:
  - name: hello
    match: {{ path: / }}
    respond: {{ status: 200, body: \"hello\\n\", headers: {{ content-type: text/plain, x-served-by: gatehouse }} }}
  - name: gone
    match: {{ path_prefix: /old }}
    respond: {{ status: 410, body: \"gone\" }}
  - name: empty
    match: {{ path: /empty }}
    respond: {{ status: 503 }}
  - name: proxied
    match: {{ path_prefix: /proxied }}
    upstream: echo
",
        address = backend.address(),
    );
    let gateway = Gateway::start(&yaml).await;
    (gateway, backend)
}

#[tokio::test(flavor = "multi_thread")]
async fn respond_get() {
    let (gateway, backend) = start_gateway().await;

    let response = gateway.get("/").await;
    assert_eq!(response.status, 200, "GET / status");
    assert_eq!(response.body_text(), "hello\n", "GET / body");
    assert_eq!(
        response.header("content-length"),
        Some("6"),
        "content-length of hello\\n"
    );
    assert_eq!(
        response.header("content-type"),
        Some("text/plain"),
        "configured content-type"
    );
    assert_eq!(
        response.header("x-served-by"),
        Some("gatehouse"),
        "configured x-served-by"
    );
    assert!(
        response.header("x-request-id").is_some(),
        "a direct response carries x-request-id; headers {:?}",
        response.headers
    );
    assert_eq!(
        backend.request_count(),
        0,
        "no request reaches the upstream"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn respond_head_without_body() {
    let (gateway, backend) = start_gateway().await;

    // A body sent after the HEAD response would be read as the next response's status
    // line, so the GET that follows on the same connection checks that none was sent.
    let mut client = gateway.client().await;
    let head = client.send(&Request::new("HEAD", "/")).await;
    assert_eq!(head.status, 200, "HEAD / status");
    assert_eq!(
        head.header("content-length"),
        Some("6"),
        "HEAD / content-length of the GET body"
    );
    assert_eq!(
        head.header("content-type"),
        Some("text/plain"),
        "HEAD / content-type"
    );

    let get = client.send(&Request::get("/")).await;
    assert_eq!(
        get.status, 200,
        "GET / after HEAD on the same connection status"
    );
    assert_eq!(get.body_text(), "hello\n", "GET / after HEAD body");
    assert_eq!(
        backend.request_count(),
        0,
        "no request reaches the upstream"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn respond_other_status() {
    let (gateway, backend) = start_gateway().await;

    let gone_response = gateway.get("/old/page").await;
    assert_eq!(gone_response.status, 410, "GET /old/page status");
    assert_eq!(gone_response.body_text(), "gone", "GET /old/page body");
    assert_eq!(
        gone_response.header("content-length"),
        Some("4"),
        "GET /old/page content-length"
    );

    let empty = gateway.get("/empty").await;
    assert_eq!(empty.status, 503, "GET /empty status");
    assert_eq!(empty.body_text(), "", "GET /empty body");
    assert_eq!(
        empty.header("content-length"),
        Some("0"),
        "GET /empty content-length"
    );
    assert_eq!(
        backend.request_count(),
        0,
        "no request reaches the upstream"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn respond_any_method() {
    let (gateway, _backend) = start_gateway().await;

    let post = gateway
        .send(&Request::new("POST", "/").body(b"ignored"))
        .await;
    assert_eq!(
        post.status, 200,
        "POST / status, the route has no methods condition"
    );
    assert_eq!(post.body_text(), "hello\n", "POST / body");
}

#[tokio::test(flavor = "multi_thread")]
async fn proxied_route_beside_direct() {
    let (gateway, backend) = start_gateway().await;

    let response = gateway.get("/proxied/x").await;
    assert_eq!(response.status, 200, "GET /proxied/x status");
    assert_eq!(response.echoed().target, "/proxied/x", "forwarded target");
    assert_eq!(
        backend.request_count(),
        1,
        "the proxied request reaches the upstream"
    );
}
