//! Shared harness for the gateway's integration tests: a raw HTTP/1.1 client, scripted
//! backends, a `Gateway` process wrapper, CLI runner and Prometheus text parser.
//!
//! Everything listens on and connects to 127.0.0.1 only. Every network wait is bounded by
//! `IO_TIMEOUT` or by an explicit deadline, so a broken gateway fails a test instead of
//! hanging it.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// Maximum wait for any single read, write or connect done by the test client.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Maximum wait for the gateway to report ready, and for a CLI run to exit.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// Interval between two polls of a condition (readiness, access log, metrics).
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Maximum size of a request or response head that the parsers accept.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Host header that `Request::new` sends unless the test sets another one.
pub const DEFAULT_HOST: &str = "gatehouse.test";

// ---------------------------------------------------------------------------
// Buffered connection and HTTP/1.1 message parsing
// ---------------------------------------------------------------------------

/// A TCP stream with a read buffer, shared by the test client and the scripted backends.
/// With `timeout` set, each socket read that waits longer fails with `TimedOut`.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    timeout: Option<Duration>,
}

impl Conn {
    pub fn new(stream: TcpStream, timeout: Option<Duration>) -> Conn {
        Conn {
            stream,
            buf: Vec::new(),
            timeout,
        }
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Reads more bytes into the buffer and returns how many arrived (0 at end of stream).
    async fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        let read = self.stream.read(&mut chunk);
        let count = match self.timeout {
            Some(limit) => tokio::time::timeout(limit, read).await.map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no bytes received within {limit:?}"),
                )
            })??,
            None => read.await?,
        };
        self.buf.extend_from_slice(&chunk[..count]);
        Ok(count)
    }

    pub async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        let write = self.stream.write_all(bytes);
        match self.timeout {
            Some(limit) => tokio::time::timeout(limit, write)
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "write timed out"))?,
            None => write.await,
        }
    }

    /// Reads a message head up to and including the blank line, without the final CRLF CRLF.
    /// Returns `None` when the peer closes the connection before sending any byte of it.
    pub async fn read_head(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = self.buf[..end].to_vec();
                self.buf.drain(..end + 4);
                return Ok(Some(head));
            }
            if self.buf.len() > MAX_HEAD_BYTES {
                return Err(invalid_data("message head larger than 64 KiB"));
            }
            if self.fill().await? == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "connection closed inside a message head: {:?}",
                        String::from_utf8_lossy(&self.buf)
                    ),
                ));
            }
        }
    }

    /// Reads one line ending in CRLF and returns it without the CRLF.
    async fn read_line(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n") {
                let line = self.buf[..end].to_vec();
                self.buf.drain(..end + 2);
                return Ok(line);
            }
            if self.fill().await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed inside a line",
                ));
            }
        }
    }

    pub async fn read_exact_bytes(&mut self, count: usize) -> io::Result<Vec<u8>> {
        while self.buf.len() < count {
            if self.fill().await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "connection closed after {} of {count} body bytes",
                        self.buf.len()
                    ),
                ));
            }
        }
        Ok(self.buf.drain(..count).collect())
    }

    pub async fn read_to_close(&mut self) -> io::Result<Vec<u8>> {
        while self.fill().await? > 0 {}
        Ok(std::mem::take(&mut self.buf))
    }

    /// Decodes a chunked body, discarding chunk extensions and trailer fields.
    pub async fn read_chunked(&mut self) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line = self.read_line().await?;
            let size_text = String::from_utf8_lossy(&line);
            let size_text = size_text.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_text, 16)
                .map_err(|_| invalid_data(&format!("invalid chunk size line {size_text:?}")))?;
            if size == 0 {
                // Trailer section: zero or more fields, then an empty line.
                while !self.read_line().await?.is_empty() {}
                return Ok(body);
            }
            body.extend(self.read_exact_bytes(size).await?);
            if !self.read_line().await?.is_empty() {
                return Err(invalid_data("chunk data not followed by CRLF"));
            }
        }
    }

    /// Reads a body framed as RFC 9112 section 6 describes for the given headers. Without
    /// Transfer-Encoding or Content-Length, `read_to_close_if_unframed` picks between an
    /// empty body (requests) and a body that ends at connection close (responses).
    async fn read_body(
        &mut self,
        headers: &[(String, String)],
        read_to_close_if_unframed: bool,
    ) -> io::Result<Vec<u8>> {
        if let Some(encoding) = header_value(headers, "transfer-encoding") {
            if encoding.to_ascii_lowercase().contains("chunked") {
                return self.read_chunked().await;
            }
        }
        if let Some(length) = header_value(headers, "content-length") {
            let length: usize = length
                .trim()
                .parse()
                .map_err(|_| invalid_data(&format!("invalid Content-Length {length:?}")))?;
            return self.read_exact_bytes(length).await;
        }
        if read_to_close_if_unframed {
            self.read_to_close().await
        } else {
            Ok(Vec::new())
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

fn invalid_data(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.to_string())
}

/// Splits a message head into its start line and header fields, keeping the names as sent.
fn parse_head(head: &[u8]) -> io::Result<(String, Vec<(String, String)>)> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let start_line = lines.next().unwrap_or("").to_string();
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| invalid_data(&format!("header line without a colon: {line:?}")))?;
        headers.push((name.to_string(), value.trim().to_string()));
    }
    Ok((start_line, headers))
}

