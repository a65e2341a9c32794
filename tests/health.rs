//! Active health checks, and the state that a reload carries over: target health and
//! rate-limit counters.

mod common;

use common::*;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A backend whose `/health` returns a status the test sets, and every other path
/// returns 200 and the backend's name. Each connection serves one request.
struct SwitchableBackend {
    addr: SocketAddr,
    health_status: Arc<AtomicU16>,
    task: JoinHandle<()>,
}

impl SwitchableBackend {
    async fn start(name: &'static str, health_status: u16) -> SwitchableBackend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().expect("backend address");
        let status = Arc::new(AtomicU16::new(health_status));
        let shared = status.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let status = shared.clone();
                tokio::spawn(async move {
                    let mut conn = Conn::new(stream, Some(IO_TIMEOUT));
                    let Ok(Some(head)) = conn.read_head().await else {
                        return;
                    };
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let (code, body) = if head.starts_with("GET /health ") {
                        (status.load(Ordering::SeqCst), "health".to_owned())
                    } else {
                        (200, name.to_owned())
                    };
                    let response = format!(
                        "HTTP/1.1 {code} Status\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = conn.write_all(response.as_bytes()).await;
                });
            }
        });
        SwitchableBackend {
            addr,
            health_status: status,
            task,
        }
    }

    fn set_health(&self, status: u16) {
        self.health_status.store(status, Ordering::SeqCst);
    }
}

impl Drop for SwitchableBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn config(targets: &[&SwitchableBackend], health_check: &str, extra_routes: &str) -> String {
    let targets: Vec<String> = targets
        .iter()
        .map(|b| format!("{{ address: \"{}\" }}", b.addr))
        .collect();
    format!(
        r#"
listen:
  - address: "{{listen}}"
admin:
  address: "{{admin}}"
upstreams:
  - name: app
    targets: [{}]
    health_check: {health_check}
routes:
  - name: app
    match: {{ path_prefix: /app }}
    upstream: app
{extra_routes}"#,
        targets.join(", ")
    )
}

