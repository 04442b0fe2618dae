//! The command line: clap definitions, then one function per verb. Every
//! verb takes `--data-dir` (`CA_DATA_DIR`) and `--database-url`
//! (`CA_DATABASE_URL`).
//!
//! Exit codes: 0 success, 1 error, 2 usage error, 3 not found.

use crate::ca::{self, CaPaths};
use crate::clock::{Clock, SystemClock};
use crate::revocation::{self, CrlArgs, CrlValidityArgs, RevokeArgs};
use crate::serve::{self, ServeOptions};
use crate::server::Limits;
use crate::store::{AuditEvent, CertRecord, Store};
use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use policy::hostname::escape_for_display;
use policy::{AllowedName, Psk};
use ring::rand::SecureRandom;
use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "ca-server",
    version,
    about = "Internal certificate authority with one-time PSK autosigning",
    after_help = "Exit codes: 0 success, 1 error, 2 usage error, 3 not found."
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
    },
    /// Serve the HTTPS API (initialises the data dir on first start).
    Serve(ServeArgs),
    /// Manage pre-shared keys.
    #[command(subcommand)]
    Psk(PskCommand),
    /// List and inspect certificates.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Revoke a certificate by serial, or every unexpired certificate of a
    /// host, and publish the new CRL.
    Revoke(RevokeArgs),
    /// Print (or write) the current CRL bundle: intermediate CRL, then root CRL.
    Crl(CrlArgs),
    /// Move the store to another database.
    #[command(subcommand)]
    Store(StoreCommand),
    /// Show the audit log.
    Audit {
        /// How far back to look (e.g. 1h, 7d).
        #[arg(long, default_value = "1h")]
        since: humantime::Duration,
        /// Most rows to show.
        #[arg(long, default_value_t = 1000)]
        limit: i64,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
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
    /// CA name used if the data dir is initialised by this start.
    #[arg(long, env = "CA_NAME", default_value = "Fleet")]
    pub name: String,
    #[command(flatten)]
    pub crl: CrlValidityArgs,
    #[command(flatten)]
    pub limits: crate::server::LimitArgs,
    #[command(flatten)]
    pub throttle: crate::throttle::ThrottleArgs,
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
        /// Server URL to put in the JSON hints.
        #[arg(long, env = "CA_PUBLIC_URL")]
        server_url: Option<String>,
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

/// Exit code for "the thing asked about does not exist".
pub const EXIT_NOT_FOUND: i32 = 3;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct NotFound(pub(crate) String);

/// Parses the command line, runs it, and returns the exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    init_logging(&cli.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return 1;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<NotFound>().is_some() {
                EXIT_NOT_FOUND
            } else {
                1
            }
        }
    }
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

fn database_url(cli: &Cli) -> String {
    cli.database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", cli.data_dir.join("ca.db").display()))
}

/// Who runs this CLI, for the audit log.
pub(crate) fn actor() -> String {
    use std::os::unix::fs::MetadataExt;
    let user = std::env::var("USER").unwrap_or_default();
    let uid = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX);
    format!(
        "cli:{}(uid {uid})",
        if user.is_empty() { "?" } else { &user }
    )
}

async fn run(cli: Cli) -> Result<()> {
    let url = database_url(&cli);
    let clock = SystemClock;
    match cli.command {
        Command::Init { name } => {
            let out = ca::init(&CaPaths::new(&cli.data_dir), &name, clock.now())?;
            if !out.created {
                eprintln!("{} is already initialised", cli.data_dir.display());
            }
            println!("{}", out.fingerprint);
            Ok(())
        }
        Command::Serve(args) => {
            serve::serve(ServeOptions {
                data_dir: cli.data_dir,
                database_url: url,
                listen: args.listen,
                hostnames: args.hostnames,
                public_url: args.public_url,
                validity: args.validity.into(),
                name: args.name,
                limits: Limits::try_from(&args.limits)?,
                throttle: (&args.throttle).into(),
                crl: args.crl.config(),
            })
            .await
        }
        Command::Psk(cmd) => psk(cmd, &cli.data_dir, &url, &clock).await,
        Command::Cert(cmd) => cert(cmd, &url, &clock).await,
        Command::Revoke(args) => {
            revocation::revoke(args, &cli.data_dir, &url, std::sync::Arc::new(clock)).await
        }
        Command::Crl(args) => {
            revocation::crl(args, &cli.data_dir, &url, std::sync::Arc::new(clock)).await
        }
        Command::Store(StoreCommand::Copy { to, json }) => {
            store_copy(&url, &to, json, &clock).await
        }
        Command::Audit { since, limit, json } => {
            let store = Store::open(&url).await?;
            let since = clock.now() - std::time::Duration::from(since).as_secs() as i64;
            for row in store.audit_since(since, limit).await? {
                if json {
                    println!("{}", serde_json::to_string(&row)?);
                } else {
                    println!("{}", format_audit(&row));
                }
            }
            Ok(())
        }
    }
}

