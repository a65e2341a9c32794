//! The gateway's limits over real loopback sockets: per-route rate limits (429), the
//! per-route in-flight cap (503), the process-wide connection cap and the request body cap
//! (413).
//!
//! Rate-limit windows are fixed and start when the gateway builds its limiters at config
//! load, which happens between spawning the process and `/readyz` returning 200. Tests that
//! depend on where the windows fall take an `Instant` before `Gateway::start` and after it,
//! and derive the window edges that are possible from those two bounds.

mod common;

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    parse_metrics, sample_value, Conn, EchoBackend, Gateway, HttpClient, Request, Response,
    IO_TIMEOUT,
};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Barrier};
use tokio::task::{JoinHandle, JoinSet};

/// Body of every 429 the gateway generates.
const TOO_MANY_REQUESTS_BODY: &str = "429 Too Many Requests\n";

/// Builds a config with a proxy listener, the admin listener, `top_level` (upstreams, limits,
/// server settings, each a complete top-level YAML block) and the `routes` list entries.
fn config(top_level: &str, routes: &str) -> String {
    format!(
        "listen:
  - address: {{listen}}
admin:
  address: {{admin}}
{top_level}routes:
{routes}"
    )
}

/// Returns an `upstreams:` block with one upstream `echo` at `backend`.
fn echo_upstream(backend: &str) -> String {
    format!(
        "upstreams:
  - name: echo
    targets:
      - {{ address: {backend} }}
"
    )
}

/// Sends `request` on `client` and reads the response, returning I/O errors instead of
/// panicking, for exchanges on connections the gateway may close.
async fn exchange(client: &mut HttpClient, request: &Request) -> io::Result<Response> {
    client.send_raw(&request.to_bytes()).await?;
    client.read_response(request.method == "HEAD").await
}

/// Sends `requests` one after another on one keep-alive connection and returns the statuses.
async fn statuses_on_one_connection(gateway: &Gateway, requests: &[Request]) -> Vec<u16> {
    let mut client = gateway.client().await;
    let mut statuses = Vec::with_capacity(requests.len());
    for request in requests {
        statuses.push(client.send(request).await.status);
    }
    statuses
}

/// Parses the `Retry-After` header of a response as whole seconds.
fn retry_after(response: &Response) -> u64 {
    let value = response.header("retry-after").unwrap_or_else(|| {
        panic!(
            "{} response without Retry-After: {response:?}",
            response.status
        )
    });
    value
        .parse()
        .unwrap_or_else(|_| panic!("Retry-After {value:?} is not a number of seconds"))
}

/// Converts a wait into `Retry-After` seconds the way the gateway does: the wait is
/// truncated to whole milliseconds, then rounded up to whole seconds, and is at least 1.
fn retry_after_seconds(wait: Duration) -> u64 {
    (wait.as_millis().div_ceil(1000) as u64).max(1)
}

/// Asserts that the peer closed `client` without sending anything more: end of stream or a
/// reset (the kernel resets a connection closed with unread request bytes).
async fn assert_closed_without_bytes(client: &mut HttpClient, what: &str) {
    match client.read_until_close().await {
        Ok(bytes) => assert!(
            bytes.is_empty(),
            "{what}: expected the connection closed without more bytes, received {:?}",
            String::from_utf8_lossy(&bytes)
        ),
        Err(error) => assert_eq!(
            error.kind(),
            io::ErrorKind::ConnectionReset,
            "{what}: expected end of stream or a reset, got {error}"
        ),
    }
}

/// Fetches `/metrics` once and returns the value of sample `name` with `labels`.
async fn metric(gateway: &Gateway, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    sample_value(&parse_metrics(&gateway.metrics().await), name, labels)
}

// ---------------------------------------------------------------------------
// Rate limits
// ---------------------------------------------------------------------------

/// One request of a paced run: when it was sent and when its response arrived, relative to
/// the instant just before the gateway was spawned, and its status.
#[derive(Clone, Copy, Debug)]
struct TimedStatus {
    sent: Duration,
    received: Duration,
    status: u16,
}

/// The accepted counts that the documented algorithm can produce for one key's `requests`,
/// over every window origin the gateway may have used.
#[derive(Debug)]
struct AcceptedBounds {
    /// Lowest of `sum over windows of min(limit, requests in the window)`.
    lowest: usize,
    /// Highest of the same sum.
    highest: usize,
    /// Maximum number of windows that the run touches, over all origins.
    max_windows_touched: usize,
    /// Minimum number of windows that lie wholly inside the run, over all origins.
    min_full_windows: usize,
}

