//! The smallest Pingora reverse proxy: every request goes to one upstream over plain HTTP/1.1,
//! with Pingora's default upstream keep-alive pool and no routing, header rules, logging or
//! metrics. It uses gatehouse's allocator, jemalloc, with jemalloc's default options rather
//! than the ones that gatehouse sets. `bench/compare.sh` runs it as the baseline that shows
//! what gatehouse's features cost on top of Pingora itself.
//!
//! Usage: `bare_proxy LISTEN_ADDR UPSTREAM_ADDR THREADS`, for example
//! `bare_proxy 127.0.0.1:8081 127.0.0.1:9001 1`.

use async_trait::async_trait;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::Server;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::Result;
use pingora_proxy::{ProxyHttp, Session};
use std::net::SocketAddr;
use std::process::ExitCode;

/// The allocator gatehouse uses, so that the comparison shows the cost of gatehouse's
/// features and not of its allocator.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

struct BareProxy {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for BareProxy {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        // Plain HTTP, so the SNI is empty. Pingora returns the connection to its pool after
        // each response that allows reuse, which keeps upstream connections alive.
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

fn parse_args(args: &[String]) -> std::result::Result<(SocketAddr, SocketAddr, usize), String> {
    let [listen, upstream, threads] = args else {
        return Err(format!(
            "expected 3 arguments, got {}: LISTEN_ADDR UPSTREAM_ADDR THREADS",
            args.len()
        ));
    };
    let listen = listen
        .parse()
        .map_err(|e| format!("invalid LISTEN_ADDR \"{listen}\": {e}"))?;
    let upstream = upstream
        .parse()
        .map_err(|e| format!("invalid UPSTREAM_ADDR \"{upstream}\": {e}"))?;
    let threads = match threads.parse() {
        Ok(n) if n >= 1 => n,
        _ => {
            return Err(format!(
                "invalid THREADS \"{threads}\": expected an integer ≥ 1"
            ))
        }
    };
    Ok((listen, upstream, threads))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (listen, upstream, threads) = match parse_args(&args) {
        Ok(parsed) => parsed,
        Err(message) => {
            eprintln!("error: {message}");
            eprintln!("usage: bare_proxy LISTEN_ADDR UPSTREAM_ADDR THREADS");
            return ExitCode::from(2);
        }
    };

    let conf = ServerConf {
        threads,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();

    let mut proxy =
        pingora_proxy::http_proxy_service(&server.configuration, BareProxy { upstream });
    proxy.add_tcp(&listen.to_string());
    server.add_service(proxy);
    server.run_forever()
}
