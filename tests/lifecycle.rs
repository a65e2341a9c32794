//! Reloads, shutdown and graceful upgrade under a continuous load from several clients.
//!
//! The load comes from reqwest clients with keep-alive, as an operator's clients would send
//! it. A failed request is any transport error or a status other than 200.

mod common;

use common::*;
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Maximum time a load client keeps sending, so that a test that fails before stopping it still
/// ends.
const LOAD_LIMIT: Duration = Duration::from_secs(90);

/// Requests sent by the clients of a [`Load`], and the failures among them.
struct LoadReport {
    succeeded: u64,
    failures: Vec<String>,
}

/// Clients that send `GET url` in a loop until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    clients: Vec<JoinHandle<LoadReport>>,
}

impl Load {
    /// Starts `keep_alive` clients that reuse their connection and `fresh` clients that open
    /// a new connection for every request.
    fn start(url: String, keep_alive: usize, fresh: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let mut clients = Vec::new();
        for i in 0..keep_alive + fresh {
            let builder = reqwest::Client::builder().timeout(Duration::from_secs(10));
            let builder = if i < keep_alive {
                builder.pool_max_idle_per_host(1)
            } else {
                builder.pool_max_idle_per_host(0)
            };
            let client = builder.build().expect("build an HTTP client");
            let url = url.clone();
            let stop = stop.clone();
            clients.push(tokio::spawn(async move {
                let mut report = LoadReport {
                    succeeded: 0,
                    failures: Vec::new(),
                };
                let started = Instant::now();
                while !stop.load(Ordering::Relaxed) && started.elapsed() < LOAD_LIMIT {
                    match client.get(&url).send().await {
                        Ok(response) if response.status() == 200 => match response.bytes().await {
                            Ok(_) => report.succeeded += 1,
                            Err(e) => report.failures.push(format!("body: {e}")),
                        },
                        Ok(response) => report
                            .failures
                            .push(format!("status {}", response.status())),
                        Err(e) => report.failures.push(format!(
                            "client {i} ({}) after {:?}: {e:?}",
                            if i < keep_alive {
                                "keep-alive"
                            } else {
                                "new connections"
                            },
                            started.elapsed()
                        )),
                    }
                }
                report
            }));
        }
        Load { stop, clients }
    }

    /// Stops the clients and returns their combined report.
    async fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = LoadReport {
            succeeded: 0,
            failures: Vec::new(),
        };
        for client in self.clients {
            let report = client.await.expect("load client task");
            total.succeeded += report.succeeded;
            total.failures.extend(report.failures);
        }
        total
    }
}

/// Two route tables that differ in the body of `/table` and the upstream of `/api`.
fn table(name: &str, upstream: &str, one: &EchoBackend, two: &EchoBackend, extra: &str) -> String {
    format!(
        r#"
listen:
  - address: "{{listen}}"
admin:
  address: "{{admin}}"
server:
  grace_period: 10s
upstreams:
  - name: one
    targets: [{{ address: "{one}" }}]
  - name: two
    targets: [{{ address: "{two}" }}]
routes:
  - name: table
    match: {{ path: /table }}
    respond: {{ status: 200, body: "{name}" }}
  - name: api
    match: {{ path_prefix: /api }}
    upstream: {upstream}
{extra}"#,
        one = one.address(),
        two = two.address(),
    )
}

