//! Load balancing across upstream targets and upstream connection reuse.

mod common;

use common::{EchoBackend, Gateway, Request};

/// Starts a gateway with `threads` worker threads and one route `/` to upstream `pool`,
/// whose `balance` and two targets (with weights) are given.
async fn start_pool(
    threads: usize,
    balance: &str,
    first: (&EchoBackend, u32),
    second: (&EchoBackend, u32),
) -> Gateway {
    let yaml = format!(
        "listen:
  - address: {{listen}}
admin:
  address: {{admin}}
server:
  threads: {threads}
upstreams:
  - name: pool
    balance: {balance}
    targets:
      - {{ address: {first_address}, weight: {first_weight} }}
      - {{ address: {second_address}, weight: {second_weight} }}
routes:
  - name: all
    match: {{ path_prefix: / }}
    upstream: pool
",
        first_address = first.0.address(),
        first_weight = first.1,
        second_address = second.0.address(),
        second_weight = second.1,
    );
    Gateway::start(&yaml).await
}

/// Sends `count` sequential GET requests on one client connection, each expecting 200.
async fn send_sequential(gateway: &Gateway, count: usize) {
    let mut client = gateway.client().await;
    for index in 0..count {
        let response = client.send(&Request::get(&format!("/item/{index}"))).await;
        assert_eq!(response.status, 200, "request {index} status");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn round_robin_weighted_split() {
    let heavy = EchoBackend::start("heavy").await;
    let light = EchoBackend::start("light").await;
    let gateway = start_pool(2, "round_robin", (&heavy, 3), (&light, 1)).await;

    send_sequential(&gateway, 400).await;

    // Weights 3:1 give an expected 300/100 split. Tolerance: 2 % of the 400 requests, so
    // 292..=308 and 92..=108.
    let heavy_count = heavy.request_count();
    let light_count = light.request_count();
    assert!(
        (292..=308).contains(&heavy_count),
        "weight-3 target received {heavy_count} of 400, expected 300 ± 8"
    );
    assert!(
        (92..=108).contains(&light_count),
        "weight-1 target received {light_count} of 400, expected 100 ± 8"
    );
    assert_eq!(
        heavy_count + light_count,
        400,
        "every request reached one target"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn random_equal_split() {
    let first = EchoBackend::start("first").await;
    let second = EchoBackend::start("second").await;
    let gateway = start_pool(2, "random", (&first, 1), (&second, 1)).await;

    send_sequential(&gateway, 2000).await;

    // Expected 1000 each. Tolerance: 5 % of 2000 (900..=1100), about 4.5 standard deviations
    // of a fair binomial split, so a correct balancer fails this in an estimated 1 of 10^5 runs.
    let first_count = first.request_count();
    let second_count = second.request_count();
    assert!(
        (900..=1100).contains(&first_count),
        "first target received {first_count} of 2000, expected 1000 ± 100"
    );
    assert!(
        (900..=1100).contains(&second_count),
        "second target received {second_count} of 2000, expected 1000 ± 100"
    );
    assert_eq!(
        first_count + second_count,
        2000,
        "every request reached one target"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn keepalive_reuses_upstream_connections() {
    let backend = EchoBackend::start("only").await;
    let yaml = format!(
        "listen:
  - address: {{listen}}
admin:
  address: {{admin}}
upstreams:
  - name: only
    targets:
      - {{ address: {address} }}
routes:
  - name: all
    match: {{ path_prefix: / }}
    upstream: only
",
        address = backend.address(),
    );
    let gateway = Gateway::start(&yaml).await;

    send_sequential(&gateway, 50).await;

    assert_eq!(
        backend.request_count(),
        50,
        "the backend received every request"
    );
    let connections = backend.connection_count();
    assert!(
        connections <= 2,
        "50 sequential requests opened {connections} upstream connections, expected at most 2"
    );
}
