//! The `ca-server` binary: parse the command line, run, print the whole error
//! chain and exit with a documented code (see `ca-server --help`).

/// mimalloc, not glibc's malloc: TLS records, HTTP bodies and certificate
/// rows are allocated and freed on different runtime workers and the store
/// writer, where glibc's per-thread arenas cost ~8 % of the server's time
/// at c=64 (BENCHMARKS.md, issue 21).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(ca_server::cli::main());
}
