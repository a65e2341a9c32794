//! Validation of a parsed config file and construction of the runtime view.
//!
//! Every check runs, so one pass reports all the problems of a file. Regexes, host patterns,
//! header names and balancers are built here once; the request path only reads them.

use super::file::{
    Balance, FileConfig, HeaderOpsFile, MatchFile, RouteFile, TimeoutsFile, UpstreamFile,
};
use crate::headers::{is_hop_by_hop, HeaderOps};
use crate::limits::concurrency::InFlightCounter;
use crate::limits::rate::RateLimiter;
use crate::path::normalize;
use crate::routing::{HostPattern, PathMatch, RouteMatcher};
use crate::upstream::{HashKey, Target, Upstream, UpstreamTls};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, StatusCode};
use ipnet::IpNet;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

/// A problem found while compiling, before its position is looked up.
#[derive(Debug)]
pub struct Problem {
    pub path: String,
    pub message: String,
    /// Point at the key rather than the value (duplicate and misplaced keys).
    pub at_key: bool,
}

/// The timeouts in force for one route: the defaults, overridden by the route's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    pub upstream_read: Duration,
    pub upstream_write: Duration,
    pub request: Duration,
    pub downstream_header: Duration,
    pub downstream_body: Duration,
    pub downstream_write: Duration,
    pub downstream_idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(2),
            upstream_read: Duration::from_secs(30),
            upstream_write: Duration::from_secs(30),
            request: Duration::from_secs(60),
            downstream_header: Duration::from_secs(10),
            downstream_body: Duration::from_secs(30),
            downstream_write: Duration::from_secs(30),
            downstream_idle: Duration::from_secs(60),
        }
    }
}

impl Timeouts {
    fn overridden_by(mut self, file: &TimeoutsFile) -> Self {
        let pairs = [
            (&mut self.connect, file.connect),
            (&mut self.upstream_read, file.upstream_read),
            (&mut self.upstream_write, file.upstream_write),
            (&mut self.request, file.request),
            (&mut self.downstream_header, file.downstream_header),
            (&mut self.downstream_body, file.downstream_body),
            (&mut self.downstream_write, file.downstream_write),
            (&mut self.downstream_idle, file.downstream_idle),
        ];
        for (slot, value) in pairs {
            if let Some(value) = value {
                *slot = value.0;
            }
        }
        self
    }
}

#[derive(Debug, Clone)]
pub struct ListenerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Listener {
    pub addr: SocketAddr,
    pub text: String,
    pub tls: Option<ListenerTls>,
}

/// A response the gateway writes itself, from a route's `respond` block.
#[derive(Debug, Clone)]
pub struct DirectResponse {
    pub status: StatusCode,
    pub body: Bytes,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

#[derive(Debug)]
pub enum RouteAction {
    Proxy(Arc<Upstream>),
    Respond(DirectResponse),
}

/// A compiled route.
#[derive(Debug)]
pub struct Route {
    pub name: String,
    /// Position in the `routes` list.
    pub index: usize,
    pub matcher: RouteMatcher,
    pub action: RouteAction,
    /// Segment prefix removed from the path before forwarding, without a trailing `/`.
    pub strip_prefix: Option<Vec<u8>>,
    /// `Host` sent upstream in place of the client's.
    pub rewrite_host: Option<HeaderValue>,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    pub timeouts: Timeouts,
    pub rate_limit: Option<RouteRateLimit>,
    /// Requests in flight on this route, capped by `max_concurrent_requests`.
    pub in_flight: Arc<InFlightCounter>,
}

/// What a rate limit counts requests by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateLimitKey {
    ClientIp,
    /// One budget for the whole route.
    Route,
    /// The value of a request header; a request without it is counted by its client address.
    Header(HeaderName),
}

/// A route's compiled `rate_limit`.
#[derive(Debug)]
pub struct RouteRateLimit {
    pub limiter: RateLimiter,
    pub key: RateLimitKey,
    /// `RateLimit-Policy` value, e.g. `"users";q=100;w=1`.
    pub policy_header: HeaderValue,
}