/// Returns the first value of header `name`, compared case-insensitively.
pub fn header_value<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.as_str())
}

/// Returns every value of header `name` in the order received, compared case-insensitively.
pub fn header_values<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.as_str())
        .collect()
}

// ---------------------------------------------------------------------------
// Test client
// ---------------------------------------------------------------------------

/// An HTTP/1.1 request serialized exactly as built: no header is added or normalized,
/// except the `Host` header that `new` puts first and `body` setting Content-Length.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// Creates a request with `Host: gatehouse.test` as its only header.
    pub fn new(method: &str, target: &str) -> Request {
        Request {
            method: method.to_string(),
            target: target.to_string(),
            headers: vec![("Host".to_string(), DEFAULT_HOST.to_string())],
            body: Vec::new(),
        }
    }

    pub fn get(target: &str) -> Request {
        Request::new("GET", target)
    }

    /// Appends a header line, keeping any earlier line with the same name.
    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Replaces the value of the Host header.
    pub fn host(mut self, value: &str) -> Request {
        self.headers
            .retain(|(name, _)| !name.eq_ignore_ascii_case("host"));
        self.headers
            .insert(0, ("Host".to_string(), value.to_string()));
        self
    }

    /// Sets the body and a matching Content-Length header.
    pub fn body(mut self, body: &[u8]) -> Request {
        self.body = body.to_vec();
        self.headers
            .retain(|(name, _)| !name.eq_ignore_ascii_case("content-length"));
        self.headers
            .push(("Content-Length".to_string(), body.len().to_string()));
        self
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = format!("{} {} HTTP/1.1\r\n", self.method, self.target).into_bytes();
        for (name, value) in &self.headers {
            bytes.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        bytes.extend_from_slice(b"\r\n");
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

/// A parsed HTTP/1.1 response.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub status_line: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        header_value(&self.headers, name)
    }

    pub fn header_values(&self, name: &str) -> Vec<&str> {
        header_values(&self.headers, name)
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Parses the body as the JSON document that `EchoBackend` returns.
    pub fn echoed(&self) -> EchoedRequest {
        serde_json::from_slice(&self.body).unwrap_or_else(|error| {
            panic!(
                "response body is not an echo document ({error}); status {}, headers {:?}, body {:?}",
                self.status,
                self.headers,
                self.body_text()
            )
        })
    }
}

/// One client connection to a server, used for one or more requests in sequence.
pub struct HttpClient {
    conn: Conn,
}

impl HttpClient {
    pub async fn connect(addr: SocketAddr) -> HttpClient {
        let stream = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
            .await
            .unwrap_or_else(|_| panic!("connecting to {addr} timed out"))
            .unwrap_or_else(|error| panic!("connecting to {addr} failed: {error}"));
        stream.set_nodelay(true).expect("set TCP_NODELAY");
        HttpClient {
            conn: Conn::new(stream, Some(IO_TIMEOUT)),
        }
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.conn.write_all(bytes).await
    }

    /// Reads one response. With `request_was_head` set, the response has no body, regardless of its
    /// Content-Length header.
    pub async fn read_response(&mut self, request_was_head: bool) -> io::Result<Response> {
        let head = self.conn.read_head().await?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before a response",
            )
        })?;
        let (status_line, headers) = parse_head(&head)?;
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| invalid_data(&format!("invalid status line {status_line:?}")))?;

        let has_no_body =
            request_was_head || (100..200).contains(&status) || status == 204 || status == 304;
        let body = if has_no_body {
            Vec::new()
        } else {
            self.conn.read_body(&headers, true).await?
        };
        Ok(Response {
            status,
            status_line,
            headers,
            body,
        })
    }

    /// Sends `request` and reads its response, panicking with the request on any I/O error.
    pub async fn send(&mut self, request: &Request) -> Response {
        self.send_raw(&request.to_bytes())
            .await
            .unwrap_or_else(|error| panic!("sending {request:?} failed: {error}"));
        self.read_response(request.method == "HEAD")
            .await
            .unwrap_or_else(|error| panic!("reading the response to {request:?} failed: {error}"))
    }

    /// Waits until the server closes the connection and returns the bytes received meanwhile.
    pub async fn read_until_close(&mut self) -> io::Result<Vec<u8>> {
        self.conn.read_to_close().await
    }
}

