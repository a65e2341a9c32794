//! The JSON access log that the gateway writes to stdout, one record per request.

mod common;

use std::collections::BTreeSet;

use common::{EchoBackend, Gateway, Request};
use serde_json::{Map, Value};

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

/// Keys that every access log record has, with `null` where a value does not apply.
const RECORD_KEYS: [&str; 12] = [
    "request_id",
    "client",
    "method",
    "path",
    "route",
    "upstream",
    "target",
    "status",
    "bytes_in",
    "bytes_out",
    "duration_s",
    "upstream_duration_s",
];

fn assert_has_record_keys(record: &Map<String, Value>) {
    for key in RECORD_KEYS {
        assert!(
            record.contains_key(key),
            "access log record lacks key {key:?}: {record:?}"
        );
    }
}

/// Returns the record whose `request_id` is `id`, panicking with all records if none is.
fn record_for<'a>(records: &'a [Map<String, Value>], id: &str) -> &'a Map<String, Value> {
    records
        .iter()
        .find(|record| record.get("request_id").and_then(Value::as_str) == Some(id))
        .unwrap_or_else(|| panic!("no access log record with request_id {id:?}: {records:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn proxied_request_record() {
    let (gateway, backend) = start_users_gateway().await;

    let body = b"0123456789";
    let response = gateway
        .send(
            &Request::new("POST", "/users/7?x=1")
                .header("X-Request-Id", "access-log-1")
                .body(body),
        )
        .await;
    assert_eq!(response.status, 200, "POST /users/7 status");
    assert_eq!(
        response.header("x-request-id"),
        Some("access-log-1"),
        "response request id"
    );

    let records = gateway.wait_for_access_log(1).await;
    let record = record_for(&records, "access-log-1");
    assert_has_record_keys(record);

    assert_eq!(
        record.get("status"),
        Some(&Value::from(200)),
        "status in {record:?}"
    );
    assert_eq!(
        record.get("route"),
        Some(&Value::from("users")),
        "route in {record:?}"
    );
    assert_eq!(
        record.get("upstream"),
        Some(&Value::from("users")),
        "upstream in {record:?}"
    );
    assert_eq!(
        record.get("method"),
        Some(&Value::from("POST")),
        "method in {record:?}"
    );
    assert_eq!(
        record.get("target"),
        Some(&Value::from(backend.address())),
        "target is the upstream peer address in {record:?}"
    );

    let path = record
        .get("path")
        .and_then(Value::as_str)
        .unwrap_or_default();
    assert!(path.starts_with("/users/7"), "path in {record:?}");

    let client = record
        .get("client")
        .and_then(Value::as_str)
        .unwrap_or_default();
    assert!(
        client.starts_with("127.0.0.1"),
        "client is the loopback peer in {record:?}"
    );

    let bytes_in = record.get("bytes_in").and_then(Value::as_u64);
    assert!(
        bytes_in.is_some_and(|count| count >= body.len() as u64),
        "bytes_in counts at least the 10 body bytes in {record:?}"
    );
    let bytes_out = record.get("bytes_out").and_then(Value::as_u64);
    assert!(
        bytes_out.is_some_and(|count| count >= response.body.len() as u64),
        "bytes_out counts at least the {} response body bytes in {record:?}",
        response.body.len()
    );

    let duration = record.get("duration_s").and_then(Value::as_f64);
    assert!(
        duration.is_some_and(|seconds| (0.0..5.0).contains(&seconds)),
        "duration_s is a number of seconds in {record:?}"
    );
    let upstream_duration = record.get("upstream_duration_s").and_then(Value::as_f64);
    assert!(
        upstream_duration.is_some_and(|seconds| seconds >= 0.0 && Some(seconds) <= duration),
        "upstream_duration_s is at most duration_s in {record:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unmatched_request_record() {
    let (gateway, _backend) = start_users_gateway().await;

    let response = gateway.get("/nowhere").await;
    assert_eq!(response.status, 404, "GET /nowhere status");
    let id = response
        .header("x-request-id")
        .expect("the 404 response carries x-request-id")
        .to_string();

    let records = gateway.wait_for_access_log(1).await;
    let record = record_for(&records, &id);
    assert_has_record_keys(record);
    assert_eq!(
        record.get("route"),
        Some(&Value::from("")),
        "unmatched route in {record:?}"
    );
    assert_eq!(
        record.get("upstream"),
        Some(&Value::Null),
        "no upstream for an unmatched request in {record:?}"
    );
    assert_eq!(
        record.get("status"),
        Some(&Value::from(404)),
        "status in {record:?}"
    );
    assert_eq!(
        record.get("target"),
        Some(&Value::Null),
        "no upstream peer for an unmatched request in {record:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn one_record_per_request() {
    let (gateway, _backend) = start_users_gateway().await;

    let mut client = gateway.client().await;
    let mut response_ids = BTreeSet::new();
    for index in 0..5 {
        let response = client.send(&Request::get(&format!("/users/{index}"))).await;
        assert_eq!(response.status, 200, "GET /users/{index} status");
        let id = response
            .header("x-request-id")
            .expect("the response carries x-request-id")
            .to_string();
        response_ids.insert(id);
    }
    assert_eq!(response_ids.len(), 5, "each request gets its own id");

    let records = gateway.wait_for_access_log(5).await;
    assert_eq!(
        records.len(),
        5,
        "one access log record per request: {records:?}"
    );
    let logged_ids: BTreeSet<String> = records
        .iter()
        .filter_map(|record| record.get("request_id").and_then(Value::as_str))
        .map(str::to_string)
        .collect();
    assert_eq!(
        logged_ids, response_ids,
        "logged ids are the ids returned to the client"
    );
}
