//! Route matching and path normalization, through a running gateway.

mod common;

use common::{EchoBackend, Gateway, Request};

/// Starts two echo backends `a` and `b` and a gateway whose config is `routes_yaml` below
/// the upstreams `a` and `b`, each with one of the backends as its single target.
async fn start_with_routes(routes_yaml: &str) -> (Gateway, EchoBackend, EchoBackend) {
    let a = EchoBackend::start("a").await;
    let b = EchoBackend::start("b").await;
    let yaml = format!(
        "listen:
  - address: {{listen}}
admin:
  address: {{admin}}
upstreams:
  - name: a
    targets:
      - {{ address: {a} }}
  - name: b
    targets:
      - {{ address: {b} }}
routes:
{routes_yaml}",
        a = a.address(),
        b = b.address(),
    );
    let gateway = Gateway::start(&yaml).await;
    (gateway, a, b)
}

#[tokio::test(flavor = "multi_thread")]
async fn first_match_wins() {
    let (gateway, _a, _b) = start_with_routes(
        "  - name: api
    match: { path_prefix: /api }
    upstream: a
  - name: api-users
    match: { path_prefix: /api/users }
    upstream: b
",
    )
    .await;

    let response = gateway.get("/api/users/7").await;
    assert_eq!(response.status, 200, "GET /api/users/7 status");
    assert_eq!(
        response.header("x-backend"),
        Some("a"),
        "the earlier route /api must win over the later /api/users"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn host_exact_match() {
    let (gateway, _a, _b) = start_with_routes(
        "  - name: api-host
    match: { hosts: [api.example.com] }
    upstream: a
",
    )
    .await;

    let exact = gateway
        .send(&Request::get("/x").host("api.example.com"))
        .await;
    assert_eq!(exact.status, 200, "Host: api.example.com status");
    assert_eq!(
        exact.header("x-backend"),
        Some("a"),
        "Host: api.example.com backend"
    );

    let with_port_and_case = gateway
        .send(&Request::get("/x").host("API.Example.COM:8080"))
        .await;
    assert_eq!(
        with_port_and_case.status, 200,
        "Host: API.Example.COM:8080 must match (case-insensitive, port ignored)"
    );

    let other = gateway
        .send(&Request::get("/x").host("other.example.com"))
        .await;
    assert_eq!(other.status, 404, "Host: other.example.com must not match");

    let suffix_only = gateway
        .send(&Request::get("/x").host("xapi.example.com"))
        .await;
    assert_eq!(
        suffix_only.status, 404,
        "Host: xapi.example.com must not match"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn host_wildcard_match() {
    let (gateway, _a, _b) = start_with_routes(
        "  - name: wildcard
    match: { hosts: [\"*.example.com\"] }
    upstream: a
",
    )
    .await;

    for host in ["a.example.com", "a.b.example.com", "A.Example.Com:443"] {
        let response = gateway.send(&Request::get("/").host(host)).await;
        assert_eq!(
            response.status, 200,
            "Host: {host} must match *.example.com"
        );
    }

    for host in ["example.com", "aexample.com", "a.example.org"] {
        let response = gateway.send(&Request::get("/").host(host)).await;
        assert_eq!(
            response.status, 404,
            "Host: {host} must not match *.example.com"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn path_exact_match() {
    let (gateway, _a, _b) = start_with_routes(
        "  - name: exact
    match: { path: /exact }
    upstream: a
",
    )
    .await;

    assert_eq!(gateway.get("/exact").await.status, 200, "GET /exact");
    assert_eq!(
        gateway.get("/exact?x=1").await.status,
        200,
        "GET /exact?x=1: the query is not part of the path"
    );
    assert_eq!(gateway.get("/exact/").await.status, 404, "GET /exact/");
    assert_eq!(gateway.get("/exactly").await.status, 404, "GET /exactly");
    assert_eq!(gateway.get("/exact/x").await.status, 404, "GET /exact/x");
}

#[tokio::test(flavor = "multi_thread")]
async fn path_prefix_segment_aware() {
    let (gateway, _a, _b) = start_with_routes(
        "  - name: api
    match: { path_prefix: /api }
    upstream: a
",
    )
    .await;

    for path in ["/api", "/api/", "/api/x", "/api/x/y", "/api?q=1"] {
        assert_eq!(
            gateway.get(path).await.status,
            200,
            "GET {path} is under /api"
        );
    }
    for path in ["/apiv2", "/apix/y", "/", "/ap"] {
        assert_eq!(
            gateway.get(path).await.status,
            404,
            "GET {path} is not under /api"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn path_regex_anchoring() {
    let (gateway, _a, _b) = start_with_routes(
        "  - name: anchored
    match: { path_regex: \"^/v[0-9]+/\" }
    upstream: a
  - name: unanchored
    match: { path_regex: \"/items/[0-9]+$\" }
    upstream: b
",
    )
    .await;

    let anchored = gateway.get("/v2/x").await;
    assert_eq!(anchored.status, 200, "GET /v2/x status");
    assert_eq!(
        anchored.header("x-backend"),
        Some("a"),
        "GET /v2/x matches ^/v[0-9]+/"
    );

    let unanchored = gateway.get("/shop/items/42").await;
    assert_eq!(unanchored.status, 200, "GET /shop/items/42 status");
    assert_eq!(
        unanchored.header("x-backend"),
        Some("b"),
        "an unanchored regex matches anywhere in the path"
    );

    assert_eq!(
        gateway.get("/x/v2/y").await.status,
        404,
        "GET /x/v2/y must not match the anchored ^/v[0-9]+/"
    );
    assert_eq!(
        gateway.get("/shop/items/42/x").await.status,
        404,
        "GET /shop/items/42/x must not match /items/[0-9]+$"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn methods_match() {
    let (gateway, _a, _b) = start_with_routes(
        "  - name: writes
    match: { path_prefix: /x, methods: [POST, PUT] }
    upstream: a
  - name: reads
    match: { path_prefix: /x, methods: [GET] }
    upstream: b
",
    )
    .await;

    let post = gateway.send(&Request::new("POST", "/x").body(b"{}")).await;
    assert_eq!(post.status, 200, "POST /x status");
    assert_eq!(
        post.header("x-backend"),
        Some("a"),
        "POST /x goes to the writes route"
    );

    let get = gateway.get("/x").await;
    assert_eq!(get.status, 200, "GET /x status");
    assert_eq!(
        get.header("x-backend"),
        Some("b"),
        "GET /x goes to the reads route"
    );

    let delete = gateway.send(&Request::new("DELETE", "/x")).await;
    assert_eq!(delete.status, 404, "DELETE /x matches no route");
}

#[tokio::test(flavor = "multi_thread")]
async fn headers_match() {
    let (gateway, _a, _b) = start_with_routes(
        "  - name: v2
    match: { path_prefix: /x, headers: { x-api-version: \"2\" } }
    upstream: a
",
    )
    .await;

    let matching = gateway
        .send(&Request::get("/x").header("X-Api-Version", "2"))
        .await;
    assert_eq!(
        matching.status, 200,
        "X-Api-Version: 2 must match (header names are case-insensitive)"
    );

    let other_value = gateway
        .send(&Request::get("/x").header("x-api-version", "3"))
        .await;
    assert_eq!(other_value.status, 404, "x-api-version: 3 must not match");

    let longer_value = gateway
        .send(&Request::get("/x").header("x-api-version", "22"))
        .await;
    assert_eq!(longer_value.status, 404, "x-api-version: 22 must not match");

    let missing = gateway.get("/x").await;
    assert_eq!(
        missing.status, 404,
        "a request without x-api-version must not match"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_route_404() {
    let (gateway, a, _b) = start_with_routes(
        "  - name: api
    match: { path_prefix: /api }
    upstream: a
",
    )
    .await;

    let response = gateway.get("/nowhere").await;
    assert_eq!(response.status, 404, "GET /nowhere status");
    assert_eq!(response.body_text(), "404 Not Found\n", "404 body");
    assert!(
        response.header("x-request-id").is_some(),
        "a 404 response carries x-request-id; headers {:?}",
        response.headers
    );
    assert_eq!(a.request_count(), 0, "no request reaches a backend");
}

const PUBLIC_AND_ADMIN_ROUTES: &str = "  - name: public
    match: { path_prefix: /public }
    upstream: a
  - name: admin
    match: { path_prefix: /admin }
    upstream: b
";

#[tokio::test(flavor = "multi_thread")]
async fn dot_segments_route_after_normalization() {
    let (gateway, a, b) = start_with_routes(PUBLIC_AND_ADMIN_ROUTES).await;

    for target in [
        "/public/../admin",
        "/public/%2e%2e/admin",
        "/public/%2E%2E/admin",
        "/public/./../admin",
        "/public/x/../../admin",
    ] {
        let response = gateway.get(target).await;
        assert_eq!(response.status, 200, "GET {target} status");
        let echoed = response.echoed();
        assert_eq!(
            echoed.backend, "b",
            "GET {target} must reach the admin upstream"
        );
        assert_eq!(echoed.target, "/admin", "GET {target} forwarded target");
    }
    assert_eq!(a.request_count(), 0, "the public upstream receives nothing");
    assert_eq!(
        b.request_count(),
        5,
        "the admin upstream receives every request"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn dot_segments_cannot_escape_prefix() {
    let (gateway, a, _b) = start_with_routes(
        "  - name: public
    match: { path_prefix: /public }
    upstream: a
",
    )
    .await;

    for target in [
        "/public/../admin",
        "/public/%2e%2e/admin",
        "/public/..",
        "/public/x/../../admin",
    ] {
        let response = gateway.get(target).await;
        assert_eq!(
            response.status, 404,
            "GET {target} leaves /public, so no route matches"
        );
    }
    assert_eq!(a.request_count(), 0, "the public upstream receives nothing");
}

#[tokio::test(flavor = "multi_thread")]
async fn encoded_separator_dot_segment_400() {
    let (gateway, a, b) = start_with_routes(PUBLIC_AND_ADMIN_ROUTES).await;

    for target in [
        "/public/..%2Fadmin",
        "/public/..%2fadmin",
        "/public/%2e%2e%2Fadmin",
        "/public/..%5Cadmin",
        "/public/x%2F..%2F..%2Fadmin",
        "/public/.%2Fx",
    ] {
        let response = gateway.get(target).await;
        assert_eq!(response.status, 400, "GET {target} status");
    }
    assert_eq!(a.request_count(), 0, "the public upstream receives nothing");
    assert_eq!(b.request_count(), 0, "the admin upstream receives nothing");
}

#[tokio::test(flavor = "multi_thread")]
async fn encoded_nul_400() {
    let (gateway, a, _b) = start_with_routes(PUBLIC_AND_ADMIN_ROUTES).await;

    let response = gateway.get("/public/a%00b").await;
    assert_eq!(response.status, 400, "GET /public/a%00b status");
    assert_eq!(a.request_count(), 0, "the public upstream receives nothing");
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicate_slashes_merged() {
    let (gateway, a, _b) = start_with_routes(PUBLIC_AND_ADMIN_ROUTES).await;

    let response = gateway.get("//public//x").await;
    assert_eq!(response.status, 200, "GET //public//x status");
    let echoed = response.echoed();
    assert_eq!(echoed.backend, "a", "GET //public//x matches /public");
    assert_eq!(
        echoed.target, "/public/x",
        "GET //public//x forwarded target"
    );
    assert_eq!(
        a.request_count(),
        1,
        "the public upstream receives the request"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn normalized_path_forwarded() {
    let (gateway, _a, _b) = start_with_routes(PUBLIC_AND_ADMIN_ROUTES).await;

    // (request-target, target the upstream must receive)
    let cases = [
        // Already normal: byte for byte, including the kept %2F and the query.
        ("/public/a%2Fb?q=%20x&y=1", "/public/a%2Fb?q=%20x&y=1"),
        ("/public/caf%C3%A9", "/public/caf%C3%A9"),
        // Unreserved characters are decoded.
        ("/public/%7Euser/%41%2d%5F", "/public/~user/A-_"),
        ("/public/a%2Eb", "/public/a.b"),
        // A decoded `.` segment is then removed like a literal one.
        ("/public/%2e", "/public/"),
        // Other escapes are kept, with uppercase hex digits.
        ("/public/a%3ab", "/public/a%3Ab"),
        ("/public/100%25", "/public/100%25"),
        ("/public/caf%c3%a9", "/public/caf%C3%A9"),
        // The query string is never touched, even where it looks like a path.
        (
            "/public/../admin?x=%2e%2e&y=/../z//",
            "/admin?x=%2e%2e&y=/../z//",
        ),
        ("/public/./x?", "/public/x?"),
    ];
    for (target, expected) in cases {
        let response = gateway.get(target).await;
        assert_eq!(response.status, 200, "GET {target} status");
        assert_eq!(
            response.echoed().target,
            expected,
            "GET {target} forwarded target"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn encoded_slash_stays_in_segment() {
    let (gateway, _a, _b) = start_with_routes(
        "  - name: files-a
    match: { path_prefix: /files/a }
    upstream: b
  - name: files
    match: { path_prefix: /files }
    upstream: a
",
    )
    .await;

    let encoded = gateway.get("/files/a%2Fb").await;
    assert_eq!(encoded.status, 200, "GET /files/a%2Fb status");
    let echoed = encoded.echoed();
    assert_eq!(
        echoed.backend, "a",
        "a%2Fb is one segment, so /files/a%2Fb is not under /files/a"
    );
    assert_eq!(
        echoed.target, "/files/a%2Fb",
        "GET /files/a%2Fb forwarded target"
    );

    let plain = gateway.get("/files/a/b").await;
    assert_eq!(plain.status, 200, "GET /files/a/b status");
    assert_eq!(
        plain.header("x-backend"),
        Some("b"),
        "/files/a/b is under /files/a"
    );
}