/// Sends `request` on a new connection and returns the response.
pub async fn send(addr: SocketAddr, request: &Request) -> Response {
    HttpClient::connect(addr).await.send(request).await
}

/// Sends `GET target` on a new connection and returns the response.
pub async fn get(addr: SocketAddr, target: &str) -> Response {
    send(addr, &Request::get(target)).await
}

/// Returns whether `id` has the X-Request-Id form that the gateway keeps: 1 to 128
/// characters from `A-Za-z0-9-_.:`.
pub fn is_well_formed_request_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"-_.:".contains(&byte))
}

// ---------------------------------------------------------------------------
// Scripted backends
// ---------------------------------------------------------------------------

/// The JSON document that `EchoBackend` returns for each request.
#[derive(Clone, Debug, Deserialize)]
pub struct EchoedRequest {
    pub backend: String,
    pub method: String,
    /// The request-target exactly as it arrived at the backend.
    pub target: String,
    /// Header fields in arrival order, names with the case the gateway sent.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl EchoedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        header_value(&self.headers, name)
    }

    pub fn header_values(&self, name: &str) -> Vec<&str> {
        header_values(&self.headers, name)
    }
}

/// An HTTP/1.1 server that responds to every request with 200 and a JSON description of the
/// request as received. Supports keep-alive and Content-Length or chunked request bodies.
/// Responses carry `content-type: application/json`, `x-backend: NAME` and
/// `server: echo-backend`.
pub struct EchoBackend {
    name: String,
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
    accept_task: JoinHandle<()>,
}