/// Computes [`AcceptedBounds`] for fixed windows of `window` admitting `limit` requests each,
/// whose origin lies in `origin_earliest..=origin_latest`.
///
/// The gateway checked each request at some instant between `sent` and `received`. For each
/// candidate origin, a request whose interval lies in one window counts there for sure, and
/// one whose interval spans an edge may count in any window it touches. Origins are scanned
/// in 1 ms steps, so every interval is widened by 1 ms on both sides to cover the origins
/// between two steps.
fn accepted_bounds(
    requests: &[TimedStatus],
    limit: usize,
    window: Duration,
    origin_earliest: Duration,
    origin_latest: Duration,
) -> AcceptedBounds {
    let step = Duration::from_millis(1);
    // Windows repeat every `window`, so one period of origins covers all alignments.
    let origin_last = origin_latest.min(origin_earliest + window);
    let first_sent = requests.first().expect("at least one request").sent;
    let last_received = requests.last().expect("at least one request").received;

    let mut bounds = AcceptedBounds {
        lowest: usize::MAX,
        highest: 0,
        max_windows_touched: 0,
        min_full_windows: usize::MAX,
    };
    let window_of = |instant: Duration, origin: Duration| -> u128 {
        instant.saturating_sub(origin).as_nanos() / window.as_nanos()
    };

    let mut origin = origin_earliest;
    while origin <= origin_last {
        // Requests certainly in each window, and requests that may be in it.
        let mut certain: BTreeMap<u128, usize> = BTreeMap::new();
        let mut possible: BTreeMap<u128, usize> = BTreeMap::new();
        for request in requests {
            let first = window_of(request.sent.saturating_sub(step), origin);
            let last = window_of(request.received + step, origin);
            if first == last {
                *certain.entry(first).or_default() += 1;
            }
            for index in first..=last {
                *possible.entry(index).or_default() += 1;
            }
        }
        let lowest: usize = certain.values().map(|&count| count.min(limit)).sum();
        let highest: usize = possible.values().map(|&count| count.min(limit)).sum();

        // A window [origin + k * window, origin + (k + 1) * window] lies inside the run when
        // it starts at or after the first send and ends at or before the last response.
        let full_windows = possible
            .keys()
            .filter(|&&index| {
                let start = origin + window * index as u32;
                start >= first_sent && start + window <= last_received
            })
            .count();

        bounds.lowest = bounds.lowest.min(lowest);
        bounds.highest = bounds.highest.max(highest);
        bounds.max_windows_touched = bounds.max_windows_touched.max(possible.len());
        bounds.min_full_windows = bounds.min_full_windows.min(full_windows);
        origin += step;
    }
    bounds
}

/// A client sending 60 requests/s for about 3 s against `requests: 20, per: 1s` gets exactly
/// what the fixed-window algorithm allows: `min(20, requests in the window)` per window.
///
/// Tolerance: the windows start at config load, somewhere between spawning the gateway and
/// its first ready `/readyz`, and each request was checked somewhere between its send and
/// its response. The expected count is therefore a range over those unknowns, computed by
/// `accepted_bounds`. At 60 requests/s a run of 2.98 s touches 3 or 4 windows, so the
/// accepted count is 60 to 80. The coarser bound, at most 20 per window touched and at least
/// 20 per window wholly inside the run, is checked too.
#[tokio::test(flavor = "multi_thread")]
async fn rate_limit_steady_three_windows() {
    let backend = EchoBackend::start("echo").await;
    let yaml = config(
        &echo_upstream(&backend.address()),
        "  - name: steady
    match: { path_prefix: /steady }
    upstream: echo
    rate_limit: { requests: 20, per: 1s, key: client_ip }
",
    );
    let epoch = Instant::now();
    let gateway = Gateway::start(&yaml).await;
    let ready_at = epoch.elapsed();

    let mut client = gateway.client().await;
    let mut ticks = tokio::time::interval(Duration::from_micros(16_667));
    let mut run = Vec::with_capacity(180);
    for index in 0..180 {
        ticks.tick().await;
        let sent = epoch.elapsed();
        let response = client
            .send(&Request::get(&format!("/steady/{index}")))
            .await;
        let received = epoch.elapsed();
        run.push(TimedStatus {
            sent,
            received,
            status: response.status,
        });
    }

    let unexpected: Vec<(usize, u16)> = run
        .iter()
        .enumerate()
        .filter(|(_, request)| request.status != 200 && request.status != 429)
        .map(|(index, request)| (index, request.status))
        .collect();
    assert!(
        unexpected.is_empty(),
        "every rejection must be 429; (request index, status): {unexpected:?}"
    );

    let accepted = run.iter().filter(|request| request.status == 200).count();
    let bounds = accepted_bounds(&run, 20, Duration::from_secs(1), Duration::ZERO, ready_at);
    let span = run[179].received - run[0].sent;
    eprintln!("steady run: accepted {accepted} of 180 over {span:?}, {bounds:?}");
    assert!(
        bounds.max_windows_touched <= 4,
        "the run lasted {span:?}, so it can touch at most 4 windows of 1 s; bounds {bounds:?}"
    );
    assert!(
        accepted <= 20 * bounds.max_windows_touched,
        "accepted {accepted} of 180, more than 20 per window touched; bounds {bounds:?}"
    );
    assert!(
        accepted >= 20 * bounds.min_full_windows,
        "accepted {accepted} of 180, fewer than 20 per full window; bounds {bounds:?}"
    );
    assert!(
        (bounds.lowest..=bounds.highest).contains(&accepted),
        "accepted {accepted} of 180 over {span:?}, expected {}..={} for windows starting \
         within {ready_at:?} of the spawn; bounds {bounds:?}",
        bounds.lowest,
        bounds.highest
    );

    let rejected = (180 - accepted) as f64;
    assert_eq!(
        gateway
            .wait_for_metric(
                "gatehouse_rate_limited_total",
                &[("route", "steady")],
                rejected
            )
            .await,
        Some(rejected),
        "gatehouse_rate_limited_total{{route=\"steady\"}}"
    );
}

