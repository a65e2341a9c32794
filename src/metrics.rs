//! Prometheus metrics. Every label value comes from the config (route and upstream names) or
//! from a fixed set (methods, status codes, error kinds), so no request can add a series.

use prometheus::{
    exponential_buckets, Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::{OnceLock, RwLock};

pub struct Metrics {
    pub registry: Registry,
    pub requests_total: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_duration: HistogramVec,
    pub upstream_errors_total: IntCounterVec,
    pub received_bytes_total: IntCounterVec,
    pub sent_bytes_total: IntCounterVec,
    pub rate_limited_total: IntCounterVec,
    pub requests_in_flight: IntGaugeVec,
    pub downstream_connections: IntGaugeVec,
    pub rejected_connections_total: IntCounter,
    pub config_reloads_total: IntCounterVec,
    pub config_last_reload_success: Gauge,
    pub timeouts_total: IntCounterVec,
    pub client_disconnects_total: IntCounterVec,
    pub upstream_target_healthy: IntGaugeVec,
    pub health_checks_total: IntCounterVec,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: T) -> T {
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique");
    metric
}

impl Metrics {
    fn new() -> Self {
        let registry = Registry::new();
        // 0.5 ms to about 33 s, doubling: covers both the gateway's own overhead and slow
        // upstream responses.
        let buckets = exponential_buckets(0.0005, 2.0, 17).expect("valid buckets");
        Metrics {
            requests_total: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "gatehouse_requests_total",
                        "Requests handled, by route, method and status code.",
                    ),
                    &["route", "method", "code"],
                )
                .expect("valid metric"),
            ),
            request_duration: register(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "gatehouse_request_duration_seconds",
                        "Time from the request's arrival to the end of its response.",
                    )
                    .buckets(buckets.clone()),
                    &["route"],
                )
                .expect("valid metric"),
            ),
            upstream_duration: register(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "gatehouse_upstream_duration_seconds",
                        "Time from sending the request upstream to receiving the response header.",
                    )
                    .buckets(buckets),
                    &["route", "upstream"],
                )
                .expect("valid metric"),
            ),
            upstream_errors_total: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "gatehouse_upstream_errors_total",
                        "Failed upstream attempts, by kind.",
                    ),
                    &["upstream", "kind"],
                )
                .expect("valid metric"),
            ),
            received_bytes_total: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "gatehouse_received_bytes_total",
                        "Request body bytes received from clients.",
                    ),
                    &["route"],
                )
                .expect("valid metric"),
            ),
            sent_bytes_total: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "gatehouse_sent_bytes_total",
                        "Response body bytes sent to clients.",
                    ),
                    &["route"],
                )
                .expect("valid metric"),
            ),
            rate_limited_total: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "gatehouse_rate_limited_total",
                        "Requests rejected with 429 by a route's rate limit.",
                    ),
                    &["route"],
                )
                .expect("valid metric"),
            ),
            upstream_target_healthy: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "gatehouse_upstream_target_healthy",
                        "1 while a target receives traffic, 0 while its health check marks it \
                         unhealthy.",
                    ),
                    &["upstream", "target"],
                )
                .expect("valid metric"),
            ),
            health_checks_total: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "gatehouse_health_checks_total",
                        "Active health checks sent to upstream targets, by result.",
                    ),
                    &["upstream", "result"],
                )
                .expect("valid metric"),
            ),
            requests_in_flight: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "gatehouse_requests_in_flight",
                        "Requests being handled, by route.",
                    ),
                    &["route"],
                )
                .expect("valid metric"),
            ),
            downstream_connections: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "gatehouse_downstream_connections",
                        "Client connections held open, by listener.",
                    ),
                    &["listener"],
                )
                .expect("valid metric"),
            ),
            rejected_connections_total: register(
                &registry,
                IntCounter::new(
                    "gatehouse_rejected_connections_total",
                    "Client connections closed at once because limits.max_connections was reached.",
                )
                .expect("valid metric"),
            ),
            config_reloads_total: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "gatehouse_config_reloads_total",
                        "Config reloads, by result.",
                    ),
                    &["result"],
                )
                .expect("valid metric"),
            ),
            config_last_reload_success: register(
                &registry,
                Gauge::new(
                    "gatehouse_config_last_reload_success_timestamp_seconds",
                    "Unix time of the last successful config load (the start counts as one).",
                )
                .expect("valid metric"),
            ),
            timeouts_total: register(
                &registry,
                IntCounterVec::new(
                    Opts::new("gatehouse_timeouts_total", "Requests ended by a timeout, by route and timeout."),
                    &["route", "kind"],
                )
                .expect("valid metric"),
            ),
            client_disconnects_total: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "gatehouse_client_disconnects_total",
                        "Requests whose client went away before the response was complete (logged as 499).",
                    ),
                    &["route"],
                )
                .expect("valid metric"),
            ),
            registry,
        }
    }

    /// Renders every metric in the Prometheus text format.
    pub fn render(&self) -> Vec<u8> {
        let mut buffer = Vec::with_capacity(16 * 1024);
        let encoder = TextEncoder::new();
        // A Vec has no I/O to fail, so an error here means an invalid metric; it is logged.
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(error = %e, "failed to encode metrics");
        }
        buffer
    }
}

