//! Prometheus metrics. Every label value comes from the config (route and upstream names) or
//! from a fixed set (methods, status codes, error kinds), so no request can add a series.

use prometheus::{
    exponential_buckets, Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::OnceLock;

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
