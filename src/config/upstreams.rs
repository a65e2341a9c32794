//! Compilation of the `upstreams` list: targets, balancing, TLS, retries and keepalive.

use super::compile::Checker;
use super::file::{Balance, UpstreamFile};
use super::units::format_duration;
use crate::health::HealthCheck;
use crate::upstream::{HashKey, Target, TargetState, Upstream, UpstreamTls};
use http::HeaderName;
use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

fn parse_hash_key(text: &str) -> Result<HashKey, String> {
    match text {
        "client_ip" => return Ok(HashKey::ClientIp),
        "path" => return Ok(HashKey::Path),
        _ => {}
    }
    if let Some(name) = text.strip_prefix("header:") {
        return HeaderName::from_bytes(name.as_bytes())
            .map(HashKey::Header)
            .map_err(|_| format!("invalid hash_on \"{text}\": \"{name}\" is not a header name"));
    }
    if let Some(name) = text.strip_prefix("cookie:") {
        if !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'=' && b != b';')
        {
            return Ok(HashKey::Cookie(name.to_owned()));
        }
        return Err(format!(
            "invalid hash_on \"{text}\": \"{name}\" is not a cookie name"
        ));
    }
    Err(format!(
        "invalid hash_on \"{text}\", expected one of client_ip, path, header:NAME, cookie:NAME"
    ))
}

/// Reads a PEM file of one or more CA certificates.
fn load_ca(path: &Path) -> Result<pingora_core::protocols::tls::CaType, String> {
    let pem = std::fs::read(path).map_err(|e| e.to_string())?;
    let certificates = pingora_core::tls::x509::X509::stack_from_pem(&pem)
        .map_err(|_| "not a PEM certificate file".to_owned())?;
    if certificates.is_empty() {
        return Err("no certificate in the file".to_owned());
    }
    Ok(certificates.into_boxed_slice())
}

/// Upper bound of `keepalive.max_idle`. Pingora sizes its connection pool from the sum of
/// these, and allocates with it.
const MAX_IDLE_LIMIT: usize = 10_000;

/// Upper bound of the sum of a `consistent_hash` upstream's weights. The ketama ring gets
/// 160 points per unit of weight and is built at load, so this keeps it under 160,000 points.
const MAX_HASH_WEIGHT: u64 = 1_000;