/// Returns the process-wide metrics, creating them on first use.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// Maps a request method to a bounded label value: the standard methods, else `OTHER`.
pub fn method_label(method: &http::Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "CONNECT" => "CONNECT",
        "OPTIONS" => "OPTIONS",
        "TRACE" => "TRACE",
        "PATCH" => "PATCH",
        _ => "OTHER",
    }
}

/// Maps a status code to a label value without allocating for the common codes.
pub fn code_label(code: u16) -> std::borrow::Cow<'static, str> {
    const COMMON: [(u16, &str); 16] = [
        (200, "200"),
        (201, "201"),
        (204, "204"),
        (301, "301"),
        (302, "302"),
        (304, "304"),
        (400, "400"),
        (401, "401"),
        (403, "403"),
        (404, "404"),
        (408, "408"),
        (429, "429"),
        (499, "499"),
        (502, "502"),
        (503, "503"),
        (504, "504"),
    ];
    match COMMON.iter().find(|(c, _)| *c == code) {
        Some((_, label)) => std::borrow::Cow::Borrowed(label),
        None => std::borrow::Cow::Owned(code.to_string()),
    }
}

/// The per-request series of one route, looked up by label on the route's first request and
/// then used directly, so that recording a request takes no label hashing.
#[derive(Debug)]
pub struct RouteSeries {
    route: String,
    request_duration: Histogram,
    received_bytes: IntCounter,
    sent_bytes: IntCounter,
    /// For a proxy route, its `gatehouse_upstream_duration_seconds` series.
    upstream_duration: Option<Histogram>,
    /// `gatehouse_requests_total` series by method and status code, added as they occur.
    requests: RwLock<Vec<(&'static str, u16, IntCounter)>>,
}

/// The max number of (method, code) series a route keeps. Further pairs are looked up by
/// label on every request. Routes get few distinct pairs, so the list is searched in order.
const KEPT_REQUEST_SERIES: usize = 32;

/// The measurements of one finished request, recorded into the metrics.
pub struct RequestRecord {
    pub method: &'static str,
    pub status: u16,
    pub duration_s: f64,
    pub received_bytes: u64,
    pub sent_bytes: u64,
    pub upstream_duration_s: Option<f64>,
}

impl RouteSeries {
    pub fn new(route: &str, upstream: Option<&str>) -> Self {
        let m = metrics();
        RouteSeries {
            route: route.to_owned(),
            request_duration: m.request_duration.with_label_values(&[route]),
            received_bytes: m.received_bytes_total.with_label_values(&[route]),
            sent_bytes: m.sent_bytes_total.with_label_values(&[route]),
            upstream_duration: upstream
                .map(|upstream| m.upstream_duration.with_label_values(&[route, upstream])),
            requests: RwLock::new(Vec::new()),
        }
    }

