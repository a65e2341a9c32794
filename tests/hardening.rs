//! Regression tests for problems an attack run found: path parameters hiding dot segments,
//! list-valued Content-Length, unsolicited 101, HTTP/1.0 without Host, SIGHUP, taken ports
//! and config values that used to pass `check`.

mod common;

use common::{run_cli, EchoBackend, Gateway, HttpClient, DEFAULT_HOST};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

async fn start_with_backend(backend: &str, routes: &str) -> Gateway {
    let yaml = format!(
        "listen:
  - address: {{listen}}
admin:
  address: {{admin}}
upstreams:
  - name: backend
    targets:
      - {{ address: {backend} }}
routes:
{routes}"
    );
    Gateway::start(&yaml).await
}

const PUBLIC_ROUTE: &str = "  - name: public
    match: { path_prefix: /public }
    upstream: backend
";

#[tokio::test(flavor = "multi_thread")]
async fn dot_segment_before_parameter_rejected() {
    let backend = EchoBackend::start("a").await;
    let gateway = start_with_backend(&backend.address(), PUBLIC_ROUTE).await;

    for target in [
        "/public/..;/admin",
        "/public/%2e%2e;x/admin",
        "/public/.;/x",
    ] {
        let response = gateway.get(target).await;
        assert_eq!(response.status, 400, "GET {target} status");
    }
    assert_eq!(backend.request_count(), 0, "nothing reached the backend");

    let response = gateway.get("/public/a;v=1/x").await;
    assert_eq!(response.status, 200, "a plain path parameter is allowed");
    assert_eq!(
        response.echoed().target,
        "/public/a;v=1/x",
        "forwarded unchanged"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn equal_content_lengths_collapsed() {
    let backend = EchoBackend::start("a").await;
    let gateway = start_with_backend(&backend.address(), PUBLIC_ROUTE).await;

    let mut client = HttpClient::connect(gateway.listen_addr()).await;
    let request = format!(
        "POST /public/x HTTP/1.1\r\nHost: {DEFAULT_HOST}\r\nContent-Length: 5, 5\r\n\r\nhello"
    );
    client.send_raw(request.as_bytes()).await.expect("send");
    let response = client.read_response(false).await.expect("response");
    assert_eq!(response.status, 200, "POST with Content-Length: 5, 5");
    let echoed = response.echoed();
    assert_eq!(
        echoed.header_values("content-length"),
        vec!["5"],
        "the backend sees one Content-Length"
    );
    assert_eq!(echoed.body, "hello", "the body arrives whole");
}

/// Starts a backend that responds to every request with `101 Switching Protocols`.
async fn start_switching_backend() -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buffer = [0u8; 4096];
                let _ = stream.read(&mut buffer).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n")
                    .await;
                let _ = stream.read(&mut buffer).await;
            });
        }
    });
    (address, task)
}

