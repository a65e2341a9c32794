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
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Readiness of the gateway: ready once every proxy listener accepts connections and SIGHUP
/// reloads are handled.
///
/// Pingora binds a service's listeners inside the service task and reports nothing when they
/// are bound, so until the gateway has been seen ready, each `/readyz` request looks for a
/// listening socket of this process on every listener address. After that the check reads a
/// flag. Connecting to the address would not do: if another process took the port after the
/// start-up check, Pingora retries its bind forever, and the other process would accept.
pub struct Readiness {
    ready: AtomicBool,
    lifecycle: Arc<Lifecycle>,
    listeners: Vec<SocketAddr>,
    /// Set by the reload service once SIGHUP is handled; before that a SIGHUP is ignored.
    pub reload_handler_installed: AtomicBool,
}

/// The LISTEN state as the `st` column of `/proc/net/tcp` and `/proc/net/tcp6` shows it.
const TCP_LISTEN: &str = "0A";

/// Returns whether this process has a TCP socket listening on `addr`: a socket in the LISTEN
/// state on that address in `/proc/net/tcp` or `/proc/net/tcp6` whose inode is one of this
/// process's open files. NOTE: this reads Linux's `/proc`, so on another system it finds no
/// listener, and the gateway never reports ready.
fn listening_here(addr: SocketAddr) -> bool {
    let (table, local) = match addr.ip() {
        IpAddr::V4(v4) => (
            "/proc/net/tcp",
            format!("{:08X}", u32::from_ne_bytes(v4.octets())),
        ),
        IpAddr::V6(v6) => (
            "/proc/net/tcp6",
            v6.octets()
                .chunks_exact(4)
                .map(|word| {
                    format!(
                        "{:08X}",
                        u32::from_ne_bytes([word[0], word[1], word[2], word[3]])
                    )
                })
                .collect(),
        ),
    };
    let local = format!("{local}:{:04X}", addr.port());
    let Ok(text) = std::fs::read_to_string(table) else {
        return false;
    };
    // Columns: sl, local_address, rem_address, st, tx_queue:rx_queue, tr:tm->when, retrnsmt,
    // uid, timeout, inode.
    let inodes: Vec<String> = text
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .filter(|fields| fields.len() > 9 && fields[1] == local && fields[3] == TCP_LISTEN)
        .map(|fields| format!("socket:[{}]", fields[9]))
        .collect();
    if inodes.is_empty() {
        return false;
    }
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return false;
    };
    fds.flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .any(|target| {
            inodes
                .iter()
                .any(|inode| target.as_os_str() == inode.as_str())
        })
}

impl Readiness {
    pub fn new(listeners: Vec<SocketAddr>, lifecycle: Arc<Lifecycle>) -> Self {
        Readiness {
            ready: AtomicBool::new(false),
            lifecycle,
            listeners,
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
        if !self.listeners.iter().all(|addr| listening_here(*addr)) {
            return false;
        }
        self.set(true);
        true
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    #[test]
    fn own_listeners_found() {
        for bind in ["127.0.0.1:0", "[::1]:0"] {
            let listener = std::net::TcpListener::bind(bind).expect("bind a listener");
            let addr = listener.local_addr().expect("listener address");
            assert!(listening_here(addr), "this process listens on {addr}");
            drop(listener);
            assert!(
                !listening_here(addr),
                "nothing listens on {addr} after the close"
            );
        }
    }

    #[test]
    fn other_process_listener_ignored() {
        // A listener of another process on the address, as when another program took the
        // port between the start-up check and Pingora's bind.
        let mut child = Command::new("python3")
            .args([
                "-c",
                "import socket, sys\n\
                 s = socket.socket()\n\
                 s.bind(('127.0.0.1', 0))\n\
                 s.listen()\n\
                 print(s.getsockname()[1], flush=True)\n\
                 sys.stdin.read()\n",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start python3");

        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("child stdout"))
            .read_line(&mut line)
            .expect("read the child's port");
        let port: u16 = line.trim().parse().expect("a port number");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));

        let connected = std::net::TcpStream::connect(addr);
        let found = listening_here(addr);
        drop(child.stdin.take());
        let _ = child.wait();

        assert!(connected.is_ok(), "the other process accepts on {addr}");
        assert!(
            !found,
            "a listener of another process is not this gateway's"
        );
    }
}