/// The whole compiled config that the proxy reads.
#[derive(Debug)]
pub struct RuntimeConfig {
    pub listeners: Vec<Listener>,
    pub admin: Option<SocketAddr>,
    pub threads: usize,
    pub grace_period: Duration,
    pub trusted_proxies: Vec<IpNet>,
    pub max_connections: Option<u64>,
    pub max_request_body: Option<u64>,
    pub timeouts: Timeouts,
    pub upstreams: Vec<Arc<Upstream>>,
    pub routes: Vec<Arc<Route>>,
    /// Things that are valid but probably not what the operator meant, and settings that are
    /// accepted but not enforced yet. `gatehouse check` prints them and the server logs them.
    pub warnings: Vec<String>,
}

struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.into(),
            message: message.into(),
            at_key: false,
        });
    }

    fn error_at_key(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.into(),
            message: message.into(),
            at_key: true,
        });
    }

    fn check_timeouts(&mut self, path: &str, timeouts: &TimeoutsFile) {
        let fields = [
            ("connect", timeouts.connect),
            ("upstream_read", timeouts.upstream_read),
            ("upstream_write", timeouts.upstream_write),
            ("request", timeouts.request),
            ("downstream_header", timeouts.downstream_header),
            ("downstream_body", timeouts.downstream_body),
            ("downstream_write", timeouts.downstream_write),
            ("downstream_idle", timeouts.downstream_idle),
        ];
        for (name, value) in fields {
            if value.is_some_and(|v| v.0.is_zero()) {
                self.error(
                    format!("{path}.{name}"),
                    "invalid duration \"0\": must be greater than zero",
                );
            }
        }
    }

    fn header_name(&mut self, path: &str, name: &str) -> Option<HeaderName> {
        match HeaderName::from_bytes(name.as_bytes()) {
            Ok(parsed) => Some(parsed),
            Err(_) => {
                self.error_at_key(path, format!("invalid header name \"{name}\""));
                None
            }
        }
    }

    fn header_value(&mut self, path: &str, value: &str) -> Option<HeaderValue> {
        match HeaderValue::from_str(value) {
            Ok(parsed) => Some(parsed),
            Err(_) => {
                self.error(
                    path,
                    format!("invalid header value \"{}\"", value.escape_debug()),
                );
                None
            }
        }
    }

    fn header_pairs(
        &mut self,
        path: &str,
        map: &BTreeMap<String, String>,
    ) -> Vec<(HeaderName, HeaderValue)> {
        let mut pairs = Vec::with_capacity(map.len());
        for (name, value) in map {
            let entry_path = format!("{path}.{name}");
            let parsed_name = self.header_name(&entry_path, name);
            let parsed_value = self.header_value(&entry_path, value);
            if let (Some(n), Some(v)) = (parsed_name, parsed_value) {
                pairs.push((n, v));
            }
        }
        pairs
    }

    fn header_ops(&mut self, path: &str, ops: Option<&HeaderOpsFile>) -> HeaderOps {
        let Some(ops) = ops else {
            return HeaderOps::default();
        };
        let set = self.header_pairs(&format!("{path}.set"), &ops.set);
        let add = self.header_pairs(&format!("{path}.add"), &ops.add);
        for (kind, pairs) in [("set", &set), ("add", &add)] {
            for (name, _) in pairs {
                if is_hop_by_hop(name) || name == http::header::CONTENT_LENGTH {
                    self.error_at_key(
                        format!("{path}.{kind}.{name}"),
                        format!(
                            "header \"{name}\" cannot be set: it describes the connection or the \
                             message framing, which the gateway manages"
                        ),
                    );
                }
            }
        }
        let mut remove = Vec::with_capacity(ops.remove.len());
        for (i, name) in ops.remove.iter().enumerate() {
            if let Some(parsed) = self.header_name(&format!("{path}.remove[{i}]"), name) {
                remove.push(parsed);
            }
        }
        HeaderOps { set, add, remove }
    }
}

