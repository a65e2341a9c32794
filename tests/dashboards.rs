//! The Grafana dashboard's queries against a real Prometheus server scraping a real gateway.
//!
//! Prometheus (Debian package `prometheus`) scrapes the gateway's admin listener every
//! second. After traffic that touches every metric, each panel query of
//! `dashboards/gatehouse.json` must evaluate without error and return data, so a renamed
//! metric or label breaks this test rather than a dashboard in production.

mod common;

use common::{closed_port, free_loopback_addr, EchoBackend, Gateway, Request};
use serde_json::Value;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A Prometheus server in a temporary directory, killed on drop.
struct Prometheus {
    child: Child,
    address: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(target: std::net::SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: gatehouse\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("write the Prometheus config");
        let address = free_loopback_addr();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("create log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={address}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus: install the Debian package `prometheus` (.ci/prereqs --tests does)");
        Prometheus {
            child,
            address,
            _dir: dir,
        }
    }

    /// Sends `GET path` and returns the JSON body, or None if Prometheus does not respond yet.
    async fn get_json(&self, path: &str) -> Option<Value> {
        let exchange = async {
            let mut stream = TcpStream::connect(self.address).await.ok()?;
            let request =
                format!("GET {path} HTTP/1.1\r\nHost: prometheus\r\nConnection: close\r\n\r\n");
            stream.write_all(request.as_bytes()).await.ok()?;
            let mut raw = Vec::new();
            stream.read_to_end(&mut raw).await.ok()?;
            let text = String::from_utf8_lossy(&raw).into_owned();
            let (_, body) = text.split_once("\r\n\r\n")?;
            serde_json::from_str(body).ok()
        };
        tokio::time::timeout(Duration::from_secs(5), exchange)
            .await
            .ok()
            .flatten()
    }

    /// Evaluates a PromQL query now and returns the `data.result` array, or the error text.
    async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let encoded: String = expr
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let body = self
            .get_json(&format!("/api/v1/query?query={encoded}"))
            .await
            .ok_or_else(|| "no response from Prometheus".to_owned())?;
        if body["status"] != "success" {
            return Err(body.to_string());
        }
        Ok(body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }
}

/// Replaces the dashboard's variables with values that select everything.
fn expand_variables(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$instance", ".*")
        .replace("$route", ".*")
}

fn dashboard_queries() -> Vec<(String, String)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/dashboards/gatehouse.json");
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("read the dashboard"))
            .expect("the dashboard is JSON");
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().unwrap_or("?").to_owned();
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            queries.push((title.clone(), expand_variables(expr)));
        }
    }
    queries
}

#[tokio::test(flavor = "multi_thread")]
async fn dashboard_queries_return_data() {
    let backend = EchoBackend::start("a").await;
    let dead = closed_port();
    let yaml = format!(
        "listen:
  - address: {{listen}}
admin:
  address: {{admin}}
upstreams:
  - name: live
    targets:
      - {{ address: {live} }}
  - name: dead
    targets:
      - {{ address: {dead} }}
routes:
  - name: api
    match: {{ path_prefix: /api }}
    upstream: live
    rate_limit: {{ requests: 5, per: 60s, key: client_ip }}
  - name: broken
    match: {{ path_prefix: /broken }}
    upstream: dead
",
        live = backend.address(),
    );
    let gateway = Gateway::start(&yaml).await;
    let prometheus = Prometheus::start(gateway.admin_addr());

    // Traffic before and between scrapes, so that every rate has two samples to work with:
    // 200s and 429s on `api`, 502s and upstream errors on `broken`.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut ready = false;
    let mut round = 0;
    while Instant::now() < deadline {
        for index in 0..3 {
            let response = gateway
                .send(&Request::get(&format!("/api/{round}/{index}")).body(b"x"))
                .await;
            assert!(
                response.status == 200 || response.status == 429,
                "GET /api status {}",
                response.status
            );
        }
        let response = gateway.get("/broken").await;
        assert_eq!(response.status, 502, "GET /broken status");
        round += 1;

        let samples = prometheus
            .query("count_over_time(gatehouse_requests_total[1m])")
            .await
            .unwrap_or_default();
        let scraped_twice = samples.iter().any(|s| {
            s["value"][1]
                .as_str()
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(|count| count >= 3.0)
        });
        if scraped_twice {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        ready,
        "Prometheus scraped the gateway at least 3 times within 30 s"
    );

    let mut empty = Vec::new();
    for (title, expr) in dashboard_queries() {
        let result = prometheus.query(&expr).await;
        match result {
            Ok(series) if !series.is_empty() => {}
            Ok(_) => empty.push(format!("{title}: {expr}")),
            Err(error) => panic!("panel {title:?}: query {expr} failed: {error}"),
        }
    }
    assert!(
        empty.is_empty(),
        "dashboard queries that returned no data:\n{}",
        empty.join("\n")
    );
}
