//! The command line: clap definitions, then one function per verb; the verb
//! groups with more than a line of their own live beside it (`psk.rs`,
//! `cert.rs`, `store.rs`); the exit codes are named in [`exit`]. Every
//! verb takes `--data-dir` (`CA_DATA_DIR`) and `--database-url`
//! (`CA_DATABASE_URL`), and reads `--config FILE` (`CA_CONFIG`) first
//! ([`crate::config`]).
//!
//! Exit codes: 0 success, 1 error, 2 usage error (a bad configuration file
//! too), 3 not found, 4 `doctor` found only warnings.

use crate::admin::actor;
use crate::admin::doctor::DoctorFindings;
use crate::admin::output as admin_output;
use crate::admin::revocation::{self, CrlArgs, CrlValidityArgs, RevokeArgs};
use crate::admin::{
    Admin, AdminError, AuditQuery, CertQuery, PskAddRequest, PskAdded, PskBatchRequest, RemoteArgs,
};
use crate::clock::{Clock, SystemClock};
use crate::edge::server::Limits;
use crate::pki::ca::{self, CaPaths};
use crate::serve::{self, ServeOptions};
use crate::store::{AuditEvent, Store};
use crate::store::{Event, Outcome};
use anyhow::{Context, Result, bail};
use clap::{CommandFactory, Parser, Subcommand};
use policy::Psk;
use policy::hostname::escape_for_display;
use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;

mod cert;
pub mod log_sink;
mod psk;
mod store;
use cert::cert;
use psk::psk;
use store::store_copy;