pub(super) fn compile_upstream(
    c: &mut Checker,
    index: usize,
    file: &UpstreamFile,
    base_dir: &Path,
    previous: Option<&Upstream>,
) -> Upstream {
    let path = format!("upstreams[{index}]");
    if file.name.is_empty() {
        c.error(
            format!("{path}.name"),
            "invalid name \"\": must not be empty",
        );
    }
    if file.targets.is_empty() {
        c.error_at_key(
            format!("{path}.targets"),
            "an upstream needs at least one target",
        );
    }
    let mut seen = HashSet::new();
    let mut targets = Vec::with_capacity(file.targets.len());
    for (i, target) in file.targets.iter().enumerate() {
        let target_path = format!("{path}.targets[{i}]");
        if target.weight == 0 || target.weight > 10_000 {
            c.error(
                format!("{target_path}.weight"),
                format!(
                    "invalid weight \"{}\": must be from 1 to 10000",
                    target.weight
                ),
            );
        }
        if target.address.addr.port() == 0 {
            c.error(
                format!("{target_path}.address"),
                format!("invalid address \"{}\": port 0", target.address.text),
            );
        }
        if !seen.insert(target.address.addr) {
            c.error(
                format!("{target_path}.address"),
                format!(
                    "duplicate target \"{}\" in upstream \"{}\"; raise its weight instead",
                    target.address.text, file.name
                ),
            );
        }
        targets.push(Target {
            addr: target.address.addr,
            text: target.address.text.clone(),
            weight: target.weight.max(1),
            zone: target.zone.clone(),
            state: previous
                .and_then(|p| p.targets.iter().find(|t| t.addr == target.address.addr))
                .map_or_else(|| Arc::new(TargetState::new()), |t| t.state.clone()),
        });
    }

    let hash_key = match (&file.hash_on, file.balance) {
        (Some(text), Balance::ConsistentHash) => match parse_hash_key(text) {
            Ok(key) => Some(key),
            Err(message) => {
                c.error(format!("{path}.hash_on"), message);
                None
            }
        },
        (None, Balance::ConsistentHash) => Some(HashKey::ClientIp),
        (Some(text), _) => {
            c.error_at_key(
                format!("{path}.hash_on"),
                format!("hash_on \"{text}\" is only used with balance: consistent_hash"),
            );
            None
        }
        (None, _) => None,
    };

    let tls = file.tls.as_ref().map(|tls| {
        let sni = tls.sni.clone().unwrap_or_else(|| {
            // Without an explicit SNI, use the host part of the first target's address.
            file.targets
                .first()
                .map(|t| {
                    t.address
                        .text
                        .rsplit_once(':')
                        .map_or("", |(h, _)| h)
                        .to_owned()
                })
                .unwrap_or_default()
        });
        if let Some(given) = &tls.sni {
            if given.is_empty() || given.contains(['/', ' ', ':']) {
                c.error(
                    format!("{path}.tls.sni"),
                    format!("invalid sni \"{given}\": not a host name"),
                );
            }
        }
        let ca = tls.ca.as_ref().and_then(|ca| {
            let ca_path = base_dir.join(ca);
            match load_ca(&ca_path) {
                Ok(certificates) => Some(Arc::new(certificates)),
                Err(reason) => {
                    c.error(
                        format!("{path}.tls.ca"),
                        format!("cannot load \"{ca}\": {reason}"),
                    );
                    None
                }
            }
        });
        UpstreamTls {
            sni,
            verify: tls.verify,
            ca,
        }
    });

    if let Some(hc) = &file.health_check {
        let hc_path = format!("{path}.health_check");
        if !hc.path.starts_with('/') {
            c.error(
                format!("{hc_path}.path"),
                format!("invalid path \"{}\": must start with \"/\"", hc.path),
            );
        } else if hc.path.parse::<http::uri::PathAndQuery>().is_err() {
            c.error(
                format!("{hc_path}.path"),
                format!(
                    "invalid path \"{}\": not a valid request path (percent-encode spaces and \
                     other reserved bytes)",
                    hc.path.escape_debug()
                ),
            );
        }
        for (name, value) in [("interval", hc.interval), ("timeout", hc.timeout)] {
            if value.is_some_and(|v| v.0.is_zero()) {
                c.error(
                    format!("{hc_path}.{name}"),
                    "invalid duration \"0\": must be greater than zero",
                );
            }
        }
        for (name, value) in [("healthy", hc.healthy), ("unhealthy", hc.unhealthy)] {
            if value == Some(0) {
                c.error(
                    format!("{hc_path}.{name}"),
                    "invalid count \"0\": must be at least 1",
                );
            }
        }
    }
    let health_check = file.health_check.as_ref().map(|hc| HealthCheck {
        path: hc.path.clone(),
        interval: hc.interval.map_or(DEFAULT_HEALTH_INTERVAL, |d| d.0),
        timeout: hc.timeout.map_or(DEFAULT_HEALTH_TIMEOUT, |d| d.0),
        healthy: hc.healthy.unwrap_or(DEFAULT_HEALTHY),
        unhealthy: hc.unhealthy.unwrap_or(DEFAULT_UNHEALTHY),
    });
    if let Some(hc) = &health_check {
        if hc.timeout > hc.interval {
            c.error(
                format!("{path}.health_check.timeout"),
                format!(
                    "invalid timeout \"{}\": must not exceed the interval ({})",
                    format_duration(hc.timeout),
                    format_duration(hc.interval)
                ),
            );
        }
    }

    let retry_attempts = file.retries.as_ref().map_or(0, |r| r.attempts);
    if retry_attempts > 10 {
        c.error(
            format!("{path}.retries.attempts"),
            format!("invalid attempts \"{retry_attempts}\": must be from 0 to 10"),
        );
    }
    let keepalive = file.keepalive.as_ref();
    let idle_timeout = keepalive
        .and_then(|k| k.idle_timeout)
        .map_or(Duration::from_secs(60), |d| d.0);
    let max_idle = keepalive.and_then(|k| k.max_idle).unwrap_or(128);
    if max_idle > MAX_IDLE_LIMIT {
        c.error(
            format!("{path}.keepalive.max_idle"),
            format!("invalid max_idle \"{max_idle}\": must be at most {MAX_IDLE_LIMIT}"),
        );
    }
    if file.balance == Balance::ConsistentHash {
        let total: u64 = file.targets.iter().map(|t| u64::from(t.weight)).sum();
        if total > MAX_HASH_WEIGHT {
            c.error(
                format!("{path}.targets"),
                format!(
                    "the weights of a consistent_hash upstream add up to {total}, more than \
                     {MAX_HASH_WEIGHT}; weights are relative, so scale them down"
                ),
            );
        }
    }

    let mut upstream = Upstream::new(
        file.name.clone(),
        targets,
        file.balance,
        hash_key,
        tls,
        retry_attempts,
        idle_timeout,
        max_idle,
    );
    upstream.health_check = health_check;
    upstream
}

/// Health check settings left out of the file.
const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(5);
const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
const DEFAULT_HEALTHY: u32 = 2;
const DEFAULT_UNHEALTHY: u32 = 3;
