//! The admin listener: `/metrics`, `/healthz` and `/readyz`, on an address of its own so the
//! proxied routes are never served there.
//!
//! It is not a Pingora listening service, because Pingora closes those when a graceful
//! shutdown starts, and `/readyz` must keep returning 503 while the process drains. Its socket
//! is bound with `SO_REUSEPORT`, so the new process of a graceful upgrade can bind the same
//! address while the old one still serves. The old process closes its admin listener when it
//! starts draining after the hand-over.

use crate::lifecycle::{Lifecycle, Phase};
use crate::metrics::metrics;
use async_trait::async_trait;
use http::{header, Response, StatusCode};
use pingora_core::apps::http_app::{HttpServer, ServeHttp};
use pingora_core::apps::ServerApp;
use pingora_core::protocols::http::ServerSession;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Readiness of the gateway: ready once every proxy listener accepts connections and SIGHUP
/// reloads are handled.
///
/// Pingora binds a service's listeners inside the service task and reports nothing when they
/// are bound, so until the gateway has been seen ready, each `/readyz` request connects to
/// every listener to find out. After that the check reads a flag.
pub struct Readiness {
    ready: AtomicBool,
    lifecycle: Arc<Lifecycle>,
    listeners: Vec<SocketAddr>,
    /// Set by the reload service once SIGHUP is handled; before that a SIGHUP is ignored.
    pub reload_handler_installed: AtomicBool,
}

/// Returns an address to connect to for a listener: a wildcard address is reached on
/// loopback.
fn connectable(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

impl Readiness {
    pub fn new(listeners: Vec<SocketAddr>, lifecycle: Arc<Lifecycle>) -> Self {
        Readiness {
            ready: AtomicBool::new(false),
            lifecycle,
            listeners: listeners.into_iter().map(connectable).collect(),
            reload_handler_installed: AtomicBool::new(false),
        }
    }

    pub fn set(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Checks whether the gateway is ready, probing the listeners until they are up. A
    /// draining gateway is never ready.
    pub async fn check(&self) -> bool {
        if self.lifecycle.phase() == Phase::Draining {
            return false;
        }
        if self.ready.load(Ordering::Acquire) {
            return true;
        }
        if !self.reload_handler_installed.load(Ordering::Acquire) {
            return false;
        }
        for addr in &self.listeners {
            let probe = tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr));
            if !matches!(probe.await, Ok(Ok(_))) {
                return false;
            }
        }
        self.set(true);
        true
    }
}

/// How long a readiness probe waits for a listener to accept.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

pub struct AdminApp {
    pub readiness: Arc<Readiness>,
}

fn text(status: StatusCode, body: &str) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(header::CONTENT_LENGTH, body.len())
        .body(body.as_bytes().to_vec())
        .expect("static response parts are valid")
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let request = session.req_header();
        if request.method != http::Method::GET && request.method != http::Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "405 Method Not Allowed\n");
        }
        match request.uri.path() {
            "/metrics" => {
                let body = metrics().render();
                Response::builder()
                    .status(StatusCode::OK)
                    .header(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )
                    .header(header::CONTENT_LENGTH, body.len())
                    .body(body)
                    .expect("static response parts are valid")
            }
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" => {
                if self.readiness.check().await {
                    text(StatusCode::OK, "ready\n")
                } else if self.readiness.lifecycle.phase() == Phase::Draining {
                    text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                }
            }
            _ => text(StatusCode::NOT_FOUND, "404 Not Found\n"),
        }
    }
}

/// Binds `addr` with `SO_REUSEADDR` and `SO_REUSEPORT`.
fn bind_reusable(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Serves [`AdminApp`] on its own listener until the process exits, or until a graceful
/// upgrade hands over and draining starts.
pub struct AdminService {
    pub addr: SocketAddr,
    pub app: Arc<HttpServer<AdminApp>>,
    pub lifecycle: Arc<Lifecycle>,
}

#[async_trait]
impl BackgroundService for AdminService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let listener = match bind_reusable(self.addr) {
            Ok(listener) => listener,
            Err(e) => {
                tracing::error!(address = %self.addr, error = %e, "cannot listen on the admin address; /metrics, /healthz and /readyz are not served");
                return;
            }
        };
        // Stays false, so connections keep alive while the process drains.
        let (_keep_serving, serving) = tokio::sync::watch::channel(false);
        let mut shutting_down = *shutdown.borrow();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((tcp, _)) => {
                        let app = self.app.clone();
                        let serving = serving.clone();
                        tokio::spawn(async move {
                            let stream: pingora_core::protocols::Stream =
                                Box::new(pingora_core::protocols::l4::stream::Stream::from(tcp));
                            app.process_new(stream, &serving).await;
                        });
                    }
                    Err(e) => {
                        // Typically EMFILE: wait a little for descriptors to be released.
                        tracing::warn!(address = %self.addr, error = %e, "admin listener: accept failed");
                        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    }
                },
                changed = shutdown.changed(), if !shutting_down => {
                    shutting_down = changed.is_err() || *shutdown.borrow();
                    if shutting_down && self.lifecycle.phase() == Phase::Upgrading {
                        tracing::info!(address = %self.addr, "admin listener closed; the new process serves it");
                        return;
                    }
                }
            }
        }
    }
}

/// Pause after a failed accept on the admin listener.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
