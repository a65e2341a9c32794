//! TLS on both sides of the gateway: termination on a `listen` entry (HTTP/1.1 and HTTP/2
//! through ALPN), TLS to upstreams with and without certificate verification, and the config
//! checks of certificate, key and CA paths.
//!
//! Every certificate comes from a throwaway CA created by the test, so no test depends on
//! the system's trust store except to show that it does not trust that CA.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use openssl::asn1::{Asn1Integer, Asn1Time};
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{NameType, Ssl, SslAcceptor, SslConnector, SslFiletype, SslMethod};
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
    SubjectKeyIdentifier,
};
use openssl::x509::{X509NameBuilder, X509};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_openssl::SslStream;

use common::{
    line_of, parse_metrics, run_cli_output, sample_value, CliOutput, ConfigFile, EchoBackend,
    EchoedRequest, Gateway, IO_TIMEOUT,
};

/// Server name of the gateway's TLS listener certificate.
const GATEWAY_NAME: &str = "gatehouse.test";

/// Server name of the TLS backend's certificate.
const BACKEND_NAME: &str = "backend.test";

/// ALPN protocol lists in wire format: each name prefixed with its length.
const ALPN_H1: &[u8] = b"\x08http/1.1";
const ALPN_H2_H1: &[u8] = b"\x02h2\x08http/1.1";

// ---------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------

/// A throwaway certificate authority whose certificate and issued leaves are PEM files in
/// its own temporary directory.
struct TestCa {
    dir: TempDir,
    cert: X509,
    key: PKey<Private>,
    cert_path: PathBuf,
}

/// PEM files of a leaf certificate and its private key.
struct Leaf {
    cert_path: PathBuf,
    key_path: PathBuf,
}

impl Leaf {
    fn cert(&self) -> &str {
        self.cert_path.to_str().expect("UTF-8 temp path")
    }

    fn key(&self) -> &str {
        self.key_path.to_str().expect("UTF-8 temp path")
    }
}

/// Generates a P-256 key, because EC keys take far less time to generate than RSA keys.
fn generate_key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).expect("P-256 group");
    let key = EcKey::generate(&group).expect("generate an EC key");
    PKey::from_ec_key(key).expect("wrap the EC key")
}

fn random_serial() -> Asn1Integer {
    let mut serial = BigNum::new().expect("allocate a BigNum");
    serial
        .rand(64, MsbOption::MAYBE_ZERO, false)
        .expect("random serial number");
    serial.to_asn1_integer().expect("serial as ASN.1 integer")
}

impl TestCa {
    fn new() -> TestCa {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let key = generate_key();

        let mut name = X509NameBuilder::new().expect("name builder");
        name.append_entry_by_nid(Nid::COMMONNAME, "gatehouse test CA")
            .expect("CA common name");
        let name = name.build();

        let mut builder = X509::builder().expect("certificate builder");
        builder.set_version(2).expect("X.509 v3");
        builder
            .set_serial_number(&random_serial())
            .expect("serial number");
        builder.set_subject_name(&name).expect("subject");
        builder.set_issuer_name(&name).expect("issuer");
        builder.set_pubkey(&key).expect("public key");
        builder
            .set_not_before(&Asn1Time::days_from_now(0).expect("now"))
            .expect("not before");
        builder
            .set_not_after(&Asn1Time::days_from_now(30).expect("in 30 days"))
            .expect("not after");
        builder
            .append_extension(BasicConstraints::new().critical().ca().build().expect("bc"))
            .expect("basic constraints");
        builder
            .append_extension(
                KeyUsage::new()
                    .critical()
                    .key_cert_sign()
                    .crl_sign()
                    .build()
                    .expect("key usage"),
            )
            .expect("key usage");
        let subject_key_id = SubjectKeyIdentifier::new()
            .build(&builder.x509v3_context(None, None))
            .expect("subject key identifier");
        builder
            .append_extension(subject_key_id)
            .expect("subject key identifier");
        builder
            .sign(&key, MessageDigest::sha256())
            .expect("self-sign the CA");
        let cert = builder.build();

        let cert_path = dir.path().join("ca.pem");
        std::fs::write(&cert_path, cert.to_pem().expect("CA PEM")).expect("write ca.pem");
        TestCa {
            dir,
            cert,
            key,
            cert_path,
        }
    }