fn host_pattern_problem(pattern: &str) -> Option<String> {
    let name = pattern.strip_prefix("*.").unwrap_or(pattern);
    if name.is_empty() {
        return Some(format!("invalid host \"{pattern}\": empty name"));
    }
    if name.contains('*') {
        return Some(format!(
            "invalid host \"{pattern}\": a wildcard is only allowed as a leading \"*.\""
        ));
    }
    if name.contains(':') && !name.starts_with('[') {
        return Some(format!(
            "invalid host \"{pattern}\": a host pattern has no port (ports are ignored when matching)"
        ));
    }
    let valid = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'[' | b']' | b':'));
    if !valid {
        return Some(format!("invalid host \"{pattern}\": not a host name"));
    }
    None
}

/// Checks that a configured path is absolute and already normal, so that it can match the
/// normalized request paths.
fn config_path_problem(path: &str) -> Option<String> {
    if !path.starts_with('/') {
        return Some(format!("invalid path \"{path}\": must start with \"/\""));
    }
    let trimmed = if path.len() > 1 {
        path.trim_end_matches('/')
    } else {
        path
    };
    match normalize(trimmed.as_bytes()) {
        Ok(normal) if normal.as_ref() == trimmed.as_bytes() => None,
        Ok(normal) => Some(format!(
            "invalid path \"{path}\": not in normal form; write \"{}\"",
            String::from_utf8_lossy(&normal)
        )),
        Err(_) => Some(format!("invalid path \"{path}\": bad percent-encoding")),
    }
}

const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

fn compile_match(c: &mut Checker, path: &str, m: &MatchFile) -> RouteMatcher {
    let mut hosts = Vec::new();
    for (i, host) in m.hosts.iter().enumerate() {
        match host_pattern_problem(host) {
            Some(problem) => c.error(format!("{path}.hosts[{i}]"), problem),
            None => hosts.push(HostPattern::parse(host)),
        }
    }

    let kinds = [
        ("path", m.path.is_some()),
        ("path_prefix", m.path_prefix.is_some()),
        ("path_regex", m.path_regex.is_some()),
    ];
    let given: Vec<&str> = kinds.iter().filter(|k| k.1).map(|k| k.0).collect();
    if given.len() > 1 {
        c.error_at_key(
            format!("{path}.{}", given[1]),
            format!(
                "only one of path, path_prefix and path_regex may be given, found {}",
                given.join(" and ")
            ),
        );
    }
    let path_match = if let Some(exact) = &m.path {
        match config_path_problem(exact) {
            Some(problem) => {
                c.error(format!("{path}.path"), problem);
                PathMatch::Any
            }
            None => PathMatch::Exact(exact.as_bytes().to_vec()),
        }
    } else if let Some(prefix) = &m.path_prefix {
        match config_path_problem(prefix) {
            Some(problem) => {
                c.error(format!("{path}.path_prefix"), problem);
                PathMatch::Any
            }
            None => {
                let trimmed = if prefix.len() > 1 {
                    prefix.trim_end_matches('/')
                } else {
                    prefix
                };
                PathMatch::Prefix(trimmed.as_bytes().to_vec())
            }
        }
    } else if let Some(pattern) = &m.path_regex {
        match regex::bytes::Regex::new(pattern) {
            Ok(regex) => PathMatch::Regex(regex),
            Err(e) => {
                let reason = e.to_string();
                let last_line = reason.lines().last().unwrap_or("").trim();
                let last_line = last_line.strip_prefix("error: ").unwrap_or(last_line);
                c.error(
                    format!("{path}.path_regex"),
                    format!("invalid regex \"{pattern}\": {last_line}"),
                );
                PathMatch::Any
            }
        }
    } else {
        PathMatch::Any
    };

    let mut methods = Vec::new();
    for (i, method) in m.methods.iter().enumerate() {
        if METHODS.contains(&method.as_str()) {
            let parsed = Method::from_bytes(method.as_bytes()).expect("standard method");
            if !methods.contains(&parsed) {
                methods.push(parsed);
            }
        } else {
            c.error(
                format!("{path}.methods[{i}]"),
                format!(
                    "unknown method \"{method}\", expected one of {} (methods are case-sensitive)",
                    METHODS.join(", ")
                ),
            );
        }
    }

    let headers = c.header_pairs(&format!("{path}.headers"), &m.headers);
    RouteMatcher {
        hosts,
        path: path_match,
        methods,
        headers,
    }
}

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

