//! Route matching: the compiled `match` block of each route, tried in file order.

use crate::path::has_segment_prefix;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use regex::bytes::Regex;
use std::fmt::Write as _;

/// A host pattern from `match.hosts`, lowercased at load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// `api.example.com`
    Exact(String),
    /// `*.example.com`, stored as `.example.com`: any name that ends with it, at any depth.
    Wildcard(String),
}

impl HostPattern {
    pub fn parse(pattern: &str) -> Self {
        let lower = pattern.to_ascii_lowercase();
        match lower.strip_prefix('*') {
            Some(suffix) => HostPattern::Wildcard(suffix.to_owned()),
            None => HostPattern::Exact(lower),
        }
    }

    /// Matches a host that is already lowercased and has no port.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(name) => host == name,
            HostPattern::Wildcard(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        }
    }

    /// True when every host this pattern matches, `self` matches too.
    fn covers(&self, other: &HostPattern) -> bool {
        match (self, other) {
            (HostPattern::Exact(a), HostPattern::Exact(b)) => a == b,
            (HostPattern::Wildcard(suffix), HostPattern::Exact(name)) => {
                name.len() > suffix.len() && name.ends_with(suffix.as_str())
            }
            (HostPattern::Wildcard(a), HostPattern::Wildcard(b)) => b.ends_with(a.as_str()),
            (HostPattern::Exact(_), HostPattern::Wildcard(_)) => false,
        }
    }

    fn display(&self) -> String {
        match self {
            HostPattern::Exact(name) => name.clone(),
            HostPattern::Wildcard(suffix) => format!("*{suffix}"),
        }
    }
}

/// The path condition of a route.
#[derive(Debug, Clone)]
pub enum PathMatch {
    Any,
    Exact(Vec<u8>),
    /// Segment-aware prefix without a trailing `/` (except the root prefix `/`).
    Prefix(Vec<u8>),
    Regex(Regex),
}

impl PathMatch {
    fn matches(&self, path: &[u8]) -> bool {
        match self {
            PathMatch::Any => true,
            PathMatch::Exact(exact) => path == exact.as_slice(),
            PathMatch::Prefix(prefix) => has_segment_prefix(path, prefix),
            PathMatch::Regex(regex) => regex.is_match(path),
        }
    }

    fn covers(&self, other: &PathMatch) -> bool {
        match (self, other) {
            (PathMatch::Any, _) => true,
            (PathMatch::Prefix(prefix), PathMatch::Prefix(other) | PathMatch::Exact(other)) => {
                has_segment_prefix(other, prefix)
            }
            (PathMatch::Exact(a), PathMatch::Exact(b)) => a == b,
            (PathMatch::Regex(a), PathMatch::Regex(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }

    fn describe(&self) -> String {
        match self {
            PathMatch::Any => "any path".to_owned(),
            PathMatch::Exact(p) => format!("path \"{}\"", String::from_utf8_lossy(p)),
            PathMatch::Prefix(p) => format!("path_prefix \"{}\"", String::from_utf8_lossy(p)),
            PathMatch::Regex(r) => format!("path_regex \"{}\"", r.as_str()),
        }
    }
}

/// The compiled `match` block of one route. Empty lists match anything.
#[derive(Debug, Clone)]
pub struct RouteMatcher {
    pub hosts: Vec<HostPattern>,
    pub path: PathMatch,
    pub methods: Vec<Method>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// The parts of a request that routes match on. `host` is lowercased without a port and
/// `path` is normalized.
pub struct RequestFacts<'a> {
    pub method: &'a Method,
    pub host: &'a str,
    pub path: &'a [u8],
    pub headers: &'a HeaderMap,
}

impl RouteMatcher {
    pub fn matches(&self, request: &RequestFacts) -> bool {
        (self.methods.is_empty() || self.methods.contains(request.method))
            && (self.hosts.is_empty() || self.hosts.iter().any(|h| h.matches(request.host)))
            && self.path.matches(request.path)
            && self
                .headers
                .iter()
                .all(|(name, value)| request.headers.get_all(name).iter().any(|v| v == value))
    }

    /// True when every request that `other` matches, `self` matches too. Conservative: returns
    /// false whenever that cannot be decided (regexes against other path kinds).
    pub fn covers(&self, other: &RouteMatcher) -> bool {
        let hosts = self.hosts.is_empty()
            || (!other.hosts.is_empty()
                && other
                    .hosts
                    .iter()
                    .all(|o| self.hosts.iter().any(|s| s.covers(o))));
        let methods = self.methods.is_empty()
            || (!other.methods.is_empty()
                && other.methods.iter().all(|m| self.methods.contains(m)));
        let headers = self
            .headers
            .iter()
            .all(|pair| other.headers.iter().any(|o| o == pair));
        hosts && methods && headers && self.path.covers(&other.path)
    }

    /// Explains, one line per condition, why `request` matches or not.
    pub fn explain(&self, request: &RequestFacts) -> Vec<String> {
        let mut lines = Vec::new();
        if self.methods.is_empty() {
            lines.push("method: any".to_owned());
        } else {
            let list: Vec<&str> = self.methods.iter().map(Method::as_str).collect();
            let verdict = if self.methods.contains(request.method) {
                "in"
            } else {
                "not in"
            };
            lines.push(format!(
                "method: {} {verdict} [{}]",
                request.method,
                list.join(", ")
            ));
        }
        if self.hosts.is_empty() {
            lines.push("host: any".to_owned());
        } else {
            let mut line = format!("host: \"{}\" ", request.host);
            match self.hosts.iter().find(|h| h.matches(request.host)) {
                Some(h) => {
                    let _ = write!(line, "matches \"{}\"", h.display());
                }
                None => {
                    let list: Vec<String> = self.hosts.iter().map(HostPattern::display).collect();
                    let _ = write!(line, "matches none of [{}]", list.join(", "));
                }
            }
            lines.push(line);
        }
        let verdict = if self.path.matches(request.path) {
            "matches"
        } else {
            "does not match"
        };
        lines.push(format!(
            "path: \"{}\" {verdict} {}",
            String::from_utf8_lossy(request.path),
            self.path.describe()
        ));
        for (name, value) in &self.headers {
            let present = request.headers.get_all(name).iter().any(|v| v == value);
            let verdict = if present { "present" } else { "missing" };
            lines.push(format!(
                "header: {name}: {} {verdict}",
                String::from_utf8_lossy(value.as_bytes())
            ));
        }
        lines
    }
}

/// Returns the host of a request for matching: lowercased, without port or trailing dot.
/// Borrows when the header is already in that form.
pub fn normalize_host(raw: &str) -> std::borrow::Cow<'_, str> {
    let without_port = if let Some(rest) = raw.strip_prefix('[') {
        // IPv6 literal: keep the brackets, drop what follows "]".
        match rest.find(']') {
            Some(end) => &raw[..end + 2],
            None => raw,
        }
    } else {
        match raw.rfind(':') {
            Some(colon) => &raw[..colon],
            None => raw,
        }
    };
    let host = without_port.strip_suffix('.').unwrap_or(without_port);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts<'a>(
        method: &'a Method,
        host: &'a str,
        path: &'a str,
        headers: &'a HeaderMap,
    ) -> RequestFacts<'a> {
        RequestFacts {
            method,
            host,
            path: path.as_bytes(),
            headers,
        }
    }