#[tokio::test(flavor = "multi_thread")]
async fn unsolicited_switch_is_bad_gateway() {
    let (address, backend) = start_switching_backend().await;
    let gateway = start_with_backend(&address, PUBLIC_ROUTE).await;

    let response = gateway.get("/public/x").await;
    assert_eq!(response.status, 502, "a 101 without an upgrade request");
    assert_eq!(response.body_text(), "502 Bad Gateway\n", "error body");
    backend.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn http10_without_host_gets_target() {
    let backend = EchoBackend::start("a").await;
    let gateway = start_with_backend(&backend.address(), PUBLIC_ROUTE).await;

    let mut client = HttpClient::connect(gateway.listen_addr()).await;
    client
        .send_raw(b"GET /public/x HTTP/1.0\r\n\r\n")
        .await
        .expect("send");
    let response = client.read_response(false).await.expect("response");
    assert_eq!(response.status, 200, "HTTP/1.0 GET without Host");
    assert_eq!(
        response.echoed().header("host"),
        Some(backend.address().as_str()),
        "the HTTP/1.1 upstream request names the target as Host"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn absolute_target_authority_routes() {
    let backend = EchoBackend::start("a").await;
    let routes = "  - name: api
    match: { hosts: [api.test] }
    upstream: backend
";
    let gateway = start_with_backend(&backend.address(), routes).await;

    let mut client = HttpClient::connect(gateway.listen_addr()).await;
    client
        .send_raw(b"GET http://API.test:80/x HTTP/1.1\r\nHost: API.test:80\r\n\r\n")
        .await
        .expect("send");
    let response = client.read_response(false).await.expect("response");
    assert_eq!(
        response.status, 200,
        "the target's authority selects the route"
    );
    assert_eq!(response.echoed().target, "/x", "forwarded in origin form");

    // Pingora rejects a Host that disagrees with the target's authority before routing.
    let mut client = HttpClient::connect(gateway.listen_addr()).await;
    client
        .send_raw(b"GET http://api.test/x HTTP/1.1\r\nHost: other.test\r\n\r\n")
        .await
        .expect("send");
    let response = client.read_response(false).await.expect("response");
    assert_eq!(
        response.status, 400,
        "a Host that disagrees with the target"
    );
    assert_eq!(
        backend.request_count(),
        1,
        "only the first request was forwarded"
    );
}

fn respond_yaml(body: &str) -> String {
    format!(
        "listen:
  - address: {{listen}}
admin:
  address: {{admin}}
routes:
  - name: hello
    match: {{ path: / }}
    respond: {{ status: 200, body: \"{body}\" }}
"
    )
}

/// Polls `GET /` until its body is `expected`, for at most 5 s.
async fn wait_for_body(gateway: &Gateway, expected: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let body = gateway.get("/").await.body_text();
        if body == expected || Instant::now() >= deadline {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn send_hangup(gateway: &Gateway) {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &gateway.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -HUP succeeded");
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_valid_file_only() {
    let gateway = Gateway::start(&respond_yaml("one")).await;
    assert_eq!(
        gateway.get("/").await.body_text(),
        "one",
        "body before reload"
    );

    let updated = gateway.config_text().replace("\"one\"", "\"two\"");
    std::fs::write(gateway.config_path(), updated).expect("write the new config");
    send_hangup(&gateway);
    assert_eq!(
        wait_for_body(&gateway, "two").await,
        "two",
        "body after reload"
    );

    std::fs::write(gateway.config_path(), "routes: [\n").expect("write a broken config");
    send_hangup(&gateway);
    let failures = gateway
        .wait_for_metric(
            "gatehouse_config_reloads_total",
            &[("result", "failure")],
            1.0,
        )
        .await;
    assert_eq!(failures, Some(1.0), "the failed reload is counted");
    assert_eq!(
        gateway.get("/").await.body_text(),
        "two",
        "the running config stays"
    );
    assert!(
        gateway.wait_for_stderr("config reload failed").await,
        "the failure is logged:\n{}",
        gateway.stderr()
    );
}

#[test]
fn taken_port_fails_start() {
    let occupant = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = occupant.local_addr().expect("address");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gateway.yaml");
    let yaml = format!(
        "listen:\n  - address: {address}\nroutes:\n  - name: a\n    respond: {{ status: 200 }}\n"
    );
    std::fs::write(&path, yaml).expect("write config");

    let (code, _stdout, stderr) = run_cli(&["-c", path.to_str().expect("utf-8 path")]);
    assert_eq!(code, 1, "exit code; stderr:\n{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {address}")),
        "the error names the address:\n{stderr}"
    );
}

fn check_config(yaml: &str) -> (i32, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, yaml).expect("write config");
    let (code, _stdout, stderr) = run_cli(&["check", "-c", path.to_str().expect("utf-8 path")]);
    (code, stderr)
}

#[test]
fn check_rejects_values_that_passed_before() {
    let cases = [
        (
            "listen:\n  - address: 127.0.0.1:8080\nroutes:\n  - name: a\n    respond: { status: 600 }\n",
            "routes[0].respond.status",
        ),
        (
            "listen:\n  - address: 127.0.0.1:8080\nroutes:\n  - name: a\n    respond: { status: 204, body: x }\n",
            "routes[0].respond.body",
        ),
        (
            "listen:\n  - address: 127.0.0.1:8080\nadmin:\n  address: 0.0.0.0:8080\nroutes: []\n",
            "admin.address",
        ),
        (
            "listen:\n  - address: 0.0.0.0:8080\n  - address: 127.0.0.1:8080\nroutes: []\n",
            "listen[1].address",
        ),
        (
            "listen:\n  - address: 127.0.0.1:8080\nupstreams:\n  - name: u\n    targets: [{ address: 127.0.0.1:1 }]\n    keepalive: { max_idle: 4294967295 }\nroutes: []\n",
            "upstreams[0].keepalive.max_idle",
        ),
        (
            "listen:\n  - address: 127.0.0.1:8080\nupstreams:\n  - name: u\n    balance: consistent_hash\n    targets: [{ address: 127.0.0.1:1, weight: 10000 }]\nroutes: []\n",
            "upstreams[0].targets",
        ),
    ];
    for (yaml, key_path) in cases {
        let (code, stderr) = check_config(yaml);
        assert_eq!(code, 1, "exit code for {key_path}; stderr:\n{stderr}");
        assert!(
            stderr.contains(&format!(": {key_path}: ")),
            "the error names {key_path}:\n{stderr}"
        );
    }
}

#[test]
fn check_accepts_byte_order_mark() {
    let (code, stderr) = check_config(
        "\u{feff}listen:\n  - address: 127.0.0.1:8080\nroutes:\n  - name: a\n    respond: { status: 200 }\n",
    );
    assert_eq!(
        code, 0,
        "a UTF-8 byte order mark is ignored; stderr:\n{stderr}"
    );
}