/// Polls `GET /table` until its body is `expected`, for at most 5 s, and returns how long
/// that took.
async fn time_until_table(gateway: &Gateway, expected: &str) -> Duration {
    let started = Instant::now();
    loop {
        let body = gateway.get("/table").await.body_text();
        if body == expected {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "table {expected} not in effect after 5 s; /table returns {body:?}\nstderr:\n{}",
            gateway.stderr()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn assert_no_failures(report: &LoadReport) {
    assert!(report.succeeded > 0, "the load sent no successful request");
    assert!(
        report.failures.is_empty(),
        "{} of {} requests failed, first ones: {:?}",
        report.failures.len(),
        report.failures.len() as u64 + report.succeeded,
        &report.failures[..report.failures.len().min(5)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_reloads_under_load() {
    let one = EchoBackend::start("one").await;
    let two = EchoBackend::start("two").await;
    let table_a = table("A", "one", &one, &two, "");
    let table_b = table("B", "two", &one, &two, "");
    let gateway = Gateway::start(&table_a).await;
    let load = Load::start(format!("http://{}/api/load", gateway.listen_addr()), 3, 1);

    let mut slowest = Duration::ZERO;
    for i in 0..50 {
        let (yaml, name, backend) = if i % 2 == 0 {
            (&table_b, "B", "two")
        } else {
            (&table_a, "A", "one")
        };
        gateway.write_config(yaml);
        gateway.signal(libc::SIGHUP);
        let took = time_until_table(&gateway, name).await;
        slowest = slowest.max(took);
        let response = gateway.get("/api/check").await;
        assert_eq!(response.status, 200, "reload {i}: /api status");
        assert_eq!(
            response.header("x-backend"),
            Some(backend),
            "reload {i}: /api goes to the new table's upstream"
        );
    }
    let report = load.stop().await;
    eprintln!(
        "50 reloads: slowest took {slowest:?} to apply; load sent {} requests",
        report.succeeded
    );

    assert_no_failures(&report);
    assert!(
        slowest < Duration::from_secs(1),
        "every table applies within 1 s; the slowest took {slowest:?}"
    );
    let reloads = gateway.wait_for_reloads("success", 50).await;
    assert_eq!(reloads, Some(50.0), "successful reloads counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watched_file_reloads_on_change() {
    let one = EchoBackend::start("one").await;
    let two = EchoBackend::start("two").await;
    let watch = "reload:\n  watch: true\n  debounce: 50ms\n";
    let table_a = table("A", "one", &one, &two, watch);
    let table_b = table("B", "two", &one, &two, watch);
    let gateway = Gateway::start(&table_a).await;
    let load = Load::start(format!("http://{}/api/load", gateway.listen_addr()), 2, 0);

    let mut slowest = Duration::ZERO;
    for i in 0..10 {
        let (yaml, name) = if i % 2 == 0 {
            (&table_b, "B")
        } else {
            (&table_a, "A")
        };
        gateway.write_config(yaml);
        slowest = slowest.max(time_until_table(&gateway, name).await);
    }
    // Rewriting the same content is not a change.
    gateway.write_config(&table_a);
    gateway.write_config(&table_a);
    let report = load.stop().await;

    assert_no_failures(&report);
    assert!(
        slowest < Duration::from_secs(1),
        "every change applies within 1 s; the slowest took {slowest:?}"
    );
    // Ten changes, and at most one more if the rewrites arrived after a debounce ended.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let metrics = parse_metrics(&gateway.metrics().await);
    let reloads = sample_value(
        &metrics,
        "gatehouse_config_reloads_total",
        &[("result", "success")],
    );
    assert_eq!(reloads, Some(10.0), "one reload per content change");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_reload_under_load_changes_nothing() {
    let one = EchoBackend::start("one").await;
    let two = EchoBackend::start("two").await;
    let table_a = table("A", "one", &one, &two, "");
    let gateway = Gateway::start(&table_a).await;
    let load = Load::start(format!("http://{}/api/load", gateway.listen_addr()), 3, 1);

    // A route naming an unknown upstream.
    gateway.write_config(&table_a.replace("upstream: one", "upstream: three"));
    gateway.signal(libc::SIGHUP);
    let failures = gateway.wait_for_reloads("failure", 1).await;
    assert_eq!(
        failures,
        Some(1.0),
        "the invalid file is counted as a failure"
    );

    // A missing file.
    std::fs::remove_file(gateway.config_path()).expect("remove the config file");
    gateway.signal(libc::SIGHUP);
    let failures = gateway.wait_for_reloads("failure", 2).await;
    assert_eq!(
        failures,
        Some(2.0),
        "the missing file is counted as a failure"
    );

    let report = load.stop().await;
    assert_no_failures(&report);
    assert_eq!(
        gateway.get("/table").await.body_text(),
        "A",
        "the old table stays"
    );
    let response = gateway.get("/api/x").await;
    assert_eq!(
        response.header("x-backend"),
        Some("one"),
        "the old upstream stays"
    );
    let stderr = gateway.stderr();
    assert!(
        stderr.contains("routes[1].upstream") && stderr.contains("three"),
        "the error names the key and the value:\n{stderr}"
    );
}

/// A backend for long exchanges: `GET /stream` gets 10 chunks, one every 100 ms, and a
/// request with `Upgrade: websocket` gets 101 and then an echo of every byte it sends.
struct LongLivedBackend {
    addr: std::net::SocketAddr,
    task: JoinHandle<()>,
}

impl LongLivedBackend {
    async fn start() -> LongLivedBackend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().expect("backend address");
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_long_lived(stream));
            }
        });
        LongLivedBackend { addr, task }
    }
}

impl Drop for LongLivedBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_long_lived(mut stream: TcpStream) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.unwrap_or(0) == 0 {
            return;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    if head.contains("upgrade: websocket") {
        let response =
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n";
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
        let (mut reader, mut writer) = stream.into_split();
        let _ = tokio::io::copy(&mut reader, &mut writer).await;
        return;
    }
    let response = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
    if stream.write_all(response.as_bytes()).await.is_err() {
        return;
    }
    for i in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let data = format!("chunk-{i}\n");
        let chunk = format!("{:x}\r\n{data}\r\n", data.len());
        if stream.write_all(chunk.as_bytes()).await.is_err() {
            return;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
}

/// Opens a WebSocket to `/ws` through `gateway` and returns the connection after the 101.
async fn open_websocket(gateway: &Gateway) -> Conn {
    let mut socket = Conn::new(
        TcpStream::connect(gateway.listen_addr())
            .await
            .expect("connect"),
        Some(IO_TIMEOUT),
    );
    socket
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: gatehouse.test\r\nConnection: Upgrade\r\n\
              Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .expect("send the upgrade request");
    let head = socket.read_head().await.expect("read 101").expect("a head");
    assert_eq!(status_of(&head), 101, "upgrade status");
    socket
}

fn status_of(head: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(head);
    text.split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stream_and_websocket_survive_reload() {
    let backend = LongLivedBackend::start().await;
    let with_routes = format!(
        r#"
listen:
  - address: "{{listen}}"
admin:
  address: "{{admin}}"
upstreams:
  - name: long
    targets: [{{ address: "{}" }}]
routes:
  - name: stream
    match: {{ path: /stream }}
    upstream: long
  - name: ws
    match: {{ path: /ws }}
    upstream: long
"#,
        backend.addr
    );
    let without_routes = "listen:\n  - address: \"{listen}\"\nadmin:\n  address: \"{admin}\"\n\
                          routes:\n  - name: other\n    match: { path: /other }\n    \
                          respond: { status: 200, body: \"other\" }\n";
    let gateway = Gateway::start(&with_routes).await;

    let mut socket = open_websocket(&gateway).await;
    socket.write_all(b"before").await.expect("send before");
    assert_eq!(
        socket.read_exact_bytes(6).await.expect("echo before"),
        b"before",
        "echo before the reload"
    );

    let mut stream = Conn::new(
        TcpStream::connect(gateway.listen_addr())
            .await
            .expect("connect"),
        Some(IO_TIMEOUT),
    );
    stream
        .write_all(b"GET /stream HTTP/1.1\r\nHost: gatehouse.test\r\n\r\n")
        .await
        .expect("send the stream request");
    let head = stream
        .read_head()
        .await
        .expect("read head")
        .expect("a head");
    assert_eq!(status_of(&head), 200, "stream status");

    // The new table has neither route.
    gateway.write_config(without_routes);
    gateway.signal(libc::SIGHUP);
    let reloads = gateway.wait_for_reloads("success", 1).await;
    assert_eq!(reloads, Some(1.0), "the reload happened");
    assert_eq!(
        gateway.get("/stream").await.status,
        404,
        "new requests see the new table"
    );

    socket.write_all(b"after!").await.expect("send after");
    assert_eq!(
        socket.read_exact_bytes(6).await.expect("echo after"),
        b"after!",
        "the WebSocket connection still works after the reload"
    );
    let body = stream.read_chunked().await.expect("the whole chunked body");
    let expected: String = (0..10).map(|i| format!("chunk-{i}\n")).collect();
    assert_eq!(
        String::from_utf8_lossy(&body),
        expected,
        "the stream finished normally"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn websocket_tunnel_idle_limit() {
    let backend = LongLivedBackend::start().await;
    let yaml = format!(
        r#"
listen:
  - address: "{{listen}}"
admin:
  address: "{{admin}}"
upstreams:
  - name: long
    targets: [{{ address: "{}" }}]
routes:
  - name: ws
    match: {{ path: /ws }}
    upstream: long
    timeouts: {{ request: 1s, upstream_read: 1s }}
"#,
        backend.addr
    );
    let gateway = Gateway::start(&yaml).await;
    let mut socket = open_websocket(&gateway).await;

    // Messages for twice the route's request deadline, with pauses shorter than the idle
    // limit: the request deadline ends with the 101, and a tunnel in use stays open.
    let started = Instant::now();
    for (i, pause) in [0, 300, 600, 300, 600, 300].into_iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let message = format!("msg-{i}");
        socket
            .write_all(message.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("send message {i} after {:?}: {e}", started.elapsed()));
        let echo = socket
            .read_exact_bytes(message.len())
            .await
            .unwrap_or_else(|e| panic!("echo of message {i} after {:?}: {e}", started.elapsed()));
        assert_eq!(echo, message.as_bytes(), "echo of message {i}");
    }
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "the tunnel outlived the request deadline"
    );

    // Then idle: the tunnel closes 1 s after its last byte. Tolerance: 100 ms early, because
    // the gateway's timer starts when it sends the last echo, before the client reads it, and
    // 700 ms late.
    let idle_since = Instant::now();
    let rest = socket
        .read_to_close()
        .await
        .expect("read until the tunnel closes");
    let idle = idle_since.elapsed();
    assert!(
        rest.is_empty(),
        "nothing arrives on the idle tunnel: {rest:?}"
    );
    assert!(
        idle >= Duration::from_millis(900) && idle < Duration::from_millis(1700),
        "the idle tunnel closed after {idle:?}, expected about 1 s"
    );
    let kind = [("route", "ws"), ("kind", "upstream_read")];
    let counted = gateway
        .wait_for_metric("gatehouse_timeouts_total", &kind, 1.0)
        .await;
    assert_eq!(counted, Some(1.0), "timeouts_total counts the idle tunnel");
}

/// A backend that responds to every request with 200 `done` after `delay`, and counts the
/// requests it has received.
struct DelayedBackend {
    addr: std::net::SocketAddr,
    received: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl DelayedBackend {
    async fn start(delay: Duration) -> DelayedBackend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().expect("backend address");
        let received = Arc::new(AtomicUsize::new(0));
        let counter = received.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let mut conn = Conn::new(stream, Some(IO_TIMEOUT));
                    while let Ok(Some(_head)) = conn.read_head().await {
                        counter.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(delay).await;
                        let response = "HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ndone";
                        if conn.write_all(response.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        DelayedBackend {
            addr,
            received,
            task,
        }
    }

    /// Waits, for at most 5 s, until the backend has received `count` requests.
    async fn wait_for_requests(&self, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.received.load(Ordering::SeqCst) < count {
            assert!(
                Instant::now() < deadline,
                "the backend got {count} request(s) within 5 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for DelayedBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Returns a config that sends every request to `backend`, with a 20 s grace period.
fn slow_backend_config(backend: &DelayedBackend) -> String {
    format!(
        r#"
listen:
  - address: "{{listen}}"
admin:
  address: "{{admin}}"
server:
  grace_period: 20s
upstreams:
  - name: slow
    targets: [{{ address: "{}" }}]
routes:
  - name: slow
    match: {{ path_prefix: / }}
    upstream: slow
"#,
        backend.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_finishes_in_flight_requests() {
    let backend = DelayedBackend::start(Duration::from_secs(1)).await;
    let yaml = slow_backend_config(&backend);
    let mut gateway = Gateway::start(&yaml).await;
    let listen = gateway.listen_addr();
    let requests: Vec<_> = (0..20)
        .map(|i| tokio::spawn(async move { send(listen, &Request::get(&format!("/r{i}"))).await }))
        .collect();
    backend.wait_for_requests(20).await;

    let signalled = Instant::now();
    gateway.signal(libc::SIGTERM);
    let mut readyz = None;
    while signalled.elapsed() < Duration::from_millis(900) {
        readyz = gateway.readyz().await;
        if readyz == Some(503) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(readyz, Some(503), "/readyz while draining");

    for (i, request) in requests.into_iter().enumerate() {
        let response = request.await.expect("request task");
        assert_eq!(response.status, 200, "request {i} status");
        assert_eq!(response.body_text(), "done", "request {i} body");
    }
    let status = gateway.wait_for_exit(Duration::from_secs(10)).await;
    let exited_after = signalled.elapsed();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "exit code after SIGTERM\nstderr:\n{}",
        gateway.stderr()
    );
    // The backend responds 1 s after each request; the process ends when the last client
    // connection closes, long before the 20 s grace period. Tolerance: 2 s.
    assert!(
        exited_after < Duration::from_secs(3),
        "the process exits once drained; it took {exited_after:?}"
    );
    assert!(
        TcpStream::connect(listen).await.is_err(),
        "nothing listens after the exit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drain_closes_kept_alive_connections() {
    // The response comes after the 1 s in which kept-alive connections may still send a next
    // request during a drain.
    let backend = DelayedBackend::start(Duration::from_millis(1500)).await;
    let yaml = slow_backend_config(&backend);
    let mut gateway = Gateway::start(&yaml).await;
    let mut client = HttpClient::connect(gateway.listen_addr()).await;
    let first = client.send(&Request::get("/before")).await;
    assert_eq!(first.status, 200, "request before the drain");
    assert_eq!(first.header("connection"), Some("keep-alive"));

    let in_flight = tokio::spawn(async move {
        let response = client.send(&Request::get("/in-flight")).await;
        (client, response)
    });
    backend.wait_for_requests(2).await;
    gateway.signal(libc::SIGTERM);

    let (mut client, response) = in_flight.await.expect("request task");
    assert_eq!(response.status, 200, "the request in flight is finished");
    assert_eq!(
        response.header("connection"),
        Some("close"),
        "a response sent during the drain closes the connection"
    );
    let rest = client.read_until_close().await.expect("read until close");
    assert!(rest.is_empty(), "nothing follows the response: {rest:?}");
    let status = gateway.wait_for_exit(Duration::from_secs(10)).await;
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "exit code after SIGTERM\nstderr:\n{}",
        gateway.stderr()
    );
}

/// Kills a spawned process when dropped, so a failing test leaves none running.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn graceful_upgrade_under_load() {
    let one = EchoBackend::start("one").await;
    let two = EchoBackend::start("two").await;
    let process_args = [
        "--upgrade-sock",
        "{dir}/upgrade.sock",
        "--pid-file",
        "{dir}/gatehouse.pid",
    ];
    let mut old = Gateway::start_with_args(&table("A", "one", &one, &two, ""), &process_args).await;
    let load = Load::start(format!("http://{}/api/load", old.listen_addr()), 3, 1);
    let load_started = Instant::now();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut upgrade_args = vec!["--upgrade"];
    upgrade_args.extend_from_slice(&process_args);
    let new = KillOnDrop(old.spawn_sibling("new", &upgrade_args));
    // The new process waits for the sockets on the upgrade socket.
    let socket = old.config_path().with_file_name("upgrade.sock");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(
            Instant::now() < deadline,
            "the new process opened {socket:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    old.signal(libc::SIGQUIT);
    eprintln!(
        "SIGQUIT sent {:?} after the load started",
        load_started.elapsed()
    );

    let status = old.wait_for_exit(Duration::from_secs(20)).await;
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "the old process exits 0\nstderr:\n{}",
        old.stderr()
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while old.readyz().await != Some(200) {
        assert!(Instant::now() < deadline, "the new process serves /readyz");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Traffic keeps flowing to the new process alone.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report = load.stop().await;
    assert_no_failures(&report);

    let metrics = parse_metrics(&old.metrics().await);
    let served = sample_value(
        &metrics,
        "gatehouse_requests_total",
        &[("route", "api"), ("method", "GET"), ("code", "200")],
    )
    .unwrap_or(0.0);
    assert!(served > 0.0, "the new process served the load");
    drop(new);
}

/// Returns a config of `routes` routes, where the matching one is last. Every 20th route has a
/// rate limit whose size depends on `variant`, so a reload between variants builds new limiters.
fn many_routes(backend: &EchoBackend, routes: usize, variant: u64) -> String {
    let mut yaml = format!(
        "listen:\n  - address: \"{{listen}}\"\nadmin:\n  address: \"{{admin}}\"\n\
         upstreams:\n  - name: echo\n    targets: [{{ address: \"{}\" }}]\n    \
         health_check: {{ path: /health, interval: 1s }}\nroutes:\n",
        backend.address()
    );
    for i in 0..routes {
        yaml.push_str(&format!(
            "  - name: route-{i}\n    match: {{ path_prefix: /r{i}, headers: {{ x-team: \"t{i}\" }} }}\n    \
             upstream: echo\n    request_headers: {{ set: {{ x-route: \"{i}\" }} }}\n"
        ));
        if i % 20 == 0 {
            yaml.push_str(&format!(
                "    rate_limit: {{ requests: {}, per: 1s, key: client_ip }}\n",
                1000 + variant
            ));
        }
    }
    yaml
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_reloads_keep_memory_bounded() {
    let backend = EchoBackend::start("echo").await;
    let variants = [many_routes(&backend, 200, 0), many_routes(&backend, 200, 1)];
    let gateway = Gateway::start(&variants[0]).await;
    let request = Request::get("/r199/x").header("x-team", "t199");

    let mut reloads = 0u64;
    let mut reload = |gateway: &Gateway| {
        reloads += 1;
        gateway.write_config(&variants[(reloads % 2) as usize]);
        gateway.signal(libc::SIGHUP);
        reloads
    };
    // Reload until the allocator has reached its working size, then measure.
    for _ in 0..100 {
        let expected = reload(&gateway);
        wait_for_success_count(&gateway, expected).await;
    }
    assert_eq!(
        gateway.send(&request).await.status,
        200,
        "last route serves"
    );
    let rss_before = gateway.rss_bytes();
    let threads_before = gateway.thread_count();
    let started = Instant::now();
    for _ in 0..1000 {
        let expected = reload(&gateway);
        wait_for_success_count(&gateway, expected).await;
    }
    assert_eq!(
        gateway.send(&request).await.status,
        200,
        "last route serves"
    );
    let rss_after = gateway.rss_bytes();
    let threads_after = gateway.thread_count();
    eprintln!(
        "1000 reloads of 200 routes in {:?}: RSS {rss_before} -> {rss_after} bytes, threads \
         {threads_before} -> {threads_after}",
        started.elapsed()
    );

    // A leak of one route's state per reload would add at least 200 KiB per reload, 200 MiB
    // in all; 16 MiB leaves room for allocator fragmentation.
    let bound = 16 * 1024 * 1024;
    assert!(
        rss_after < rss_before + bound,
        "RSS grew from {rss_before} to {rss_after} bytes over 1000 reloads, more than {bound}"
    );
    assert_eq!(threads_after, threads_before, "thread count");
}

/// Waits until `gatehouse_config_reloads_total{result="success"}` reaches `expected`, for at
/// most 10 s.
async fn wait_for_success_count(gateway: &Gateway, expected: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = parse_metrics(&gateway.metrics().await);
        let value = sample_value(
            &metrics,
            "gatehouse_config_reloads_total",
            &[("result", "success")],
        );
        if value == Some(expected as f64) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "reload {expected} not counted within 10 s (counter {value:?})\nstderr tail:\n{}",
            gateway
                .stderr()
                .lines()
                .rev()
                .take(20)
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_exits_without_draining() {
    let backend = DelayedBackend::start(Duration::from_secs(30)).await;
    let yaml = slow_backend_config(&backend);
    let mut gateway = Gateway::start(&yaml).await;
    let listen = gateway.listen_addr();
    let pending = tokio::spawn(async move {
        let mut client = HttpClient::connect(listen).await;
        client.send_raw(&Request::get("/slow").to_bytes()).await?;
        client.read_response(false).await
    });
    backend.wait_for_requests(1).await;

    let signalled = Instant::now();
    gateway.signal(libc::SIGINT);
    let status = gateway.wait_for_exit(Duration::from_secs(10)).await;
    let exited_after = signalled.elapsed();
    assert!(status.is_some(), "the process exited");
    // Tolerance: 2 s for the runtimes to stop; the request in flight would take 30 s.
    assert!(
        exited_after < Duration::from_secs(2),
        "SIGINT does not wait for requests; the exit took {exited_after:?}"
    );
    let outcome = pending.await.expect("client task");
    assert!(
        outcome.is_err(),
        "the request in flight is cut: {:?}",
        outcome.map(|r| r.status)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigquit_without_new_process_keeps_serving() {
    let one = EchoBackend::start("one").await;
    let two = EchoBackend::start("two").await;
    let args = ["--upgrade-sock", "{dir}/upgrade.sock"];
    let mut gateway = Gateway::start_with_args(&table("A", "one", &one, &two, ""), &args).await;

    gateway.signal(libc::SIGQUIT);
    assert!(
        gateway.wait_for_stderr("SIGQUIT ignored").await,
        "the ignored SIGQUIT is logged:\n{}",
        gateway.stderr()
    );
    // Pingora would have stopped the listeners 5 s after a SIGQUIT; wait past that.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(
        gateway.wait_for_exit(Duration::ZERO).await.is_none(),
        "the process still runs"
    );
    assert_eq!(gateway.get("/table").await.status, 200, "still serving");
    assert_eq!(gateway.readyz().await, Some(200), "still ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_during_drain_exits_at_once() {
    let backend = DelayedBackend::start(Duration::from_secs(30)).await;
    let yaml = slow_backend_config(&backend);
    let mut gateway = Gateway::start(&yaml).await;
    let listen = gateway.listen_addr();
    let _pending = tokio::spawn(async move { send(listen, &Request::get("/slow")).await });
    backend.wait_for_requests(1).await;
    gateway.signal(libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    while gateway.readyz().await != Some(503) {
        assert!(Instant::now() < deadline, "draining");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let signalled = Instant::now();
    gateway.signal(libc::SIGINT);
    let status = gateway.wait_for_exit(Duration::from_secs(10)).await;
    let exited_after = signalled.elapsed();
    assert_eq!(status.and_then(|s| s.code()), Some(0), "exit code");
    // Tolerance: 2 s; the drain alone would last until the 20 s grace period ends.
    assert!(
        exited_after < Duration::from_secs(2),
        "SIGINT ends the drain; the exit took {exited_after:?}"
    );
}
