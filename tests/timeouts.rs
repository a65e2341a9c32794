//! Client-side timeouts (`downstream_body`, `downstream_write`, `downstream_idle`), client
//! disconnects, and the `gatehouse_timeouts_total` metric.
//!
//! Timing tolerance: each timeout is asserted to fire no earlier than its value and no later
//! than its value plus 700 ms, which covers the scheduling of a loaded 2-core debug build.

mod common;

use common::{get, Gateway, HttpClient, SilentBackend, DEFAULT_HOST};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const TOLERANCE: Duration = Duration::from_millis(700);

fn config(backend: &str, timeouts: &str) -> String {
    format!(
        "listen:
  - address: {{listen}}
admin:
  address: {{admin}}
timeouts:
{timeouts}
upstreams:
  - name: backend
    targets:
      - {{ address: {backend} }}
routes:
  - name: api
    match: {{ path_prefix: /api }}
    upstream: backend
  - name: hello
    match: {{ path: / }}
    respond: {{ status: 200, body: \"hi\\n\" }}
"
    )
}

/// Starts a backend that reads requests and never responds, and reports each time the gateway
/// closes one of its connections.
async fn start_closing_watcher() -> (String, mpsc::UnboundedReceiver<Instant>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    let (sender, receiver) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let sender = sender.clone();
            tokio::spawn(async move {
                let mut buffer = [0u8; 4096];
                while let Ok(count) = stream.read(&mut buffer).await {
                    if count == 0 {
                        break;
                    }
                }
                let _ = sender.send(Instant::now());
            });
        }
    });
    (address, receiver)
}