/// One audit row as an escaped, single line.
fn format_audit(a: &AuditEvent) -> String {
    let opt = |s: &Option<String>| {
        s.as_deref()
            .map(escape_for_display)
            .unwrap_or_else(|| "-".into())
    };
    let repeats = match a.last_at {
        Some(last) if a.count > 1 => format!(" count={} last={}", a.count, rfc3339(last)),
        _ => String::new(),
    };
    format!(
        "{} {} outcome={} host={} serial={} reason={} peer={} actor={}{repeats}",
        rfc3339(a.at),
        a.event,
        a.outcome,
        opt(&a.hostname),
        a.serial.as_deref().unwrap_or("-"),
        opt(&a.reason),
        opt(&a.peer),
        opt(&a.actor),
    )
}

/// Unix seconds as RFC 3339 UTC.
pub fn rfc3339(t: i64) -> String {
    ca_client::timefmt::rfc3339(t)
}

async fn psk(
    cmd: PskCommand,
    data_dir: &std::path::Path,
    url: &str,
    clock: &SystemClock,
) -> Result<()> {
    match cmd {
        PskCommand::Add {
            host,
            ttl,
            sans,
            psk_stdin,
            json,
            server_url,
        } => {
            policy::hostname::validate(&host)
                .with_context(|| format!("hostname {}", escape_for_display(&host)))?;
            let allowed = sans
                .iter()
                .map(|s| {
                    AllowedName::parse(s)
                        .with_context(|| format!("--san {}", escape_for_display(s)))
                })
                .collect::<Result<Vec<_>>>()?;
            let ttl: std::time::Duration = ttl.into();
            if ttl.is_zero() {
                bail!("--ttl must be positive");
            }
            let psk = if psk_stdin {
                let mut buf = zeroize::Zeroizing::new(String::new());
                std::io::stdin()
                    .read_to_string(&mut buf)
                    .context("reading the PSK from stdin")?;
                Psk::new_supplied(buf.trim().to_owned()).context("the PSK on stdin")?
            } else {
                generate_psk()?
            };
            let now = clock.now();
            let expires_at = now + ttl.as_secs() as i64;
            let store = Store::open(url).await?;
            store
                .put_psk(
                    &host,
                    &psk.hash(),
                    &allowed,
                    now,
                    expires_at,
                    &AuditEvent {
                        at: now,
                        event: "psk_added".into(),
                        hostname: Some(host.clone()),
                        outcome: "ok".into(),
                        reason: Some(format!(
                            "ttl {}s; extra names {}",
                            ttl.as_secs(),
                            allowed.len()
                        )),
                        actor: Some(actor()),
                        ..Default::default()
                    },
                )
                .await?;
            if json {
                let paths = CaPaths::new(data_dir);
                let fingerprint = ca::read_cert_der(&paths.root_cert)
                    .ok()
                    .map(|d| ca::fingerprint(&d));
                let out = serde_json::json!({
                    "hostname": host,
                    "psk": psk.expose(),
                    "expires_at": rfc3339(expires_at),
                    "allowed_sans": sans,
                    "fingerprint": fingerprint,
                    "server_url": server_url,
                });
                println!("{out}");
            } else {
                println!("{}", psk.expose());
            }
            Ok(())
        }
        PskCommand::Batch { ttl, sans } => {
            let (allowed, ttl) = parse_grant(&sans, ttl)?;
            let mut input = String::new();
            std::io::stdin()
                .read_to_string(&mut input)
                .context("reading hostnames from stdin")?;
            let hosts: Vec<&str> = input
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            let mut psks = Vec::with_capacity(hosts.len());
            let mut entries = Vec::with_capacity(hosts.len());
            for host in &hosts {
                validate_host(host)?;
                let psk = generate_psk()?;
                entries.push((host.to_string(), psk.hash()));
                psks.push(psk);
            }
            let now = clock.now();
            let store = Store::open(url).await?;
            let audit = AuditEvent {
                at: now,
                event: "psk_added".into(),
                outcome: "ok".into(),
                reason: Some(format!(
                    "batch; ttl {}s; extra names {}",
                    ttl.as_secs(),
                    allowed.len()
                )),
                actor: Some(actor()),
                ..Default::default()
            };
            store
                .put_psks(&entries, &allowed, now, now + ttl.as_secs() as i64, &audit)
                .await?;
            let mut out = String::with_capacity(hosts.len() * 64);
            for (host, psk) in hosts.iter().zip(&psks) {
                out.push_str(host);
                out.push('\t');
                out.push_str(psk.expose());
                out.push('\n');
            }
            print!("{out}");
            Ok(())
        }
        PskCommand::List { json } => {
            let store = Store::open(url).await?;
            let now = clock.now();
            for p in store.list_psks().await? {
                if json {
                    println!("{}", serde_json::to_string(&p)?);
                } else {
                    let state = if p.expires_at <= now {
                        " (expired)"
                    } else {
                        ""
                    };
                    println!(
                        "{} expires={}{} sans={}",
                        escape_for_display(&p.hostname),
                        rfc3339(p.expires_at),
                        state,
                        if p.allowed_sans.is_empty() {
                            "-".into()
                        } else {
                            p.allowed_sans.join(",")
                        }
                    );
                }
            }
            Ok(())
        }
        PskCommand::Remove { host } => {
            let store = Store::open(url).await?;
            let audit = AuditEvent {
                at: clock.now(),
                event: "psk_removed".into(),
                hostname: Some(host.clone()),
                outcome: "ok".into(),
                actor: Some(actor()),
                ..Default::default()
            };
            if store.remove_psk(&host, &audit).await? {
                eprintln!("removed the PSK of {}", escape_for_display(&host));
                Ok(())
            } else {
                Err(NotFound(format!("no PSK for {}", escape_for_display(&host))).into())
            }
        }
    }
}