    #[test]
    fn host_patterns() {
        let wildcard = HostPattern::parse("*.Example.com");
        assert!(wildcard.matches("a.example.com"));
        assert!(wildcard.matches("a.b.example.com"));
        assert!(!wildcard.matches("example.com"));
        assert!(!wildcard.matches("badexample.com"));
        assert!(HostPattern::parse("API.example.com").matches("api.example.com"));
    }

    #[test]
    fn host_normalization() {
        assert_eq!(normalize_host("API.Example.com:8080"), "api.example.com");
        assert_eq!(normalize_host("example.com."), "example.com");
        assert_eq!(normalize_host("[::1]:80"), "[::1]");
        assert_eq!(normalize_host("[::1]"), "[::1]");
    }

    #[test]
    fn matcher_conditions() {
        let matcher = RouteMatcher {
            hosts: vec![HostPattern::parse("api.example.com")],
            path: PathMatch::Prefix(b"/api".to_vec()),
            methods: vec![Method::GET],
            headers: vec![(
                HeaderName::from_static("x-v"),
                HeaderValue::from_static("2"),
            )],
        };
        let mut headers = HeaderMap::new();
        headers.insert("x-v", HeaderValue::from_static("2"));
        let get = Method::GET;
        assert!(matcher.matches(&facts(&get, "api.example.com", "/api/x", &headers)));
        assert!(!matcher.matches(&facts(&get, "api.example.com", "/apix", &headers)));
        assert!(!matcher.matches(&facts(&Method::POST, "api.example.com", "/api", &headers)));
        assert!(!matcher.matches(&facts(&get, "example.com", "/api", &headers)));
        assert!(!matcher.matches(&facts(&get, "api.example.com", "/api", &HeaderMap::new())));
    }

    #[test]
    fn coverage() {
        let any = RouteMatcher {
            hosts: vec![],
            path: PathMatch::Any,
            methods: vec![],
            headers: vec![],
        };
        let api = RouteMatcher {
            path: PathMatch::Prefix(b"/api".to_vec()),
            ..any.clone()
        };
        let users = RouteMatcher {
            path: PathMatch::Prefix(b"/api/users".to_vec()),
            ..any.clone()
        };
        let users_get = RouteMatcher {
            methods: vec![Method::GET],
            ..users.clone()
        };
        assert!(any.covers(&api));
        assert!(api.covers(&users));
        assert!(!users.covers(&api));
        assert!(users.covers(&users_get));
        assert!(!users_get.covers(&users));
    }
}
