//! Compilation of the `routes` list: match blocks, actions, rewrites, header rules and limits.

use super::compile::{
    Checker, DirectResponse, RateLimitKey, Route, RouteAction, RouteRateLimit, Timeouts,
};
use super::file::{MatchFile, RouteFile};
use crate::headers::is_hop_by_hop;
use crate::limits::concurrency::InFlightCounter;
use crate::limits::rate::RateLimiter;
use crate::path::normalize;
use crate::routing::{HostPattern, PathMatch, RouteMatcher};
use crate::upstream::Upstream;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, StatusCode};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

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

/// Upper bound of `buffer_response`: each request in flight on the route may hold this much.
const MAX_RESPONSE_BUFFER: u64 = 64 << 20;

pub(super) fn compile_route(
    c: &mut Checker,
    index: usize,
    file: &RouteFile,
    upstreams: &HashMap<&str, Arc<Upstream>>,
    defaults: Timeouts,
    previous: Option<&Route>,
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
        // A reload that keeps the limit keeps the counters, so clients cannot reset their
        // budget by waiting for a config change.
        let unchanged = previous
            .and_then(|route| route.rate_limit.as_ref())
            .filter(|old| {
                old.limiter.limit() == limit.requests
                    && old.limiter.window() == limit.per.0
                    && old.key == key
            });
        let limiter = match unchanged {
            Some(old) => old.limiter.clone(),
            None => Arc::new(RateLimiter::new(limit.requests, limit.per.0)),
        };
        Some(RouteRateLimit {
            limiter,
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
    let buffer_response = file.buffer_response.and_then(|size| {
        let path = format!("{path}.buffer_response");
        if file.respond.is_some() {
            c.error_at_key(path, "buffer_response applies to proxied routes only");
            None
        } else if size.0 == 0 || size.0 > MAX_RESPONSE_BUFFER {
            c.error(
                path,
                format!("invalid size \"{}B\": must be from 1B to 64MiB", size.0),
            );
            None
        } else {
            Some(size.0 as usize)
        }
    });
    let in_flight = Arc::new(match previous {
        // Requests that started on the previous config still count against the cap.
        Some(route) => route.in_flight.continued(file.max_concurrent_requests),
        None => InFlightCounter::new(
            file.max_concurrent_requests,
            crate::metrics::metrics()
                .requests_in_flight
                .with_label_values(&[file.name.as_str()]),
        ),
    });
    let timeouts = match &file.timeouts {
        Some(overrides) => {
            c.check_timeouts(&format!("{path}.timeouts"), overrides);
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
        buffer_response,
        in_flight,
        series: std::sync::OnceLock::new(),
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