fn compile_upstream(
    c: &mut Checker,
    warnings: &mut Vec<String>,
    index: usize,
    file: &UpstreamFile,
    base_dir: &Path,
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
            in_flight: AtomicUsize::new(0),
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
        // TODO: active health checks are not run yet; every target is treated as healthy.
        warnings.push(format!(
            "{hc_path}: health checks are not run yet; all targets of \"{}\" receive traffic",
            file.name
        ));
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

    Upstream::new(
        file.name.clone(),
        targets,
        file.balance,
        hash_key,
        tls,
        retry_attempts,
        idle_timeout,
        max_idle,
    )
}

fn compile_route(
    c: &mut Checker,
    warnings: &mut Vec<String>,
    index: usize,
    file: &RouteFile,
    upstreams: &HashMap<&str, Arc<Upstream>>,
    defaults: Timeouts,
) -> Route {
    let path = format!("routes[{index}]");
    if file.name.is_empty() {
        c.error(
            format!("{path}.name"),
            "invalid name \"\": must not be empty",
        );
    }
    let matcher = compile_match(c, &format!("{path}.match"), &file.match_);

    let action = match (&file.upstream, &file.respond) {
        (Some(_), Some(_)) => {
            c.error_at_key(
                format!("{path}.respond"),
                "a route has either \"upstream\" or \"respond\", not both",
            );
            None
        }
        (None, None) => {
            c.error_at_key(
                format!("{path}.name"),
                format!("route \"{}\" needs \"upstream\" or \"respond\"", file.name),
            );
            None
        }
        (Some(name), None) => match upstreams.get(name.as_str()) {
            Some(upstream) => Some(RouteAction::Proxy(upstream.clone())),
            None => {
                let mut known: Vec<&str> = upstreams.keys().copied().collect();
                known.sort_unstable();
                c.error(
                    format!("{path}.upstream"),
                    format!(
                        "unknown upstream \"{name}\" (defined: {})",
                        known.join(", ")
                    ),
                );
                None
            }
        },
        (None, Some(respond)) => {
            let respond_path = format!("{path}.respond");
            let status = match StatusCode::from_u16(respond.status) {
                Ok(status) if (200..=599).contains(&respond.status) => Some(status),
                _ => {
                    c.error(
                        format!("{respond_path}.status"),
                        format!(
                            "invalid status \"{}\": must be from 200 to 599",
                            respond.status
                        ),
                    );
                    None
                }
            };
            if matches!(respond.status, 204 | 304) && !respond.body.is_empty() {
                c.error(
                    format!("{respond_path}.body"),
                    format!("a {} response has no body; remove \"body\"", respond.status),
                );
            }
            let headers = c.header_pairs(&format!("{respond_path}.headers"), &respond.headers);
            for (name, _) in &headers {
                if is_hop_by_hop(name) || name == http::header::CONTENT_LENGTH {
                    c.error_at_key(
                        format!("{respond_path}.headers.{name}"),
                        format!("header \"{name}\" cannot be set: the gateway writes the framing headers"),
                    );
                }
            }
            status.map(|status| {
                RouteAction::Respond(DirectResponse {
                    status,
                    body: Bytes::from(respond.body.clone()),
                    headers,
                })
            })
        }
    };

    let mut strip_prefix = None;
    let mut rewrite_host = None;
    if let Some(rewrite) = &file.rewrite {
        if file.respond.is_some() {
            c.error_at_key(
                format!("{path}.rewrite"),
                "rewrite applies to proxied routes only",
            );
        }
        if let Some(prefix) = &rewrite.strip_prefix {
            let prefix_path = format!("{path}.rewrite.strip_prefix");
            match config_path_problem(prefix) {
                Some(problem) => c.error(prefix_path, problem),
                None => {
                    let trimmed = if prefix.len() > 1 {
                        prefix.trim_end_matches('/')
                    } else {
                        prefix
                    };
                    let covered = match &matcher.path {
                        PathMatch::Prefix(p) | PathMatch::Exact(p) => {
                            crate::path::has_segment_prefix(p, trimmed.as_bytes())
                        }
                        PathMatch::Regex(_) => true,
                        PathMatch::Any => trimmed == "/",
                    };
                    if !covered {
                        c.error(
                            prefix_path,
                            format!(
                                "strip_prefix \"{prefix}\" is not a prefix of every path this route \
                                 matches; match a path_prefix under it"
                            ),
                        );
                    } else if trimmed != "/" {
                        strip_prefix = Some(trimmed.as_bytes().to_vec());
                    }
                }
            }
        }
        if let Some(host) = &rewrite.host {
            let host_path = format!("{path}.rewrite.host");
            if host.is_empty()
                || http::uri::Authority::try_from(host.as_str()).is_err()
                || host.contains('@')
            {
                c.error(
                    host_path,
                    format!("invalid host \"{host}\": not a host[:port]"),
                );
            } else {
                rewrite_host = c.header_value(&host_path, host);
            }
        }
    }

    let request_headers = c.header_ops(
        &format!("{path}.request_headers"),
        file.request_headers.as_ref(),
    );
    let response_headers = c.header_ops(
        &format!("{path}.response_headers"),
        file.response_headers.as_ref(),
    );

    let rate_limit = file.rate_limit.as_ref().and_then(|limit| {
        let limit_path = format!("{path}.rate_limit");
        if limit.requests == 0 {
            c.error(
                format!("{limit_path}.requests"),
                "invalid requests \"0\": must be at least 1",
            );
        }
        if limit.per.0.is_zero() {
            c.error(
                format!("{limit_path}.per"),
                "invalid duration \"0\": must be greater than zero",
            );
        }
        let key = match limit.key.as_str() {
            "client_ip" => Some(RateLimitKey::ClientIp),
            "route" => Some(RateLimitKey::Route),
            other => other
                .strip_prefix("header:")
                .and_then(|name| HeaderName::from_bytes(name.as_bytes()).ok())
                .map(RateLimitKey::Header),
        };
        let Some(key) = key else {
            c.error(
                format!("{limit_path}.key"),
                format!(
                    "invalid key \"{}\", expected one of client_ip, route, header:NAME",
                    limit.key
                ),
            );
            return None;
        };
        Some(RouteRateLimit {
            limiter: RateLimiter::new(limit.requests, limit.per.0),
            key,
            policy_header: rate_limit_policy(&file.name, limit.requests, limit.per.0),
        })
    });
    if file.max_concurrent_requests == Some(0) {
        c.error(
            format!("{path}.max_concurrent_requests"),
            "invalid max_concurrent_requests \"0\": must be at least 1",
        );
    }
    let in_flight = Arc::new(InFlightCounter::new(
        file.max_concurrent_requests,
        crate::metrics::metrics()
            .requests_in_flight
            .with_label_values(&[file.name.as_str()]),
    ));
    let timeouts = match &file.timeouts {
        Some(overrides) => {
            c.check_timeouts(&format!("{path}.timeouts"), overrides);
            warn_unenforced_timeouts(warnings, &format!("{path}.timeouts"), overrides);
            defaults.overridden_by(overrides)
        }
        None => defaults,
    };

    Route {
        name: file.name.clone(),
        index,
        matcher,
        action: action.unwrap_or(RouteAction::Respond(DirectResponse {
            status: StatusCode::NOT_FOUND,
            body: Bytes::new(),
            headers: Vec::new(),
        })),
        strip_prefix,
        rewrite_host,
        request_headers,
        response_headers,
        timeouts,
        rate_limit,
        in_flight,
    }
}