#[derive(Debug, Parser)]
#[command(
    name = "ca-server",
    version,
    about = "Internal certificate authority with one-time PSK autosigning",
    after_help = "Exit codes: 0 success, 1 error, 2 usage error (or a bad configuration file), 3 not found, 4 doctor found only warnings."
)]
pub struct Cli {
    /// Directory holding the CA keys, certificates and the SQLite store.
    #[arg(long, env = "CA_DATA_DIR", default_value = "./ca-data", global = true)]
    pub data_dir: PathBuf,
    /// Store URL: sqlite://PATH or postgres://... [default: sqlite://<data-dir>/ca.db]
    #[arg(long, env = "CA_DATABASE_URL", global = true)]
    pub database_url: Option<String>,
    /// Log filter (tracing syntax, e.g. info or ca_server=debug).
    #[arg(long, env = "CA_LOG", default_value = "info", global = true)]
    pub log: String,
    /// Log lines for people (human) or one JSON object per line (json).
    #[arg(long, env = "CA_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human, global = true)]
    pub log_format: LogFormat,
    /// Configuration file (TOML): top-level keys for these global flags,
    /// [serve] for serve's. Flags and CA_* variables override it.
    #[arg(long, env = crate::config::CONFIG_ENV, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// CA keys in a PKCS#11 token instead of files (docs/pkcs11.md).
    #[command(flatten)]
    pub pkcs11: crate::pki::pkcs11::Pkcs11Args,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the root and intermediate CA (if absent) and print the root fingerprint.
    Init {
        /// Name used in the CA certificates' subjects.
        #[arg(long, env = "CA_NAME", default_value = "Fleet")]
        name: String,
        /// Base URL of the plain-HTTP listener (`serve --http-public-url`):
        /// the new intermediate then names the root CRL there as its CRL
        /// distribution point.
        #[arg(long, env = "CA_HTTP_PUBLIC_URL", value_name = "URL")]
        http_public_url: Option<String>,
    },
    /// Serve the HTTPS API (initialises the data dir on first start).
    Serve(Box<ServeArgs>),
    /// Manage pre-shared keys (here, or on a remote server with --server URL --admin-cert DIR).
    Psk(PskArgs),
    /// List and inspect certificates (here, or remotely with --server URL --admin-cert DIR).
    Cert(CertArgs),
    /// Issue admin certificates for the admin API (remote psk, cert, revoke, audit).
    #[command(subcommand, name = "admin-cert")]
    AdminCert(crate::admin::cert::AdminCertCommand),
    /// Revoke a certificate by serial, or every unexpired certificate of a
    /// host, and publish the new CRL.
    Revoke(RevokeArgs),
    /// Print (or write) the current CRL bundle: intermediate CRL, then root CRL.
    Crl(CrlArgs),
    /// Move the store to another database.
    #[command(subcommand)]
    Store(StoreCommand),
    /// ACME accounts (here, or remotely with --server URL --admin-cert DIR).
    Acme(crate::admin::acme::AcmeArgs),
    /// Show the audit log; `audit verify` checks its hash chain, `audit
    /// checkpoint` signs its head.
    #[command(args_conflicts_with_subcommands = true)]
    Audit {
        #[command(subcommand)]
        action: Option<crate::admin::audit::AuditCommand>,
        /// How far back to look (e.g. 1h, 7d).
        #[arg(long, default_value = "1h")]
        since: humantime::Duration,
        /// Only rows about this hostname.
        #[arg(long)]
        host: Option<String>,
        /// Only rows of this event (issued, sign, replayed, psk_added, psk_removed,
        /// psk_expired, server_cert_issued, store_copied, ...).
        #[arg(long)]
        event: Option<String>,
        /// Most rows to show.
        #[arg(long, default_value_t = 1000)]
        limit: i64,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Check or show the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Check key file permissions, CA and CRL expiry, the store and its
    /// migrations, and the running server; print what to fix.
    Doctor(crate::admin::doctor::DoctorArgs),
    /// Replace the intermediate CA (the signer) under the same root.
    #[command(subcommand)]
    Intermediate(IntermediateCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Write man pages (ca-server.1 and one per subcommand) into DIR.
    Man {
        #[arg(long, value_name = "DIR")]
        out_dir: PathBuf,
    },
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a configuration file (FILE, or --config / CA_CONFIG) and print
    /// the effective configuration `serve` would use, secrets redacted.
    Check {
        /// The file to check [default: --config / CA_CONFIG].
        file: Option<PathBuf>,
        /// Print JSON instead of TOML.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum IntermediateCommand {
    /// Make a new intermediate key and certificate signed by the root, keep
    /// the old ones in retired/, and print the new intermediate's details.
    /// Restart every `serve` (each replica's data dir) to sign with it.
    Rotate {
        /// The root key, if it is not in the data dir (kept offline).
        #[arg(long, value_name = "FILE")]
        root_key: Option<PathBuf>,
        /// Lifetime of the new intermediate (capped by the root's).
        #[arg(long, default_value = "5y")]
        validity: humantime::Duration,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Base URL of the plain-HTTP listener: the new intermediate names the
        /// root CRL there [default: the old intermediate's CRL distribution point, if any].
        #[arg(long, env = "CA_HTTP_PUBLIC_URL", value_name = "URL")]
        http_public_url: Option<String>,
    },
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "CA_LISTEN", default_value = "127.0.0.1:8443")]
    pub listen: SocketAddr,
    /// Name (DNS or IP) for the server's own certificate; repeatable.
    /// [default: the machine's hostname and localhost]
    #[arg(long = "hostname", env = "CA_HOSTNAMES", value_delimiter = ',')]
    pub hostnames: Vec<String>,
    /// URL clients reach this server at (used for the CRL distribution point).
    /// [default: https://<first hostname>:<port>]
    #[arg(long, env = "CA_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Lifetime of issued certificates.
    #[arg(long, env = "CA_VALIDITY", default_value = "30d")]
    pub validity: humantime::Duration,
    /// How long after expiry a host's current certificate may still renew
    /// at /v1/renew (0: never after expiry). Admin endpoints never accept
    /// an expired certificate.
    #[arg(long, env = "CA_RENEW_GRACE", default_value = "14d")]
    pub renew_grace: humantime::Duration,
    /// CA name used if the data dir is initialised by this start.
    #[arg(long, env = "CA_NAME", default_value = "Fleet")]
    pub name: String,
    #[command(flatten)]
    pub crl: CrlValidityArgs,
    #[command(flatten)]
    pub limits: crate::edge::server::LimitArgs,
    #[command(flatten)]
    pub throttle: crate::issue::throttle::ThrottleArgs,
    /// Also serve CRLs, CA certificates and OCSP over plain HTTP on this
    /// address (GET/POST only, nothing secret); new leaves then name it in
    /// their CRL distribution point and authorityInfoAccess.
    #[arg(long, env = "CA_HTTP_LISTEN", value_name = "ADDR")]
    pub http_listen: Option<SocketAddr>,
    /// URL relying parties reach the plain-HTTP listener at.
    /// [default: http://<first hostname>:<port>]
    #[arg(
        long,
        env = "CA_HTTP_PUBLIC_URL",
        value_name = "URL",
        requires = "http_listen"
    )]
    pub http_public_url: Option<String>,
    #[command(flatten)]
    pub ocsp: crate::pki::responder::OcspArgs,
    #[command(flatten)]
    pub audit_trail: crate::store::audit_sink::AuditTrailArgs,
}

