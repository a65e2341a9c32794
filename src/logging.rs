//! Log setup: server logs as text on standard error through `tracing` (Pingora's `log`
//! records are bridged into it), and the access log's writer on standard output.
//!
//! Both go through writer threads, so no worker thread blocks on the terminal or a pipe. The
//! threads can be started again in a forked daemon, which inherits none of them.

use arc_swap::ArcSwapOption;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_log::AsLog;
use tracing_subscriber::filter::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// Queue length of each writer. When a slow reader of standard output or standard error lets
/// a queue fill, further lines are dropped.
const BUFFERED_LINES: usize = 100_000;

/// Bytes collected by a writer thread before it writes them out, when lines arrive faster
/// than one write(2) each.
const WRITE_BUFFER: usize = 64 * 1024;

static SERVER_WRITER: ArcSwapOption<NonBlocking> = ArcSwapOption::const_empty();

/// Guards of the running writer threads; dropping one flushes its queue and stops the thread.
static GUARDS: Mutex<Vec<WorkerGuard>> = Mutex::new(Vec::new());

/// The process that started the writer threads. A forked daemon has none of them.
static WRITERS_PID: AtomicU32 = AtomicU32::new(0);

/// The server log's writer, looked up per event so that it can be replaced after a fork.
struct ServerWriter;

impl<'a> MakeWriter<'a> for ServerWriter {
    type Writer = Box<dyn std::io::Write + 'a>;

    fn make_writer(&'a self) -> Self::Writer {
        restart_writers_after_fork();
        match SERVER_WRITER.load_full() {
            Some(writer) => Box::new(NonBlocking::clone(&writer)),
            None => Box::new(std::io::sink()),
        }
    }
}

fn start_writers() {
    WRITERS_PID.store(std::process::id(), Ordering::Release);
    // The writer thread writes every queued line and then flushes, so under load many lines go
    // out in one write(2), and a single line still goes out at once.
    let (access_writer, access_guard) = NonBlockingBuilder::default()
        .buffered_lines_limit(BUFFERED_LINES)
        .lossy(true)
        .finish(std::io::BufWriter::with_capacity(
            WRITE_BUFFER,
            std::io::stdout(),
        ));
    let (server_writer, server_guard) = NonBlockingBuilder::default()
        .buffered_lines_limit(BUFFERED_LINES)
        .lossy(true)
        .finish(std::io::BufWriter::with_capacity(
            WRITE_BUFFER,
            std::io::stderr(),
        ));
    crate::access_log::set_writer(access_writer);
    SERVER_WRITER.store(Some(Arc::new(server_writer)));
    let mut guards = GUARDS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    guards.push(access_guard);
    guards.push(server_guard);
}

/// Starts the writer threads and installs the global subscriber. Call [`flush`] before the
/// process exits.
///
/// `RUST_LOG` sets the server log filter (default `info`); it does not affect the access log.
pub fn init() {
    start_writers();
    let server_filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // With the filter's most verbose level as the bridge's limit, the `log` macros drop
    // Pingora's records below it before they reach the bridge. Pingora calls `debug!` on
    // every request.
    let log_max_level = server_filter
        .max_level_hint()
        .map_or(log::LevelFilter::Trace, |level| level.as_log());
    let server_layer = tracing_subscriber::fmt::layer()
        .with_writer(ServerWriter)
        .with_ansi(false)
        .with_filter(server_filter)
        .with_filter(tracing_subscriber::filter::filter_fn(|event| {
            !is_pool_race_error(event)
        }));
    let _ = tracing_log::LogTracer::init_with_filter(log_max_level);
    let _ = tracing_subscriber::registry().with(server_layer).try_init();
}

/// True for Pingora's "failed to acquire reusable stream" error, the only error that its
/// `pingora_core::connectors` module logs. Pingora 0.9.1 logs it when its connection pool hands
/// out an idle upstream connection that the pool's idle watcher still holds. Pingora then opens
/// a new connection and the request goes on, so the line only alarms: under concurrent load it
/// came with about 4% of proxied requests, with no peer or cause named.
fn is_pool_race_error(event: &tracing::Metadata<'_>) -> bool {
    *event.level() == tracing::Level::ERROR && event.target() == "pingora_core::connectors"
}

/// Starts new writer threads in a forked daemon, whose parent's threads did not survive the
/// fork. Does nothing in the process that started them. The server log calls it for every
/// event, so its first line after the fork restarts the writers.
pub fn restart_writers_after_fork() {
    let started_by = WRITERS_PID.load(Ordering::Acquire);
    if started_by == 0 || started_by == std::process::id() {
        return;
    }
    let mut guards = GUARDS.lock().unwrap_or_else(|p| p.into_inner());
    // Another thread may have restarted them while this one waited for the lock.
    if WRITERS_PID.load(Ordering::Acquire) == std::process::id() {
        return;
    }
    // Dropping these guards would wait for threads that do not exist in this process.
    std::mem::forget(std::mem::take(&mut *guards));
    WRITERS_PID.store(std::process::id(), Ordering::Release);
    drop(guards);
    start_writers();
}

/// Writes out every queued line and stops the writer threads. Later lines are dropped.
pub fn flush() {
    let guards = std::mem::take(&mut *GUARDS.lock().unwrap_or_else(|p| p.into_inner()));
    drop(guards);
}