fn validate_host(host: &str) -> Result<()> {
    policy::hostname::validate(host)
        .with_context(|| format!("hostname {}", escape_for_display(host)))
}

/// The extra names and lifetime a spawner grants with a PSK.
fn parse_grant(
    sans: &[String],
    ttl: humantime::Duration,
) -> Result<(Vec<AllowedName>, std::time::Duration)> {
    let allowed = sans
        .iter()
        .map(|s| AllowedName::parse(s).with_context(|| format!("--san {}", escape_for_display(s))))
        .collect::<Result<Vec<_>>>()?;
    let ttl: std::time::Duration = ttl.into();
    if ttl.is_zero() {
        bail!("--ttl must be positive");
    }
    Ok((allowed, ttl))
}

/// 32 bytes from the OS CSPRNG as a base64url PSK.
fn generate_psk() -> Result<Psk> {
    let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
    ring::rand::SystemRandom::new()
        .fill(&mut bytes[..])
        .map_err(|_| anyhow::anyhow!("CSPRNG failure"))?;
    Ok(Psk::from_random(&bytes))
}

/// Normalises a serial as operators type it: any case, colons optional,
/// leading zero bytes optional.
pub fn normalize_serial(s: &str) -> Option<String> {
    let hexs: String = s
        .trim()
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    if hexs.is_empty() || !hexs.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let trimmed = hexs.trim_start_matches('0');
    let mut out = if trimmed.len() % 2 == 1 {
        format!("0{trimmed}")
    } else {
        trimmed.to_owned()
    };
    if out.is_empty() {
        out = "00".into();
    }
    Some(out)
}

fn cert_status(c: &CertRecord, now: i64) -> &'static str {
    if c.revoked_at.is_some() {
        "revoked"
    } else if c.superseded_by.is_some() {
        "superseded"
    } else if c.not_after <= now {
        "expired"
    } else {
        "valid"
    }
}

/// What `cert list` adds after the status: the revocation, or the successor.
fn status_detail(c: &CertRecord) -> String {
    match (c.revoked_at, &c.superseded_by) {
        (Some(at), _) => format!(
            " revoked_at={} reason={}",
            rfc3339(at),
            c.revocation_reason.as_deref().unwrap_or("unspecified")
        ),
        (None, Some(next)) => format!(" superseded_by={next}"),
        (None, None) => String::new(),
    }
}

