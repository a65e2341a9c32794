//! Prefix stripping, Host rewriting, header edits, hop-by-hop removal, X-Forwarded-* and
//! X-Request-Id handling, and request bodies, as seen by the upstream and by the client.

mod common;

use common::{is_well_formed_request_id, EchoBackend, Gateway, Request};

/// Starts one echo backend `users` and a gateway with upstream `users` and the given routes.
async fn start_with_routes(routes_yaml: &str) -> (Gateway, EchoBackend) {
    let backend = EchoBackend::start("users").await;
    let yaml = format!(
        "listen:
  - address: {{listen}}
admin:
  address: {{admin}}
upstreams:
  - name: users
    targets:
      - {{ address: {address} }}
routes:
{routes_yaml}",
        address = backend.address(),
    );
    let gateway = Gateway::start(&yaml).await;
    (gateway, backend)
}

/// A single catch-all route to `users` with no rewrite or header edits.
const PLAIN_ROUTE: &str = "  - name: users
    match: { path_prefix: / }
    upstream: users
";

#[tokio::test(flavor = "multi_thread")]
async fn strip_prefix_targets() {
    let (gateway, _backend) = start_with_routes(
        "  - name: api
    match: { path_prefix: /api }
    upstream: users
    rewrite: { strip_prefix: /api }
",
    )
    .await;

    // (request-target, target the upstream must receive)
    let cases = [
        ("/api/f/a%2Fb?q=%20x&y=1", "/f/a%2Fb?q=%20x&y=1"),
        ("/api/users/7", "/users/7"),
        ("/api", "/"),
        ("/api/", "/"),
        ("/api?x=1", "/?x=1"),
        ("/api/x?", "/x?"),
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
async fn rewrite_host() {
    let (gateway, _backend) = start_with_routes(
        "  - name: rewritten
    match: { path_prefix: /rewritten }
    upstream: users
    rewrite: { host: users.internal }
  - name: kept
    match: { path_prefix: /kept }
    upstream: users
",
    )
    .await;

    let rewritten = gateway
        .send(&Request::get("/rewritten").host("shop.example"))
        .await;
    assert_eq!(rewritten.status, 200, "GET /rewritten status");
    assert_eq!(
        rewritten.echoed().header_values("host"),
        vec!["users.internal"],
        "rewrite.host replaces the Host header sent upstream"
    );

    let kept_host = gateway
        .send(&Request::get("/kept").host("shop.example"))
        .await;
    assert_eq!(kept_host.status, 200, "GET /kept status");
    assert_eq!(
        kept_host.echoed().header_values("host"),
        vec!["shop.example"],
        "without rewrite.host the client's Host is kept"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn request_headers_set_add_remove() {
    let (gateway, _backend) = start_with_routes(
        "  - name: users
    match: { path_prefix: / }
    upstream: users
    request_headers:
      set: { x-team: core }
      add: { x-extra: two }
      remove: [cookie]
",
    )
    .await;

    let response = gateway
        .send(
            &Request::get("/")
                .header("X-Team", "client")
                .header("X-Extra", "one")
                .header("Cookie", "session=secret"),
        )
        .await;
    assert_eq!(response.status, 200, "GET / status");
    let echoed = response.echoed();
    assert_eq!(
        echoed.header_values("x-team"),
        vec!["core"],
        "set replaces x-team"
    );
    assert_eq!(
        echoed.header_values("x-extra"),
        vec!["one", "two"],
        "add appends a second x-extra value after the client's"
    );
    assert_eq!(
        echoed.header_values("cookie"),
        Vec::<&str>::new(),
        "remove deletes cookie"
    );

    let without_client_headers = gateway.get("/").await;
    let echoed = without_client_headers.echoed();
    assert_eq!(
        echoed.header_values("x-team"),
        vec!["core"],
        "set adds a missing x-team"
    );
    assert_eq!(
        echoed.header_values("x-extra"),
        vec!["two"],
        "add adds a missing x-extra"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn response_headers_set_add_remove() {
    let (gateway, _backend) = start_with_routes(
        "  - name: users
    match: { path_prefix: / }
    upstream: users
    response_headers:
      set: { content-type: text/plain }
      add: { x-backend: added }
      remove: [server]
",
    )
    .await;

    let response = gateway.get("/").await;
    assert_eq!(response.status, 200, "GET / status");
    assert_eq!(
        response.header_values("content-type"),
        vec!["text/plain"],
        "set replaces the backend's application/json"
    );
    assert_eq!(
        response.header_values("x-backend"),
        vec!["users", "added"],
        "add appends a value after the backend's x-backend"
    );
    assert_eq!(
        response.header_values("server"),
        Vec::<&str>::new(),
        "remove deletes the backend's server header"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn hop_by_hop_headers_removed() {
    let (gateway, _backend) = start_with_routes(PLAIN_ROUTE).await;

    let response = gateway
        .send(
            &Request::get("/")
                .header("Connection", "close, X-Forwarded-For, X-User")
                .header("X-User", "u")
                .header("X-Forwarded-For", "1.2.3.4")
                .header("Keep-Alive", "5")
                .header("TE", "trailers")
                .header("Proxy-Connection", "keep-alive")
                .header("Trailer", "x-checksum"),
        )
        .await;
    assert_eq!(response.status, 200, "GET / status");
    let echoed = response.echoed();

    assert_eq!(
        echoed.header("x-user"),
        None,
        "x-user was named in Connection"
    );
    assert_eq!(
        echoed.header("keep-alive"),
        None,
        "keep-alive is hop-by-hop"
    );
    assert_eq!(echoed.header("te"), None, "te is hop-by-hop");
    assert_eq!(
        echoed.header("proxy-connection"),
        None,
        "proxy-connection is hop-by-hop"
    );
    assert_eq!(echoed.header("trailer"), None, "trailer is hop-by-hop");
    for value in echoed.header_values("connection") {
        let value = value.to_ascii_lowercase();
        assert!(
            !value.contains("x-user"),
            "the upstream Connection header must not name x-user: {value:?}"
        );
        assert!(
            !value.contains("x-forwarded-for"),
            "the upstream Connection header must not name x-forwarded-for: {value:?}"
        );
    }
    assert_eq!(
        echoed.header_values("x-forwarded-for"),
        vec!["127.0.0.1"],
        "the client's X-Forwarded-For was named in Connection, so only the peer remains"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn upgrade_header_without_upgrade_removed() {
    let (gateway, _backend) = start_with_routes(PLAIN_ROUTE).await;

    // Connection does not name upgrade, so this is not a protocol upgrade request.
    let response = gateway
        .send(&Request::get("/").header("Upgrade", "websocket"))
        .await;
    assert_eq!(response.status, 200, "GET / with Upgrade status");
    assert_eq!(
        response.echoed().header("upgrade"),
        None,
        "Upgrade is hop-by-hop outside a real upgrade"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn connection_named_header_set_by_route() {
    let (gateway, _backend) = start_with_routes(
        "  - name: users
    match: { path_prefix: / }
    upstream: users
    request_headers: { set: { x-team: core } }
",
    )
    .await;

    let response = gateway
        .send(
            &Request::get("/")
                .header("Connection", "x-team")
                .header("X-Team", "client"),
        )
        .await;
    assert_eq!(response.status, 200, "GET / status");
    assert_eq!(
        response.echoed().header_values("x-team"),
        vec!["core"],
        "the route's set applies after the client's Connection-named x-team is dropped"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarded_for_appends_peer() {
    let (gateway, _backend) = start_with_routes(PLAIN_ROUTE).await;

    let with_client_value = gateway
        .send(&Request::get("/").header("X-Forwarded-For", "1.2.3.4"))
        .await;
    assert_eq!(
        with_client_value.status, 200,
        "GET / with X-Forwarded-For status"
    );
    assert_eq!(
        with_client_value.echoed().header_values("x-forwarded-for"),
        vec!["1.2.3.4, 127.0.0.1"],
        "the peer address is appended to the client's X-Forwarded-For"
    );

    let without_client_value = gateway.get("/").await;
    assert_eq!(without_client_value.status, 200, "GET / status");
    assert_eq!(
        without_client_value
            .echoed()
            .header_values("x-forwarded-for"),
        vec!["127.0.0.1"],
        "without a client X-Forwarded-For the peer address is the only entry"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarded_proto_and_host() {
    let (gateway, _backend) = start_with_routes(PLAIN_ROUTE).await;

    let response = gateway.send(&Request::get("/").host("shop.example")).await;
    assert_eq!(response.status, 200, "GET / status");
    let echoed = response.echoed();
    assert_eq!(
        echoed.header_values("x-forwarded-proto"),
        vec!["http"],
        "x-forwarded-proto on a plain HTTP listener"
    );
    assert_eq!(
        echoed.header_values("x-forwarded-host"),
        vec!["shop.example"],
        "x-forwarded-host is the client's Host"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn request_id_kept_when_valid() {
    let (gateway, _backend) = start_with_routes(PLAIN_ROUTE).await;

    let max_length_id = "a".repeat(128);
    for id in ["abc-123_X.y:z", "7", max_length_id.as_str()] {
        let response = gateway
            .send(&Request::get("/").header("X-Request-Id", id))
            .await;
        assert_eq!(
            response.status, 200,
            "GET / with X-Request-Id {id:?} status"
        );
        assert_eq!(
            response.echoed().header_values("x-request-id"),
            vec![id],
            "a well-formed X-Request-Id is forwarded unchanged"
        );
        assert_eq!(
            response.header("x-request-id"),
            Some(id),
            "a well-formed X-Request-Id is returned to the client"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn request_id_replaced_when_invalid() {
    let (gateway, _backend) = start_with_routes(PLAIN_ROUTE).await;

    let too_long = "a".repeat(129);
    let far_too_long = "b".repeat(200);
    for id in [
        "bad id",
        "semi;colon",
        "slash/id",
        too_long.as_str(),
        far_too_long.as_str(),
    ] {
        let response = gateway
            .send(&Request::get("/").header("X-Request-Id", id))
            .await;
        assert_eq!(
            response.status, 200,
            "GET / with X-Request-Id {id:?} status"
        );
        let echoed = response.echoed();
        let forwarded = echoed.header_values("x-request-id");
        assert_eq!(
            forwarded.len(),
            1,
            "exactly one x-request-id upstream for {id:?}"
        );
        assert_ne!(forwarded[0], id, "the invalid id {id:?} is replaced");
        assert!(
            is_well_formed_request_id(forwarded[0]),
            "the replacement {:?} is well formed",
            forwarded[0]
        );
        assert_eq!(
            response.header("x-request-id"),
            Some(forwarded[0]),
            "the client gets the id the upstream saw"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn request_id_generated_when_absent() {
    let (gateway, _backend) = start_with_routes(PLAIN_ROUTE).await;

    let first = gateway.get("/").await;
    let second = gateway.get("/").await;
    let first_id = first.echoed().header("x-request-id").map(str::to_string);
    let second_id = second.echoed().header("x-request-id").map(str::to_string);

    let first_id = first_id.expect("the upstream receives a generated x-request-id");
    assert!(
        is_well_formed_request_id(&first_id),
        "the generated id {first_id:?} is well formed"
    );
    assert_eq!(
        first.header("x-request-id"),
        Some(first_id.as_str()),
        "the client gets the id the upstream saw"
    );
    assert_ne!(
        second_id.as_deref(),
        Some(first_id.as_str()),
        "two requests get different generated ids"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn request_body_forwarded() {
    let (gateway, _backend) = start_with_routes(PLAIN_ROUTE).await;

    let body = b"{\"name\": \"caf\xc3\xa9\", \"n\": 1}\n";
    let with_length = gateway
        .send(&Request::new("POST", "/items").body(body))
        .await;
    assert_eq!(with_length.status, 200, "POST with Content-Length status");
    let echoed = with_length.echoed();
    assert_eq!(echoed.method, "POST", "method forwarded");
    assert_eq!(
        echoed.body.as_bytes(),
        body,
        "Content-Length body forwarded byte for byte"
    );

    let mut chunked = Request::new("PUT", "/items/1").header("Transfer-Encoding", "chunked");
    chunked.body = b"5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n".to_vec();
    let with_chunks = gateway.send(&chunked).await;
    assert_eq!(with_chunks.status, 200, "PUT with a chunked body status");
    let echoed = with_chunks.echoed();
    assert_eq!(echoed.method, "PUT", "method forwarded");
    assert_eq!(echoed.body, "hello, world", "chunked body forwarded");
}