fn assert_fired_in_time(label: &str, elapsed: Duration, timeout: Duration) {
    assert!(
        elapsed >= timeout,
        "{label} fired after {elapsed:?}, before its {timeout:?}"
    );
    assert!(
        elapsed < timeout + TOLERANCE,
        "{label} fired after {elapsed:?}, later than {timeout:?} + {TOLERANCE:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stalled_body_gets_408() {
    let (backend, mut closed) = start_closing_watcher().await;
    let gateway = Gateway::start(&config(&backend, "  downstream_body: 1s")).await;

    let mut client = HttpClient::connect(gateway.listen_addr()).await;
    let head = format!(
        "POST /api/upload HTTP/1.1\r\nHost: {DEFAULT_HOST}\r\nContent-Length: 10\r\n\r\nhello"
    );
    let started = Instant::now();
    client.send_raw(head.as_bytes()).await.expect("send");
    let response = client.read_response(false).await.expect("a response");
    let elapsed = started.elapsed();

    assert_eq!(response.status, 408, "status after the body stalled");
    assert_eq!(response.body_text(), "408 Request Timeout\n", "error body");
    assert_fired_in_time("downstream_body", elapsed, Duration::from_secs(1));

    let backend_closed = tokio::time::timeout(Duration::from_secs(5), closed.recv())
        .await
        .expect("the upstream connection closes within 5 s")
        .expect("a close time");
    assert!(
        backend_closed.duration_since(started) < Duration::from_secs(1) + TOLERANCE,
        "the upstream request was aborted with the client's"
    );
    let kind = [("route", "api"), ("kind", "downstream_body")];
    let value = gateway
        .wait_for_metric("gatehouse_timeouts_total", &kind, 1.0)
        .await;
    assert_eq!(value, Some(1.0), "timeouts_total counts the body timeout");
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_keepalive_connection_closed() {
    let backend = SilentBackend::start().await;
    let gateway = Gateway::start(&config(&backend.address(), "  downstream_idle: 1s")).await;

    let mut client = HttpClient::connect(gateway.listen_addr()).await;
    let response = client.send(&common::Request::get("/")).await;
    assert_eq!(response.status, 200, "first request");
    assert_eq!(
        response.header("connection"),
        Some("keep-alive"),
        "the connection is kept alive"
    );

    let started = Instant::now();
    let rest = client.read_until_close().await.expect("read until close");
    let elapsed = started.elapsed();
    assert!(rest.is_empty(), "nothing is sent before closing: {rest:?}");
    assert_fired_in_time("downstream_idle", elapsed, Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_wait_restarts_per_request() {
    let backend = SilentBackend::start().await;
    let gateway = Gateway::start(&config(&backend.address(), "  downstream_idle: 1s")).await;

    let mut client = HttpClient::connect(gateway.listen_addr()).await;
    let first = client.send(&common::Request::get("/")).await;
    assert_eq!(first.status, 200, "first request");
    // The client stays idle for most of the idle timeout before its next request, so a wait
    // that kept the first wait's deadline would close the connection too early.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let second = client.send(&common::Request::get("/")).await;
    assert_eq!(second.status, 200, "second request on the same connection");

    let started = Instant::now();
    let rest = client.read_until_close().await.expect("read until close");
    let elapsed = started.elapsed();
    assert!(rest.is_empty(), "nothing is sent before closing: {rest:?}");
    assert_fired_in_time(
        "downstream_idle after the second request",
        elapsed,
        Duration::from_secs(1),
    );
}

/// Starts a backend that responds to each request with a 64 MiB body, counting the bytes it manages to
/// write, and reports when the gateway stops taking them.
async fn start_large_response_backend() -> (String, mpsc::UnboundedReceiver<usize>) {
    const BODY: usize = 64 * 1024 * 1024;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    let (sender, receiver) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let sender = sender.clone();
            tokio::spawn(async move {
                let mut buffer = [0u8; 4096];
                let _ = stream.read(&mut buffer).await;
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {BODY}\r\n\r\n");
                if stream.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = vec![b'x'; 64 * 1024];
                let mut written = 0;
                while written < BODY {
                    if stream.write_all(&chunk).await.is_err() {
                        break;
                    }
                    written += chunk.len();
                }
                let _ = sender.send(written);
            });
        }
    });
    (address, receiver)
}

#[tokio::test(flavor = "multi_thread")]
async fn client_that_stops_reading_closed() {
    let (backend, mut finished) = start_large_response_backend().await;
    let gateway = Gateway::start(&config(&backend, "  downstream_write: 1s")).await;

    let mut client = HttpClient::connect(gateway.listen_addr()).await;
    client
        .send_raw(format!("GET /api/big HTTP/1.1\r\nHost: {DEFAULT_HOST}\r\n\r\n").as_bytes())
        .await
        .expect("send");
    // The client now reads nothing. Once the socket buffers are full, each write of the
    // gateway waits, and the write timeout ends the request.
    let kind = [("route", "api"), ("kind", "downstream_write")];
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut counted = None;
    while Instant::now() < deadline {
        counted = common::sample_value(
            &common::parse_metrics(&gateway.metrics().await),
            "gatehouse_timeouts_total",
            &kind,
        );
        if counted == Some(1.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        counted,
        Some(1.0),
        "timeouts_total counts the write timeout"
    );

    let written = tokio::time::timeout(Duration::from_secs(10), finished.recv())
        .await
        .expect("the upstream connection is released within 10 s")
        .expect("a byte count");
    assert!(
        written < 64 * 1024 * 1024,
        "the upstream stopped before sending the whole body ({written} bytes)"
    );
    drop(client);
}

#[tokio::test(flavor = "multi_thread")]
async fn client_disconnect_logged_499() {
    let (backend, mut closed) = start_closing_watcher().await;
    let gateway = Gateway::start(&config(&backend, "  upstream_read: 30s")).await;

    let mut client = HttpClient::connect(gateway.listen_addr()).await;
    client
        .send_raw(format!("GET /api/slow HTTP/1.1\r\nHost: {DEFAULT_HOST}\r\n\r\n").as_bytes())
        .await
        .expect("send");
    // Wait until the gateway has sent the request upstream, then hang up.
    let admin = gateway.admin_addr();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut in_flight = None;
    while Instant::now() < deadline {
        let body = get(admin, "/metrics").await.body_text();
        in_flight = common::sample_value(
            &common::parse_metrics(&body),
            "gatehouse_requests_in_flight",
            &[("route", "api")],
        );
        if in_flight == Some(1.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(in_flight, Some(1.0), "the request is in flight");
    let hung_up = Instant::now();
    drop(client);

    let backend_closed = tokio::time::timeout(Duration::from_secs(5), closed.recv())
        .await
        .expect("the upstream connection closes within 5 s")
        .expect("a close time");
    assert!(
        backend_closed.duration_since(hung_up) < TOLERANCE,
        "the upstream request is cancelled promptly"
    );

    let records = gateway.wait_for_access_log(1).await;
    let record = records.last().expect("a record");
    assert_eq!(
        record.get("status").and_then(|s| s.as_u64()),
        Some(499),
        "the access log records 499: {record:?}"
    );
    let value = gateway
        .wait_for_metric(
            "gatehouse_client_disconnects_total",
            &[("route", "api")],
            1.0,
        )
        .await;
    assert_eq!(value, Some(1.0), "client_disconnects_total counts it");
    let requests = gateway
        .wait_for_metric(
            "gatehouse_requests_total",
            &[("route", "api"), ("method", "GET"), ("code", "499")],
            1.0,
        )
        .await;
    assert_eq!(requests, Some(1.0), "requests_total counts it as 499");
    let stderr = gateway.stderr();
    assert!(
        !stderr.contains("Fail to proxy"),
        "a client that hangs up is not an error in the server log:\n{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_read_timeout_counted() {
    let backend = SilentBackend::start().await;
    let gateway = Gateway::start(&config(&backend.address(), "  upstream_read: 1s")).await;

    let response = gateway.get("/api/x").await;
    assert_eq!(response.status, 504, "silent upstream");
    let kind = [("route", "api"), ("kind", "upstream_read")];
    let value = gateway
        .wait_for_metric("gatehouse_timeouts_total", &kind, 1.0)
        .await;
    assert_eq!(
        value,
        Some(1.0),
        "timeouts_total counts the upstream read timeout"
    );
}

/// Sends `bytes` one at a time, `gap` apart, until the gateway responds or closes, and
/// returns what it sent back and when, measured from the first byte.
async fn trickle(
    stream: &mut tokio::net::TcpStream,
    bytes: &[u8],
    gap: Duration,
) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buffer = [0u8; 1024];
    for &byte in bytes {
        if stream.write_all(&[byte]).await.is_err() {
            break;
        }
        match tokio::time::timeout(gap, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(count)) => {
                received.extend_from_slice(&buffer[..count]);
                break;
            }
            Err(_) => {}
        }
    }
    (received, started.elapsed())
}

#[tokio::test(flavor = "multi_thread")]
async fn slowloris_header_gets_408() {
    let backend = SilentBackend::start().await;
    let gateway = Gateway::start(&config(&backend.address(), "  downstream_header: 1s")).await;

    // One byte every 200 ms: each read succeeds long before any per-read timeout, but the
    // whole header (about 60 bytes, 12 s at this pace) cannot arrive within 1 s.
    let header = format!(
        "GET / HTTP/1.1\r\nHost: {DEFAULT_HOST}\r\nX-Slow: {}\r\n\r\n",
        "a".repeat(20)
    );
    let mut stream = tokio::net::TcpStream::connect(gateway.listen_addr())
        .await
        .expect("connect");
    let (received, elapsed) =
        trickle(&mut stream, header.as_bytes(), Duration::from_millis(200)).await;
    let text = String::from_utf8_lossy(&received);
    assert!(
        text.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "a 408 when the header deadline expires: {text:?}"
    );
    // The response is read at the end of a 200 ms gap, so it may be seen up to 200 ms late.
    assert_fired_in_time("downstream_header", elapsed, Duration::from_secs(1));
    let kind = [("route", ""), ("kind", "downstream_header")];
    let value = gateway
        .wait_for_metric("gatehouse_timeouts_total", &kind, 1.0)
        .await;
    assert_eq!(value, Some(1.0), "timeouts_total counts the header timeout");
}

#[tokio::test(flavor = "multi_thread")]
async fn header_deadline_per_kept_alive_request() {
    let backend = SilentBackend::start().await;
    let timeouts = "  downstream_header: 1s\n  downstream_idle: 5s";
    let gateway = Gateway::start(&config(&backend.address(), timeouts)).await;

    let mut client = HttpClient::connect(gateway.listen_addr()).await;
    for round in 0..2 {
        let response = client.send(&common::Request::get("/")).await;
        assert_eq!(
            response.status, 200,
            "request {round} on the kept-alive connection"
        );
        // Idle for longer than the header deadline: only downstream_idle applies here.
        tokio::time::sleep(Duration::from_millis(1_500)).await;
    }

    let mut stream = tokio::net::TcpStream::connect(gateway.listen_addr())
        .await
        .expect("connect");
    let first = format!("GET / HTTP/1.1\r\nHost: {DEFAULT_HOST}\r\n\r\n");
    stream.write_all(first.as_bytes()).await.expect("send");
    let mut buffer = vec![0u8; 4096];
    let count = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer))
        .await
        .expect("a response within 5 s")
        .expect("read");
    assert!(
        String::from_utf8_lossy(&buffer[..count]).starts_with("HTTP/1.1 200 OK"),
        "first response"
    );
    // The next request starts but stalls after a few bytes: its own deadline runs from them.
    let started = Instant::now();
    stream.write_all(b"GET / HT").await.expect("send part");
    let count = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer))
        .await
        .expect("a response within 5 s")
        .expect("read");
    let elapsed = started.elapsed();
    assert!(
        String::from_utf8_lossy(&buffer[..count]).starts_with("HTTP/1.1 408 Request Timeout"),
        "a 408 for the stalled second header"
    );
    assert_fired_in_time("downstream_header", elapsed, Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn stalled_next_header_gets_408() {
    let backend = SilentBackend::start().await;
    // The header deadline is longer than the idle time, so only the header deadline may end
    // a next request that has started.
    let timeouts = "  downstream_header: 2s\n  downstream_idle: 1s";
    let gateway = Gateway::start(&config(&backend.address(), timeouts)).await;

    let mut client = HttpClient::connect(gateway.listen_addr()).await;
    let first = client.send(&common::Request::get("/")).await;
    assert_eq!(first.status, 200, "first request");

    let started = Instant::now();
    client.send_raw(b"GET / HT").await.expect("send part");
    let rest = client.read_until_close().await.expect("read until close");
    let elapsed = started.elapsed();
    let text = String::from_utf8_lossy(&rest);
    assert!(
        text.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "a 408 for the stalled next header: {text:?}"
    );
    assert_fired_in_time("downstream_header", elapsed, Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread")]
async fn subsecond_idle_time_exact() {
    let backend = SilentBackend::start().await;
    let gateway = Gateway::start(&config(&backend.address(), "  downstream_idle: 300ms")).await;

    let mut client = HttpClient::connect(gateway.listen_addr()).await;
    let response = client.send(&common::Request::get("/")).await;
    assert_eq!(response.status, 200, "first request");
    let started = Instant::now();
    let rest = client.read_until_close().await.expect("read until close");
    let elapsed = started.elapsed();
    assert!(rest.is_empty(), "nothing is sent before closing: {rest:?}");
    assert_fired_in_time("downstream_idle", elapsed, Duration::from_millis(300));
}

/// Starts a backend that sends a chunked 200 and then one 5-byte chunk every `gap`, `chunks` times,
/// then the last chunk.
async fn start_trickling_backend(gap: Duration, chunks: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buffer = [0u8; 4096];
                let _ = stream.read(&mut buffer).await;
                let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
                if stream.write_all(head).await.is_err() {
                    return;
                }
                let mut ticker = tokio::time::interval(gap);
                ticker.tick().await;
                for _ in 0..chunks {
                    ticker.tick().await;
                    if stream.write_all(b"5\r\nhello\r\n").await.is_err() {
                        return;
                    }
                }
                let _ = stream.write_all(b"0\r\n\r\n").await;
            });
        }
    });
    address
}