/// `psk`: the verb, and where it runs.
#[derive(Debug, clap::Args)]
pub struct PskArgs {
    #[command(flatten)]
    pub remote: RemoteArgs,
    #[command(subcommand)]
    pub command: PskCommand,
}

/// `cert`: the verb, and where it runs.
#[derive(Debug, clap::Args)]
pub struct CertArgs {
    #[command(flatten)]
    pub remote: RemoteArgs,
    #[command(subcommand)]
    pub command: CertCommand,
}

#[derive(Debug, Subcommand)]
pub enum PskCommand {
    /// Create (or replace) the PSK of HOST and print it on stdout.
    Add {
        /// The hostname the PSK is bound to.
        host: String,
        /// How long the PSK stays valid.
        #[arg(long, default_value = "1h")]
        ttl: humantime::Duration,
        /// An extra name (DNS or IP) the certificate may carry; repeatable.
        #[arg(long = "san")]
        sans: Vec<String>,
        /// Read the PSK from stdin instead of generating one (>= 128 bits, hex or base64url).
        #[arg(long)]
        psk_stdin: bool,
        /// Print JSON with the server URL, root fingerprint and expiry.
        #[arg(long)]
        json: bool,
        /// Server URL to put in the JSON hints and the bundle [default:
        /// remotely, the server's public URL].
        #[arg(long, env = "CA_PUBLIC_URL")]
        server_url: Option<String>,
        /// Write a spawner bundle (server URL, root fingerprint, hostname,
        /// PSK; JSON, mode 0600) to FILE for `ca-client bootstrap --bundle`,
        /// instead of printing the PSK.
        #[arg(long, value_name = "FILE")]
        bundle: Option<PathBuf>,
    },
    /// Create (or replace) a PSK for every hostname read from stdin (one per
    /// line) in one transaction; prints `HOST<TAB>PSK` lines.
    Batch {
        /// How long the PSKs stay valid.
        #[arg(long, default_value = "1h")]
        ttl: humantime::Duration,
        /// An extra name (DNS or IP) every certificate may carry; repeatable.
        #[arg(long = "san")]
        sans: Vec<String>,
    },
    /// List live PSKs (hostnames and expiry; never the secret).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove the PSK of HOST.
    Remove { host: String },
}

