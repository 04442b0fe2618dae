//! The `ca-client` binary. Exit codes: 0 success, 1 error, 2 usage,
//! 3 trust (fingerprint or TLS), 4 PSK rejected, 5 CA unreachable, 6 refused,
//! 7 the service refused installed files (rolled back).

use ca_client::bootstrap::{self, BootstrapOptions, exit};
use ca_client::install::{self, ClientAuth, InstallOptions, Reload, ServiceKind};
use ca_client::keys::KeyType;
use clap::{Parser, Subcommand};
use std::io::IsTerminal;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "ca-client",
    version,
    about = "Get and keep a TLS certificate from ca-server",
    after_help = "Exit codes: 0 success, 1 error, 2 usage, 3 trust (fingerprint/TLS), 4 PSK rejected, 5 CA unreachable, 6 request refused, 7 service refused the installed files (rolled back)."
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
    /// Install the bootstrap directory's material for nginx, PostgreSQL or
    /// HAProxy as one unit: check, switch, reload, confirm, or roll back.
    Install(InstallArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Write man pages (ca-client.1 and one per subcommand) into DIR.
    Man {
        #[arg(long, value_name = "DIR")]
        out_dir: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
#[command(after_help = "See docs/installers.md for the layouts and configuration snippets.")]
struct InstallArgs {
    /// The service to install for.
    #[arg(value_enum)]
    service: ServiceKind,
    /// The bootstrap directory (key.pem, cert.pem, chain.pem, ca.pem, crl.pem).
    #[arg(long)]
    dir: PathBuf,
    /// Directory for the service's files; they live under DEST/current/.
    #[arg(long)]
    dest: PathBuf,
    /// Owner of the installed files, USER[:GROUP] (e.g. postgres).
    #[arg(long)]
    owner: Option<String>,
    /// Reload with this command (sh -c) instead of signalling the pid from the pid file.
    #[arg(long, value_name = "CMD", conflicts_with = "no_reload")]
    reload: Option<String>,
    /// Do not reload the service (for PostgreSQL: nor confirm).
    #[arg(long)]
    no_reload: bool,
    /// Run this configuration check (sh -c) instead of `nginx -t` / `haproxy -c -f CONFIG`.
    #[arg(long, value_name = "CMD")]
    check: Option<String>,
    /// Main configuration file for the default check: nginx.conf (default:
    /// nginx's own), haproxy.cfg (default /etc/haproxy/haproxy.cfg).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// nginx/HAProxy pid file: the service is running if it names a live
    /// process, which gets the reload signal (default /run/nginx.pid, /run/haproxy.pid).
    #[arg(long, value_name = "FILE")]
    pid_file: Option<PathBuf>,
    /// PostgreSQL data directory (its postmaster.pid gives the pid, port and address).
    #[arg(long, value_name = "DIR")]
    pgdata: Option<PathBuf>,
    /// After reloading, connect here (HOST:PORT) until the new certificate is
    /// served; roll back if it is not. PostgreSQL: default from postmaster.pid.
    #[arg(long, value_name = "HOST:PORT")]
    probe: Option<String>,
    /// How long to wait for the service to serve the new certificate.
    #[arg(long, default_value = "30s")]
    probe_timeout: humantime::Duration,
    /// Client-certificate verification in the nginx/HAProxy snippet.
    #[arg(long, value_enum, default_value = "none")]
    client_auth: ClientAuth,
    /// HAProxy: the bind address in the snippet.
    #[arg(long, default_value = ":443")]
    bind: String,
    /// Print the configuration snippet and exit; install nothing.
    #[arg(long)]
    print_config: bool,
    /// Print the outcome as JSON.
    #[arg(long)]
    json: bool,
}

impl InstallArgs {
    fn options(&self) -> anyhow::Result<InstallOptions> {
        Ok(InstallOptions {
            service: self.service,
            dir: self.dir.clone(),
            dest: self.dest.clone(),
            owner: self
                .owner
                .as_deref()
                .map(install::sys::Owner::parse)
                .transpose()?,
            reload: match (&self.reload, self.no_reload) {
                (_, true) => Reload::Never,
                (Some(cmd), false) => Reload::Command(cmd.clone()),
                (None, false) => Reload::Signal,
            },
            check: self.check.clone(),
            config: self.config.clone(),
            pid_file: self.pid_file.clone(),
            pgdata: self.pgdata.clone(),
            probe: self.probe.clone(),
            probe_timeout: self.probe_timeout.into(),
            client_auth: self.client_auth,
            bind: self.bind.clone(),
        })
    }
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
        Command::Install(args) => run_install(&args).await,
        Command::Completions { shell } => {
            ca_client::clidocs::completions(
                <Cli as clap::CommandFactory>::command(),
                "ca-client",
                shell,
            );
            exit::OK
        }
        Command::Man { out_dir } => {
            match ca_client::clidocs::man_pages(<Cli as clap::CommandFactory>::command(), &out_dir)
            {
                Ok(()) => exit::OK,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    1
                }
            }
        }
    }
}

async fn run_install(args: &InstallArgs) -> i32 {
    let opts = match args.options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e:#}");
            return exit::USAGE;
        }
    };
    if args.print_config {
        return match install::print_config(&opts) {
            Ok(snippet) => {
                print!("{snippet}");
                exit::OK
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                exit::ERROR
            }
        };
    }
    match install::install(&opts).await {
        Ok(out) => {
            if args.json {
                println!("{}", serde_json::to_string(&out).expect("serialisable"));
            } else {
                println!(
                    "installed {} for {} serial={} not_after={} dest={} ({}{}) snippet={}",
                    args.service_name(),
                    out.leaf.hostname,
                    out.leaf.serial,
                    out.leaf.not_after,
                    out.dest.display(),
                    out.reload,
                    if out.confirmed {
                        ", new certificate served"
                    } else {
                        ""
                    },
                    out.snippet.display()
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

impl InstallArgs {
    fn service_name(&self) -> &'static str {
        match self.service {
            ServiceKind::Nginx => "nginx",
            ServiceKind::Postgres => "postgres",
            ServiceKind::Haproxy => "haproxy",
        }
    }
}
