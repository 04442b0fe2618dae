//! The `ca-server` binary: parse the command line, run, print the whole error
//! chain and exit with a documented code (see `ca-server --help`).

fn main() {
    std::process::exit(ca_server::cli::main());
}
