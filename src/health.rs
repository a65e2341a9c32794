//! Active health checks of upstream targets.
//!
//! Every target of an upstream with a `health_check` block gets one task that sends
//! `GET path` on a new connection every `interval`. A response with a 2xx or 3xx status within
//! `timeout` passes. After `unhealthy` failed checks in a row the target stops receiving
//! traffic, and after `healthy` passed checks in a row it receives traffic again. Targets
//! start healthy, so a fresh start serves at once; a target that is down at start is taken
//! out after `unhealthy` checks.
//!
//! A reload keeps the task, its counts and the target's health while the upstream keeps its
//! name and the target its address. The task reads its settings from the current config
//! before each check, so changed settings apply from the next check. The tasks of removed
//! targets are stopped, and their `gatehouse_upstream_target_healthy` series are removed.

use crate::config::RuntimeConfig;
use crate::metrics::metrics;
use crate::upstream::{Target, Upstream};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_load_balancing::health_check::{HealthCheck as _, HttpHealthCheck};
use pingora_load_balancing::Backend;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A compiled `health_check` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// Request path and query of the check.
    pub path: String,
    pub interval: Duration,
    /// Deadline for the whole check: connect, TLS handshake, request and response.
    pub timeout: Duration,
    /// Passed checks in a row that make an unhealthy target healthy.
    pub healthy: u32,
    /// Failed checks in a row that make a healthy target unhealthy.
    pub unhealthy: u32,
}

/// Identifies a target across reloads: its upstream's name and its address.
type TargetKey = (String, SocketAddr);

/// Starts, keeps and stops the checker tasks so that they follow the current config.
pub struct HealthService {
    pub config: Arc<ArcSwap<RuntimeConfig>>,
    /// Changes after every config swap.
    pub changes: watch::Receiver<u64>,
}

#[async_trait]
impl BackgroundService for HealthService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut changes = self.changes.clone();
        let mut checkers: HashMap<TargetKey, JoinHandle<()>> = HashMap::new();
        let mut exported: HashSet<(String, String)> = HashSet::new();
        loop {
            self.sync(&mut checkers, &mut exported);
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                _ = shutdown.changed() => break,
            }
        }
        for handle in checkers.values() {
            handle.abort();
        }
    }
}

impl HealthService {
    /// Starts a checker for each checked target that has none, stops those of targets that
    /// are gone, and exports the health gauge of every target.
    fn sync(
        &self,
        checkers: &mut HashMap<TargetKey, JoinHandle<()>>,
        exported: &mut HashSet<(String, String)>,
    ) {
        let config = self.config.load_full();
        let gauge = &metrics().upstream_target_healthy;
        let mut checked = HashSet::new();
        let mut labels = HashSet::new();
        for upstream in &config.upstreams {
            for target in &upstream.targets {
                labels.insert((upstream.name.clone(), target.text.clone()));
                let series = gauge.with_label_values(&[&upstream.name, &target.text]);
                if upstream.health_check.is_none() {
                    // A target whose upstream dropped its health check gets traffic again.
                    target.state.set_healthy(true);
                    series.set(1);
                    continue;
                }
                series.set(i64::from(target.state.is_healthy()));
                let key = (upstream.name.clone(), target.addr);
                checked.insert(key.clone());
                let running = checkers.get(&key).is_some_and(|h| !h.is_finished());
                if !running {
                    let task = tokio::spawn(check_target(self.config.clone(), key.clone()));
                    checkers.insert(key, task);
                }
            }
        }
        checkers.retain(|key, task| {
            let keep = checked.contains(key);
            if !keep {
                task.abort();
            }
            keep
        });
        for (upstream, target) in exported.difference(&labels) {
            let _ = gauge.remove_label_values(&[upstream, target]);
        }
        *exported = labels;
    }
}

