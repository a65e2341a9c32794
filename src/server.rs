//! Process setup: the Pingora server, the proxy service with its listeners, and the admin
//! service.

use crate::admin::{AdminApp, AdminService, Readiness};
use crate::config::RuntimeConfig;
use crate::health::HealthService;
use crate::lifecycle::{DrainService, Lifecycle, Signals};
use crate::limits::connections::{ConnectionLimitedApp, ConnectionTracker};
use crate::proxy::Gateway;
use crate::reload::ReloadService;
use arc_swap::ArcSwap;
use pingora_core::apps::http_app::HttpServer;
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::listeners::{L4BufferSettings, ListenerConfig};
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::{RunArgs, Server};
use pingora_core::services::background::background_service;
use pingora_core::services::listening::Service;
use std::net::SocketAddr;
use std::sync::Arc;

/// Process options that come from the command line rather than the config file.
#[derive(Debug, Clone, Default)]
pub struct ProcessOptions {
    /// Take the listening sockets over from a running gatehouse (Pingora's graceful upgrade).
    pub upgrade: bool,
    pub daemon: bool,
    pub pid_file: String,
    pub upgrade_sock: String,
    /// The config file, read again on SIGHUP.
    pub config_path: std::path::PathBuf,
}

fn server_conf(config: &RuntimeConfig, options: &ProcessOptions) -> ServerConf {
    let mut conf = ServerConf {
        threads: config.threads,
        daemon: options.daemon,
        pid_file: options.pid_file.clone(),
        upgrade_sock: options.upgrade_sock.clone(),
        ..ServerConf::default()
    };
    // On SIGTERM Pingora stops accepting, lets in-flight requests run for
    // `grace_period_seconds`, then stops its runtimes, waiting at most
    // `graceful_shutdown_timeout_seconds` for blocking work. Pingora waits the whole grace
    // period even when nothing is in flight, so `DrainService` ends the process earlier once
    // every client connection has closed.
    let grace_millis = u64::try_from(config.grace_period.as_millis()).unwrap_or(u64::MAX);
    conf.grace_period_seconds = Some(grace_millis.div_ceil(1000).max(1));
    conf.graceful_shutdown_timeout_seconds = Some(5);
    // Pingora has one connection pool per process; give it room for every upstream's
    // `keepalive.max_idle`.
    conf.upstream_keepalive_pool_size = config
        .upstreams
        .iter()
        .map(|u| u.keepalive_max_idle)
        .sum::<usize>()
        .max(1);
    // Pingora's own timers round to 10 ms and stay registered until their deadline, even when
    // the wait they bound ended long before. Idle keep-alive and upstream read timeouts run on
    // every request and last seconds, so they go to Tokio's timer, which removes a timer when
    // its wait ends. Pingora keeps its own timers for waits shorter than a second.
    conf.fast_timeout_to_tokio_threshold_seconds = Some(0);
    conf
}

/// Checks that every listener address can be bound, so that a taken port fails the start
/// with a clear error. Pingora would retry such a bind once a second, forever.
fn check_bindable(config: &RuntimeConfig) -> Result<(), String> {
    let admin = config.admin.map(|addr| (addr, "admin listener".to_owned()));
    let proxies = config
        .listeners
        .iter()
        .map(|l| (l.addr, format!("listener {}", l.text)));
    for (addr, name) in proxies.chain(admin) {
        if let Err(e) = std::net::TcpListener::bind(addr) {
            return Err(format!("{name}: cannot listen on {addr}: {e}"));
        }
    }
    Ok(())
}