    /// Records one finished request of this route.
    pub fn record(&self, request: &RequestRecord) {
        self.count_request(request.method, request.status);
        self.request_duration.observe(request.duration_s);
        self.received_bytes.inc_by(request.received_bytes);
        self.sent_bytes.inc_by(request.sent_bytes);
        if let (Some(series), Some(seconds)) =
            (&self.upstream_duration, request.upstream_duration_s)
        {
            series.observe(seconds);
        }
    }

    fn count_request(&self, method: &'static str, status: u16) {
        let read = self.requests.read().unwrap_or_else(|p| p.into_inner());
        if let Some(counter) = kept_counter(&read, method, status) {
            counter.inc();
            return;
        }
        drop(read);

        let counter = metrics().requests_total.with_label_values(&[
            self.route.as_str(),
            method,
            &code_label(status),
        ]);
        counter.inc();
        let mut kept = self.requests.write().unwrap_or_else(|p| p.into_inner());
        if kept_counter(&kept, method, status).is_none() && kept.len() < KEPT_REQUEST_SERIES {
            kept.push((method, status, counter));
        }
    }
}

/// Returns the kept `gatehouse_requests_total` series of `method` and `status`, if any.
fn kept_counter<'a>(
    kept: &'a [(&'static str, u16, IntCounter)],
    method: &str,
    status: u16,
) -> Option<&'a IntCounter> {
    kept.iter()
        .find(|(m, code, _)| *code == status && *m == method)
        .map(|(_, _, counter)| counter)
}

/// Records a finished request that matched no route, under the route label "".
pub fn record_unrouted(request: &RequestRecord) {
    static UNROUTED: OnceLock<RouteSeries> = OnceLock::new();
    UNROUTED
        .get_or_init(|| RouteSeries::new("", None))
        .record(request);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &'static str, status: u16) -> RequestRecord {
        RequestRecord {
            method,
            status,
            duration_s: 0.25,
            received_bytes: 10,
            sent_bytes: 100,
            upstream_duration_s: Some(0.125),
        }
    }

    fn requests_total(route: &str, method: &str, code: &str) -> u64 {
        metrics()
            .requests_total
            .with_label_values(&[route, method, code])
            .get()
    }

    #[test]
    fn route_series_count_each_method_and_code() {
        let series = RouteSeries::new("series-test", Some("series-upstream"));
        series.record(&request("GET", 200));
        series.record(&request("GET", 200));
        series.record(&request("POST", 200));
        series.record(&request("GET", 404));
        // More pairs than the route keeps at hand: these are counted by label lookup.
        for status in 200..(200 + KEPT_REQUEST_SERIES as u16 + 8) {
            series.record(&request("PUT", status));
        }
        series.record(&request("PUT", 239));
        assert_eq!(requests_total("series-test", "GET", "200"), 2);
        assert_eq!(requests_total("series-test", "POST", "200"), 1);
        assert_eq!(requests_total("series-test", "GET", "404"), 1);
        assert_eq!(requests_total("series-test", "PUT", "200"), 1);
        assert_eq!(requests_total("series-test", "PUT", "239"), 2);
        let m = metrics();
        let requests = 4 + KEPT_REQUEST_SERIES as u64 + 8 + 1;
        let duration = m.request_duration.with_label_values(&["series-test"]);
        assert_eq!(duration.get_sample_count(), requests);
        assert_eq!(duration.get_sample_sum(), 0.25 * requests as f64);
        let received = m.received_bytes_total.with_label_values(&["series-test"]);
        assert_eq!(received.get(), 10 * requests);
        let sent = m.sent_bytes_total.with_label_values(&["series-test"]);
        assert_eq!(sent.get(), 100 * requests);
        let upstream = m
            .upstream_duration
            .with_label_values(&["series-test", "series-upstream"]);
        assert_eq!(upstream.get_sample_count(), requests);
    }
}
