//! Log setup: server logs as text on standard error, access log lines as JSON on standard
//! output. Both go through `tracing`; Pingora's `log` records are bridged into it.

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::filter::{filter_fn, EnvFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// Installs the global subscriber. The returned guards flush the writer threads when dropped,
/// so keep them alive for the life of the process.
///
/// `RUST_LOG` sets the server log filter (default `info`); it does not affect the access log.
pub fn init() -> Vec<WorkerGuard> {
    // Buffer up to 100,000 lines per writer; when a slow consumer lets the buffer fill, lines
    // are dropped rather than blocking a worker thread.
    let (access_writer, access_guard) =
        tracing_appender::non_blocking::NonBlockingBuilder::default()
            .buffered_lines_limit(100_000)
            .lossy(true)
            .finish(std::io::stdout());
    let (server_writer, server_guard) =
        tracing_appender::non_blocking::NonBlockingBuilder::default()
            .buffered_lines_limit(100_000)
            .lossy(true)
            .finish(std::io::stderr());

    let access_layer = tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_target(false)
        .with_current_span(false)
        .with_span_list(false)
        .with_writer(access_writer)
        .with_filter(filter_fn(|meta| meta.target() == "access"));

    let server_filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let server_layer = tracing_subscriber::fmt::layer()
        .with_writer(server_writer)
        .with_ansi(false)
        .with_filter(filter_fn(|meta| meta.target() != "access"))
        .with_filter(server_filter);

    let _ = tracing_log::LogTracer::init();
    let _ = tracing_subscriber::registry()
        .with(access_layer)
        .with(server_layer)
        .try_init();
    vec![access_guard, server_guard]
}
