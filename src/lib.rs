//! gatehouse: an API gateway on Cloudflare's Pingora.
//!
//! A request passes through the modules in this order: [`proxy`] (the Pingora hooks) calls
//! [`dispatch`] for a route ([`path`] normalization, [`routing`] matchers), [`upstream`] picks a
//! target, [`headers`] rewrites the request and response, [`errors`] answers failures, and
//! [`access_log`] records metrics and the log line. [`config`] builds everything they read.

pub mod access_log;
pub mod admin;
pub mod cli;
pub mod client_ip;
pub mod config;
pub mod context;
pub mod dispatch;
pub mod errors;
pub mod file_watch;
pub mod headers;
pub mod health;
pub mod keepalive;
pub mod lifecycle;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod path;
pub mod proxy;
pub mod reload;
pub mod route_index;
pub mod routing;
pub mod server;
pub mod upstream;