/// Builds the `RateLimit-Policy` value for a route: its name as the policy name, the quota,
/// and the window in whole seconds (the header has no finer unit, so it is rounded up).
fn rate_limit_policy(route: &str, requests: u64, per: Duration) -> HeaderValue {
    let mut name = String::with_capacity(route.len());
    for ch in route.chars() {
        match ch {
            '"' | '\\' => {
                name.push('\\');
                name.push(ch);
            }
            ' '..='~' => name.push(ch),
            _ => name.push('_'),
        }
    }
    let window = per.as_millis().div_ceil(1000).max(1);
    HeaderValue::from_str(&format!("\"{name}\";q={requests};w={window}"))
        .expect("printable ASCII is a valid header value")
}

fn warn_unenforced_timeouts(warnings: &mut Vec<String>, path: &str, timeouts: &TimeoutsFile) {
    // TODO: only connect, upstream_read and upstream_write are enforced so far.
    let unenforced = [
        ("request", timeouts.request.is_some()),
        ("downstream_header", timeouts.downstream_header.is_some()),
        ("downstream_body", timeouts.downstream_body.is_some()),
        ("downstream_write", timeouts.downstream_write.is_some()),
        ("downstream_idle", timeouts.downstream_idle.is_some()),
    ];
    for (name, given) in unenforced {
        if given {
            warnings.push(format!("{path}.{name}: not enforced yet"));
        }
    }
}

