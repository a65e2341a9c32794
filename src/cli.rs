//! The command line: run the gateway, `check` a config file, or explain which `route` a
//! request would take.

use crate::config::{load_file, RouteAction, RuntimeConfig};
use crate::dispatch::dispatch;
use crate::server::ProcessOptions;
use clap::{Parser, Subcommand};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(name = "gatehouse", version, about = "An API gateway on Pingora")]
pub struct Cli {
    /// Config file (YAML).
    #[arg(
        short = 'c',
        long = "config",
        global = true,
        default_value = "conf/gateway.yaml"
    )]
    pub config: PathBuf,

    /// Take over the listening sockets of a running gatehouse (graceful upgrade).
    #[arg(short = 'u', long)]
    pub upgrade: bool,

    /// Run in the background.
    #[arg(short = 'd', long)]
    pub daemon: bool,

    /// Process id file written by the daemon.
    #[arg(long, default_value = "/tmp/gatehouse.pid")]
    pub pid_file: String,

    /// Unix socket used to hand the listening sockets over during a graceful upgrade.
    #[arg(long, default_value = "/tmp/gatehouse_upgrade.sock")]
    pub upgrade_sock: String,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the config file and print warnings; exit 0 if valid, 1 if not.
    Check,
    /// Print which route a request would match and why; exit 0 on a match, 1 if none.
    Route {
        /// Request method, e.g. GET.
        method: String,
        /// Request URL: a path such as /api/users?x=1, or a full URL whose host is used as Host.
        url: String,
        /// Request header, as 'Name: value'. Repeatable.
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
    },
}

fn load_or_report(cli: &Cli) -> Result<RuntimeConfig, ExitCode> {
    load_file(&cli.config).map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(1)
    })
}

fn check(cli: &Cli) -> ExitCode {
    let config = match load_or_report(cli) {
        Ok(config) => config,
        Err(code) => return code,
    };
    for warning in &config.warnings {
        println!("warning: {warning}");
    }
    println!(
        "{}: ok ({} routes, {} upstreams)",
        cli.config.display(),
        config.routes.len(),
        config.upstreams.len()
    );
    ExitCode::SUCCESS
}

/// Splits a URL argument into a Host value and an origin-form target. A fragment is dropped,
/// as clients never send it.
fn split_url(url: &str) -> Result<(Option<String>, String), String> {
    let url = url.split_once('#').map_or(url, |(before, _)| before);
    for scheme in ["http://", "https://"] {
        if let Some(rest) = url.strip_prefix(scheme) {
            let (authority, target) = match rest.find(['/', '?']) {
                Some(at) => (&rest[..at], &rest[at..]),
                None => (rest, "/"),
            };
            let target = if target.starts_with('?') {
                format!("/{target}")
            } else {
                target.to_owned()
            };
            return Ok((Some(authority.to_owned()), target));
        }
    }
    if url.starts_with('/') {
        return Ok((None, url.to_owned()));
    }
    Err(format!(
        "invalid URL \"{url}\": expected a path starting with \"/\" or an http:// or https:// URL"
    ))
}

fn parse_headers(raw: &[String]) -> Result<HeaderMap, String> {
    let mut headers = HeaderMap::new();
    for line in raw {
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("invalid header \"{line}\": expected 'Name: value'"));
        };
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| format!("invalid header name \"{}\"", name.trim()))?;
        let value = HeaderValue::from_str(value.trim())
            .map_err(|_| format!("invalid header value \"{}\"", value.trim()))?;
        headers.append(name, value);
    }
    Ok(headers)
}

fn route(cli: &Cli, method: &str, url: &str, raw_headers: &[String]) -> ExitCode {
    let config = match load_or_report(cli) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let parsed = Method::from_bytes(method.as_bytes())
        .map_err(|_| format!("invalid method \"{method}\""))
        .and_then(|m| split_url(url).map(|u| (m, u)))
        .and_then(|(m, u)| parse_headers(raw_headers).map(|h| (m, u, h)));
    let (method, (url_host, target), mut headers) = match parsed {
        Ok(parts) => parts,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    if let Some(host) = url_host {
        if !headers.contains_key(http::header::HOST) {
            headers.insert(
                http::header::HOST,
                HeaderValue::from_str(&host).unwrap_or(HeaderValue::from_static("")),
            );
        }
    }
    let host = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_owned();

    let found = match dispatch(&config, &method, target.as_bytes(), &host, &headers) {
        Ok(Some(found)) => found,
        Ok(None) => {
            println!("no route matches");
            return ExitCode::from(1);
        }
        Err(e) => {
            println!("no route matches: the path is rejected with 400 ({e})");
            return ExitCode::from(1);
        }
    };
    let route = &found.route;
    println!("route: {} (routes[{}])", route.name, route.index);
    let facts = crate::routing::RequestFacts {
        method: &method,
        host: &crate::routing::normalize_host(&host),
        path: &found.normalized_path,
        headers: &headers,
    };
    for line in route.matcher.explain(&facts) {
        println!("  {line}");
    }
    match &route.action {
        RouteAction::Proxy(upstream) => {
            println!("upstream: {}", upstream.name);
            let forwarded = found
                .forward_target
                .as_deref()
                .map_or(target.clone(), |t| String::from_utf8_lossy(t).into_owned());
            println!("forwarded: {method} {forwarded}");
            if let Some(host) = &route.rewrite_host {
                println!("host: {}", String::from_utf8_lossy(host.as_bytes()));
            }
        }
        RouteAction::Respond(direct) => {
            println!("respond: {}", direct.status.as_u16());
        }
    }
    ExitCode::SUCCESS
}

/// Runs the command line and returns the process exit code. Running the gateway returns
/// when the server has shut down.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::Check) => check(&cli),
        Some(Command::Route {
            method,
            url,
            headers,
        }) => route(&cli, method, url, headers),
        None => {
            // Until the reload service installs its SIGHUP handler, a SIGHUP would end the
            // process with the default action; ignore it in that window instead.
            // SAFETY: setting a signal's disposition to SIG_IGN has no memory-safety
            // requirements, and no other thread exists yet.
            unsafe {
                libc::signal(libc::SIGHUP, libc::SIG_IGN);
            }
            // The daemon changes its working directory to "/", so a relative config path must
            // be made absolute now for reloads to find the file. Symbolic links are kept, so a
            // reload follows a link that was switched to a new file.
            let cli = Cli {
                config: std::path::absolute(&cli.config).unwrap_or(cli.config.clone()),
                ..cli
            };
            let config = match load_or_report(&cli) {
                Ok(config) => config,
                Err(code) => return code,
            };
            crate::logging::init();
            let options = ProcessOptions {
                upgrade: cli.upgrade,
                daemon: cli.daemon,
                pid_file: cli.pid_file.clone(),
                upgrade_sock: cli.upgrade_sock.clone(),
                config_path: cli.config.clone(),
            };
            crate::server::run(config, options);
            crate::logging::flush();
            ExitCode::SUCCESS
        }
    }
}