#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// List certificates, newest first.
    List {
        /// Only certificates valid now that expire within this duration (e.g. 7d).
        #[arg(long)]
        expiring: Option<humantime::Duration>,
        /// Only this host's certificates.
        #[arg(long)]
        host: Option<String>,
        /// Only stale hosts: whose current certificate expired without a
        /// renewal, each marked stale=within_grace (it can still renew) or
        /// stale=beyond_grace (it needs a new PSK: `psk add HOST`).
        #[arg(long, conflicts_with = "expiring")]
        stale: bool,
        /// The renewal grace for --stale [default: remotely the server's
        /// --renew-grace, locally 14d].
        #[arg(long, env = "CA_RENEW_GRACE")]
        renew_grace: Option<humantime::Duration>,
        #[arg(long)]
        json: bool,
    },
    /// Show one certificate by serial (hex, any case, colons optional) or the newest of a host.
    Show {
        target: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Copy this store (--database-url) into an empty database, in one
    /// transaction, and verify row counts and contents. Stop every
    /// ca-server using the source first.
    Copy {
        /// The target: postgres://USER@HOST/DB (or sqlite://PATH).
        #[arg(long)]
        to: String,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// The exit codes, named (the `after_help` above lists them for users).
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// Any error not named below.
    pub const ERROR: i32 = 1;
    /// A usage error: bad flags, or a bad configuration file.
    pub const USAGE: i32 = 2;
    /// The thing asked about does not exist.
    pub const NOT_FOUND: i32 = 3;
    /// `doctor` found only warnings.
    pub const WARNINGS: i32 = 4;
}
/// Exit code for "the thing asked about does not exist".
pub const EXIT_NOT_FOUND: i32 = exit::NOT_FOUND;
/// Exit code of `doctor` when it found only warnings.
pub const EXIT_WARNINGS: i32 = exit::WARNINGS;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct NotFound(pub(crate) String);

/// An error that is the caller's to fix in what they gave (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Parses the command line, runs it, and returns the exit code, once the
/// log lines queued by then are written (`log_sink`).
pub fn main() -> i32 {
    let code = parse_and_run();
    log_sink::flush();
    code
}

fn parse_and_run() -> i32 {
    let parsed = match crate::config::parse::<Cli>(std::env::args_os().collect()) {
        Ok(parsed) => parsed,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
        }
    };
    let cli = parsed.cli;
    init_logging(&cli.log, cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return exit::ERROR;
        }
    };
    let result = match cli.command {
        Command::Config(ConfigCommand::Check { ref file, json }) => {
            config_check(file.as_deref(), parsed.file.as_ref(), &parsed.matches, json)
        }
        Command::Doctor(ref args) => {
            let server = match (&args.server, args.no_server) {
                (_, true) => None,
                (Some(url), false) => Some((url.clone(), true)),
                (None, false) => {
                    crate::config::effective(Cli::command(), parsed.file.as_ref(), &parsed.matches)
                        .ok()
                        .and_then(|s| crate::admin::doctor::default_server(&s))
                        .map(|url| (url, false))
                }
            };
            let url = database_url(&cli);
            let target = crate::admin::doctor::Target {
                pkcs11: &cli.pkcs11,
                data_dir: &cli.data_dir,
                database_url: &url,
                config: parsed.file.as_ref(),
                server,
            };
            runtime.block_on(crate::admin::doctor::run(&target, args.json, &SystemClock))
        }
        _ => {
            let reserved = configured_server_names(parsed.file.as_ref());
            runtime.block_on(run(cli, &reserved))
        }
    };
    match result {
        Ok(()) => exit::OK,
        Err(e) => {
            if let Some(findings) = e.downcast_ref::<DoctorFindings>() {
                eprintln!("{findings}");
                return if findings.failures > 0 {
                    exit::ERROR
                } else {
                    exit::WARNINGS
                };
            }
            eprintln!("error: {e:#}");
            if e.downcast_ref::<NotFound>().is_some()
                || matches!(e.downcast_ref(), Some(AdminError::NotFound(_)))
            {
                exit::NOT_FOUND
            } else if e.downcast_ref::<UsageError>().is_some() {
                exit::USAGE
            } else {
                exit::ERROR
            }
        }
    }
}

fn init_logging(filter: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(log_sink::MakeSink::stderr())
        .with_target(false);
    let _ = match format {
        LogFormat::Human => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        // One JSON object per line, the event's fields at the top level.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
}

/// `config check [FILE]`: validates the file and prints the effective
/// configuration (what `serve` would use here), secrets redacted.
fn config_check(
    file: Option<&std::path::Path>,
    loaded: Option<&crate::config::ConfigFile>,
    matches: &clap::ArgMatches,
    json: bool,
) -> Result<()> {
    use clap::CommandFactory;
    let explicit = match file {
        Some(path) => Some(
            crate::config::ConfigFile::load(path, &Cli::command())
                .map_err(|e| UsageError(format!("{e:#}")))?,
        ),
        None => None,
    };
    let file = explicit.as_ref().or(loaded);
    let settings = crate::config::effective(Cli::command(), file, matches)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&settings)?);
    } else {
        print!("{}", crate::config::to_toml(&settings, file));
    }
    match file {
        Some(f) => {
            if f.readable_by_others && f.holds_secret() {
                eprintln!(
                    "warning: {} holds a password and is readable by other users: chmod 640 (or 600) it",
                    f.path.display()
                );
            }
            eprintln!("{}: ok", f.path.display());
        }
        None => eprintln!(
            "no configuration file (--config or CA_CONFIG): defaults and environment only"
        ),
    }
    Ok(())
}