/// Reads a whole response off `stream` until the last chunk or the end of the connection,
/// and returns the bytes and whether the last chunk arrived.
async fn read_chunked_response(stream: &mut tokio::net::TcpStream) -> (Vec<u8>, bool) {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(15), stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return (received, false),
            Ok(Ok(count)) => {
                received.extend_from_slice(&buffer[..count]);
                if received.ends_with(b"\r\n0\r\n\r\n") {
                    return (received, true);
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn progressing_response_outlives_read_timeout() {
    // 10 chunks 300 ms apart: 3 s in all, each gap well under the 1 s upstream_read.
    let backend = start_trickling_backend(Duration::from_millis(300), 10).await;
    let timeouts = "  upstream_read: 1s\n  request: 10s";
    let gateway = Gateway::start(&config(&backend, timeouts)).await;

    let mut stream = tokio::net::TcpStream::connect(gateway.listen_addr())
        .await
        .expect("connect");
    let request = format!("GET /api/stream HTTP/1.1\r\nHost: {DEFAULT_HOST}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let (received, complete) = read_chunked_response(&mut stream).await;
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 200 OK"), "status line: {text:?}");
    assert!(complete, "the whole chunked body arrived: {text:?}");
    assert_eq!(text.matches("hello").count(), 10, "all ten chunks arrived");
}

#[tokio::test(flavor = "multi_thread")]
async fn request_deadline_cuts_progressing_response() {
    let backend = start_trickling_backend(Duration::from_millis(300), 30).await;
    let timeouts = "  upstream_read: 1s\n  request: 2s";
    let gateway = Gateway::start(&config(&backend, timeouts)).await;

    let mut stream = tokio::net::TcpStream::connect(gateway.listen_addr())
        .await
        .expect("connect");
    let request = format!("GET /api/stream HTTP/1.1\r\nHost: {DEFAULT_HOST}\r\n\r\n");
    let started = Instant::now();
    stream.write_all(request.as_bytes()).await.expect("send");
    let (received, complete) = read_chunked_response(&mut stream).await;
    let elapsed = started.elapsed();
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 200 OK"), "status line: {text:?}");
    assert!(
        !complete,
        "the response is cut without its last chunk: {text:?}"
    );
    assert_fired_in_time("request", elapsed, Duration::from_secs(2));
    let kind = [("route", "api"), ("kind", "request")];
    let value = gateway
        .wait_for_metric("gatehouse_timeouts_total", &kind, 1.0)
        .await;
    assert_eq!(
        value,
        Some(1.0),
        "timeouts_total counts the request deadline"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn request_deadline_gives_504() {
    let backend = SilentBackend::start().await;
    let timeouts = "  upstream_read: 30s\n  request: 1s";
    let gateway = Gateway::start(&config(&backend.address(), timeouts)).await;

    let started = Instant::now();
    let response = gateway.get("/api/x").await;
    let elapsed = started.elapsed();
    assert_eq!(
        response.status, 504,
        "status when the request deadline passes"
    );
    assert_eq!(response.body_text(), "504 Gateway Timeout\n", "error body");
    assert_fired_in_time("request", elapsed, Duration::from_secs(1));
    let kind = [("route", "api"), ("kind", "request")];
    let value = gateway
        .wait_for_metric("gatehouse_timeouts_total", &kind, 1.0)
        .await;
    assert_eq!(
        value,
        Some(1.0),
        "timeouts_total counts the request deadline"
    );
}

fn thread_count(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("Threads:"))
        .and_then(|value| value.trim().parse().ok())
        .expect("a Threads line")
}

/// Sends one request to a gateway whose backend never responds. Returns whether the response
/// was a 504, and how long it took.
async fn stalled_request(address: std::net::SocketAddr, index: usize) -> (bool, Duration) {
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    let request = format!("GET /api/{index} HTTP/1.1\r\nHost: {DEFAULT_HOST}\r\n\r\n");
    let started = Instant::now();
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut buffer = [0u8; 256];
    let count = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer))
        .await
        .expect("a response within 10 s")
        .expect("read");
    let head = String::from_utf8_lossy(&buffer[..count]).into_owned();
    (head.starts_with("HTTP/1.1 504 "), started.elapsed())
}

#[tokio::test(flavor = "multi_thread")]
async fn many_stalled_requests_all_504() {
    const REQUESTS: usize = 2_000;
    // Tolerance for this test: every 504 within 1 s of the deadline, because 2,000
    // connections are opened and served at once by a debug build on 2 cores.
    const LATE: Duration = Duration::from_secs(1);
    let backend = SilentBackend::start().await;
    let timeouts = "  upstream_read: 30s\n  request: 1s";
    let yaml = config(&backend.address(), timeouts)
        .replace("upstreams:", "server:\n  threads: 2\nupstreams:");
    let gateway = Gateway::start(&yaml).await;
    let address = gateway.listen_addr();
    // One stalled request first, so that a thread started on first use is already counted:
    // with gatehouse's settings, Pingora starts its timer thread for the first wait shorter
    // than a second.
    let (first_is_504, _) = stalled_request(address, REQUESTS).await;
    assert!(first_is_504, "the first stalled request got 504");
    let threads_before = thread_count(gateway.pid());

    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..REQUESTS {
        tasks.spawn(stalled_request(address, index));
    }
    let mut slowest = Duration::ZERO;
    let mut gateway_timeouts = 0;
    while let Some(joined) = tasks.join_next().await {
        let (is_504, elapsed) = joined.expect("client task");
        if is_504 {
            gateway_timeouts += 1;
        }
        slowest = slowest.max(elapsed);
    }
    let threads_after = thread_count(gateway.pid());
    eprintln!(
        "{REQUESTS} stalled requests: {gateway_timeouts} got 504, the slowest after {slowest:?}; \
         gateway threads {threads_before} -> {threads_after}"
    );
    assert_eq!(gateway_timeouts, REQUESTS, "every stalled request got 504");
    assert!(
        slowest < Duration::from_secs(1) + LATE,
        "the slowest 504 came after {slowest:?}"
    );
    assert_eq!(
        threads_after, threads_before,
        "the gateway's thread count stays the same"
    );
}

/// Size of the response in the slow-reader tests. Loopback socket buffers absorb a few MiB
/// (a 1 MiB response leaves the backend in about 1 ms even for a client that reads nothing),
/// so the body must be larger than them to show whether a slow client keeps the backend busy.
const SLOW_READER_BODY: usize = 16 * 1024 * 1024;

/// Starts a backend that sends a `SLOW_READER_BODY` body with Content-Length to each request
/// and reports how long its write took, from the response header to the last byte accepted
/// by the socket.
async fn start_large_body_backend() -> (String, mpsc::UnboundedReceiver<Duration>) {
    const BODY: usize = SLOW_READER_BODY;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    let (sender, receiver) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let sender = sender.clone();
            tokio::spawn(async move {
                let mut buffer = [0u8; 4096];
                let _ = stream.read(&mut buffer).await;
                let started = Instant::now();
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {BODY}\r\n\r\n");
                let body = vec![b'x'; BODY];
                if stream.write_all(head.as_bytes()).await.is_ok()
                    && stream.write_all(&body).await.is_ok()
                {
                    let _ = sender.send(started.elapsed());
                }
                // Keep the connection open like a keep-alive server would.
                let _ = stream.read(&mut buffer).await;
            });
        }
    });
    (address, receiver)
}