/// Sends 200 GET requests, 10 on each of 20 connections started together, to a route
/// limited to 50 per 60 s, and asserts exactly 50 are admitted.
async fn assert_burst_admits_exactly_limit(threads: usize) {
    let backend = EchoBackend::start("echo").await;
    let top_level = format!(
        "server: {{ threads: {threads} }}\n{}",
        echo_upstream(&backend.address())
    );
    let yaml = config(
        &top_level,
        "  - name: burst
    match: { path_prefix: /burst }
    upstream: echo
    rate_limit: { requests: 50, per: 60s, key: client_ip }
",
    );
    let epoch = Instant::now();
    let gateway = Gateway::start(&yaml).await;

    let mut clients = Vec::with_capacity(20);
    for _ in 0..20 {
        clients.push(gateway.client().await);
    }
    let start_together = Arc::new(Barrier::new(20));
    let mut tasks = JoinSet::new();
    for (connection, mut client) in clients.into_iter().enumerate() {
        let start_together = start_together.clone();
        tasks.spawn(async move {
            start_together.wait().await;
            let mut responses = Vec::with_capacity(10);
            for index in 0..10 {
                let target = format!("/burst/{connection}/{index}");
                responses.push(client.send(&Request::get(&target)).await);
            }
            responses
        });
    }
    let mut responses = Vec::with_capacity(200);
    while let Some(joined) = tasks.join_next().await {
        responses.extend(joined.expect("client task panicked"));
    }

    // The window started at config load, after `epoch`. While less than 60 s have passed
    // since then, every request fell into the first window.
    let elapsed = epoch.elapsed();
    assert!(
        elapsed < Duration::from_secs(60),
        "the burst ended {elapsed:?} after the spawn, so it may have crossed the window edge"
    );

    let accepted = responses.iter().filter(|r| r.status == 200).count();
    let rejected: Vec<&Response> = responses.iter().filter(|r| r.status == 429).collect();
    let other: Vec<u16> = responses
        .iter()
        .map(|r| r.status)
        .filter(|status| *status != 200 && *status != 429)
        .collect();
    assert!(
        other.is_empty(),
        "statuses other than 200 and 429: {other:?}"
    );
    assert_eq!(accepted, 50, "200 responses among 200 concurrent requests");
    assert_eq!(
        rejected.len(),
        150,
        "429 responses among 200 concurrent requests"
    );
    for response in &rejected {
        let seconds = retry_after(response);
        assert!(
            (1..=60).contains(&seconds),
            "Retry-After {seconds} outside 1..=60 for a 60 s window"
        );
    }
    assert_eq!(
        backend.request_count(),
        50,
        "requests that reached the backend"
    );

    assert_eq!(
        gateway
            .wait_for_metric("gatehouse_rate_limited_total", &[("route", "burst")], 150.0)
            .await,
        Some(150.0),
        "gatehouse_rate_limited_total{{route=\"burst\"}}"
    );
    let code_429 = [("route", "burst"), ("method", "GET"), ("code", "429")];
    assert_eq!(
        gateway
            .wait_for_metric("gatehouse_requests_total", &code_429, 150.0)
            .await,
        Some(150.0),
        "gatehouse_requests_total{code_429:?}"
    );
    let code_200 = [("route", "burst"), ("method", "GET"), ("code", "200")];
    assert_eq!(
        gateway
            .wait_for_metric("gatehouse_requests_total", &code_200, 50.0)
            .await,
        Some(50.0),
        "gatehouse_requests_total{code_200:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn burst_admits_exactly_limit() {
    assert_burst_admits_exactly_limit(1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn burst_two_threads_admits_limit() {
    assert_burst_admits_exactly_limit(2).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn header_keys_independent_budgets() {
    let backend = EchoBackend::start("echo").await;
    let yaml = config(
        &echo_upstream(&backend.address()),
        "  - name: keyed
    match: { path_prefix: /keyed }
    upstream: echo
    rate_limit: { requests: 5, per: 60s, key: header:x-api-key }
",
    );
    let gateway = Gateway::start(&yaml).await;

    // Interleaved, so each budget is spent while the others are in use.
    let mut requests = Vec::new();
    for _ in 0..8 {
        requests.push(Request::get("/keyed").header("x-api-key", "A"));
        requests.push(Request::get("/keyed").header("x-api-key", "B"));
        requests.push(Request::get("/keyed"));
    }
    let statuses = statuses_on_one_connection(&gateway, &requests).await;

    let expected = [200, 200, 200, 200, 200, 429, 429, 429];
    let key_a: Vec<u16> = statuses.iter().step_by(3).copied().collect();
    let key_b: Vec<u16> = statuses.iter().skip(1).step_by(3).copied().collect();
    let no_header: Vec<u16> = statuses.iter().skip(2).step_by(3).copied().collect();
    assert_eq!(key_a, expected, "statuses for x-api-key: A");
    assert_eq!(key_b, expected, "statuses for x-api-key: B");
    assert_eq!(
        no_header, expected,
        "statuses without x-api-key, counted by the client address"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn header_key_spelling_address_separate() {
    let backend = EchoBackend::start("echo").await;
    let yaml = config(
        &echo_upstream(&backend.address()),
        "  - name: keyed
    match: { path_prefix: /keyed }
    upstream: echo
    rate_limit: { requests: 2, per: 60s, key: header:x-api-key }
",
    );
    let gateway = Gateway::start(&yaml).await;

    // Requests without the header are counted by the peer address 127.0.0.1, but a header
    // value that spells the same address is a different key.
    let requests = [
        Request::get("/keyed"),
        Request::get("/keyed"),
        Request::get("/keyed"),
        Request::get("/keyed").header("x-api-key", "127.0.0.1"),
        Request::get("/keyed").header("x-api-key", "127.0.0.1"),
        Request::get("/keyed").header("x-api-key", "127.0.0.1"),
    ];
    let statuses = statuses_on_one_connection(&gateway, &requests).await;
    assert_eq!(statuses[..3], [200, 200, 429], "statuses without x-api-key");
    assert_eq!(
        statuses[3..],
        [200, 200, 429],
        "statuses with x-api-key: 127.0.0.1"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limit_recovers_after_retry_after() {
    let backend = EchoBackend::start("echo").await;
    let yaml = config(
        &echo_upstream(&backend.address()),
        "  - name: recover
    match: { path_prefix: /recover }
    upstream: echo
    rate_limit: { requests: 2, per: 1s, key: client_ip }
",
    );
    let gateway = Gateway::start(&yaml).await;
    let mut client = gateway.client().await;

    // The window may end between two of these requests, so send until one is rejected. After
    // a window edge, at most 2 more requests spend the new budget of 2.
    let mut rejection = None;
    for _ in 0..5 {
        let response = client.send(&Request::get("/recover")).await;
        if response.status == 429 {
            rejection = Some((response, Instant::now()));
            break;
        }
        assert_eq!(response.status, 200, "status before the budget is spent");
    }
    let (rejected, rejected_at) = rejection.expect("a 429 within 5 requests with a budget of 2");
    let seconds = retry_after(&rejected);
    assert_eq!(seconds, 1, "Retry-After for a 1 s window");

    // Waiting is the behaviour under test: Retry-After promises that the window has ended
    // once that many seconds have passed since the response.
    tokio::time::sleep_until((rejected_at + Duration::from_secs(seconds)).into()).await;
    let after = client.send(&Request::get("/recover")).await;
    assert_eq!(
        after.status, 200,
        "status of the first request {seconds} s after the 429 (Retry-After: {seconds})"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limit_response_headers() {
    let backend = EchoBackend::start("echo").await;
    let yaml = config(
        &echo_upstream(&backend.address()),
        "  - name: quota
    match: { path_prefix: /quota }
    upstream: echo
    rate_limit: { requests: 2, per: 60s, key: client_ip }
  - name: short-window
    match: { path_prefix: /short }
    upstream: echo
    rate_limit: { requests: 1, per: 1500ms, key: client_ip }
  - name: open
    match: { path_prefix: /open }
    upstream: echo
",
    );
    let epoch = Instant::now();
    let gateway = Gateway::start(&yaml).await;
    let ready_at = epoch.elapsed();

    let mut client = gateway.client().await;
    for index in 0..2 {
        let response = client.send(&Request::get("/quota")).await;
        assert_eq!(
            response.status,
            200,
            "GET /quota number {} status",
            index + 1
        );
    }
    let sent = epoch.elapsed();
    let rejected = client.send(&Request::get("/quota")).await;
    let received = epoch.elapsed();

    assert_eq!(rejected.status, 429, "third GET /quota status");
    assert_eq!(rejected.body_text(), TOO_MANY_REQUESTS_BODY, "429 body");
    // The window ends 60 s after config load, which lies between the spawn and `ready_at`,
    // and the gateway computed the wait between `sent` and `received`.
    let window = Duration::from_secs(60);
    let fewest = retry_after_seconds((window).saturating_sub(received));
    let most = retry_after_seconds((ready_at + window).saturating_sub(sent));
    let seconds = retry_after(&rejected);
    assert!(
        (fewest..=most).contains(&seconds),
        "Retry-After {seconds}, expected {fewest}..={most}: the window ends 60 s after config \
         load, which happened within {ready_at:?} of the spawn"
    );
    assert_eq!(
        rejected.header("ratelimit-policy"),
        Some("\"quota\";q=2;w=60"),
        "RateLimit-Policy"
    );
    assert_eq!(
        rejected.header("ratelimit"),
        Some(format!("\"quota\";r=0;t={seconds}").as_str()),
        "RateLimit"
    );
    assert_ne!(
        rejected.header("connection").map(str::to_ascii_lowercase),
        Some("close".to_string()),
        "a 429 for a request without a body keeps the connection"
    );

    let same_connection = exchange(&mut client, &Request::get("/open")).await;
    let same_connection = same_connection
        .unwrap_or_else(|error| panic!("GET /open on the connection that got a 429: {error}"));
    assert_eq!(
        same_connection.status, 200,
        "GET /open on the connection that got a 429 without a body"
    );

    // A 1.5 s window is announced as 2 s, and the wait is 1 or 2 s.
    let mut short_client = gateway.client().await;
    let mut short_rejection = None;
    for _ in 0..3 {
        let response = short_client.send(&Request::get("/short")).await;
        if response.status == 429 {
            short_rejection = Some(response);
            break;
        }
        assert_eq!(
            response.status, 200,
            "GET /short status before the budget is spent"
        );
    }
    let short_rejected = short_rejection.expect("a 429 within 3 requests with a budget of 1");
    let short_seconds = retry_after(&short_rejected);
    assert!(
        (1..=2).contains(&short_seconds),
        "Retry-After {short_seconds} for a 1.5 s window, expected 1 or 2"
    );
    assert_eq!(
        short_rejected.header("ratelimit-policy"),
        Some("\"short-window\";q=1;w=2"),
        "RateLimit-Policy with the window rounded up to whole seconds"
    );
    assert_eq!(
        short_rejected.header("ratelimit"),
        Some(format!("\"short-window\";r=0;t={short_seconds}").as_str()),
        "RateLimit of the 1.5 s window"
    );

    // A request with a body that is rejected closes the connection, because its body is
    // never read.
    let mut body_client = gateway.client().await;
    let post = Request::new("POST", "/quota").body(b"hello");
    let post_rejected = body_client.send(&post).await;
    assert_eq!(post_rejected.status, 429, "POST /quota with a body status");
    assert_eq!(
        post_rejected
            .header("connection")
            .map(str::to_ascii_lowercase),
        Some("close".to_string()),
        "Connection header of a 429 for a request with a body"
    );
    assert_closed_without_bytes(&mut body_client, "after a 429 for POST with a body").await;

    assert_eq!(
        gateway
            .wait_for_metric("gatehouse_rate_limited_total", &[("route", "quota")], 2.0)
            .await,
        Some(2.0),
        "gatehouse_rate_limited_total{{route=\"quota\"}}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn untrusted_forwarding_headers_ignored() {
    let backend = EchoBackend::start("echo").await;
    let mut routes = String::new();
    for name in ["xff", "real-ip", "forwarded"] {
        routes.push_str(&format!(
            "  - name: {name}
    match: {{ path_prefix: /{name} }}
    upstream: echo
    rate_limit: {{ requests: 3, per: 60s, key: client_ip }}
"
        ));
    }
    let yaml = config(&echo_upstream(&backend.address()), &routes);
    let gateway = Gateway::start(&yaml).await;

    let cases = [
        ("/xff", "X-Forwarded-For"),
        ("/real-ip", "X-Real-IP"),
        ("/forwarded", "Forwarded"),
    ];
    for (path, header) in cases {
        let requests: Vec<Request> = (1..=6)
            .map(|n| {
                let value = if header == "Forwarded" {
                    format!("for=9.9.9.{n}")
                } else {
                    format!("9.9.9.{n}")
                };
                Request::get(path).header(header, &value)
            })
            .collect();
        let statuses = statuses_on_one_connection(&gateway, &requests).await;
        assert_eq!(
            statuses,
            [200, 200, 200, 429, 429, 429],
            "6 requests to {path} with distinct {header} values from an untrusted peer share \
             one budget of 3"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn trusted_proxy_forwarded_for_key() {
    let backend = EchoBackend::start("echo").await;
    let top_level = format!(
        "trusted_proxies: [127.0.0.1]\n{}",
        echo_upstream(&backend.address())
    );
    let yaml = config(
        &top_level,
        "  - name: behind-proxy
    match: { path_prefix: /api }
    upstream: echo
    rate_limit: { requests: 3, per: 60s, key: client_ip }
",
    );
    let gateway = Gateway::start(&yaml).await;

    let clients = ["1.1.1.1", "2.2.2.2", "3.3.3.3"];
    let mut requests = Vec::new();
    for _ in 0..4 {
        for client in clients {
            requests.push(Request::get("/api").header("X-Forwarded-For", client));
        }
    }
    let statuses = statuses_on_one_connection(&gateway, &requests).await;
    for (offset, client) in clients.iter().enumerate() {
        let per_client: Vec<u16> = statuses.iter().skip(offset).step_by(3).copied().collect();
        assert_eq!(
            per_client,
            [200, 200, 200, 429],
            "statuses for X-Forwarded-For: {client} from a trusted peer"
        );
    }

    // A trusted hop appended after the client is skipped, so both spellings are one key.
    let mixed = [
        Request::get("/api").header("X-Forwarded-For", "5.5.5.5"),
        Request::get("/api").header("X-Forwarded-For", "5.5.5.5, 127.0.0.1"),
        Request::get("/api").header("X-Forwarded-For", "5.5.5.5"),
        Request::get("/api").header("X-Forwarded-For", "5.5.5.5, 127.0.0.1"),
    ];
    let statuses = statuses_on_one_connection(&gateway, &mixed).await;
    assert_eq!(
        statuses,
        [200, 200, 200, 429],
        "X-Forwarded-For 5.5.5.5 and \"5.5.5.5, 127.0.0.1\" share the budget of 5.5.5.5"
    );

    // Without X-Forwarded-For the trusted peer itself is the client, and X-Real-IP is
    // ignored.
    let direct: Vec<Request> = (1..=4)
        .map(|n| Request::get("/api").header("X-Real-IP", &format!("8.8.8.{n}")))
        .collect();
    let statuses = statuses_on_one_connection(&gateway, &direct).await;
    assert_eq!(
        statuses,
        [200, 200, 200, 429],
        "requests without X-Forwarded-For and with distinct X-Real-IP values"
    );
}

// ---------------------------------------------------------------------------
// In-flight cap
// ---------------------------------------------------------------------------

/// A backend that keeps every request waiting until `release` is called, then responds 200
/// with body `held\n`. It records the maximum number of requests waiting at once. It reads
/// only request heads, so requests sent to it must have no body.
struct HoldingBackend {
    addr: SocketAddr,
    max_held: Arc<AtomicUsize>,
    arrived: watch::Receiver<usize>,
    release: watch::Sender<bool>,
    accept_task: JoinHandle<()>,
}

impl HoldingBackend {
    async fn start() -> HoldingBackend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind holding backend on 127.0.0.1:0");
        let addr = listener.local_addr().expect("holding backend address");
        let held = Arc::new(AtomicUsize::new(0));
        let max_held = Arc::new(AtomicUsize::new(0));
        let (arrived_sender, arrived) = watch::channel(0usize);
        let arrived_sender = Arc::new(arrived_sender);
        let (release, released) = watch::channel(false);

        let accept_task = tokio::spawn({
            let max_held = max_held.clone();
            async move {
                // Dropping the JoinSet when this task is aborted closes every connection.
                let mut connection_tasks = JoinSet::new();
                while let Ok((stream, _)) = listener.accept().await {
                    let held = held.clone();
                    let max_held = max_held.clone();
                    let arrived = arrived_sender.clone();
                    let released = released.clone();
                    connection_tasks.spawn(async move {
                        let mut conn = Conn::new(stream, None);
                        while let Ok(Some(_head)) = conn.read_head().await {
                            let now_held = held.fetch_add(1, Ordering::SeqCst) + 1;
                            max_held.fetch_max(now_held, Ordering::SeqCst);
                            arrived.send_modify(|count| *count += 1);
                            let mut released = released.clone();
                            let _ = released.wait_for(|released| *released).await;
                            held.fetch_sub(1, Ordering::SeqCst);
                            let response = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nheld\n";
                            if conn.write_all(response).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            }
        });

        HoldingBackend {
            addr,
            max_held,
            arrived,
            release,
            accept_task,
        }
    }

    fn address(&self) -> String {
        self.addr.to_string()
    }

    /// Waits until at least `count` requests have arrived, for at most `IO_TIMEOUT`.
    async fn wait_for_arrivals(&self, count: usize) -> usize {
        let mut arrived = self.arrived.clone();
        let _ = tokio::time::timeout(IO_TIMEOUT, arrived.wait_for(|n| *n >= count)).await;
        let total = *arrived.borrow();
        total
    }

    fn arrivals(&self) -> usize {
        *self.arrived.borrow()
    }

    fn max_held(&self) -> usize {
        self.max_held.load(Ordering::SeqCst)
    }

    /// Lets every held request, and every later one, complete.
    fn release(&self) {
        self.release.send_replace(true);
    }
}

impl Drop for HoldingBackend {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn in_flight_cap_holds_at_backend() {
    let backend = HoldingBackend::start().await;
    let yaml = config(
        &echo_upstream(&backend.address()),
        "  - name: held
    match: { path_prefix: /held }
    upstream: echo
    max_concurrent_requests: 4
",
    );
    let gateway = Gateway::start(&yaml).await;

    let mut clients = Vec::with_capacity(10);
    for _ in 0..10 {
        clients.push(gateway.client().await);
    }
    let (responses, mut completed) = mpsc::unbounded_channel();
    let mut tasks = JoinSet::new();
    for (index, mut client) in clients.into_iter().enumerate() {
        let responses = responses.clone();
        tasks.spawn(async move {
            let response = client.send(&Request::get(&format!("/held/{index}"))).await;
            let _ = responses.send(response);
        });
    }

    // While 4 requests are held at the backend, the other 6 are rejected.
    let mut rejected = Vec::with_capacity(6);
    let deadline = tokio::time::Instant::now() + IO_TIMEOUT;
    while rejected.len() < 6 {
        match tokio::time::timeout_at(deadline, completed.recv()).await {
            Ok(Some(response)) => rejected.push(response),
            Ok(None) => panic!("response channel closed after {} responses", rejected.len()),
            Err(_) => panic!(
                "{} of 6 responses within {IO_TIMEOUT:?} while requests are held; the backend \
                 received {} requests, at most {} at once, with a cap of 4",
                rejected.len(),
                backend.arrivals(),
                backend.max_held()
            ),
        }
    }
    for response in &rejected {
        assert_eq!(response.status, 503, "status beyond the in-flight cap of 4");
        assert_eq!(
            response.body_text(),
            "503 Service Unavailable\n",
            "body of a 503 from the in-flight cap"
        );
        assert_eq!(
            response.header("retry-after"),
            Some("1"),
            "Retry-After of a 503 from the in-flight cap"
        );
    }
    assert_eq!(
        backend.wait_for_arrivals(4).await,
        4,
        "requests held at the backend"
    );
    assert!(
        completed.try_recv().is_err(),
        "a seventh response arrived while 4 requests were held"
    );
    assert_eq!(
        gateway
            .wait_for_metric("gatehouse_requests_in_flight", &[("route", "held")], 4.0)
            .await,
        Some(4.0),
        "gatehouse_requests_in_flight{{route=\"held\"}} while 4 are held"
    );

    backend.release();
    for _ in 0..4 {
        let response = tokio::time::timeout(IO_TIMEOUT, completed.recv())
            .await
            .expect("the held requests complete after release")
            .expect("response channel open");
        assert_eq!(
            response.status, 200,
            "status of a held request after release"
        );
        assert_eq!(response.body_text(), "held\n", "body of a held request");
    }
    while let Some(joined) = tasks.join_next().await {
        joined.expect("client task panicked");
    }

    assert_eq!(
        backend.max_held(),
        4,
        "maximum requests waiting at the backend at once"
    );
    assert_eq!(backend.arrivals(), 4, "requests that reached the backend");
    assert_eq!(
        gateway
            .wait_for_metric("gatehouse_requests_in_flight", &[("route", "held")], 0.0)
            .await,
        Some(0.0),
        "gatehouse_requests_in_flight{{route=\"held\"}} after the held requests completed"
    );
    let code_503 = [("route", "held"), ("method", "GET"), ("code", "503")];
    assert_eq!(
        gateway
            .wait_for_metric("gatehouse_requests_total", &code_503, 6.0)
            .await,
        Some(6.0),
        "gatehouse_requests_total{code_503:?}"
    );

    let after = gateway.get("/held/after").await;
    assert_eq!(after.status, 200, "a request after the held ones completed");
}

// ---------------------------------------------------------------------------
// Connection cap
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn connection_cap_closes_extra_connection() {
    let yaml = config(
        "limits:
  max_connections: 5
",
        "  - name: hello
    match: { path: /hello }
    respond: { status: 200, body: \"hello\\n\" }
",
    );
    let gateway = Gateway::start(&yaml).await;
    let listener = gateway.listen_addr().to_string();
    let gauge_labels = [("listener", listener.as_str())];

    // The readiness probe connects to the proxy listener once. Wait until the gateway has
    // seen that connection close, so that it does not take one of the 5 slots.
    assert_eq!(
        gateway
            .wait_for_metric("gatehouse_downstream_connections", &gauge_labels, 0.0)
            .await,
        Some(0.0),
        "gatehouse_downstream_connections before the test opens connections"
    );

    let mut held = Vec::with_capacity(5);
    for index in 0..5 {
        let mut client = gateway.client().await;
        let response = client.send(&Request::get("/hello")).await;
        assert_eq!(
            response.status,
            200,
            "GET /hello on connection {}",
            index + 1
        );
        held.push(client);
    }

    // The sixth connection is accepted by the kernel, then closed by the gateway before it
    // reads anything. The request write may fail once the gateway has closed it.
    let mut extra = gateway.client().await;
    let _ = extra.send_raw(&Request::get("/hello").to_bytes()).await;
    assert_closed_without_bytes(&mut extra, "sixth connection with max_connections 5").await;

    let rejected = metric(&gateway, "gatehouse_rejected_connections_total", &[]).await;
    assert!(
        rejected.is_some_and(|value| value >= 1.0),
        "gatehouse_rejected_connections_total is {rejected:?}, expected at least 1"
    );
    assert_eq!(
        gateway
            .wait_for_metric("gatehouse_downstream_connections", &gauge_labels, 5.0)
            .await,
        Some(5.0),
        "gatehouse_downstream_connections{{listener=\"{listener}\"}} with 5 connections open"
    );

    // Closing one connection frees its slot once the gateway reads the end of stream.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut attempts = 0;
    let mut replacement = loop {
        attempts += 1;
        let mut client = gateway.client().await;
        if let Ok(response) = exchange(&mut client, &Request::get("/hello")).await {
            assert_eq!(
                response.status, 200,
                "GET /hello on the replacement connection"
            );
            break client;
        }
        assert!(
            Instant::now() < deadline,
            "no new connection admitted within 5 s after one of 5 closed ({attempts} attempts)"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };

    for (index, client) in held.iter_mut().enumerate() {
        let response = exchange(client, &Request::get("/hello")).await;
        let response = response.unwrap_or_else(|error| {
            panic!(
                "second request on held connection {} failed: {error}",
                index + 1
            )
        });
        assert_eq!(
            response.status,
            200,
            "second GET /hello on held connection {}",
            index + 1
        );
    }
    let again = replacement.send(&Request::get("/hello")).await;
    assert_eq!(
        again.status, 200,
        "second GET /hello on the replacement connection"
    );
    assert_eq!(
        gateway
            .wait_for_metric("gatehouse_downstream_connections", &gauge_labels, 5.0)
            .await,
        Some(5.0),
        "gatehouse_downstream_connections after one connection was replaced"
    );
}

// ---------------------------------------------------------------------------
// Request body cap
// ---------------------------------------------------------------------------

/// Starts an echo backend and a gateway with `max_request_body: 1KiB` and route `upload`.
async fn start_body_capped_gateway() -> (Gateway, EchoBackend) {
    let backend = EchoBackend::start("echo").await;
    let top_level = format!(
        "limits:
  max_request_body: 1KiB
{}",
        echo_upstream(&backend.address())
    );
    let yaml = config(
        &top_level,
        "  - name: upload
    match: { path_prefix: /upload }
    upstream: echo
",
    );
    (Gateway::start(&yaml).await, backend)
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_content_length_413_promptly() {
    let (gateway, backend) = start_body_capped_gateway().await;

    let mut client = gateway.client().await;
    let head = "POST /upload HTTP/1.1\r\nHost: gatehouse.test\r\nContent-Length: 10485760\r\n\r\n";
    let started = Instant::now();
    client
        .send_raw(head.as_bytes())
        .await
        .expect("send the request head");
    client
        .send_raw(&[b'x'; 100])
        .await
        .expect("send the first 100 body bytes");
    let response = tokio::time::timeout(Duration::from_secs(2), client.read_response(false))
        .await
        .expect("a response within 2 s, with 100 of 10485760 body bytes sent")
        .expect("a response to a 10 MiB Content-Length");
    let elapsed = started.elapsed();

    assert_eq!(
        response.status, 413,
        "status for Content-Length 10485760 over 1KiB"
    );
    assert_eq!(response.body_text(), "413 Payload Too Large\n", "413 body");
    assert!(elapsed < Duration::from_secs(2), "413 took {elapsed:?}");
    assert_closed_without_bytes(&mut client, "after a 413 for Content-Length 10485760").await;
    assert_eq!(
        backend.connection_count(),
        0,
        "connections the backend accepted"
    );
    assert_eq!(backend.request_count(), 0, "requests the backend received");

    let code_413 = [("route", "upload"), ("method", "POST"), ("code", "413")];
    assert_eq!(
        gateway
            .wait_for_metric("gatehouse_requests_total", &code_413, 1.0)
            .await,
        Some(1.0),
        "gatehouse_requests_total{code_413:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_chunked_body_413() {
    let (gateway, backend) = start_body_capped_gateway().await;

    let mut client = gateway.client().await;
    let head =
        "POST /upload HTTP/1.1\r\nHost: gatehouse.test\r\nTransfer-Encoding: chunked\r\n\r\n";
    client
        .send_raw(head.as_bytes())
        .await
        .expect("send the request head");
    // 8 chunks of 256 bytes: 2 KiB, twice the limit. The gateway may close the connection
    // once it has seen more than 1 KiB, after which writes can fail.
    let mut chunk = b"100\r\n".to_vec();
    chunk.extend_from_slice(&[b'y'; 256]);
    chunk.extend_from_slice(b"\r\n");
    for _ in 0..8 {
        if client.send_raw(&chunk).await.is_err() {
            break;
        }
    }
    let _ = client.send_raw(b"0\r\n\r\n").await;

    // The echo backend responds only after the whole body, so no response has begun when
    // the body grows past the limit.
    let response = client
        .read_response(false)
        .await
        .expect("a response to a 2 KiB chunked body");
    assert_eq!(
        response.status, 413,
        "status for a 2 KiB chunked body over 1KiB"
    );
    assert_eq!(response.body_text(), "413 Payload Too Large\n", "413 body");
    assert_closed_without_bytes(&mut client, "after a 413 for a chunked body").await;
    assert_eq!(
        backend.request_count(),
        0,
        "complete requests the backend received"
    );

    let code_413 = [("route", "upload"), ("method", "POST"), ("code", "413")];
    assert_eq!(
        gateway
            .wait_for_metric("gatehouse_requests_total", &code_413, 1.0)
            .await,
        Some(1.0),
        "gatehouse_requests_total{code_413:?}"
    );
}

// ---------------------------------------------------------------------------
// Memory
// ---------------------------------------------------------------------------

/// Finds the pid of the gateway process by its command line, which names the config file
/// that the harness wrote into a fresh temporary directory.
fn gateway_pid(gateway: &Gateway) -> u32 {
    let config_path = gateway.config_path().as_os_str().as_bytes();
    let entries = std::fs::read_dir("/proc").expect("read /proc");
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
        else {
            continue;
        };
        // A process may exit between listing and reading, so a failed read is skipped.
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if cmdline
            .split(|&byte| byte == 0)
            .any(|arg| arg == config_path)
        {
            return pid;
        }
    }
    panic!(
        "no process in /proc has {:?} on its command line",
        gateway.config_path()
    );
}

/// Reads the resident set size of process `pid` from `/proc/PID/status`, in bytes.
fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|error| panic!("read /proc/{pid}/status: {error}"));
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .unwrap_or_else(|| panic!("no VmRSS line in /proc/{pid}/status"));
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("invalid VmRSS line {line:?}"));
    kib * 1024
}

/// 100,000 distinct keys do not grow the gateway's memory beyond a fixed amount.
///
/// The limiter is a count-min sketch of fixed size: 3 window slots of 4 rows of 16,384
/// 8-byte counters, 512 KiB each, so 1.5 MiB per route however many keys there are, all of
/// it allocated and written when the config loads. Memory is measured after a warm-up on the
/// same connections, so the 4 MiB allowance only has to cover allocator noise; a limiter that
/// stored every key in a map would need an estimated 5 to 15 MiB for these keys. The route
/// responds directly, so no upstream work slows the run.
#[tokio::test(flavor = "multi_thread")]
async fn distinct_keys_memory_bounded() {
    const TOTAL: usize = 100_000;
    const CONNECTIONS: usize = 16;
    const WARM_UP_PER_CONNECTION: usize = 50;

    let yaml = config(
        "",
        "  - name: many-keys
    match: { path: /key }
    respond: { status: 200, body: \"ok\\n\" }
    rate_limit: { requests: 1000000, per: 60s, key: header:x-key }
",
    );
    let gateway = Gateway::start(&yaml).await;
    let pid = gateway_pid(&gateway);

    // Warm up: open the connections and send a few requests on each with keys of another
    // range, so connection buffers and allocator arenas are in place before measuring.
    let mut clients = Vec::with_capacity(CONNECTIONS);
    for connection in 0..CONNECTIONS {
        let mut client = gateway.client().await;
        for round in 0..WARM_UP_PER_CONNECTION {
            let key = format!("warm-{connection}-{round}");
            let response = client
                .send(&Request::get("/key").header("x-key", &key))
                .await;
            assert_eq!(response.status, 200, "warm-up request status");
        }
        clients.push(client);
    }
    let before = resident_bytes(pid);

    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for (connection, mut client) in clients.into_iter().enumerate() {
        tasks.spawn(async move {
            let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
            for index in (connection..TOTAL).step_by(CONNECTIONS) {
                let request = Request::get("/key").header("x-key", &format!("key-{index}"));
                *statuses
                    .entry(client.send(&request).await.status)
                    .or_default() += 1;
            }
            statuses
        });
    }
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    while let Some(joined) = tasks.join_next().await {
        for (status, count) in joined.expect("client task panicked") {
            *statuses.entry(status).or_default() += count;
        }
    }
    let elapsed = started.elapsed();
    let after = resident_bytes(pid);
    eprintln!(
        "{TOTAL} requests with distinct keys over {CONNECTIONS} connections took {elapsed:?}; \
         gateway RSS {before} -> {after} bytes"
    );

    assert_eq!(
        statuses.get(&200).copied().unwrap_or(0),
        TOTAL,
        "200 responses for {TOTAL} distinct keys under a limit of 1000000; statuses {statuses:?}"
    );
    let growth = after.saturating_sub(before);
    assert!(
        growth < 4 * 1024 * 1024,
        "gateway RSS grew by {growth} bytes ({before} -> {after}) over {TOTAL} distinct keys, \
         expected less than 4 MiB"
    );
}
