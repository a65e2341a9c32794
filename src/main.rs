/// jemalloc in place of the system allocator. For every request Pingora allocates several
/// blocks (the request's state machine, channel and task blocks) that are larger than glibc's
/// per-thread cache serves, so glibc takes them from its slower shared bins. jemalloc's
/// thread cache covers them. In bench/compare.sh it raised requests per CPU-second by about
/// 6% and lowered the memory per idle connection (docs/BENCHMARKS.md).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read once at its start (a `_RJEM_MALLOC_CONF` variable in the
/// environment is applied after them). Pingora allocates a 64 KiB body buffer for every
/// upstream response. Blocks of that size bypass the thread cache unless `tcache_max` allows
/// them, and then take jemalloc's slower extent path on every request. A thread cache of at
/// least 100 blocks per size class absorbs the swings in live request state when many
/// connections start and end requests at once. The cache's garbage collection, which returns
/// blocks to the arena, runs after every 1 MiB allocated instead of every 64 KiB, which was
/// about once per request. Each thread may keep a few MiB more cached.
#[export_name = "_rjem_malloc_conf"]
pub static JEMALLOC_OPTIONS: &[u8; 74] =
    b"tcache_max:65536,tcache_nslots_small_min:100,tcache_gc_incr_bytes:1048576\0";

fn main() -> std::process::ExitCode {
    gatehouse::cli::main()
}