impl EchoBackend {
    pub async fn start(name: &str) -> EchoBackend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind echo backend on 127.0.0.1:0");
        let addr = listener.local_addr().expect("echo backend address");
        let requests = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));

        let accept_task = tokio::spawn({
            let name = name.to_string();
            let requests = requests.clone();
            let connections = connections.clone();
            async move {
                // Dropping the JoinSet when this task is aborted closes every connection.
                let mut connection_tasks = JoinSet::new();
                while let Ok((stream, _)) = listener.accept().await {
                    connections.fetch_add(1, Ordering::SeqCst);
                    let name = name.clone();
                    let requests = requests.clone();
                    connection_tasks.spawn(async move {
                        let _ = serve_echo_connection(stream, &name, &requests).await;
                    });
                }
            }
        });

        EchoBackend {
            name: name.to_string(),
            addr,
            requests,
            connections,
            accept_task,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Returns the address as `127.0.0.1:PORT`, for substitution into a config.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    pub fn request_count(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for EchoBackend {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

async fn serve_echo_connection(
    stream: TcpStream,
    name: &str,
    requests: &AtomicUsize,
) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut conn = Conn::new(stream, None);
    while let Some(head) = conn.read_head().await? {
        let (request_line, headers) = parse_head(&head)?;
        let mut parts = request_line.splitn(3, ' ');
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("").to_string();
        let version = parts.next().unwrap_or("").to_string();
        let body = conn.read_body(&headers, false).await?;
        requests.fetch_add(1, Ordering::SeqCst);

        let document = serde_json::json!({
            "backend": name,
            "method": method,
            "target": target,
            "headers": headers,
            "body": String::from_utf8_lossy(&body),
        });
        let document = serde_json::to_vec(&document).expect("serialize echo document");

        let close = version == "HTTP/1.0"
            || header_values(&headers, "connection")
                .iter()
                .any(|value| value.to_ascii_lowercase().contains("close"));
        let mut response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-backend: {name}\r\n\
             server: echo-backend\r\ncontent-length: {}\r\n",
            document.len()
        );
        if close {
            response.push_str("connection: close\r\n");
        }
        response.push_str("\r\n");
        let mut bytes = response.into_bytes();
        bytes.extend_from_slice(&document);
        conn.write_all(&bytes).await?;
        if close {
            return Ok(());
        }
    }
    Ok(())
}

/// A backend that accepts connections and reads from them but never responds. Connections
/// stay open until the backend is dropped.
pub struct SilentBackend {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    accept_task: JoinHandle<()>,
}

impl SilentBackend {
    pub async fn start() -> SilentBackend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind silent backend on 127.0.0.1:0");
        let addr = listener.local_addr().expect("silent backend address");
        let connections = Arc::new(AtomicUsize::new(0));
        let accept_task = tokio::spawn({
            let connections = connections.clone();
            async move {
                let mut connection_tasks = JoinSet::new();
                while let Ok((mut stream, _)) = listener.accept().await {
                    connections.fetch_add(1, Ordering::SeqCst);
                    connection_tasks.spawn(async move {
                        let mut sink = [0u8; 4096];
                        while matches!(stream.read(&mut sink).await, Ok(count) if count > 0) {}
                        // Hold the socket open after the peer's end of stream as well.
                        std::future::pending::<()>().await;
                    });
                }
            }
        });
        SilentBackend {
            addr,
            connections,
            accept_task,
        }
    }

    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for SilentBackend {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

/// A backend that reads each request head and then resets the connection (SO_LINGER 0,
/// so closing sends RST instead of FIN).
pub struct ResetBackend {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    accept_task: JoinHandle<()>,
}

impl ResetBackend {
    pub async fn start() -> ResetBackend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind reset backend on 127.0.0.1:0");
        let addr = listener.local_addr().expect("reset backend address");
        let connections = Arc::new(AtomicUsize::new(0));
        let accept_task = tokio::spawn({
            let connections = connections.clone();
            async move {
                let mut connection_tasks = JoinSet::new();
                while let Ok((stream, _)) = listener.accept().await {
                    connections.fetch_add(1, Ordering::SeqCst);
                    connection_tasks.spawn(async move {
                        let mut conn = Conn::new(stream, None);
                        let _ = conn.read_head().await;
                        let _ = conn.stream().set_zero_linger();
                        drop(conn);
                    });
                }
            }
        });
        ResetBackend {
            addr,
            connections,
            accept_task,
        }
    }

    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for ResetBackend {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

/// Returns a loopback address on which nothing listens, so connecting to it is refused.
/// Another process could bind the port in between, which is unlikely within one test.
pub fn closed_port() -> SocketAddr {
    free_loopback_addr()
}

/// Binds 127.0.0.1:0, reads the port the kernel picked and releases it.
pub fn free_loopback_addr() -> SocketAddr {
    free_loopback_addrs::<1>()[0]
}

/// Returns `N` distinct loopback addresses on which nothing listens now, none of them handed
/// out before in this test process. The tests of one file run in parallel, and the kernel may
/// give a released port to the next probe, so two gateways could otherwise get the same port.
pub fn free_loopback_addrs<const N: usize>() -> [SocketAddr; N] {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    // All probe sockets stay bound until every port is read, so the kernel cannot hand out
    // the same port twice within one call.
    let mut probes = Vec::new();
    while probes.len() < N {
        let probe =
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind a probe socket on 127.0.0.1:0");
        let addr = probe.local_addr().expect("probe socket address");
        if !handed_out.contains(&addr.port()) {
            handed_out.push(addr.port());
            probes.push((probe, addr));
        }
    }
    std::array::from_fn(|i| probes[i].1)
}

// ---------------------------------------------------------------------------
// Config files, the gateway process and the CLI
// ---------------------------------------------------------------------------

/// A config file written into its own temporary directory. `{listen}` and `{admin}` in the
/// text are replaced with free loopback addresses. Both placeholders are optional.
pub struct ConfigFile {
    dir: TempDir,
    path: PathBuf,
    listen: SocketAddr,
    admin: SocketAddr,
}

impl ConfigFile {
    pub fn write(yaml: &str) -> ConfigFile {
        let [listen, admin] = free_loopback_addrs::<2>();
        let text = yaml
            .replace("{listen}", &listen.to_string())
            .replace("{admin}", &admin.to_string());
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let path = dir.path().join("gateway.yaml");
        std::fs::write(&path, text).expect("write the config file");
        ConfigFile {
            dir,
            path,
            listen,
            admin,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Returns the path as a string, the way the CLI prints it in messages.
    pub fn path_str(&self) -> String {
        self.path.to_str().expect("UTF-8 temp path").to_string()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// A running `gatehouse` process. Its stdout (the access log) and stderr go to files in the
/// config's temporary directory. Dropping it kills the process and waits for it.
pub struct Gateway {
    config: ConfigFile,
    child: Child,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
}

impl Gateway {
    /// Writes `yaml` (with `{listen}` and `{admin}` substituted), starts the gateway on it and
    /// waits until the admin `/readyz` returns 200. Panics with the captured stderr if the
    /// gateway exits or is not ready within 20 s.
    pub async fn start(yaml: &str) -> Gateway {
        Gateway::start_with_args(yaml, &[]).await
    }

    /// Starts the gateway like [`Gateway::start`], with extra command line arguments.
    /// `{dir}` in an argument is replaced with the config's temporary directory.
    pub async fn start_with_args(yaml: &str, args: &[&str]) -> Gateway {
        let config = ConfigFile::write(yaml);
        let stdout_path = config.dir().join("stdout.log");
        let stderr_path = config.dir().join("stderr.log");
        let dir = config.dir().to_str().expect("UTF-8 temp path").to_owned();
        let child = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
            .arg("-c")
            .arg(config.path())
            .args(args.iter().map(|a| a.replace("{dir}", &dir)))
            .stdin(Stdio::null())
            .stdout(File::create(&stdout_path).expect("create stdout file"))
            .stderr(File::create(&stderr_path).expect("create stderr file"))
            .spawn()
            .expect("spawn the gatehouse binary");
        let mut gateway = Gateway {
            config,
            child,
            stdout_path,
            stderr_path,
        };
        gateway.wait_until_ready().await;
        gateway
    }

    async fn wait_until_ready(&mut self) {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the gateway process") {
                panic!(
                    "gateway exited with {status} before becoming ready\nconfig:\n{}\nstderr:\n{}",
                    self.config_text(),
                    self.stderr()
                );
            }
            if self.readyz_status().await == Some(200) {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "gateway not ready within {STARTUP_TIMEOUT:?}\nstderr:\n{}",
                    self.stderr()
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Returns the status of one `GET /readyz` on a fresh connection, or `None` if the
    /// connection or the exchange failed within 1 s.
    async fn readyz_status(&self) -> Option<u16> {
        let attempt = async {
            let stream = TcpStream::connect(self.admin_addr()).await.ok()?;
            let mut client = HttpClient {
                conn: Conn::new(stream, Some(Duration::from_secs(1))),
            };
            client
                .send_raw(&Request::get("/readyz").to_bytes())
                .await
                .ok()?;
            client.read_response(false).await.ok().map(|r| r.status)
        };
        tokio::time::timeout(Duration::from_secs(1), attempt)
            .await
            .ok()
            .flatten()
    }

    pub fn listen_addr(&self) -> SocketAddr {
        self.config.listen
    }

    /// Replaces the config file the way an operator should: the new text (with `{listen}`
    /// and `{admin}` substituted by this gateway's addresses) goes to a temporary file that is
    /// then renamed over the old one.
    pub fn write_config(&self, yaml: &str) {
        let text = yaml
            .replace("{listen}", &self.config.listen.to_string())
            .replace("{admin}", &self.config.admin.to_string());
        let temporary = self.config.dir().join(".gateway.yaml.new");
        std::fs::write(&temporary, text).expect("write the new config file");
        std::fs::rename(&temporary, self.config.path()).expect("rename the new config file");
    }

    /// Sends `signal` (a `libc::SIG*` number) to the gateway process.
    pub fn signal(&self, signal: i32) {
        let pid = i32::try_from(self.child.id()).expect("pid fits in i32");
        // SAFETY: kill(2) has no memory-safety requirements.
        let result = unsafe { libc::kill(pid, signal) };
        assert_eq!(result, 0, "kill({pid}, {signal}) failed");
    }

    /// Waits up to `timeout` for the process to exit and returns its exit status.
    pub async fn wait_for_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the gateway process") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Resident memory of the gateway process in bytes, from `/proc/PID/status`.
    pub fn rss_bytes(&self) -> u64 {
        proc_status_field(self.pid(), "VmRSS:") * 1024
    }

    /// Threads of the gateway process, from `/proc/PID/status`.
    pub fn thread_count(&self) -> u64 {
        proc_status_field(self.pid(), "Threads:")
    }

    /// Starts a second gatehouse on the same config file with `args`, writing its output to
    /// `NAME.stdout.log` and `NAME.stderr.log` in the config directory. `{dir}` in an argument
    /// is replaced with that directory. The process is not waited for.
    pub fn spawn_sibling(&self, name: &str, args: &[&str]) -> Child {
        let dir = self.config.dir();
        let dir_text = dir.to_str().expect("UTF-8 temp path");
        Command::new(env!("CARGO_BIN_EXE_gatehouse"))
            .arg("-c")
            .arg(self.config.path())
            .args(args.iter().map(|a| a.replace("{dir}", dir_text)))
            .stdin(Stdio::null())
            .stdout(
                File::create(dir.join(format!("{name}.stdout.log"))).expect("create stdout file"),
            )
            .stderr(
                File::create(dir.join(format!("{name}.stderr.log"))).expect("create stderr file"),
            )
            .spawn()
            .expect("spawn the gatehouse binary")
    }

    /// Returns the status of one `GET /readyz` on the admin listener, or `None` if the
    /// exchange failed within 1 s.
    pub async fn readyz(&self) -> Option<u16> {
        self.readyz_status().await
    }

    /// Process id of the gateway, for sending it signals.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.config.admin
    }

    pub fn config_path(&self) -> &Path {
        self.config.path()
    }

    pub fn config_text(&self) -> String {
        std::fs::read_to_string(self.config.path()).unwrap_or_default()
    }

    /// Returns everything the gateway wrote to stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    /// Returns everything the gateway wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Polls stderr until it contains `text`, for at most 5 s, and reports whether it did. The
    /// gateway writes its log through a writer thread, so a line can follow the event it logs.
    pub async fn wait_for_stderr(&self, text: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if self.stderr().contains(text) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Sends `request` to the proxy listener on a new connection.
    pub async fn send(&self, request: &Request) -> Response {
        send(self.listen_addr(), request).await
    }

    /// Sends `GET target` to the proxy listener on a new connection.
    pub async fn get(&self, target: &str) -> Response {
        get(self.listen_addr(), target).await
    }

    /// Opens a client connection to the proxy listener.
    pub async fn client(&self) -> HttpClient {
        HttpClient::connect(self.listen_addr()).await
    }

    /// Fetches `/metrics` from the admin listener and returns the body text.
    pub async fn metrics(&self) -> String {
        let response = get(self.admin_addr(), "/metrics").await;
        assert_eq!(
            response.status, 200,
            "GET /metrics on the admin listener returned {}",
            response.status
        );
        response.body_text()
    }

    /// Polls `/metrics` until `gatehouse_config_reloads_total{result}` equals `expected`, for
    /// at most 5 s, and returns the last value seen.
    pub async fn wait_for_reloads(&self, result: &str, expected: u64) -> Option<f64> {
        self.wait_for_metric(
            "gatehouse_config_reloads_total",
            &[("result", result)],
            expected as f64,
        )
        .await
    }

    /// Polls `/metrics` until the sample `name` with `labels` equals `expected`, for at most
    /// 5 s, and returns the last value seen (`None` if the sample never appeared). Metrics are
    /// recorded when a request finishes, which can be just after the client got the response.
    pub async fn wait_for_metric(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        expected: f64,
    ) -> Option<f64> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let value = sample_value(&parse_metrics(&self.metrics().await), name, labels);
            if value == Some(expected) || Instant::now() >= deadline {
                return value;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Returns the access log records written so far: the JSON object of every stdout line
    /// that has a `request_id` field, at the top level or under `fields`.
    pub fn access_log(&self) -> Vec<serde_json::Map<String, serde_json::Value>> {
        self.stdout()
            .lines()
            .filter_map(access_log_record)
            .collect()
    }

    /// Polls stdout until it contains at least `count` access log records, for at most 5 s,
    /// and returns them. The gateway writes the access log asynchronously.
    pub async fn wait_for_access_log(
        &self,
        count: usize,
    ) -> Vec<serde_json::Map<String, serde_json::Value>> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let records = self.access_log();
            if records.len() >= count {
                return records;
            }
            if Instant::now() >= deadline {
                panic!(
                    "expected {count} access log records within 5 s, found {}\nstdout:\n{}\nstderr:\n{}",
                    records.len(),
                    self.stdout(),
                    self.stderr()
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads a numeric field such as `VmRSS:` or `Threads:` from `/proc/PID/status`.
pub fn proc_status_field(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    let line = status
        .lines()
        .find(|line| line.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} line in /proc/{pid}/status"));
    line[field.len()..]
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("invalid {field} line {line:?}"))
}

/// Parses one stdout line as an access log record, see `Gateway::access_log`.
fn access_log_record(line: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    let value: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
    let object = value.as_object()?;
    if object.contains_key("request_id") {
        return Some(object.clone());
    }
    let fields = object.get("fields")?.as_object()?;
    if fields.contains_key("request_id") {
        return Some(fields.clone());
    }
    None
}

/// Exit code (`-1` when killed by a signal), stdout and stderr of a finished CLI run.
pub struct CliOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the gatehouse binary with `args` to completion and returns exit code, stdout and
/// stderr. Kills it and panics if it runs longer than 20 s.
pub fn run_cli(args: &[&str]) -> (i32, String, String) {
    let output = run_cli_output(args);
    (output.code, output.stdout, output.stderr)
}

pub fn run_cli_output(args: &[&str]) -> CliOutput {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let stdout_path = dir.path().join("stdout");
    let stderr_path = dir.path().join("stderr");
    let mut child = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(File::create(&stdout_path).expect("create stdout file"))
        .stderr(File::create(&stderr_path).expect("create stderr file"))
        .spawn()
        .expect("spawn the gatehouse binary");

    let deadline = Instant::now() + STARTUP_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll the gatehouse process") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "gatehouse {args:?} still running after {STARTUP_TIMEOUT:?}\nstdout:\n{}\nstderr:\n{}",
                std::fs::read_to_string(&stdout_path).unwrap_or_default(),
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
        std::thread::sleep(POLL_INTERVAL);
    };

    CliOutput {
        code: status.code().unwrap_or(-1),
        stdout: std::fs::read_to_string(&stdout_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&stderr_path).unwrap_or_default(),
    }
}

/// Returns the 1-based number of the line where `needle` occurs for the `occurrence`-th
/// time (counting from 1).
pub fn line_of_nth(text: &str, needle: &str, occurrence: usize) -> usize {
    text.lines()
        .enumerate()
        .filter(|(_, line)| line.contains(needle))
        .nth(occurrence - 1)
        .map(|(index, _)| index + 1)
        .unwrap_or_else(|| panic!("occurrence {occurrence} of {needle:?} not found in:\n{text}"))
}

/// Returns the 1-based number of the first line that contains `needle`.
pub fn line_of(text: &str, needle: &str) -> usize {
    line_of_nth(text, needle, 1)
}

// ---------------------------------------------------------------------------
// Prometheus text format
// ---------------------------------------------------------------------------

/// One sample line of the Prometheus text exposition format.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses the sample lines of a Prometheus text exposition, skipping comments and blank
/// lines. Panics on a line it cannot parse, naming the line.
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| parse_sample(line).unwrap_or_else(|| panic!("invalid metrics line {line:?}")))
        .collect()
}

fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_string();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];

    if let Some(after_brace) = rest.strip_prefix('{') {
        let mut chars = after_brace.char_indices().peekable();
        loop {
            // Skip separators, then read `key="value"` or the closing brace.
            while matches!(chars.peek(), Some((_, ',' | ' '))) {
                chars.next();
            }
            let (start, first) = chars.next()?;
            if first == '}' {
                rest = &after_brace[start + 1..];
                break;
            }
            let mut key = String::from(first);
            loop {
                let (_, c) = chars.next()?;
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            if chars.next()?.1 != '"' {
                return None;
            }
            let mut value = String::new();
            loop {
                let (_, c) = chars.next()?;
                match c {
                    '"' => break,
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    other => value.push(other),
                }
            }
            labels.insert(key.trim().to_string(), value);
        }
    }

    let value_text = rest.split_whitespace().next()?;
    let value = match value_text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// Returns the samples named `name` whose labels include every pair in `labels`.
pub fn find_samples<'a>(
    samples: &'a [Sample],
    name: &str,
    labels: &[(&str, &str)],
) -> Vec<&'a Sample> {
    samples
        .iter()
        .filter(|sample| sample.name == name)
        .filter(|sample| {
            labels
                .iter()
                .all(|(key, value)| sample.labels.get(*key).map(String::as_str) == Some(*value))
        })
        .collect()
}

/// Returns the value of the first sample named `name` whose labels include `labels`.
pub fn sample_value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    find_samples(samples, name, labels)
        .first()
        .map(|sample| sample.value)
}