/// Finds routes that an earlier route makes unreachable.
pub fn shadowed_routes(routes: &[Arc<Route>]) -> Vec<String> {
    let mut warnings = Vec::new();
    for (later_index, later) in routes.iter().enumerate() {
        if let Some(earlier) = routes[..later_index]
            .iter()
            .find(|earlier| earlier.matcher.covers(&later.matcher))
        {
            warnings.push(format!(
                "routes[{}] \"{}\": shadowed by routes[{}] \"{}\", which matches every request it matches",
                later.index, later.name, earlier.index, earlier.name
            ));
        }
    }
    warnings
}

/// Reports an address that would bind the same socket as an earlier listener: the same
/// port on the same address, or on a wildcard address (`0.0.0.0`, `::`) that covers it.
fn check_overlap(
    c: &mut Checker,
    bound: &mut Vec<(SocketAddr, String)>,
    addr: SocketAddr,
    path: String,
) {
    let clash = bound.iter().find(|(other, _)| {
        other.port() == addr.port()
            && (other.ip() == addr.ip()
                || other.ip().is_unspecified()
                || addr.ip().is_unspecified())
    });
    if let Some((other, other_path)) = clash {
        c.error(
            &path,
            format!("address \"{addr}\" overlaps \"{other}\" of {other_path}; each listener needs its own port"),
        );
    }
    bound.push((addr, path));
}

/// Checks that a PEM certificate and private key load and belong together.
fn check_key_pair(cert: &Path, key: &Path) -> Result<(), String> {
    use pingora_core::tls::pkey::PKey;
    use pingora_core::tls::x509::X509;
    let cert_pem = std::fs::read(cert).map_err(|e| e.to_string())?;
    let key_pem = std::fs::read(key).map_err(|e| e.to_string())?;
    let certificate =
        X509::from_pem(&cert_pem).map_err(|_| "the certificate is not PEM".to_owned())?;
    let private_key =
        PKey::private_key_from_pem(&key_pem).map_err(|_| "not a PEM private key".to_owned())?;
    let public_key = certificate.public_key().map_err(|e| e.to_string())?;
    if !public_key.public_eq(&private_key) {
        return Err("it does not match the certificate".to_owned());
    }
    Ok(())
}

