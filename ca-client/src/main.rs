//! The `ca-client` binary. Exit codes: 0 success, 1 error, 2 usage,
//! 3 trust (fingerprint or TLS), 4 PSK rejected, 5 CA unreachable, 6 refused.

use ca_client::bootstrap::{self, BootstrapOptions, exit};
use ca_client::keys::KeyType;
use clap::{Parser, Subcommand};
use std::io::IsTerminal;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "ca-client",
    version,
    about = "Get and keep a TLS certificate from ca-server",
    after_help = "Exit codes: 0 success, 1 error, 2 usage, 3 trust (fingerprint/TLS), 4 PSK rejected, 5 CA unreachable, 6 request refused."
)]
struct Cli {
    /// Log filter (tracing syntax).
    #[arg(long, env = "CA_CLIENT_LOG", default_value = "info", global = true)]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate a key, redeem the PSK and write key.pem, cert.pem, chain.pem, ca.pem.
    Bootstrap(BootstrapArgs),
}

#[derive(Debug, clap::Args)]
struct BootstrapArgs {
    /// CA server URL, e.g. https://ca.example.internal:8443
    #[arg(long, env = "CA_SERVER")]
    server: String,
    /// Root fingerprint, sha256:<hex> (as `ca-server init` prints it).
    #[arg(long, env = "CA_FINGERPRINT")]
    fingerprint: String,
    /// This host's name (must match the PSK's hostname).
    #[arg(long)]
    hostname: String,
    /// File holding the PSK; deleted after success.
    #[arg(long)]
    psk_file: PathBuf,
    /// Directory for the key and certificates.
    #[arg(long)]
    dir: PathBuf,
    /// Type of key to generate.
    #[arg(long, value_enum, default_value = "p256")]
    key_type: KeyType,
    /// Use this existing PKCS#8 key instead of generating one.
    #[arg(long)]
    key: Option<PathBuf>,
    /// Extra name to request (must be allowed for the PSK); repeatable.
    #[arg(long = "san")]
    sans: Vec<String>,
    /// Keep retrying for this long before giving up.
    #[arg(long, default_value = "2m")]
    retry_for: humantime::Duration,
    /// Timeout of each request.
    #[arg(long, default_value = "30s")]
    timeout: humantime::Duration,
    /// Print the outcome as JSON.
    #[arg(long)]
    json: bool,
}

impl From<&BootstrapArgs> for BootstrapOptions {
    fn from(a: &BootstrapArgs) -> BootstrapOptions {
        BootstrapOptions {
            server: a.server.clone(),
            fingerprint: a.fingerprint.clone(),
            hostname: a.hostname.clone(),
            psk_file: a.psk_file.clone(),
            dir: a.dir.clone(),
            key_type: a.key_type,
            key_file: a.key.clone(),
            extra_sans: a.sans.clone(),
            deadline: a.retry_for.into(),
            request_timeout: a.timeout.into(),
        }
    }
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            std::process::exit(if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            });
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    std::process::exit(rt.block_on(run(cli)));
}

async fn run(cli: Cli) -> i32 {
    match cli.command {
        Command::Bootstrap(args) => {
            let json = args.json;
            let opts = BootstrapOptions::from(&args);
            match bootstrap::bootstrap(&opts).await {
                Ok(out) => {
                    if json {
                        println!("{}", serde_json::to_string(&out).expect("serialisable"));
                    } else {
                        println!(
                            "issued {} serial={} not_after={} dir={}{}",
                            out.hostname,
                            out.serial,
                            out.not_after,
                            out.dir.display(),
                            if out.recovered {
                                " (recovered the certificate of an earlier attempt)"
                            } else {
                                ""
                            }
                        );
                    }
                    exit::OK
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    e.exit_code()
                }
            }
        }
    }
}