fn database_url(cli: &Cli) -> String {
    cli.database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", cli.data_dir.join("ca.db").display()))
}

/// The CA's own names as this machine's configuration gives them to `serve`
/// (`CA_HOSTNAMES` / `[serve] hostnames`, else the machine's hostname and
/// localhost; `CA_PUBLIC_URL` / `[serve] public_url`; `CA_HTTP_PUBLIC_URL` /
/// `[serve] http_public_url`), for the local
/// `psk add` and `psk batch` to refuse. The store adds every live server
/// certificate's name (`admin::Ops::psk_add`).
fn configured_server_names(file: Option<&crate::config::ConfigFile>) -> policy::ReservedNames {
    let from_file = |key: &str| -> Vec<String> {
        file.into_iter()
            .flat_map(|f| f.serve.iter())
            .filter(|s| s.key == key)
            .flat_map(|s| s.values.clone())
            .collect()
    };
    let from_env = |var: &str| std::env::var(var).ok().filter(|v| !v.trim().is_empty());
    let hostnames: Vec<String> = match from_env("CA_HOSTNAMES") {
        Some(v) => v.split(',').map(str::to_owned).collect(),
        None => from_file("hostnames"),
    };
    let names = serve::server_names(&hostnames).unwrap_or_default();
    let public_url = from_env("CA_PUBLIC_URL").or_else(|| from_file("public_url").pop());
    let mut reserved = serve::reserved_names(&names, public_url.as_deref().unwrap_or(""));
    let http_url = from_env("CA_HTTP_PUBLIC_URL").or_else(|| from_file("http_public_url").pop());
    if let Some(host) = http_url
        .as_deref()
        .and_then(policy::ReservedNames::url_host)
    {
        for name in policy::ReservedNames::from_text([host]).names() {
            reserved.insert(name.clone());
        }
    }
    reserved
}

/// Where this run's CA keys are: a PKCS#11 token when `--pkcs11-module` is
/// set (opened and logged in here, so a wrong PIN, a missing module or an
/// absent token stops the verb with its cause), else the data dir's files.
fn ca_paths(dir: &std::path::Path, pkcs11: &crate::pki::pkcs11::Pkcs11Args) -> Result<CaPaths> {
    let keys = match pkcs11.open()? {
        Some(token) => ca::KeySource::Token(token),
        None => ca::KeySource::Files,
    };
    Ok(CaPaths::with_keys(dir, keys))
}

