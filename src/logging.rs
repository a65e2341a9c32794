//! Log setup: server logs as text on standard error through `tracing` (Pingora's `log`
//! records are bridged into it), and the access log's writer on standard output.

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::filter::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// Installs the global subscriber. The returned guards flush the writer threads when dropped,
/// so keep them alive for the life of the process.
///
/// `RUST_LOG` sets the server log filter (default `info`); it does not affect the access log.
/// Each writer queues up to 100,000 lines. When a slow reader of standard output or standard
/// error lets the queue fill, further lines are dropped, so no worker thread blocks.
pub fn init() -> Vec<WorkerGuard> {
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

    crate::access_log::set_writer(access_writer);

    let server_filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let server_layer = tracing_subscriber::fmt::layer()
        .with_writer(server_writer)
        .with_ansi(false)
        .with_filter(server_filter);

    let _ = tracing_log::LogTracer::init();
    let _ = tracing_subscriber::registry().with(server_layer).try_init();
    vec![access_guard, server_guard]
}
