//! The admin listener: health endpoints, Prometheus metrics and label cardinality.

mod common;

use std::collections::BTreeSet;

use common::{find_samples, get, parse_metrics, sample_value, EchoBackend, Gateway, Request};
use rand::Rng;

/// Starts an echo backend and a gateway with route `users` (`/users` prefix) to it.
async fn start_users_gateway() -> (Gateway, EchoBackend) {
    let backend = EchoBackend::start("users").await;
    let yaml = format!(
        "listen:
  - address: {{listen}}
admin:
  address: {{admin}}
upstreams:
  - name: users
    targets:
      - {{ address: {address} }}
routes:
  - name: users
    match: {{ path_prefix: /users }}
    upstream: users
",
        address = backend.address(),
    );
    let gateway = Gateway::start(&yaml).await;
    (gateway, backend)
}

#[tokio::test(flavor = "multi_thread")]
async fn health_endpoints_ok() {
    let (gateway, _backend) = start_users_gateway().await;

    assert_eq!(
        get(gateway.admin_addr(), "/healthz").await.status,
        200,
        "GET /healthz"
    );
    assert_eq!(
        get(gateway.admin_addr(), "/readyz").await.status,
        200,
        "GET /readyz"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_unknown_path_404() {
    let (gateway, backend) = start_users_gateway().await;

    assert_eq!(
        get(gateway.admin_addr(), "/nope").await.status,
        404,
        "GET /nope on admin"
    );
    assert_eq!(
        get(gateway.admin_addr(), "/users/1").await.status,
        404,
        "the proxied route /users is not served on the admin listener"
    );
    assert_eq!(
        backend.request_count(),
        0,
        "no admin request reaches the upstream"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_paths_not_on_proxy_listener() {
    let (gateway, _backend) = start_users_gateway().await;

    let response = gateway.get("/metrics").await;
    assert_eq!(
        response.status, 404,
        "GET /metrics on the proxy listener matches no route"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_total_counts_requests() {
    let (gateway, _backend) = start_users_gateway().await;

    for index in 0..3 {
        let response = gateway.get(&format!("/users/{index}")).await;
        assert_eq!(response.status, 200, "GET /users/{index} status");
    }
    let not_found = gateway.get("/elsewhere").await;
    assert_eq!(not_found.status, 404, "GET /elsewhere status");

    let users_labels = [("route", "users"), ("method", "GET"), ("code", "200")];
    let users_count = gateway
        .wait_for_metric("gatehouse_requests_total", &users_labels, 3.0)
        .await;
    assert_eq!(
        users_count,
        Some(3.0),
        "gatehouse_requests_total for {users_labels:?}"
    );

    let unmatched_labels = [("route", ""), ("method", "GET"), ("code", "404")];
    let unmatched_count = gateway
        .wait_for_metric("gatehouse_requests_total", &unmatched_labels, 1.0)
        .await;
    assert_eq!(
        unmatched_count,
        Some(1.0),
        "gatehouse_requests_total for {unmatched_labels:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn request_duration_histogram() {
    let (gateway, _backend) = start_users_gateway().await;

    for index in 0..2 {
        let response = gateway.get(&format!("/users/{index}")).await;
        assert_eq!(response.status, 200, "GET /users/{index} status");
    }

    let count = gateway
        .wait_for_metric(
            "gatehouse_request_duration_seconds_count",
            &[("route", "users")],
            2.0,
        )
        .await;
    assert_eq!(
        count,
        Some(2.0),
        "gatehouse_request_duration_seconds_count for route users"
    );

    let samples = parse_metrics(&gateway.metrics().await);
    let buckets = find_samples(
        &samples,
        "gatehouse_request_duration_seconds_bucket",
        &[("route", "users")],
    );
    assert!(
        !buckets.is_empty(),
        "gatehouse_request_duration_seconds_bucket has series for route users"
    );
    assert_eq!(
        sample_value(
            &samples,
            "gatehouse_request_duration_seconds_bucket",
            &[("route", "users"), ("le", "+Inf")],
        ),
        Some(2.0),
        "the +Inf bucket counts both requests"
    );
    assert!(
        sample_value(
            &samples,
            "gatehouse_request_duration_seconds_sum",
            &[("route", "users")]
        )
        .is_some(),
        "gatehouse_request_duration_seconds_sum exists for route users"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn label_cardinality_bounded() {
    let (gateway, _backend) = start_users_gateway().await;

    // 200 requests with random paths, hosts and methods. Generated before any await, because
    // the thread-local generator cannot be held across one.
    let requests: Vec<Request> = {
        let mut rng = rand::thread_rng();
        (0..200)
            .map(|index| {
                let method = match index % 3 {
                    0 => "GET".to_string(),
                    1 => format!("FOO{}", rng.gen_range(0..1_000_000)),
                    _ => format!("X{:x}", rng.gen::<u32>()),
                };
                let path = if index % 4 == 0 {
                    format!("/users/{}", rng.gen::<u32>())
                } else {
                    format!("/r{}/{}", rng.gen::<u32>(), rng.gen::<u32>())
                };
                let host = format!("h{}.example.test", rng.gen::<u32>());
                Request::new(&method, &path).host(&host)
            })
            .collect()
    };
    for request in &requests {
        let response = gateway.send(request).await;
        assert!(
            response.status == 200 || response.status == 404,
            "{} {} got {}",
            request.method,
            request.target,
            response.status
        );
    }

    // Wait until every request has been counted, then inspect the series.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let samples = loop {
        let samples = parse_metrics(&gateway.metrics().await);
        let total: f64 = find_samples(&samples, "gatehouse_requests_total", &[])
            .iter()
            .map(|sample| sample.value)
            .sum();
        if total >= 200.0 || std::time::Instant::now() >= deadline {
            assert_eq!(
                total, 200.0,
                "gatehouse_requests_total sums to the requests sent"
            );
            break samples;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };

    let series = find_samples(&samples, "gatehouse_requests_total", &[]);
    // Routes users and "", methods GET and OTHER, codes 200 and 404 give at most 8 series.
    assert!(
        series.len() <= 8,
        "gatehouse_requests_total has {} series, expected at most 8: {series:?}",
        series.len()
    );

    let methods: BTreeSet<&str> = series
        .iter()
        .filter_map(|sample| sample.labels.get("method").map(String::as_str))
        .collect();
    assert_eq!(
        methods,
        BTreeSet::from(["GET", "OTHER"]),
        "unknown methods collapse into OTHER"
    );

    let routes: BTreeSet<&str> = series
        .iter()
        .filter_map(|sample| sample.labels.get("route").map(String::as_str))
        .collect();
    assert_eq!(
        routes,
        BTreeSet::from(["", "users"]),
        "route labels are route names or empty"
    );

    for request in &requests {
        let host = request
            .headers
            .iter()
            .find(|(name, _)| name == "Host")
            .map(|(_, value)| value.as_str())
            .unwrap_or_default();
        assert!(
            samples
                .iter()
                .all(|sample| sample.labels.values().all(|value| value != host)),
            "no label value is the client host {host:?}"
        );
        assert!(
            samples
                .iter()
                .all(|sample| sample.labels.values().all(|value| value != &request.target)),
            "no label value is the request path {:?}",
            request.target
        );
    }
}