/// Builds the Pingora server for `config` and runs it until a signal stops it.
/// Returns once every service has shut down.
pub fn run(config: RuntimeConfig, options: ProcessOptions) {
    let opt = Opt {
        upgrade: options.upgrade,
        daemon: options.daemon,
        nocapture: false,
        test: false,
        conf: None,
    };
    // With --upgrade the sockets come from the running process, so they are taken by design.
    if !options.upgrade {
        if let Err(message) = check_bindable(&config) {
            tracing::error!("{message}");
            eprintln!("error: {message}");
            std::process::exit(1);
        }
    }
    let conf = server_conf(&config, &options);
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    for warning in &config.warnings {
        tracing::warn!("config: {warning}");
    }

    let listeners = config.listeners.clone();
    let admin_addr = config.admin;
    let lifecycle = Arc::new(Lifecycle::default());
    let readiness = Arc::new(Readiness::new(
        listeners.iter().map(|l| l.addr).collect(),
        lifecycle.clone(),
    ));
    let grace_period = config.grace_period;
    let shared = Arc::new(ArcSwap::from_pointee(config));
    let shared_for_reload = shared.clone();
    let (changes, changes_receiver) = tokio::sync::watch::channel(0u64);

    let tracker = Arc::new(ConnectionTracker::new(shared.load().max_connections));
    let labels: Vec<(SocketAddr, String)> =
        listeners.iter().map(|l| (l.addr, l.text.clone())).collect();
    let app = ConnectionLimitedApp::new(
        pingora_proxy::http_proxy(
            &server.configuration,
            Gateway::new(shared.clone(), lifecycle.clone()),
        ),
        shared.clone(),
        tracker.clone(),
        &labels,
    );
    let mut proxy = Service::new("gatehouse proxy".to_owned(), app);
    for listener in &listeners {
        let addr = listener.addr.to_string();
        match &listener.tls {
            // Pingora gives every accepted connection a 64 KiB read buffer under the HTTP
            // session's own. It spares system calls under TLS, whose records are read in
            // pieces, but on plain TCP it only adds a copy of every byte read, and its first
            // page stays resident for as long as the connection is open.
            None => proxy.add_listener(
                ListenerConfig::tcp(addr).l4_buffer(L4BufferSettings::default().read(0)),
            ),
            Some(tls) => {
                let settings = TlsSettings::intermediate(
                    &tls.cert.to_string_lossy(),
                    &tls.key.to_string_lossy(),
                );
                let mut settings = match settings {
                    Ok(settings) => settings,
                    Err(e) => {
                        eprintln!(
                            "error: listener {}: cannot load TLS certificate \"{}\" or key \"{}\": {e}",
                            listener.text,
                            tls.cert.display(),
                            tls.key.display()
                        );
                        std::process::exit(1);
                    }
                };
                settings.enable_h2();
                proxy.add_tls_with_settings(&addr, None, settings);
            }
        }
        tracing::info!(address = %listener.text, tls = listener.tls.is_some(), "proxy listener");
    }
    server.add_service(proxy);

    let started_with = crate::reload::StartSettings::of(&shared.load());
    let reload = ReloadService {
        started_with,
        path: options.config_path.clone(),
        config: shared_for_reload,
        readiness: readiness.clone(),
        changes,
    };
    server.add_service(background_service("config reload", reload));
    let health = HealthService {
        config: shared.clone(),
        changes: changes_receiver,
    };
    server.add_service(background_service("health checks", health));
    let drain = DrainService {
        connections: tracker,
        grace_period,
    };
    server.add_service(background_service("drain", drain));
    // Export both reload counters from the start, at 0, so dashboards and alerts can rely on
    // them before the first reload.
    for result in ["success", "failure"] {
        crate::metrics::metrics()
            .config_reloads_total
            .with_label_values(&[result]);
    }
    crate::metrics::metrics().config_last_reload_success.set(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
    );

    if let Some(addr) = admin_addr {
        let app = AdminApp {
            readiness: readiness.clone(),
        };
        // A background service runs on one thread of its own, which is plenty for scrapes and
        // probes and keeps them off the proxy's threads.
        let admin = AdminService {
            addr,
            app: Arc::new(HttpServer::new_app(app)),
            lifecycle: lifecycle.clone(),
        };
        server.add_service(background_service("gatehouse admin", admin));
        tracing::info!(address = %addr, "admin listener");
    }

    server.run(RunArgs {
        shutdown_signal: Box::new(Signals {
            lifecycle,
            upgrade_sock: options.upgrade_sock.clone().into(),
        }),
    });
    tracing::info!("gatehouse stopped");
}
