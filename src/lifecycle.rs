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
        tokio::select! {
            _ = quit.recv() => {
                tracing::info!("SIGQUIT received: handing the listening sockets to the new process");
                self.lifecycle.set(Phase::Upgrading);
                ShutdownSignal::GracefulUpgrade
            }
            _ = terminate.recv() => {
                tracing::info!("SIGTERM received: draining; /readyz now returns 503");
                self.lifecycle.set(Phase::Draining);
                ShutdownSignal::GracefulTerminate
            }
            _ = interrupt.recv() => {
                tracing::info!("SIGINT received: stopping now");
                ShutdownSignal::FastShutdown
            }
        }
    }
}

/// Ends the process once a graceful shutdown has no client connection left.
pub struct DrainService {
    pub connections: Arc<ConnectionTracker>,
    pub grace_period: Duration,
    /// Whether the process was daemonized, so its log writer threads need a restart.
    pub daemon: bool,
}

#[async_trait]
impl BackgroundService for DrainService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if self.daemon {
            crate::logging::restart_writers_after_fork();
        }
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                return;
            }
        }
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
        if tokio::time::timeout(self.grace_period, drained)
            .await
            .is_err()
        {
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
