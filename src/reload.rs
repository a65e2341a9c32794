//! Config reload on SIGHUP, and on changes of the file when `reload.watch` is on.
//!
//! The new file is loaded and validated completely first; only a valid config replaces the
//! running one, in one atomic swap. Requests already in flight keep the config they started
//! with. A file that fails to load is logged with every problem found and changes nothing.
//!
//! Live state carries over to the new config by name: see [`crate::config::compile`].
//! Listeners (addresses and TLS certificates), the admin address, `server.threads`,
//! `server.grace_period` and `limits.max_connections` are read at start only. A reload that
//! changes them logs a warning, and they keep their old values until a restart or a graceful
//! upgrade.

use crate::config::{load_file_inheriting, RuntimeConfig};
use crate::file_watch::DirectoryWatch;
use crate::metrics::metrics;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How often the watched file's content and directory are compared besides inotify events.
const RECHECK_INTERVAL: Duration = Duration::from_secs(5);

pub struct ReloadService {
    pub path: PathBuf,
    pub config: Arc<ArcSwap<RuntimeConfig>>,
    /// Readiness waits for the SIGHUP handler, so a reload signalled after `/readyz` says
    /// ready is never ignored.
    pub readiness: Arc<crate::admin::Readiness>,
    /// Incremented after every swap, for the services that follow the config.
    pub changes: watch::Sender<u64>,
    /// The start-only settings of the running process, which reloads cannot change.
    pub started_with: StartSettings,
}

/// The settings that take effect only when the process starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartSettings {
    /// Listener addresses and certificate paths. A certificate rewritten in place under the
    /// same path is not detected.
    listen: Vec<(std::net::SocketAddr, Option<(PathBuf, PathBuf)>)>,
    admin: Option<std::net::SocketAddr>,
    threads: usize,
    max_connections: Option<u64>,
    grace_period: Duration,
    /// Sum of the upstreams' `keepalive.max_idle`, which sizes Pingora's connection pool.
    pool_size: usize,
}

impl StartSettings {
    pub fn of(config: &RuntimeConfig) -> Self {
        StartSettings {
            listen: config
                .listeners
                .iter()
                .map(|l| {
                    (
                        l.addr,
                        l.tls.as_ref().map(|t| (t.cert.clone(), t.key.clone())),
                    )
                })
                .collect(),
            admin: config.admin,
            threads: config.threads,
            max_connections: config.max_connections,
            grace_period: config.grace_period,
            pool_size: config.upstreams.iter().map(|u| u.keepalive_max_idle).sum(),
        }
    }

    /// Names the settings of `new` that differ from these.
    fn differences(&self, new: &StartSettings) -> Vec<&'static str> {
        let mut changed = Vec::new();
        if self.listen != new.listen {
            changed.push("listen");
        }
        if self.admin != new.admin {
            changed.push("admin.address");
        }
        if self.threads != new.threads {
            changed.push("server.threads");
        }
        if self.max_connections != new.max_connections {
            changed.push("limits.max_connections");
        }
        if self.grace_period != new.grace_period {
            changed.push("server.grace_period");
        }
        if self.pool_size != new.pool_size {
            changed.push("keepalive.max_idle (summed over upstreams)");
        }
        changed
    }
}

impl ReloadService {
    /// Loads the config file and swaps it in if it is valid.
    pub fn reload(&self) -> bool {
        let m = metrics();
        let old = self.config.load_full();
        match load_file_inheriting(&self.path, Some(&old)) {
            Ok(new) => {
                for setting in self.started_with.differences(&StartSettings::of(&new)) {
                    tracing::warn!(
                        setting,
                        "config reload: this setting differs from the running process's and takes effect only after a restart or graceful upgrade"
                    );
                }
                for warning in &new.warnings {
                    tracing::warn!("config: {warning}");
                }
                let routes = new.routes.len();
                self.config.store(Arc::new(new));
                self.changes.send_modify(|generation| *generation += 1);
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
            Ok(signal) => Some(signal),
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP; reload by signal is off");
                None
            }
        };
        self.readiness
            .reload_handler_installed
            .store(true, std::sync::atomic::Ordering::Release);
        let mut watcher = FileWatcher::new(self.path.clone());
        loop {
            watcher.follow(self.config.load().watch);
            tokio::select! {
                Some(()) = async { hangup.as_mut()?.recv().await } => {
                    tracing::info!("SIGHUP received: reloading the config");
                    // Hashed before the load reads the file, so a write in between is seen
                    // as a change afterwards instead of being taken as handled.
                    let content = watcher.content_hash();
                    self.reload();
                    watcher.last_content = content;
                }
                () = watcher.changed() => {
                    tracing::info!(path = %self.path.display(), "config file changed: reloading");
                    self.reload();
                }
                _ = shutdown.changed() => break,
            }
        }
    }
}

