/// mimalloc in place of the system allocator: Pingora and gatehouse allocate a few small
/// buffers per request, and under the keep-alive benchmark the allocator was about a tenth of
/// the CPU time with glibc's malloc (docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    gatehouse::cli::main()
}