    fn cert_path(&self) -> &str {
        self.cert_path.to_str().expect("UTF-8 temp path")
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Issues a server certificate for the DNS name `name` (as common name and as the only
    /// subjectAltName) and writes it to `NAME.pem` and its key to `NAME.key`.
    fn issue(&self, name: &str) -> Leaf {
        let key = generate_key();

        let mut subject = X509NameBuilder::new().expect("name builder");
        subject
            .append_entry_by_nid(Nid::COMMONNAME, name)
            .expect("leaf common name");
        let subject = subject.build();

        let mut builder = X509::builder().expect("certificate builder");
        builder.set_version(2).expect("X.509 v3");
        builder
            .set_serial_number(&random_serial())
            .expect("serial number");
        builder.set_subject_name(&subject).expect("subject");
        builder
            .set_issuer_name(self.cert.subject_name())
            .expect("issuer");
        builder.set_pubkey(&key).expect("public key");
        builder
            .set_not_before(&Asn1Time::days_from_now(0).expect("now"))
            .expect("not before");
        builder
            .set_not_after(&Asn1Time::days_from_now(30).expect("in 30 days"))
            .expect("not after");
        builder
            .append_extension(BasicConstraints::new().build().expect("bc"))
            .expect("basic constraints");
        builder
            .append_extension(
                KeyUsage::new()
                    .critical()
                    .digital_signature()
                    .key_encipherment()
                    .build()
                    .expect("key usage"),
            )
            .expect("key usage");
        builder
            .append_extension(
                ExtendedKeyUsage::new()
                    .server_auth()
                    .build()
                    .expect("extended key usage"),
            )
            .expect("extended key usage");
        let subject_alt_name = SubjectAlternativeName::new()
            .dns(name)
            .build(&builder.x509v3_context(Some(&self.cert), None))
            .expect("subjectAltName");
        builder
            .append_extension(subject_alt_name)
            .expect("subjectAltName");
        let subject_key_id = SubjectKeyIdentifier::new()
            .build(&builder.x509v3_context(Some(&self.cert), None))
            .expect("subject key identifier");
        builder
            .append_extension(subject_key_id)
            .expect("subject key identifier");
        let authority_key_id = AuthorityKeyIdentifier::new()
            .keyid(false)
            .build(&builder.x509v3_context(Some(&self.cert), None))
            .expect("authority key identifier");
        builder
            .append_extension(authority_key_id)
            .expect("authority key identifier");
        builder
            .sign(&self.key, MessageDigest::sha256())
            .expect("sign the leaf certificate");
        let cert = builder.build();

        let cert_path = self.dir().join(format!("{name}.pem"));
        let key_path = self.dir().join(format!("{name}.key"));
        std::fs::write(&cert_path, cert.to_pem().expect("leaf PEM")).expect("write leaf PEM");
        std::fs::write(
            &key_path,
            key.private_key_to_pem_pkcs8().expect("leaf key PEM"),
        )
        .expect("write leaf key");
        Leaf {
            cert_path,
            key_path,
        }
    }
}

// ---------------------------------------------------------------------------
// TLS client
// ---------------------------------------------------------------------------

/// Runs `future` with `IO_TIMEOUT`, panicking with the name of `operation` if it times out.
async fn with_timeout<F: std::future::Future>(operation: &str, future: F) -> F::Output {
    tokio::time::timeout(IO_TIMEOUT, future)
        .await
        .unwrap_or_else(|_| panic!("{operation} timed out after {IO_TIMEOUT:?}"))
}

/// Connects to `addr` and completes a TLS handshake that sends SNI `server_name`, offers the
/// ALPN list `alpn` (wire format), trusts only `ca` and verifies that the certificate names
/// `server_name`.
async fn tls_connect(
    addr: SocketAddr,
    ca: &TestCa,
    server_name: &str,
    alpn: &[u8],
) -> SslStream<TcpStream> {
    let mut builder = SslConnector::builder(SslMethod::tls_client()).expect("connector builder");
    builder
        .cert_store_mut()
        .add_cert(ca.cert.clone())
        .expect("trust the test CA");
    builder.set_alpn_protos(alpn).expect("ALPN list");
    let ssl = builder
        .build()
        .configure()
        .expect("connect configuration")
        .into_ssl(server_name)
        .expect("SNI and host name verification");

    let tcp = with_timeout(&format!("connecting to {addr}"), TcpStream::connect(addr))
        .await
        .unwrap_or_else(|error| panic!("connecting to {addr} failed: {error}"));
    tcp.set_nodelay(true).expect("set TCP_NODELAY");
    let mut stream = SslStream::new(ssl, tcp).expect("TLS stream");
    with_timeout(
        &format!("TLS handshake with {addr}"),
        Pin::new(&mut stream).connect(),
    )
    .await
    .unwrap_or_else(|error| panic!("TLS handshake with {addr} failed: {error}"));
    stream
}

/// Returns the ALPN protocol the server selected, as text.
fn selected_alpn(stream: &SslStream<TcpStream>) -> Option<String> {
    stream
        .ssl()
        .selected_alpn_protocol()
        .map(|protocol| String::from_utf8_lossy(protocol).into_owned())
}

/// Status, headers and complete body of a response received through hyper.
struct HyperResponse {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl HyperResponse {
    /// Parses the body as the JSON document that `EchoBackend` returns.
    fn echoed(&self) -> EchoedRequest {
        serde_json::from_slice(&self.body).unwrap_or_else(|error| {
            panic!(
                "response body is not an echo document ({error}); status {}, headers {:?}, body {:?}",
                self.status,
                self.headers,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

async fn collect_response(response: http::Response<hyper::body::Incoming>) -> HyperResponse {
    let (parts, body) = response.into_parts();
    let body = with_timeout("reading the response body", body.collect())
        .await
        .unwrap_or_else(|error| panic!("reading the response body failed: {error}"))
        .to_bytes();
    HyperResponse {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// Sends `request` over HTTP/1.1 on `stream` and returns the response.
async fn send_http1(
    stream: SslStream<TcpStream>,
    request: http::Request<Empty<Bytes>>,
) -> HyperResponse {
    let (mut sender, connection) = with_timeout(
        "HTTP/1.1 handshake",
        hyper::client::conn::http1::handshake(TokioIo::new(stream)),
    )
    .await
    .expect("HTTP/1.1 handshake");
    let connection_task = tokio::spawn(connection);

    let description = format!("{} {}", request.method(), request.uri());
    let response = with_timeout(
        &format!("HTTP/1.1 {description}"),
        sender.send_request(request),
    )
    .await
    .unwrap_or_else(|error| panic!("HTTP/1.1 {description} failed: {error}"));
    let response = collect_response(response).await;
    connection_task.abort();
    response
}

/// Sends `request` over HTTP/2 on `stream` and returns the response.
async fn send_http2(
    stream: SslStream<TcpStream>,
    request: http::Request<Empty<Bytes>>,
) -> HyperResponse {
    let (mut sender, connection) = with_timeout(
        "HTTP/2 handshake",
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)),
    )
    .await
    .unwrap_or_else(|error| panic!("HTTP/2 handshake failed: {error}"));
    let connection_task = tokio::spawn(connection);

    let description = format!("{} {}", request.method(), request.uri());
    let response = with_timeout(
        &format!("HTTP/2 {description}"),
        sender.send_request(request),
    )
    .await
    .unwrap_or_else(|error| panic!("HTTP/2 {description} failed: {error}"));
    let response = collect_response(response).await;
    connection_task.abort();
    response
}

// ---------------------------------------------------------------------------
// TLS backend
// ---------------------------------------------------------------------------

/// An HTTPS server that responds to every request with 200, `Connection: close` and the body
/// `sni: NAME\n`, where NAME is the server name the client sent in its TLS handshake (or
/// `none`). It serves one request per connection and never offers ALPN.
struct TlsSniBackend {
    addr: SocketAddr,
    handshakes: Arc<AtomicUsize>,
    accept_task: JoinHandle<()>,
}

impl TlsSniBackend {
    async fn start(leaf: &Leaf) -> TlsSniBackend {
        let mut acceptor = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())
            .expect("acceptor builder");
        acceptor
            .set_certificate_chain_file(&leaf.cert_path)
            .expect("backend certificate");
        acceptor
            .set_private_key_file(&leaf.key_path, SslFiletype::PEM)
            .expect("backend key");
        let acceptor = Arc::new(acceptor.build());

        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind TLS backend on 127.0.0.1:0");
        let addr = listener.local_addr().expect("TLS backend address");
        let handshakes = Arc::new(AtomicUsize::new(0));

        let accept_task = tokio::spawn({
            let handshakes = handshakes.clone();
            async move {
                // Dropping the JoinSet when this task is aborted closes every connection.
                let mut connection_tasks = JoinSet::new();
                while let Ok((tcp, _)) = listener.accept().await {
                    let acceptor = acceptor.clone();
                    let handshakes = handshakes.clone();
                    connection_tasks.spawn(async move {
                        // A failed handshake is expected in the tests where the gateway
                        // rejects this certificate, so errors only end the connection.
                        let _ = serve_sni_connection(tcp, &acceptor, &handshakes).await;
                    });
                }
            }
        });

        TlsSniBackend {
            addr,
            handshakes,
            accept_task,
        }
    }

    fn address(&self) -> String {
        self.addr.to_string()
    }

    /// Returns the number of completed TLS handshakes.
    fn handshake_count(&self) -> usize {
        self.handshakes.load(Ordering::SeqCst)
    }
}

impl Drop for TlsSniBackend {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

async fn serve_sni_connection(
    tcp: TcpStream,
    acceptor: &SslAcceptor,
    handshakes: &AtomicUsize,
) -> std::io::Result<()> {
    let ssl = Ssl::new(acceptor.context()).map_err(std::io::Error::other)?;
    let mut stream = SslStream::new(ssl, tcp).map_err(std::io::Error::other)?;
    tokio::time::timeout(IO_TIMEOUT, Pin::new(&mut stream).accept())
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS accept"))?
        .map_err(std::io::Error::other)?;
    handshakes.fetch_add(1, Ordering::SeqCst);

    // Read the request head. The gateway sends no body with the GET requests of these tests.
    let mut head = Vec::new();
    let mut chunk = [0u8; 4096];
    while !head.windows(4).any(|window| window == b"\r\n\r\n") {
        let count = tokio::time::timeout(IO_TIMEOUT, stream.read(&mut chunk))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "request head"))??;
        if count == 0 {
            return Ok(());
        }
        head.extend_from_slice(&chunk[..count]);
    }

    let server_name = stream
        .ssl()
        .servername(NameType::HOST_NAME)
        .unwrap_or("none")
        .to_string();
    let body = format!("sni: {server_name}\n");
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    tokio::time::timeout(IO_TIMEOUT, stream.write_all(response.as_bytes()))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "response write"))??;
    let _ = tokio::time::timeout(IO_TIMEOUT, stream.shutdown()).await;
    Ok(())
}

// ---------------------------------------------------------------------------
// Gateway configs
// ---------------------------------------------------------------------------

/// Starts a gateway whose only listener terminates TLS with `leaf` and routes every request
/// to `echo` over plain HTTP.
async fn start_tls_listener_gateway(leaf: &Leaf, echo: &EchoBackend) -> Gateway {
    let yaml = format!(
        "listen:
  - address: {{listen}}
    tls: {{ cert: \"{cert}\", key: \"{key}\" }}
admin:
  address: {{admin}}
upstreams:
  - name: echo
    targets:
      - {{ address: {echo_address} }}
routes:
  - name: users
    match: {{ path_prefix: /users }}
    upstream: echo
",
        cert = leaf.cert(),
        key = leaf.key(),
        echo_address = echo.address(),
    );
    Gateway::start(&yaml).await
}

/// Starts a gateway with a plain listener that routes every request to the upstream
/// `secure`, which connects to `backend` with the upstream TLS settings `tls_yaml` (a YAML
/// flow mapping).
async fn start_tls_upstream_gateway(backend: &TlsSniBackend, tls_yaml: &str) -> Gateway {
    let yaml = format!(
        "listen:
  - address: {{listen}}
admin:
  address: {{admin}}
upstreams:
  - name: secure
    targets:
      - {{ address: {backend_address} }}
    tls: {tls_yaml}
routes:
  - name: secure
    match: {{ path_prefix: / }}
    upstream: secure
",
        backend_address = backend.address(),
    );
    Gateway::start(&yaml).await
}

/// Polls `/metrics` until the sample `name` with `labels` is at least `minimum`, for at most
/// 5 s, and returns the last value seen (`None` if the sample never appeared).
async fn wait_for_metric_at_least(
    gateway: &Gateway,
    name: &str,
    labels: &[(&str, &str)],
    minimum: f64,
) -> Option<f64> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let value = sample_value(&parse_metrics(&gateway.metrics().await), name, labels);
        if value.is_some_and(|value| value >= minimum) || Instant::now() >= deadline {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------
// TLS listener
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn listener_http1() {
    let ca = TestCa::new();
    let leaf = ca.issue(GATEWAY_NAME);
    let echo = EchoBackend::start("echo").await;
    let gateway = start_tls_listener_gateway(&leaf, &echo).await;

    let stream = tls_connect(gateway.listen_addr(), &ca, GATEWAY_NAME, ALPN_H1).await;
    assert_eq!(
        selected_alpn(&stream).as_deref(),
        Some("http/1.1"),
        "ALPN protocol selected when the client offers only http/1.1"
    );

    let request = http::Request::get("/users/1")
        .header(http::header::HOST, GATEWAY_NAME)
        .body(Empty::<Bytes>::new())
        .expect("build the request");
    let response = send_http1(stream, request).await;
    assert_eq!(
        response.status,
        StatusCode::OK,
        "GET /users/1 over TLS status; body {:?}",
        String::from_utf8_lossy(&response.body)
    );

    let echoed = response.echoed();
    assert_eq!(echoed.target, "/users/1", "request-target at the backend");
    assert_eq!(
        echoed.header("x-forwarded-proto"),
        Some("https"),
        "x-forwarded-proto at the backend; headers {:?}",
        echoed.headers
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn listener_http2_alpn() {
    let ca = TestCa::new();
    let leaf = ca.issue(GATEWAY_NAME);
    let echo = EchoBackend::start("echo").await;
    let gateway = start_tls_listener_gateway(&leaf, &echo).await;

    let stream = tls_connect(gateway.listen_addr(), &ca, GATEWAY_NAME, ALPN_H2_H1).await;
    assert_eq!(
        selected_alpn(&stream).as_deref(),
        Some("h2"),
        "ALPN protocol selected when the client offers h2 and http/1.1"
    );

    let request = http::Request::get(format!("https://{GATEWAY_NAME}/users/2"))
        .version(http::Version::HTTP_2)
        .body(Empty::<Bytes>::new())
        .expect("build the request");
    let response = send_http2(stream, request).await;
    assert_eq!(
        response.status,
        StatusCode::OK,
        "GET /users/2 over HTTP/2 status; body {:?}",
        String::from_utf8_lossy(&response.body)
    );

    let echoed = response.echoed();
    assert_eq!(echoed.target, "/users/2", "request-target at the backend");
    assert_eq!(
        echoed.header("host"),
        Some(GATEWAY_NAME),
        "host at the backend, from the HTTP/2 :authority; headers {:?}",
        echoed.headers
    );
    assert_eq!(
        echoed.header("x-forwarded-proto"),
        Some("https"),
        "x-forwarded-proto at the backend; headers {:?}",
        echoed.headers
    );
}

// ---------------------------------------------------------------------------
// TLS to upstreams
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn upstream_verified() {
    let ca = TestCa::new();
    let backend = TlsSniBackend::start(&ca.issue(BACKEND_NAME)).await;
    let tls_yaml = format!(
        "{{ sni: {BACKEND_NAME}, verify: true, ca: \"{}\" }}",
        ca.cert_path()
    );
    let gateway = start_tls_upstream_gateway(&backend, &tls_yaml).await;

    let response = gateway.get("/").await;
    assert_eq!(
        response.status,
        200,
        "GET / through a verified TLS upstream status; body {:?}",
        response.body_text()
    );
    assert_eq!(
        response.body_text(),
        format!("sni: {BACKEND_NAME}\n"),
        "server name the backend received"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_wrong_name() {
    let ca = TestCa::new();
    let backend = TlsSniBackend::start(&ca.issue(BACKEND_NAME)).await;
    let tls_yaml = format!(
        "{{ sni: other.test, verify: true, ca: \"{}\" }}",
        ca.cert_path()
    );
    let gateway = start_tls_upstream_gateway(&backend, &tls_yaml).await;

    let response = gateway.get("/").await;
    assert_eq!(
        response.status, 502,
        "GET / when the upstream certificate does not name the SNI"
    );
    assert_eq!(response.body_text(), "502 Bad Gateway\n", "502 body");
    assert_eq!(
        backend.handshake_count(),
        0,
        "the backend must not see a completed handshake"
    );

    let labels = [("upstream", "secure"), ("kind", "tls")];
    let errors =
        wait_for_metric_at_least(&gateway, "gatehouse_upstream_errors_total", &labels, 1.0).await;
    assert!(
        errors.is_some_and(|count| count >= 1.0),
        "gatehouse_upstream_errors_total{{upstream=\"secure\",kind=\"tls\"}} is {errors:?}, \
         expected at least 1; metrics:\n{}",
        gateway.metrics().await
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_untrusted_ca() {
    let ca = TestCa::new();
    let backend = TlsSniBackend::start(&ca.issue(BACKEND_NAME)).await;
    let tls_yaml = format!("{{ sni: {BACKEND_NAME}, verify: true }}");
    let gateway = start_tls_upstream_gateway(&backend, &tls_yaml).await;

    let response = gateway.get("/").await;
    assert_eq!(
        response.status, 502,
        "GET / when only the system CAs are trusted"
    );
    assert_eq!(response.body_text(), "502 Bad Gateway\n", "502 body");
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_verify_off() {
    let ca = TestCa::new();
    let backend = TlsSniBackend::start(&ca.issue(BACKEND_NAME)).await;
    let gateway = start_tls_upstream_gateway(&backend, "{ sni: other.test, verify: false }").await;

    let response = gateway.get("/").await;
    assert_eq!(
        response.status,
        200,
        "GET / with verify: false and a certificate for another name; body {:?}",
        response.body_text()
    );
    assert_eq!(
        response.body_text(),
        "sni: other.test\n",
        "server name the backend received"
    );
}

// ---------------------------------------------------------------------------
// Config checks
// ---------------------------------------------------------------------------

/// Writes `yaml` and runs `gatehouse check -c FILE` on it.
fn check(yaml: &str) -> (ConfigFile, CliOutput) {
    let config = ConfigFile::write(yaml);
    let output = run_cli_output(&["check", "-c", &config.path_str()]);
    (config, output)
}

/// Asserts that `output` is a failed run with an error line
/// `error: FILE:LINE:COLUMN: KEY_PATH: MESSAGE` on stderr whose MESSAGE contains `value`.
fn assert_check_error(
    config: &ConfigFile,
    output: &CliOutput,
    line: usize,
    key_path: &str,
    value: &str,
) {
    assert_eq!(output.code, 1, "exit code; stderr:\n{}", output.stderr);

    let prefix = format!("error: {}:{line}:", config.path_str());
    let error_line = output
        .stderr
        .lines()
        .find(|text| text.starts_with(&prefix) && text.contains(&format!(": {key_path}: ")));
    assert!(
        error_line.is_some(),
        "expected a line `{prefix}COLUMN: {key_path}: MESSAGE` on stderr:\n{}",
        output.stderr
    );
    let error_line = error_line.unwrap_or_default();
    assert!(
        error_line.contains(value),
        "the error must name {value:?}: {error_line:?}"
    );
}

#[test]
fn check_missing_cert() {
    let ca = TestCa::new();
    let leaf = ca.issue(GATEWAY_NAME);
    let yaml = format!(
        "listen:
  - address: {{listen}}
    tls:
      cert: /nonexistent.pem
      key: \"{key}\"
routes:
  - name: hello
    match: {{ path: / }}
    respond: {{ status: 200, body: \"hello\\n\" }}
",
        key = leaf.key(),
    );
    let (config, output) = check(&yaml);
    assert_check_error(
        &config,
        &output,
        line_of(&yaml, "/nonexistent.pem"),
        "listen[0].tls.cert",
        "/nonexistent.pem",
    );
}

#[test]
fn check_ca_not_pem() {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let ca_path = dir.path().join("not-a-ca.pem");
    std::fs::write(&ca_path, "this is not a PEM certificate\n").expect("write the CA file");
    let ca_path = ca_path.to_str().expect("UTF-8 temp path");
    let yaml = format!(
        "listen:
  - address: {{listen}}
upstreams:
  - name: secure
    targets:
      - {{ address: 127.0.0.1:9443 }}
    tls:
      sni: {BACKEND_NAME}
      ca: \"{ca_path}\"
routes:
  - name: secure
    upstream: secure
"
    );
    let (config, output) = check(&yaml);
    assert_check_error(
        &config,
        &output,
        line_of(&yaml, "not-a-ca.pem"),
        "upstreams[0].tls.ca",
        ca_path,
    );
}