/// Finds the target named by `key` in `config`, if its upstream still checks health.
fn find_checked(config: &RuntimeConfig, key: &TargetKey) -> Option<(Arc<Upstream>, usize)> {
    let upstream = config.upstreams.iter().find(|u| u.name == key.0)?;
    upstream.health_check.as_ref()?;
    let index = upstream.targets.iter().position(|t| t.addr == key.1)?;
    Some((upstream.clone(), index))
}

/// Checks one target every interval until the config no longer has it.
async fn check_target(config: Arc<ArcSwap<RuntimeConfig>>, key: TargetKey) {
    let mut passed_in_row = 0u32;
    let mut failed_in_row = 0u32;
    loop {
        let Some((upstream, index)) = find_checked(&config.load(), &key) else {
            return;
        };
        let Some(settings) = upstream.health_check.clone() else {
            return;
        };
        let target = &upstream.targets[index];
        let result = probe(&upstream, target, &settings).await;

        let m = metrics();
        let outcome = if result.is_ok() { "success" } else { "failure" };
        m.health_checks_total
            .with_label_values(&[&upstream.name, outcome])
            .inc();
        match &result {
            Ok(()) => {
                passed_in_row = passed_in_row.saturating_add(1);
                failed_in_row = 0;
            }
            Err(_) => {
                failed_in_row = failed_in_row.saturating_add(1);
                passed_in_row = 0;
            }
        }
        let healthy = target.state.is_healthy();
        if healthy && failed_in_row >= settings.unhealthy {
            target.state.set_healthy(false);
            tracing::warn!(
                upstream = %upstream.name,
                target = %target.text,
                failed_checks = failed_in_row,
                error = result.as_ref().err().map(String::as_str).unwrap_or(""),
                "target marked unhealthy; it receives no traffic until it passes health checks"
            );
        } else if !healthy && passed_in_row >= settings.healthy {
            target.state.set_healthy(true);
            tracing::info!(
                upstream = %upstream.name,
                target = %target.text,
                passed_checks = passed_in_row,
                "target marked healthy"
            );
        }
        m.upstream_target_healthy
            .with_label_values(&[&upstream.name, &target.text])
            .set(i64::from(target.state.is_healthy()));

        drop(upstream);
        tokio::time::sleep(settings.interval).await;
    }
}

/// Sends one health check request to `target` and returns why it failed, if it did.
async fn probe(upstream: &Upstream, target: &Target, settings: &HealthCheck) -> Result<(), String> {
    let host = match &upstream.tls {
        Some(tls) => tls.sni.clone(),
        None => target.text.clone(),
    };
    let mut check = HttpHealthCheck::new(&host, upstream.tls.is_some());
    let mut request = RequestHeader::build("GET", settings.path.as_bytes(), None)
        .map_err(|e| format!("invalid health check path: {e}"))?;
    request
        .insert_header(http::header::HOST, &host)
        .map_err(|e| format!("invalid Host header \"{host}\": {e}"))?;
    request
        .insert_header(http::header::USER_AGENT, "gatehouse-health-check")
        .map_err(|e| e.to_string())?;
    check.req = request;

    let mut peer = upstream.peer(target);
    peer.options.connection_timeout = Some(settings.timeout);
    peer.options.total_connection_timeout = Some(settings.timeout);
    peer.options.read_timeout = Some(settings.timeout);
    peer.options.write_timeout = Some(settings.timeout);
    check.peer_template = peer;

    check.validator = Some(Box::new(|response: &ResponseHeader| {
        let status = response.status.as_u16();
        if (200..400).contains(&status) {
            Ok(())
        } else {
            pingora_error::Error::e_explain(
                pingora_error::ErrorType::CustomCode("unexpected status", status),
                format!("health check answered {status}"),
            )
        }
    }));

    let backend = Backend {
        addr: pingora_core::protocols::l4::socket::SocketAddr::Inet(target.addr),
        weight: 1,
        ext: Default::default(),
    };
    match tokio::time::timeout(settings.timeout, check.check(&backend)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("timed out after {:?}", settings.timeout)),
    }
}
