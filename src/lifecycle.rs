//! Process lifecycle: which shutdown signal arrived, draining, and the exit once drained.
//!
//! - SIGTERM: `/readyz` turns 503, Pingora stops the listeners and closes idle keep-alive
//!   connections, and the process exits 0 as soon as the last client connection has closed,
//!   or when `server.grace_period` ends, whichever comes first.
//! - SIGQUIT (graceful upgrade): the listening sockets go to the new process; 5 s later
//!   (Pingora's fixed hand-over time) this process drains as for SIGTERM. `/readyz` stays 200,
//!   because the new process serves the same sockets.
//! - SIGINT: Pingora stops at once.
//!
//! Pingora itself would always wait the whole grace period, even with nothing in flight.

use crate::limits::connections::ConnectionTracker;
use async_trait::async_trait;
use pingora_core::server::{ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora_core::services::background::BackgroundService;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Running,
    /// SIGTERM arrived: finishing in-flight requests before exiting.
    Draining,
    /// SIGQUIT arrived: the listening sockets are handed to a new process.
    Upgrading,
}

/// The current [`Phase`], shared by the signal watch, the admin listener and the drain.
#[derive(Debug, Default)]
pub struct Lifecycle {
    phase: AtomicU8,
}

impl Lifecycle {
    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            1 => Phase::Draining,
            2 => Phase::Upgrading,
            _ => Phase::Running,
        }
    }

    fn set(&self, phase: Phase) {
        let value = match phase {
            Phase::Running => 0,
            Phase::Draining => 1,
            Phase::Upgrading => 2,
        };
        self.phase.store(value, Ordering::Release);
    }
}

/// Pingora's shutdown signal source, recording which signal arrived in a [`Lifecycle`].
pub struct Signals {
    pub lifecycle: Arc<Lifecycle>,
    /// The Unix socket on which a process started with `--upgrade` waits for the listeners.
    pub upgrade_sock: std::path::PathBuf,
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let register = |kind: SignalKind, name: &str| {
            signal(kind).unwrap_or_else(|e| panic!("cannot install the {name} handler: {e}"))
        };
        let mut quit = register(SignalKind::quit(), "SIGQUIT");
        let mut terminate = register(SignalKind::terminate(), "SIGTERM");
        let mut interrupt = register(SignalKind::interrupt(), "SIGINT");
        loop {
            tokio::select! {
                _ = quit.recv() => {
                    // Pingora would stop serving even when no new process takes the sockets.
                    if !unix_socket_listening(&self.upgrade_sock) {
                        tracing::error!(
                            upgrade_sock = %self.upgrade_sock.display(),
                            "SIGQUIT ignored: no process started with --upgrade is waiting on the \
                             upgrade socket; start the new process first"
                        );
                        continue;
                    }
                    tracing::info!("SIGQUIT received: handing the listening sockets to the new process");
                    self.lifecycle.set(Phase::Upgrading);
                    return ShutdownSignal::GracefulUpgrade;
                }
                _ = terminate.recv() => {
                    tracing::info!("SIGTERM received: draining; /readyz now returns 503");
                    self.lifecycle.set(Phase::Draining);
                    return ShutdownSignal::GracefulTerminate;
                }
                _ = interrupt.recv() => {
                    tracing::info!("SIGINT received: stopping now");
                    return ShutdownSignal::FastShutdown;
                }
            }
        }
    }
}

/// Checks `/proc/net/unix` for a listening socket bound to `path`, without connecting to it:
/// a connection would be taken for the hand-over itself.
fn unix_socket_listening(path: &std::path::Path) -> bool {
    /// `__SO_ACCEPTCON` in the Flags column marks a listening socket.
    const ACCEPTING: u32 = 0x0001_0000;
    let Ok(table) = std::fs::read_to_string("/proc/net/unix") else {
        // Without the table, let Pingora try the hand-over as it would.
        return true;
    };
    // The table shows the path as the new process passed it to bind(2), which may be relative
    // to its own working directory, so a listening socket with the same file name counts
    // while the socket file exists.
    if !path.exists() {
        return false;
    }
    let file_name = path.file_name();
    table.lines().skip(1).any(|line| {
        let columns: Vec<&str> = line.split_whitespace().collect();
        let flags = columns
            .get(3)
            .and_then(|f| u32::from_str_radix(f, 16).ok())
            .unwrap_or(0);
        let bound = columns.get(7).map(std::path::Path::new);
        flags & ACCEPTING != 0 && bound.is_some_and(|b| b == path || b.file_name() == file_name)
    })
}

/// Ends the process once a graceful shutdown has no client connection left.
pub struct DrainService {
    pub connections: Arc<ConnectionTracker>,
    pub grace_period: Duration,
}

#[async_trait]
impl BackgroundService for DrainService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // In a daemon, Pingora has forked by now. The first server log line after the fork
        // also restarts the writers, but the access log relies on this call.
        crate::logging::restart_writers_after_fork();
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                return;
            }
        }
        let forced = sigint_during_drain();
        tracing::info!(
            open_connections = self.connections.open(),
            grace_period = ?self.grace_period,
            "listeners closed; exiting once every client connection has closed"
        );
        // Connections accepted just before the listeners closed are counted only once their
        // task runs, so the count is trusted only after the listeners are closed.
        let drained = async {
            self.connections.wait_until_listeners_closed().await;
            self.connections.wait_until_all_closed().await;
        };

        let outcome = tokio::select! {
            finished = tokio::time::timeout(self.grace_period, drained) => finished,
            () = forced => {
                tracing::info!(
                    open_connections = self.connections.open(),
                    "SIGINT received during the drain: stopping now"
                );
                crate::logging::flush();
                std::process::exit(0);
            }
        };

        if outcome.is_err() {
            tracing::warn!(
                open_connections = self.connections.open(),
                "grace period over; closing the remaining client connections"
            );
            // Pingora ends the process from here.
            return;
        }
        tracing::info!("all client connections closed; exiting");
        crate::logging::flush();
        std::process::exit(0);
    }
}

/// Returns when SIGINT arrives, and logs every further SIGTERM. Pingora stops listening for
/// signals once one has started the shutdown, so the drain listens itself.
async fn sigint_during_drain() {
    let mut interrupt = signal(SignalKind::interrupt()).ok();
    let mut terminate = signal(SignalKind::terminate()).ok();
    loop {
        tokio::select! {
            Some(()) = async { interrupt.as_mut()?.recv().await } => return,
            Some(()) = async { terminate.as_mut()?.recv().await } => {
                tracing::info!("SIGTERM received again: still draining; send SIGINT to stop now");
            }
            else => return std::future::pending().await,
        }
    }
}
