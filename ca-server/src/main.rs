//! The `ca-server` binary: parse the command line, run, print the whole error
//! chain and exit with a documented code (see `ca-server --help`).

/// mimalloc, not glibc's malloc: malloc/free were ~8 % of the server's time
/// at c=64, and mimalloc gave +5 % certificates/s at c=8 and c=64 in an A/B
/// (BENCHMARKS.md, issue 21). Built with `no_thp` (workspace Cargo.toml):
/// its arenas asked for transparent huge pages, which doubled the peak RSS
/// (41 MiB at c=1 and 83 at c=512 against glibc's 21 and 62).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(ca_server::cli::main());
}