/// Validates `file` and builds the runtime view, or returns every problem found.
pub fn compile(file: FileConfig, base_dir: &Path) -> Result<RuntimeConfig, Vec<Problem>> {
    let mut c = Checker {
        problems: Vec::new(),
    };
    let mut warnings = Vec::new();

    if file.listen.is_empty() {
        c.error_at_key("listen", "at least one listener is needed");
    }
    let mut listeners = Vec::with_capacity(file.listen.len());
    // Every bound address so far, with its key path, to find two listeners on one socket.
    let mut bound: Vec<(SocketAddr, String)> = Vec::new();
    for (i, listener) in file.listen.iter().enumerate() {
        let path = format!("listen[{i}]");
        check_overlap(
            &mut c,
            &mut bound,
            listener.address.addr,
            format!("{path}.address"),
        );
        let tls = listener.tls.as_ref().map(|tls| {
            let cert = base_dir.join(&tls.cert);
            let key = base_dir.join(&tls.key);
            let mut readable = true;
            for (name, file_path, text) in [("cert", &cert, &tls.cert), ("key", &key, &tls.key)] {
                if let Err(e) = std::fs::metadata(file_path) {
                    readable = false;
                    c.error(
                        format!("{path}.tls.{name}"),
                        format!("cannot read \"{text}\": {e}"),
                    );
                }
            }
            if readable {
                if let Err(reason) = check_key_pair(&cert, &key) {
                    c.error(
                        format!("{path}.tls.key"),
                        format!("invalid key \"{}\": {reason}", tls.key),
                    );
                }
            }
            ListenerTls { cert, key }
        });
        listeners.push(Listener {
            addr: listener.address.addr,
            text: listener.address.text.clone(),
            tls,
        });
    }
    let admin = file.admin.as_ref().map(|a| a.address.addr);
    if let Some(admin_addr) = admin {
        check_overlap(&mut c, &mut bound, admin_addr, "admin.address".to_owned());
    }

    let threads = file.server.threads.unwrap_or(1);
    if threads == 0 || threads > 1024 {
        c.error(
            "server.threads",
            format!("invalid threads \"{threads}\": must be from 1 to 1024"),
        );
    }
    let grace_period = file
        .server
        .grace_period
        .map_or(Duration::from_secs(30), |d| d.0);

    let mut trusted_proxies = Vec::new();
    for (i, entry) in file.trusted_proxies.iter().enumerate() {
        let parsed = entry
            .parse::<IpNet>()
            .or_else(|_| entry.parse::<std::net::IpAddr>().map(IpNet::from));
        match parsed {
            Ok(net) => trusted_proxies.push(net),
            Err(_) => c.error(
                format!("trusted_proxies[{i}]"),
                format!("invalid address \"{entry}\": expected an IP address or CIDR block such as 10.0.0.0/8"),
            ),
        }
    }

    if file.limits.max_connections == Some(0) {
        c.error(
            "limits.max_connections",
            "invalid max_connections \"0\": must be at least 1",
        );
    }
    if file.limits.max_request_body == Some(super::units::SizeValue(0)) {
        c.error(
            "limits.max_request_body",
            "invalid size \"0B\": must be at least 1B",
        );
    }
    c.check_timeouts("timeouts", &file.timeouts);
    warn_unenforced_timeouts(&mut warnings, "timeouts", &file.timeouts);
    let timeouts = Timeouts::default().overridden_by(&file.timeouts);

    let mut upstream_by_name: HashMap<&str, Arc<Upstream>> = HashMap::new();
    let mut upstreams = Vec::with_capacity(file.upstreams.len());
    for (i, upstream_file) in file.upstreams.iter().enumerate() {
        let upstream = Arc::new(compile_upstream(
            &mut c,
            &mut warnings,
            i,
            upstream_file,
            base_dir,
        ));
        if upstream_by_name.contains_key(upstream_file.name.as_str()) {
            c.error(
                format!("upstreams[{i}].name"),
                format!("duplicate upstream name \"{}\"", upstream_file.name),
            );
        } else {
            upstream_by_name.insert(&upstream_file.name, upstream.clone());
        }
        upstreams.push(upstream);
    }

    let mut route_names = HashSet::new();
    let mut routes = Vec::with_capacity(file.routes.len());
    for (i, route_file) in file.routes.iter().enumerate() {
        if !route_names.insert(route_file.name.as_str()) {
            c.error(
                format!("routes[{i}].name"),
                format!("duplicate route name \"{}\"", route_file.name),
            );
        }
        let route = compile_route(
            &mut c,
            &mut warnings,
            i,
            route_file,
            &upstream_by_name,
            timeouts,
        );
        routes.push(Arc::new(route));
    }
    if file.routes.is_empty() {
        warnings.push("routes: the list is empty, so every request gets 404".to_owned());
    }

    if !c.problems.is_empty() {
        return Err(c.problems);
    }
    warnings.extend(shadowed_routes(&routes));
    Ok(RuntimeConfig {
        listeners,
        admin,
        threads,
        grace_period,
        trusted_proxies,
        max_connections: file.limits.max_connections,
        max_request_body: file.limits.max_request_body.map(|s| s.0),
        timeouts,
        upstreams,
        routes,
        warnings,
    })
}
