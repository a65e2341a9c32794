//! Validation of a parsed config file and construction of the runtime view.
//!
//! Every check runs, so one pass reports all the problems of a file. Regexes, host patterns,
//! header names and balancers are built here once; the request path only reads them.

use super::file::{FileConfig, HeaderOpsFile, TimeoutsFile};
use super::routes::{compile_route, shadowed_routes};
use super::upstreams::compile_upstream;
use crate::headers::{is_hop_by_hop, HeaderOps};
use crate::limits::concurrency::InFlightCounter;
use crate::limits::rate::RateLimiter;
use crate::routing::RouteMatcher;
use crate::upstream::Upstream;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use ipnet::IpNet;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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
    pub(super) fn overridden_by(mut self, file: &TimeoutsFile) -> Self {
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
    /// Bytes of a response body held in memory before any of it is sent to the client.
    pub buffer_response: Option<usize>,
    /// Requests in flight on this route, capped by `max_concurrent_requests`.
    pub in_flight: Arc<InFlightCounter>,
    /// The route's metric series, looked up on its first request.
    pub series: std::sync::OnceLock<crate::metrics::RouteSeries>,
}

impl Route {
    /// Returns the route's metric series, looking them up on the first call.
    pub fn series(&self) -> &crate::metrics::RouteSeries {
        self.series.get_or_init(|| {
            let upstream = match &self.action {
                RouteAction::Proxy(upstream) => Some(upstream.name.as_str()),
                RouteAction::Respond(_) => None,
            };
            crate::metrics::RouteSeries::new(&self.name, upstream)
        })
    }
}

/// Key by which a rate limit counts requests.
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
    /// Shared with the previous config's route across a reload that keeps the same limit.
    pub limiter: Arc<RateLimiter>,
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
    /// Finds the first matching route in `routes` without trying each one.
    pub route_index: crate::route_index::RouteIndex,
    /// Reload when the file changes (`reload.watch`), after `reload.debounce` of quiet.
    pub watch: Option<Duration>,
    /// Things that are valid but probably not what the operator meant, and settings that are
    /// accepted but not enforced yet. `gatehouse check` prints them and the server logs them.
    pub warnings: Vec<String>,
}

/// Quiet time after a change of the watched config file before it is read, so that an editor's
/// several writes make one reload.
const DEFAULT_WATCH_DEBOUNCE: Duration = Duration::from_millis(250);
const MAX_WATCH_DEBOUNCE: Duration = Duration::from_secs(10);

pub(super) struct Checker {
    pub(super) problems: Vec<Problem>,
}

impl Checker {
    pub(super) fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.into(),
            message: message.into(),
            at_key: false,
        });
    }

    pub(super) fn error_at_key(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.into(),
            message: message.into(),
            at_key: true,
        });
    }

    pub(super) fn check_timeouts(&mut self, path: &str, timeouts: &TimeoutsFile) {
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

    pub(super) fn header_name(&mut self, path: &str, name: &str) -> Option<HeaderName> {
        match HeaderName::from_bytes(name.as_bytes()) {
            Ok(parsed) => Some(parsed),
            Err(_) => {
                self.error_at_key(path, format!("invalid header name \"{name}\""));
                None
            }
        }
    }

    pub(super) fn header_value(&mut self, path: &str, value: &str) -> Option<HeaderValue> {
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

    pub(super) fn header_pairs(
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

    pub(super) fn header_ops(&mut self, path: &str, ops: Option<&HeaderOpsFile>) -> HeaderOps {
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
        HeaderOps::new(set, add, remove)
    }
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
///
/// With a `previous` config (a reload), live state carries over by name: a route keeps its
/// count of requests in flight, and its rate-limit counters while `requests`, `per` and `key`
/// are unchanged. A target keeps its health and in-flight count while its upstream keeps the
/// same name and the target the same address.
pub fn compile(
    file: FileConfig,
    base_dir: &Path,
    previous: Option<&RuntimeConfig>,
) -> Result<RuntimeConfig, Vec<Problem>> {
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
    let timeouts = Timeouts::default().overridden_by(&file.timeouts);

    let previous_upstreams: HashMap<&str, &Upstream> = previous
        .iter()
        .flat_map(|p| p.upstreams.iter())
        .map(|u| (u.name.as_str(), u.as_ref()))
        .collect();
    let previous_routes: HashMap<&str, &Route> = previous
        .iter()
        .flat_map(|p| p.routes.iter())
        .map(|r| (r.name.as_str(), r.as_ref()))
        .collect();

    let mut upstream_by_name: HashMap<&str, Arc<Upstream>> = HashMap::new();
    let mut upstreams = Vec::with_capacity(file.upstreams.len());
    for (i, upstream_file) in file.upstreams.iter().enumerate() {
        let upstream = Arc::new(compile_upstream(
            &mut c,
            i,
            upstream_file,
            base_dir,
            previous_upstreams.get(upstream_file.name.as_str()).copied(),
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
            i,
            route_file,
            &upstream_by_name,
            timeouts,
            previous_routes.get(route_file.name.as_str()).copied(),
        );
        routes.push(Arc::new(route));
    }
    if file.routes.is_empty() {
        warnings.push("routes: the list is empty, so every request gets 404".to_owned());
    }

    if let Some(debounce) = file.reload.debounce {
        if debounce.0 > MAX_WATCH_DEBOUNCE {
            c.error(
                "reload.debounce",
                format!(
                    "invalid debounce \"{}\": must be at most 10s",
                    super::units::format_duration(debounce.0)
                ),
            );
        } else if !file.reload.watch {
            warnings.push("reload.debounce: has no effect without reload.watch: true".to_owned());
        }
    }

    if !c.problems.is_empty() {
        return Err(c.problems);
    }
    warnings.extend(shadowed_routes(&routes));
    let debounce = file.reload.debounce.map_or(DEFAULT_WATCH_DEBOUNCE, |d| d.0);
    let route_index = crate::route_index::RouteIndex::build(&routes);
    Ok(RuntimeConfig {
        route_index,
        watch: file.reload.watch.then_some(debounce),
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