fn cert_json(c: &CertRecord, now: i64, with_pem: bool) -> serde_json::Value {
    let mut v = serde_json::json!({
        "serial": c.serial,
        "hostname": c.hostname,
        "kind": c.kind,
        "status": cert_status(c, now),
        "not_before": rfc3339(c.not_before),
        "not_after": rfc3339(c.not_after),
        "issued_at": rfc3339(c.issued_at),
        "revoked_at": c.revoked_at.map(rfc3339),
        "revocation_reason": c.revocation_reason,
        "superseded_by": c.superseded_by,
        "public_key_sha256": hex::encode(&c.public_key_sha256),
    });
    if with_pem {
        v["pem"] = pem::encode(&pem::Pem::new("CERTIFICATE", c.der.clone())).into();
    }
    v
}

async fn cert(cmd: CertCommand, url: &str, clock: &SystemClock) -> Result<()> {
    let store = Store::open(url).await?;
    let now = clock.now();
    match cmd {
        CertCommand::List {
            expiring,
            host,
            json,
        } => {
            let window =
                expiring.map(|d| (now, now + std::time::Duration::from(d).as_secs() as i64));
            for c in store.list_certs(host.as_deref(), window).await? {
                if json {
                    println!("{}", cert_json(&c, now, false));
                } else {
                    println!(
                        "{} {} {} not_after={} kind={}{}",
                        c.serial,
                        cert_status(&c, now),
                        escape_for_display(&c.hostname),
                        rfc3339(c.not_after),
                        c.kind,
                        status_detail(&c)
                    );
                }
            }
            Ok(())
        }
        CertCommand::Show { target, json } => {
            let found = match normalize_serial(&target) {
                Some(serial) => store.get_cert(&serial).await?,
                None => None,
            };
            let found = match found {
                Some(c) => Some(c),
                None => store
                    .list_certs(Some(&target), None)
                    .await?
                    .into_iter()
                    .next(),
            };
            let Some(c) = found else {
                return Err(NotFound(format!(
                    "no certificate with serial or hostname {}",
                    escape_for_display(&target)
                ))
                .into());
            };
            if json {
                println!("{}", cert_json(&c, now, true));
            } else {
                let v = cert_json(&c, now, true);
                for (k, val) in v.as_object().expect("object") {
                    if k != "pem" {
                        println!(
                            "{k}: {}",
                            val.as_str()
                                .map(str::to_owned)
                                .unwrap_or_else(|| val.to_string())
                        );
                    }
                }
                print!("{}", v["pem"].as_str().unwrap_or(""));
            }
            Ok(())
        }
    }
}

/// `store copy --to URL`: copy, verify, and record the copy in the target's audit log.
async fn store_copy(from: &str, to: &str, json: bool, clock: &SystemClock) -> Result<()> {
    let (from_shown, to_shown) = (crate::store::redact_url(from), crate::store::redact_url(to));
    let source = Store::open(from).await?;
    let target = Store::open(to).await.context("opening the target")?;
    let report = source
        .copy_to(&target)
        .await
        .with_context(|| format!("copying {from_shown} to {to_shown}"))?;
    let counts = report
        .tables
        .iter()
        .map(|t| format!("{} {}", t.table, t.rows))
        .collect::<Vec<_>>()
        .join(", ");
    target
        .audit(&AuditEvent {
            at: clock.now(),
            event: "store_copied".into(),
            outcome: "ok".into(),
            reason: Some(format!(
                "from {from_shown}: {counts}; crl_number {}",
                report.crl_number
            )),
            actor: Some(actor()),
            ..Default::default()
        })
        .await?;
    // Closing checkpoints a SQLite target into its main file (a backup is one file).
    source.close().await;
    target.close().await;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        for t in &report.tables {
            println!("{:<13} {:>9} rows  digest {}", t.table, t.rows, t.digest);
        }
        println!("crl_number    {:>9}", report.crl_number);
        eprintln!("copied and verified {from_shown} -> {to_shown}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_normalise_like_openssl_prints_them() {
        assert_eq!(normalize_serial("4A:3B:0C").as_deref(), Some("4a3b0c"));
        assert_eq!(normalize_serial("004a3b0c").as_deref(), Some("4a3b0c"));
        assert_eq!(normalize_serial("web1.example").as_deref(), None);
        assert_eq!(normalize_serial("abc").as_deref(), Some("0abc"));
    }
}
