//! The config file format: serde types that mirror the YAML schema one to one.
//!
//! Every struct rejects unknown keys. These types only describe what the operator wrote;
//! [`super::compile`] checks cross-references and builds the runtime view from them.

use super::units::{AddressValue, DurationValue, SizeValue};
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Vec<ListenerFile>,
    #[serde(default)]
    pub admin: Option<AdminFile>,
    #[serde(default)]
    pub server: ServerFile,
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    #[serde(default)]
    pub limits: LimitsFile,
    #[serde(default)]
    pub timeouts: TimeoutsFile,
    #[serde(default)]
    pub upstreams: Vec<UpstreamFile>,
    pub routes: Vec<RouteFile>,
    #[serde(default)]
    pub reload: ReloadFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReloadFile {
    /// Reload when the config file changes, as well as on SIGHUP.
    #[serde(default)]
    pub watch: bool,
    /// Quiet time after the last change before the file is read.
    #[serde(default)]
    pub debounce: Option<DurationValue>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerFile {
    pub address: AddressValue,
    #[serde(default)]
    pub tls: Option<ListenerTlsFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTlsFile {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    pub address: AddressValue,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    #[serde(default)]
    pub threads: Option<usize>,
    #[serde(default)]
    pub grace_period: Option<DurationValue>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    #[serde(default)]
    pub max_connections: Option<u64>,
    #[serde(default)]
    pub max_request_body: Option<SizeValue>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsFile {
    #[serde(default)]
    pub connect: Option<DurationValue>,
    #[serde(default)]
    pub upstream_read: Option<DurationValue>,
    #[serde(default)]
    pub upstream_write: Option<DurationValue>,
    #[serde(default)]
    pub request: Option<DurationValue>,
    #[serde(default)]
    pub downstream_header: Option<DurationValue>,
    #[serde(default)]
    pub downstream_body: Option<DurationValue>,
    #[serde(default)]
    pub downstream_write: Option<DurationValue>,
    #[serde(default)]
    pub downstream_idle: Option<DurationValue>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    pub name: String,
    pub targets: Vec<TargetFile>,
    #[serde(default)]
    pub balance: Balance,
    #[serde(default)]
    pub hash_on: Option<String>,
    #[serde(default)]
    pub tls: Option<UpstreamTlsFile>,
    #[serde(default)]
    pub health_check: Option<HealthCheckFile>,
    #[serde(default)]
    pub retries: Option<RetriesFile>,
    #[serde(default)]
    pub keepalive: Option<KeepaliveFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetFile {
    pub address: AddressValue,
    #[serde(default = "default_weight")]
    pub weight: u32,
    #[serde(default)]
    pub zone: Option<String>,
}

fn default_weight() -> u32 {
    1
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    #[default]
    RoundRobin,
    Random,
    LeastRequests,
    ConsistentHash,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsFile {
    #[serde(default)]
    pub sni: Option<String>,
    #[serde(default = "default_true")]
    pub verify: bool,
    /// PEM file of the certificate authorities to trust; the system's by default.
    #[serde(default)]
    pub ca: Option<String>,
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckFile {
    pub path: String,
    #[serde(default)]
    pub interval: Option<DurationValue>,
    #[serde(default)]
    pub timeout: Option<DurationValue>,
    #[serde(default)]
    pub healthy: Option<u32>,
    #[serde(default)]
    pub unhealthy: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetriesFile {
    pub attempts: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeepaliveFile {
    #[serde(default)]
    pub max_idle: Option<usize>,
    #[serde(default)]
    pub idle_timeout: Option<DurationValue>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    pub name: String,
    #[serde(default, rename = "match")]
    pub match_: MatchFile,
    #[serde(default)]
    pub upstream: Option<String>,
    #[serde(default)]
    pub rewrite: Option<RewriteFile>,
    #[serde(default)]
    pub request_headers: Option<HeaderOpsFile>,
    #[serde(default)]
    pub response_headers: Option<HeaderOpsFile>,
    #[serde(default)]
    pub rate_limit: Option<RateLimitFile>,
    #[serde(default)]
    pub max_concurrent_requests: Option<u64>,
    #[serde(default)]
    pub timeouts: Option<TimeoutsFile>,
    #[serde(default)]
    pub respond: Option<RespondFile>,
    /// Hold up to this much of a response body in memory, so that the upstream is released
    /// before a slow client has read it.
    #[serde(default)]
    pub buffer_response: Option<SizeValue>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchFile {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub path_prefix: Option<String>,
    #[serde(default)]
    pub path_regex: Option<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewriteFile {
    #[serde(default)]
    pub strip_prefix: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderOpsFile {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitFile {
    pub requests: u64,
    pub per: DurationValue,
    #[serde(default = "default_rate_limit_key")]
    pub key: String,
}

fn default_rate_limit_key() -> String {
    "client_ip".to_owned()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RespondFile {
    pub status: u16,
    #[serde(default)]
    pub body: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}