async fn run(cli: Cli, reserved: &policy::ReservedNames) -> Result<()> {
    let url = database_url(&cli);
    let clock = SystemClock;
    match cli.command {
        Command::Init {
            name,
            http_public_url,
        } => {
            let root_crl = http_public_url
                .as_deref()
                .map(|u| {
                    serve::check_http_public_url(u).map(|u| ca::PlainHttpUrls::new(&u).root_crl)
                })
                .transpose()?;
            let paths = ca_paths(&cli.data_dir, &cli.pkcs11)?;
            let out = ca::init_with(&paths, &name, clock.now(), root_crl.as_deref())?;
            // The PSK seal key too, so one copy of the data dir serves every replica.
            crate::pki::psk_seal::load_or_create(&cli.data_dir)?;
            // And the audit key that signs the audit chain's checkpoints.
            // (in the token when the CA keys are there).
            crate::pki::audit_key::open_or_create(&cli.data_dir, paths.keys.token())?;
            if !out.created {
                eprintln!("{} is already initialised", cli.data_dir.display());
            }
            println!("{}", out.fingerprint);
            Ok(())
        }
        Command::Serve(args) => {
            let keys = ca_paths(&cli.data_dir, &cli.pkcs11)?.keys;
            serve::serve(ServeOptions {
                keys,
                data_dir: cli.data_dir,
                database_url: url,
                listen: args.listen,
                hostnames: args.hostnames,
                public_url: args.public_url,
                validity: args.validity.into(),
                renew_grace: args.renew_grace.into(),
                name: args.name,
                limits: Limits {
                    ipv6_prefix: args.throttle.throttle_ipv6_prefix,
                    ..Limits::try_from(&args.limits)?
                },
                throttle: (&args.throttle).into(),
                audit_flush_interval: args.throttle.audit_flush_interval.into(),
                crl: args.crl.config(),
                http_listen: args.http_listen,
                http_public_url: args.http_public_url,
                ocsp: args.ocsp.config()?,
                audit_trail: args.audit_trail,
            })
            .await
        }
        Command::Psk(args) => psk(args, &cli.data_dir, &url, reserved).await,
        Command::Cert(args) => cert(args, &cli.data_dir, &url).await,
        Command::Acme(args) => crate::admin::acme::run(args, &cli.data_dir, &url).await,
        Command::AdminCert(cmd) => {
            let paths = ca_paths(&cli.data_dir, &cli.pkcs11)?;
            crate::admin::cert::run(cmd, &paths, &url, &clock).await
        }
        Command::Revoke(args) => revocation::revoke(args, &cli.data_dir, &url).await,
        Command::Crl(args) => {
            let paths = ca_paths(&cli.data_dir, &cli.pkcs11)?;
            revocation::crl(args, &paths, &url, std::sync::Arc::new(clock)).await
        }
        Command::Store(StoreCommand::Copy { to, json }) => {
            store_copy(&url, &to, json, &clock).await
        }
        Command::Audit {
            action: Some(action),
            ..
        } => {
            // The audit key is in the token when the CA keys are (checkpoint only).
            let token = match &action {
                crate::admin::audit::AuditCommand::Checkpoint { .. } => cli.pkcs11.open()?,
                _ => None,
            };
            crate::admin::audit::run(action, &cli.data_dir, token.as_ref(), &url, &clock).await
        }
        Command::Audit {
            action: None,
            since,
            host,
            event,
            limit,
            json,
            remote,
        } => {
            let admin = Admin::open(&remote, &cli.data_dir, &url).await?;
            let q = AuditQuery {
                since_secs: std::time::Duration::from(since).as_secs(),
                host,
                event,
                limit,
            };
            admin_output::audit(&admin.audit(&q).await?, json)
        }
        Command::Config(_) => unreachable!("handled before the runtime starts"),
        Command::Doctor(_) => unreachable!("handled before the runtime starts"),
        Command::Intermediate(IntermediateCommand::Rotate {
            root_key,
            validity,
            json,
            http_public_url,
        }) => {
            let root_crl = http_public_url
                .as_deref()
                .map(|u| {
                    serve::check_http_public_url(u).map(|u| ca::PlainHttpUrls::new(&u).root_crl)
                })
                .transpose()?;
            crate::admin::rotate::run(
                &ca_paths(&cli.data_dir, &cli.pkcs11)?,
                root_key.as_deref(),
                validity.into(),
                json,
                &clock,
                root_crl.as_deref(),
            )
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            proto::clidocs::completions(Cli::command(), "ca-server", shell);
            Ok(())
        }
        Command::Man { out_dir } => {
            use clap::CommandFactory;
            proto::clidocs::man_pages(Cli::command(), &out_dir)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_configurable_flag_has_its_ca_environment_variable() {
        let command = Cli::command();
        for section in [None, Some(crate::config::SERVE_SECTION)] {
            let args = crate::config::settable_args(&command, section);
            assert!(!args.is_empty());
            for arg in args {
                let id = arg.get_id().as_str();
                let want = format!("CA_{}", id.to_ascii_uppercase());
                assert_eq!(
                    arg.get_env().map(|e| e.to_string_lossy().into_owned()),
                    Some(want),
                    "flag {id} needs env = \"CA_{}\" to be configurable",
                    id.to_ascii_uppercase()
                );
            }
        }
    }
}
