/// jemalloc in place of the system allocator. For every request Pingora allocates several
/// blocks (the request's state machine, channel and task blocks) that are larger than glibc's
/// per-thread cache serves, so glibc takes them from its slower shared bins. jemalloc's
/// thread cache covers them. In bench/compare.sh it raised requests per CPU-second by about
/// 6% and lowered the memory per idle connection (docs/BENCHMARKS.md).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    gatehouse::cli::main()
}
