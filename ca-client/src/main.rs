//! The `ca-client` binary. Exit codes: 0 success, 1 error, 2 usage,
//! 3 trust (fingerprint or TLS), 4 PSK rejected, 5 CA unreachable, 6 refused,
//! 7 the service refused installed files (rolled back), 8 CRL refused.

use ca_client::bootstrap::{self, BootstrapOptions, exit};
use ca_client::bundle::Bundle;
use ca_client::crl::{self, CrlOptions, Source};
use ca_client::failure::Failure;
use ca_client::install::record::{self, InstallFlags};
use ca_client::install::{self, InstallOptions, ServiceKind};
use ca_client::keys::KeyType;
use ca_client::renew::{self, Jitter, RenewOptions, RenewOutcome, Threshold};
use clap::{Parser, Subcommand};
use std::io::IsTerminal;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "ca-client",
    version,
    about = "Get and keep a TLS certificate from ca-server",
    after_help = "Exit codes: 0 success, 1 error, 2 usage, 3 trust (fingerprint/TLS), 4 PSK rejected, 5 CA unreachable, 6 request refused, 7 service refused the installed files (rolled back), 8 CRL refused (the installed one stays)."
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
    /// Renew the certificate over mTLS when it is due, and re-install it.
    Renew(RenewArgs),
    /// Fetch the CRLs, verify them against the pinned CA, keep the newest,
    /// and re-install them for the services.
    Crl(CrlArgs),
    /// Fetch this host's OCSP response (from its certificate's AIA), verify
    /// it against the pinned CA, write DIR/cert.ocsp, and with --install
    /// haproxy staple it in HAProxy.
    Ocsp(OcspArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Write man pages (ca-client.1 and one per subcommand) into DIR.
    Man {
        #[arg(long, value_name = "DIR")]
        out_dir: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit 0 also when not due (it says so); exit 6 when the CA refuses, e.g. renewal_expired (expired beyond the CA's --renew-grace: a new PSK and bootstrap are needed). See docs/revocation.md."
)]
struct RenewArgs {
    /// CA server URL, e.g. https://ca.example.internal:8443
    #[arg(long, env = "CA_SERVER")]
    server: String,
    /// The bootstrap directory (key.pem, cert.pem, chain.pem, ca.pem).
    #[arg(long)]
    dir: PathBuf,
    /// Renew when this much of the lifetime is left: a percentage (33%) or a duration (10d).
    #[arg(long, default_value = "33%")]
    when_remaining: Threshold,
    /// Renew now, whatever is left.
    #[arg(long)]
    force: bool,
    /// Keep the current key (default: a new key for every renewal).
    #[arg(long, conflicts_with = "key_type")]
    reuse_key: bool,
    /// Type of the new key.
    #[arg(long, value_enum)]
    key_type: Option<KeyType>,
    /// Re-install for these services (as recorded by `ca-client install` for --dir).
    #[arg(long, value_enum, value_delimiter = ',')]
    install: Vec<ServiceKind>,
    /// Run this command (sh -c) after renewing, e.g. to reload a service that reads --dir.
    #[arg(long, value_name = "CMD")]
    reload: Option<String>,
    /// When due, first wait a random delay of up to this long (0: none)
    /// [default: a tenth of the renewal window, at most 1h; never more than
    /// a tenth of the life left; none once expired or with --force].
    #[arg(long, value_name = "DURATION")]
    jitter: Option<humantime::Duration>,
    /// HAProxy: hand a new certificate to the running process through its
    /// runtime API on this stats socket (level admin) instead of reloading
    /// it; a changed CRL still reloads (overrides the recorded install's).
    #[arg(long, value_name = "PATH")]
    haproxy_socket: Option<PathBuf>,
    #[command(flatten)]
    request: RequestArgs,
}

/// How long `renew` and `crl` keep trying, and what they print.
#[derive(Debug, clap::Args)]
struct RequestArgs {
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

#[derive(Debug, clap::Args)]
#[command(after_help = "See docs/revocation.md for the bundle and what each service needs.")]
struct CrlArgs {
    /// CA server URL (GET /v1/crl and /v1/crl/root).
    #[arg(long, env = "CA_SERVER", required_unless_present = "from_file")]
    server: Option<String>,
    /// Read the CRL bundle from this file (as `ca-server crl --out` writes it) instead.
    #[arg(long, value_name = "FILE", conflicts_with = "server")]
    from_file: Option<PathBuf>,
    /// The bootstrap directory (ca.pem and chain.pem are the pinned CA; crl.pem is written).
    #[arg(long)]
    dir: PathBuf,
    /// Re-install for these services when their CRL differs (as recorded by `ca-client install`).
    #[arg(long, value_enum, value_delimiter = ',')]
    install: Vec<ServiceKind>,
    #[command(flatten)]
    request: RequestArgs,
}

#[derive(Debug, clap::Args)]
#[command(after_help = "See docs/revocation.md (OCSP and stapling).")]
struct OcspArgs {
    /// The bootstrap directory (cert.pem, chain.pem, ca.pem; cert.ocsp is written).
    #[arg(long)]
    dir: PathBuf,
    /// OCSP responder URL [default: the certificate's authorityInfoAccess].
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// Install the response for these services (haproxy: next to its certificate).
    #[arg(long, value_enum, value_delimiter = ',')]
    install: Vec<ServiceKind>,
    /// HAProxy install directory (as given to `ca-client install haproxy --dest`)
    /// [default: the HAProxy installs recorded for --dir].
    #[arg(long, value_name = "DEST")]
    dest: Option<PathBuf>,
    /// HAProxy runtime socket (`stats socket ... level admin`): the response
    /// is pushed with `set ssl ocsp-response` and served at once.
    #[arg(long, value_name = "PATH")]
    haproxy_socket: Option<PathBuf>,
    /// Timeout of the request.
    #[arg(long, default_value = "30s")]
    timeout: humantime::Duration,
    /// Print the outcome as JSON.
    #[arg(long)]
    json: bool,
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
    #[command(flatten)]
    flags: InstallFlags,
    /// Print the configuration snippet and exit; install nothing.
    #[arg(long)]
    print_config: bool,
    /// Print the outcome as JSON.
    #[arg(long)]
    json: bool,
}

impl InstallArgs {
    fn options(&self) -> anyhow::Result<InstallOptions> {
        self.flags.options(self.service, &self.dir)
    }
}

#[derive(Debug, clap::Args)]
#[command(
    after_help = "With --bundle FILE (from `ca-server psk add HOST --bundle FILE`) nothing else is needed: \
the server, fingerprint, hostname, PSK and allowed names come from the bundle, which is deleted after success."
)]
struct BootstrapArgs {
    /// CA server URL, e.g. https://ca.example.internal:8443 [with --bundle: the bundle's]
    #[arg(long, env = "CA_SERVER", required_unless_present = "bundle")]
    server: Option<String>,
    /// Root fingerprint, sha256:<hex> (as `ca-server init` prints it).
    #[arg(long, env = "CA_FINGERPRINT", required_unless_present = "bundle")]
    fingerprint: Option<String>,
    /// This host's name (must match the PSK's hostname).
    #[arg(long, required_unless_present = "bundle")]
    hostname: Option<String>,
    /// File holding the PSK; deleted after success.
    #[arg(long, required_unless_present = "bundle", conflicts_with = "bundle")]
    psk_file: Option<PathBuf>,
    /// A spawner bundle (JSON: server, fingerprint, hostname, PSK); deleted after success.
    #[arg(long, value_name = "FILE")]
    bundle: Option<PathBuf>,
    /// Directory for the key and certificates.
    #[arg(long, env = "CA_CLIENT_DIR", default_value = "/etc/ca-client")]
    dir: PathBuf,
    /// Type of key to generate.
    #[arg(long, value_enum, default_value = "p256")]
    key_type: KeyType,
    /// Use this existing PKCS#8 key instead of generating one.
    #[arg(long)]
    key: Option<PathBuf>,
    /// Extra name to request (must be allowed for the PSK); repeatable.
    /// [with --bundle: the names the bundle allows]
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

impl BootstrapArgs {
    /// The options from the flags, or from the bundle (flags that are also
    /// given must agree with it; `--server` may point elsewhere, the pinned
    /// fingerprint keeps that safe).
    fn options(&self) -> Result<BootstrapOptions, (i32, String)> {
        let mut opts = BootstrapOptions {
            server: self.server.clone().unwrap_or_default(),
            fingerprint: self.fingerprint.clone().unwrap_or_default(),
            hostname: self.hostname.clone().unwrap_or_default(),
            psk_file: self.psk_file.clone().unwrap_or_default(),
            psk_in_bundle: false,
            dir: self.dir.clone(),
            key_type: self.key_type,
            key_file: self.key.clone(),
            extra_sans: self.sans.clone(),
            deadline: self.retry_for.into(),
            request_timeout: self.timeout.into(),
        };
        let Some(path) = &self.bundle else {
            return Ok(opts);
        };
        let bundle = Bundle::read(path).map_err(|e| (exit::ERROR, format!("{e:#}")))?;
        if let Some(given) = &self.hostname
            && *given != bundle.hostname
        {
            return Err((
                exit::USAGE,
                format!(
                    "--hostname {given} differs from the bundle's {}",
                    bundle.hostname
                ),
            ));
        }
        if let Some(given) = &self.fingerprint {
            let same = ca_client::trust::parse_fingerprint(given).ok()
                == ca_client::trust::parse_fingerprint(&bundle.fingerprint).ok();
            if !same {
                return Err((
                    exit::USAGE,
                    "--fingerprint differs from the bundle's".to_owned(),
                ));
            }
        }
        if self.server.is_none() {
            opts.server = bundle.server.clone();
        }
        opts.fingerprint = bundle.fingerprint.clone();
        opts.hostname = bundle.hostname.clone();
        opts.psk_file = path.clone();
        opts.psk_in_bundle = true;
        if self.sans.is_empty() {
            opts.extra_sans = bundle.sans.clone();
        }
        Ok(opts)
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
            let opts = match args.options() {
                Ok(opts) => opts,
                Err((code, message)) => {
                    eprintln!("error: {message}");
                    return code;
                }
            };
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
        Command::Renew(args) => run_renew(&args).await,
        Command::Crl(args) => run_crl(&args).await,
        Command::Ocsp(args) => run_ocsp(&args).await,
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

/// Prints a failure's message and returns its exit code.
fn failed(e: Failure) -> i32 {
    eprintln!("error: {e}");
    e.code
}

async fn run_renew(args: &RenewArgs) -> i32 {
    let opts = RenewOptions {
        server: args.server.clone(),
        dir: args.dir.clone(),
        when: args.when_remaining,
        force: args.force,
        reuse_key: args.reuse_key,
        key_type: args.key_type.unwrap_or(KeyType::P256),
        install: args.install.clone(),
        reload: args.reload.clone(),
        deadline: args.request.retry_for.into(),
        request_timeout: args.request.timeout.into(),
        jitter: args
            .jitter
            .map_or(Jitter::Default, |d| Jitter::Max(d.into())),
        haproxy_socket: args.haproxy_socket.clone(),
    };
    let out = match renew::renew(&opts).await {
        Ok(out) => out,
        Err(e) => return failed(e),
    };
    if args.request.json {
        println!("{}", serde_json::to_string(&out).expect("serialisable"));
        return exit::OK;
    }
    match out {
        RenewOutcome::NotDue {
            hostname,
            serial,
            not_after,
            left_percent,
            threshold,
        } => println!(
            "not due: {hostname} serial={serial} not_after={not_after} ({left_percent}% of its lifetime left; renews at {threshold})"
        ),
        RenewOutcome::Renewed {
            hostname,
            old_serial,
            serial,
            not_after,
            recovered,
            services,
            reloaded,
        } => {
            println!(
                "renewed {hostname} serial={old_serial} -> {serial} not_after={not_after}{}{}",
                if recovered {
                    " (recovered the certificate of an earlier attempt)"
                } else {
                    ""
                },
                if reloaded { " reload ran" } else { "" }
            );
            for s in services {
                println!("  {s}");
            }
        }
    }
    exit::OK
}

async fn run_ocsp(args: &OcspArgs) -> i32 {
    if args.install.iter().any(|s| *s != ServiceKind::Haproxy) {
        eprintln!(
            "error: --install: only haproxy takes a stapled response from a file (nginx fetches its own)"
        );
        return exit::USAGE;
    }
    let opts = ca_client::stapling::OcspOptions {
        dir: args.dir.clone(),
        url: args.url.clone(),
        install: args.install.clone(),
        dest: args.dest.clone(),
        haproxy_socket: args.haproxy_socket.clone(),
        timeout: args.timeout.into(),
    };
    let out = match ca_client::stapling::run(&opts).await {
        Ok(out) => out,
        Err(e) => return failed(e),
    };
    if args.json {
        println!("{}", serde_json::to_string(&out).expect("serialisable"));
    } else {
        println!(
            "{} serial={} this_update={} next_update={}{} file={}",
            out.status,
            out.serial,
            out.this_update,
            out.next_update.as_deref().unwrap_or("-"),
            out.revoked_at
                .as_deref()
                .map(|t| format!(" revoked_at={t}"))
                .unwrap_or_default(),
            out.file.display()
        );
        for f in &out.installed {
            println!("  installed {}", f.display());
        }
        if out.pushed {
            println!("  pushed to HAProxy's runtime socket");
        }
    }
    exit::OK
}

async fn run_crl(args: &CrlArgs) -> i32 {
    let source = match (&args.server, &args.from_file) {
        (_, Some(file)) => Source::File(file.clone()),
        (Some(url), None) => Source::Server(url.clone()),
        (None, None) => unreachable!("clap requires --server or --from-file"),
    };
    let opts = CrlOptions {
        source,
        dir: args.dir.clone(),
        install: args.install.clone(),
        deadline: args.request.retry_for.into(),
        request_timeout: args.request.timeout.into(),
    };
    let out = match crl::refresh(&opts).await {
        Ok(out) => out,
        Err(e) => return failed(e),
    };
    if args.request.json {
        println!("{}", serde_json::to_string(&out).expect("serialisable"));
        return exit::OK;
    }
    println!(
        "{} CRL number={} root_number={} revoked={} next_update={}{}",
        if out.updated {
            "installed"
        } else {
            "up to date:"
        },
        out.number,
        out.root_number,
        out.revoked,
        out.next_update,
        match out.previous {
            Some(p) if out.updated => format!(" (was {p})"),
            _ => String::new(),
        }
    );
    for s in out.services {
        println!("  {s}");
    }
    exit::OK
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
            // Remembered for `renew --install` and `crl --install`.
            if let Err(e) = record::remember(args.service, &args.dir, &args.flags) {
                tracing::warn!(error = %format!("{e:#}"), "could not record the install");
            }
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
        self.service.name()
    }
}