/// Waits until the health gauge of `target` equals `expected`, for at most 5 s, and returns
/// how long that took.
async fn wait_for_health(gateway: &Gateway, target: SocketAddr, expected: f64) -> Duration {
    let started = Instant::now();
    let target = target.to_string();
    let value = gateway
        .wait_for_metric(
            "gatehouse_upstream_target_healthy",
            &[("upstream", "app"), ("target", target.as_str())],
            expected,
        )
        .await;
    assert_eq!(
        value,
        Some(expected),
        "health gauge of {target}\nstderr:\n{}",
        gateway.stderr()
    );
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread")]
async fn unhealthy_target_gets_no_traffic() {
    let good = SwitchableBackend::start("good", 200).await;
    let sick = SwitchableBackend::start("sick", 500).await;
    let gateway = Gateway::start(&config(
        &[&good, &sick],
        "{ path: /health, interval: 100ms, timeout: 100ms, unhealthy: 2, healthy: 2 }",
        "",
    ))
    .await;

    // Two failed checks 100 ms apart; tolerance 1 s for scheduling and the metrics poll.
    let took = wait_for_health(&gateway, sick.addr, 0.0).await;
    assert!(
        took < Duration::from_secs(1),
        "marked unhealthy after {took:?}"
    );
    wait_for_health(&gateway, good.addr, 1.0).await;
    for i in 0..20 {
        let response = gateway.get(&format!("/app/{i}")).await;
        assert_eq!(response.status, 200, "request {i} status");
        assert_eq!(
            response.body_text(),
            "good",
            "request {i} goes to the healthy target"
        );
    }
    let metrics = parse_metrics(&gateway.metrics().await);
    let failed = sample_value(
        &metrics,
        "gatehouse_health_checks_total",
        &[("upstream", "app"), ("result", "failure")],
    )
    .unwrap_or(0.0);
    assert!(failed >= 2.0, "failed checks counted: {failed}");
    assert!(
        gateway.wait_for_stderr("target marked unhealthy").await,
        "the change is logged:\n{}",
        gateway.stderr()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_healthy_target_gives_503_until_recovery() {
    let only = SwitchableBackend::start("only", 200).await;
    let gateway = Gateway::start(&config(
        &[&only],
        "{ path: /health, interval: 100ms, timeout: 100ms, unhealthy: 1, healthy: 2 }",
        "",
    ))
    .await;
    assert_eq!(gateway.get("/app/x").await.status, 200, "healthy at first");

    only.set_health(503);
    wait_for_health(&gateway, only.addr, 0.0).await;
    let response = gateway.get("/app/x").await;
    assert_eq!(response.status, 503, "no healthy target");
    assert!(
        response.header("x-request-id").is_some(),
        "the 503 carries X-Request-Id"
    );
    assert!(
        !gateway.stderr().contains("Fail to proxy"),
        "a 503 for a down upstream is not logged as an error per request:\n{}",
        gateway.stderr()
    );

    only.set_health(200);
    wait_for_health(&gateway, only.addr, 1.0).await;
    let response = gateway.get("/app/x").await;
    assert_eq!(response.status, 200, "traffic again after recovery");
    assert_eq!(response.body_text(), "only", "recovered body");
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_keeps_target_health() {
    let sick = SwitchableBackend::start("sick", 500).await;
    let checks = "{ path: /health, interval: 200ms, timeout: 200ms, unhealthy: 3, healthy: 3 }";
    let gateway = Gateway::start(&config(&[&sick], checks, "")).await;
    wait_for_health(&gateway, sick.addr, 0.0).await;

    // A target whose health restarted would be healthy again for three checks, 400 ms.
    let extra = "  - name: other\n    match: { path: /other }\n    respond: { status: 200 }\n";
    gateway.write_config(&config(&[&sick], checks, extra));
    gateway.signal(libc::SIGHUP);
    let reloads = gateway.wait_for_reloads("success", 1).await;
    assert_eq!(reloads, Some(1.0), "the reload happened");
    assert_eq!(
        gateway.get("/other").await.status,
        200,
        "the new route serves"
    );
    assert_eq!(
        gateway.get("/app/x").await.status,
        503,
        "the target is still unhealthy right after the reload"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn removed_target_is_no_longer_checked() {
    let kept = SwitchableBackend::start("kept", 200).await;
    let removed = SwitchableBackend::start("removed", 200).await;
    let checks = "{ path: /health, interval: 100ms, timeout: 100ms }";
    let gateway = Gateway::start(&config(&[&kept, &removed], checks, "")).await;
    wait_for_health(&gateway, removed.addr, 1.0).await;

    gateway.write_config(&config(&[&kept], checks, ""));
    gateway.signal(libc::SIGHUP);
    let removed_label = removed.addr.to_string();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let metrics = parse_metrics(&gateway.metrics().await);
        let series = sample_value(
            &metrics,
            "gatehouse_upstream_target_healthy",
            &[("upstream", "app"), ("target", removed_label.as_str())],
        );
        if series.is_none() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the removed target's series is gone within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_for_health(&gateway, kept.addr, 1.0).await;
    // Make the removed target fail its checks: a checker still running would log it.
    removed.set_health(500);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !gateway.stderr().contains("target marked unhealthy"),
        "the removed target is not checked any more:\n{}",
        gateway.stderr()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_keeps_unchanged_rate_limit() {
    let backend = EchoBackend::start("echo").await;
    let limited = |requests: u32, extra: &str| {
        format!(
            r#"
listen:
  - address: "{{listen}}"
admin:
  address: "{{admin}}"
upstreams:
  - name: echo
    targets: [{{ address: "{}" }}]
routes:
  - name: limited
    match: {{ path_prefix: /limited }}
    upstream: echo
    rate_limit: {{ requests: {requests}, per: 60s, key: route }}
{extra}"#,
            backend.address()
        )
    };
    let gateway = Gateway::start(&limited(3, "")).await;
    for i in 0..3 {
        assert_eq!(gateway.get("/limited").await.status, 200, "request {i}");
    }

    let extra = "  - name: other\n    match: { path: /other }\n    respond: { status: 200 }\n";
    gateway.write_config(&limited(3, extra));
    gateway.signal(libc::SIGHUP);
    let reloads = gateway.wait_for_reloads("success", 1).await;
    assert_eq!(reloads, Some(1.0), "first reload");
    assert_eq!(
        gateway.get("/other").await.status,
        200,
        "the new route serves"
    );
    assert_eq!(
        gateway.get("/limited").await.status,
        429,
        "the budget spent before the reload stays spent"
    );

    // A changed limit starts a new budget.
    gateway.write_config(&limited(4, extra));
    gateway.signal(libc::SIGHUP);
    let reloads = gateway.wait_for_reloads("success", 2).await;
    assert_eq!(reloads, Some(2.0), "second reload");
    assert_eq!(
        gateway.get("/limited").await.status,
        200,
        "a new limit counts from zero"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn check_timeout_longer_than_interval_rejected() {
    let backend = SwitchableBackend::start("b", 200).await;
    let yaml = config(
        &[&backend],
        "{ path: /health, interval: 1s, timeout: 2s }",
        "",
    );
    let file = ConfigFile::write(&yaml);
    let (code, _stdout, stderr) = run_cli(&["check", "-c", &file.path_str()]);
    assert_eq!(code, 1, "exit code:\n{stderr}");
    assert!(
        stderr.contains("upstreams[0].health_check.timeout")
            && stderr.contains("must not exceed the interval"),
        "the error names the key:\n{stderr}"
    );
}