/// Watches the config file while `reload.watch` is on, and reports content changes once
/// they have been quiet for the debounce time.
///
/// Every `RECHECK_INTERVAL` it also compares the content, and watches the directory again if
/// the path now leads to another directory. That catches what inotify on one directory misses:
/// a replaced directory, or a symbolic link switched higher up the path, within that interval.
struct FileWatcher {
    path: PathBuf,
    watch: Option<DirectoryWatch>,
    /// Device and inode of the directory being watched.
    watched_directory: Option<(u64, u64)>,
    /// Whether the missing file has been logged, so it is logged once.
    missing_logged: bool,
    debounce: Duration,
    /// Hash of the content last loaded or rejected, so an unchanged file is not loaded again.
    last_content: Option<u64>,
}

impl FileWatcher {
    fn new(path: PathBuf) -> Self {
        let mut watcher = FileWatcher {
            path,
            watch: None,
            watched_directory: None,
            missing_logged: false,
            debounce: Duration::ZERO,
            last_content: None,
        };
        watcher.remember_content();
        watcher
    }

    fn content_hash(&self) -> Option<u64> {
        use std::hash::{Hash, Hasher};
        let content = std::fs::read(&self.path).ok()?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        content.hash(&mut hasher);
        Some(hasher.finish())
    }

    /// Records the file's current content as handled.
    fn remember_content(&mut self) {
        self.last_content = self.content_hash();
    }

    /// Starts or stops watching to match the running config's `reload.watch`.
    fn follow(&mut self, watch: Option<Duration>) {
        match watch {
            Some(debounce) => {
                self.debounce = debounce;
                if self.watch.is_none() {
                    match DirectoryWatch::new(&self.path) {
                        Ok(watch) => {
                            tracing::info!(path = %self.path.display(), "watching the config file for changes");
                            self.watch = Some(watch);
                            self.watched_directory = self.directory_identity();
                        }
                        Err(e) => {
                            tracing::error!(path = %self.path.display(), error = %e, "cannot watch the config file; reload with SIGHUP instead");
                        }
                    }
                }
            }
            None => {
                if self.watch.take().is_some() {
                    tracing::info!(path = %self.path.display(), "stopped watching the config file");
                }
            }
        }
    }

    /// Device and inode of the directory the path leads to now, following symbolic links.
    fn directory_identity(&self) -> Option<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        let directory = self.path.parent()?;
        let metadata = std::fs::metadata(directory).ok()?;
        Some((metadata.dev(), metadata.ino()))
    }

    /// Waits for a change of the file's content that has been quiet for the debounce time.
    /// Never returns while the file is not watched.
    async fn changed(&mut self) {
        let mut recheck = tokio::time::interval(RECHECK_INTERVAL);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        recheck.reset();
        loop {
            let Some(watch) = &self.watch else {
                return std::future::pending().await;
            };
            tokio::select! {
                event = watch.changed() => {
                    if let Err(e) = event {
                        tracing::error!(error = %e, "config file watch failed; reload with SIGHUP instead");
                        self.watch = None;
                        continue;
                    }
                    // Wait until no event has arrived for the debounce time.
                    while matches!(
                        tokio::time::timeout(self.debounce, watch.changed()).await,
                        Ok(Ok(()))
                    ) {}
                }
                _ = recheck.tick() => {
                    if self.directory_identity() != self.watched_directory {
                        tracing::info!(path = %self.path.display(), "the config file's directory changed; watching the new one");
                        self.watch = None;
                        self.follow(Some(self.debounce));
                    }
                }
            }
            let content = self.content_hash();
            if content.is_none() {
                if !self.missing_logged {
                    tracing::warn!(path = %self.path.display(), "config file missing or unreadable; the running config stays");
                    self.missing_logged = true;
                }
                continue;
            }
            self.missing_logged = false;
            if content != self.last_content {
                self.last_content = content;
                return;
            }
        }
    }
}
