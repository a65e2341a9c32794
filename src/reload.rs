//! Config reload on SIGHUP.
//!
//! The new file is loaded and validated completely first; only a valid config replaces the
//! running one, in one atomic swap. Requests already in flight keep the config they started
//! with. A file that fails to load is logged with every problem found and changes nothing.
//!
//! NOTE: a reload builds every route anew, so rate-limit windows and in-flight counts start
//! from zero, and connection pools are kept only because Pingora pools by target address.
//! Listeners (addresses and TLS certificates), the admin address, `server.threads`,
//! `server.grace_period` and `limits.max_connections` are read at start only. A reload that
//! changes them logs a warning, and they keep their old values until a restart.

use crate::config::{load_file, RuntimeConfig};
use crate::metrics::metrics;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::path::PathBuf;
use std::sync::Arc;

pub struct ReloadService {
    pub path: PathBuf,
    pub config: Arc<ArcSwap<RuntimeConfig>>,
    /// Readiness waits for the SIGHUP handler, so a reload signalled after `/readyz` says
    /// ready is never ignored.
    pub readiness: Arc<crate::admin::Readiness>,
}

/// Names the settings that differ between two configs but only take effect at start.
fn settings_needing_restart(old: &RuntimeConfig, new: &RuntimeConfig) -> Vec<&'static str> {
    let mut changed = Vec::new();
    // Listener addresses and certificate paths. A certificate file rewritten in place under
    // the same path is not detected.
    let describe = |config: &RuntimeConfig| -> Vec<_> {
        config
            .listeners
            .iter()
            .map(|l| {
                (
                    l.addr,
                    l.tls.as_ref().map(|t| (t.cert.clone(), t.key.clone())),
                )
            })
            .collect()
    };
    if describe(old) != describe(new) {
        changed.push("listen");
    }
    if old.admin != new.admin {
        changed.push("admin.address");
    }
    if old.threads != new.threads {
        changed.push("server.threads");
    }
    if old.max_connections != new.max_connections {
        changed.push("limits.max_connections");
    }
    if old.grace_period != new.grace_period {
        changed.push("server.grace_period");
    }
    changed
}

impl ReloadService {
    /// Loads the config file and swaps it in if it is valid.
    pub fn reload(&self) -> bool {
        let m = metrics();
        match load_file(&self.path) {
            Ok(new) => {
                let old = self.config.load();
                for setting in settings_needing_restart(&old, &new) {
                    tracing::warn!(
                        setting,
                        "config reload: this setting changed but takes effect only after a restart"
                    );
                }
                for warning in &new.warnings {
                    tracing::warn!("config: {warning}");
                }
                let routes = new.routes.len();
                self.config.store(Arc::new(new));
                m.config_reloads_total.with_label_values(&["success"]).inc();
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64());
                m.config_last_reload_success.set(now);
                tracing::info!(path = %self.path.display(), routes, "config reloaded");
                true
            }
            Err(e) => {
                m.config_reloads_total.with_label_values(&["failure"]).inc();
                tracing::error!(path = %self.path.display(), "config reload failed; the running config stays:\n{e}");
                false
            }
        }
    }
}

#[async_trait]
impl BackgroundService for ReloadService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(signal) => signal,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP; reload by signal is off");
                self.readiness
                    .reload_handler_installed
                    .store(true, std::sync::atomic::Ordering::Release);
                return;
            }
        };
        self.readiness
            .reload_handler_installed
            .store(true, std::sync::atomic::Ordering::Release);
        loop {
            tokio::select! {
                _ = hangup.recv() => {
                    tracing::info!("SIGHUP received: reloading the config");
                    self.reload();
                }
                _ = shutdown.changed() => break,
            }
        }
    }
}