/// Sends one request for the large body, reads 40 KiB of it at 10 KiB/s, and returns how
/// long the backend's write took if it finished during that slow read.
async fn backend_busy_under_slow_reader(buffer_response: Option<&str>) -> Option<Duration> {
    let (backend, mut finished) = start_large_body_backend().await;
    let mut yaml = config(&backend, "  upstream_read: 30s");
    if let Some(size) = buffer_response {
        yaml = yaml.replace(
            "    upstream: backend\n",
            &format!("    upstream: backend\n    buffer_response: {size}\n"),
        );
    }
    let gateway = Gateway::start(&yaml).await;
    let mut stream = tokio::net::TcpStream::connect(gateway.listen_addr())
        .await
        .expect("connect");
    let request = format!("GET /api/big HTTP/1.1\r\nHost: {DEFAULT_HOST}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");

    // 10 KiB every second for 4 seconds: a client reading at 10 KiB/s.
    let mut received = 0;
    let mut chunk = vec![0u8; 10 * 1024];
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    for _ in 0..4 {
        ticker.tick().await;
        let count = stream.read(&mut chunk).await.expect("read");
        received += count;
    }
    let busy = finished.try_recv().ok();

    // Read the rest at full speed and check the whole body arrived.
    let mut rest = Vec::new();
    let head_and_body = SLOW_READER_BODY + 38;
    while received + rest.len() < head_and_body {
        let count = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("the rest of the body within 10 s")
            .expect("read");
        if count == 0 {
            break;
        }
        rest.extend_from_slice(&chunk[..count]);
    }
    assert!(
        received + rest.len() >= SLOW_READER_BODY,
        "the whole body arrived ({} bytes with the header)",
        received + rest.len()
    );
    busy
}

#[tokio::test(flavor = "multi_thread")]
async fn buffered_response_frees_backend() {
    let busy = backend_busy_under_slow_reader(Some("32MiB")).await;
    eprintln!("backend write time with buffer_response 32MiB: {busy:?}");
    let busy = busy.expect("the backend finished writing while the client read slowly");
    assert!(
        busy < Duration::from_secs(1),
        "with buffer_response the backend's 16 MiB write took {busy:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unbuffered_response_holds_backend() {
    let busy = backend_busy_under_slow_reader(None).await;
    eprintln!("backend write time without buffer_response: {busy:?}");
    assert_eq!(
        busy, None,
        "without buffer_response the backend is still writing after 4 s of a 10 KiB/s reader"
    );
}
