//! The admin side of revocation: `ca-server revoke SERIAL | --host HOST
//! [--reason R]` and `ca-server crl [--out FILE]`.
//!
//! A revocation is recorded in the store (with the admin's identity and the
//! reason in the audit log, and the revocation sequence bumped in the same
//! transaction); then, when the intermediate key is in the data dir, a new
//! CRL generation is signed and published at once. Running servers serve it
//! within one poll ([`crate::crl::POLL_INTERVAL`]); where the key is not
//! available (an admin host with only the database URL), the servers see the
//! bumped sequence and sign it themselves.

use crate::ca::{CaPaths, Signer};
use crate::cli::{NotFound, actor, normalize_serial, rfc3339};
use crate::clock::Clock;
use crate::crl::{CrlConfig, CrlService};
use crate::store::{CertRecord, Revocation, RevokeOutcome, Store};
use anyhow::{Context, Result, bail};
use policy::hostname::escape_for_display;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The RFC 5280 reasons an admin can give. `certificateHold` is left out
/// (a revocation here is final) and so are the CA-level reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Reason {
    #[value(name = "unspecified")]
    Unspecified,
    #[value(name = "keyCompromise")]
    KeyCompromise,
    #[value(name = "affiliationChanged")]
    AffiliationChanged,
    #[value(name = "superseded")]
    Superseded,
    #[value(name = "cessationOfOperation")]
    CessationOfOperation,
    #[value(name = "privilegeWithdrawn")]
    PrivilegeWithdrawn,
}

impl Reason {
    /// The RFC 5280 name, as stored and as `crl::parse_reason` reads it.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Unspecified => "unspecified",
            Reason::KeyCompromise => "keyCompromise",
            Reason::AffiliationChanged => "affiliationChanged",
            Reason::Superseded => "superseded",
            Reason::CessationOfOperation => "cessationOfOperation",
            Reason::PrivilegeWithdrawn => "privilegeWithdrawn",
        }
    }
}

/// CRL lifetimes, shared by `serve` and the verbs that sign CRLs (same
/// environment variables, so an admin's `revoke` signs what the servers would).
#[derive(Debug, Clone, clap::Args)]
pub struct CrlValidityArgs {
    /// Lifetime of the CRL at /v1/crl (re-signed after half of it, and on any revocation).
    #[arg(long, env = "CA_CRL_VALIDITY", default_value = "24h")]
    pub crl_validity: humantime::Duration,
    /// Lifetime of the CRLs served to Puppet agents and of the root CRL. Long, as
    /// Puppet Server's: an agent keeps the CRL it downloaded and cannot recover once it expires.
    #[arg(long, env = "CA_PUPPET_CRL_VALIDITY", default_value = "1825d")]
    pub puppet_crl_validity: humantime::Duration,
}

impl CrlValidityArgs {
    pub fn config(&self) -> CrlConfig {
        CrlConfig {
            validity: self.crl_validity.into(),
            long_validity: self.puppet_crl_validity.into(),
        }
    }
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["serial", "host"])))]
pub struct RevokeArgs {
    /// Serial in hex as openssl prints it (any case, colons optional).
    pub serial: Option<String>,
    /// Revoke every unexpired certificate of this host instead.
    #[arg(long)]
    pub host: Option<String>,
    /// The RFC 5280 reason recorded in the store and the CRL.
    #[arg(long, value_enum, default_value = "unspecified")]
    pub reason: Reason,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub validity: CrlValidityArgs,
}

#[derive(Debug, clap::Args)]
pub struct CrlArgs {
    /// Write the CRL bundle (intermediate CRL then root CRL, PEM) here
    /// instead of stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Sign and publish a new generation first, even if the published one is
    /// current (e.g. with `root.key` put back for a while, to renew the root CRL).
    #[arg(long)]
    pub sign: bool,
    #[command(flatten)]
    pub validity: CrlValidityArgs,
}

/// `ca-server revoke`.
pub async fn revoke(
    args: RevokeArgs,
    data_dir: &Path,
    url: &str,
    clock: Arc<dyn Clock>,
) -> Result<()> {
    let store = Store::open(url).await?;
    let actor = actor();
    let how = Revocation {
        reason: args.reason.as_str(),
        now: clock.now(),
        actor: &actor,
    };
    let (revoked, already) = match (&args.serial, &args.host) {
        (Some(serial), _) => {
            let Some(normal) = normalize_serial(serial) else {
                bail!(
                    "{} is not a serial (hex digits, colons optional)",
                    escape_for_display(serial)
                );
            };
            match store.revoke_serial(&normal, &how).await? {
                None => {
                    return Err(NotFound(format!(
                        "no certificate with serial {}",
                        escape_for_display(serial)
                    ))
                    .into());
                }
                Some(RevokeOutcome::Revoked(c)) => (vec![c], vec![]),
                Some(RevokeOutcome::AlreadyRevoked(c)) => (vec![], vec![c]),
            }
        }
        (None, Some(host)) => {
            let revoked = store.revoke_host(host, &how).await?;
            if revoked.is_empty() && store.list_certs(Some(host), None).await?.is_empty() {
                return Err(NotFound(format!(
                    "no certificate for host {}",
                    escape_for_display(host)
                ))
                .into());
            }
            (revoked, vec![])
        }
        (None, None) => unreachable!("clap requires SERIAL or --host"),
    };

    // Publish at once when this data dir can sign; the servers do otherwise.
    let published = if revoked.is_empty() {
        None
    } else {
        match crl_service(data_dir, &store, clock, args.validity.config()) {
            Ok(service) => match service.regenerate().await {
                Ok(set) => Some(set),
                Err(e) => {
                    eprintln!(
                        "warning: the revocation is recorded, but signing the CRL failed ({e:#}); \
                         the running servers will sign it"
                    );
                    None
                }
            },
            Err(e) => {
                eprintln!(
                    "note: cannot sign here ({e:#}); the running servers publish the new CRL within seconds"
                );
                None
            }
        }
    };

    if args.json {
        let row = |c: &CertRecord| {
            serde_json::json!({
                "serial": c.serial,
                "hostname": c.hostname,
                "revoked_at": c.revoked_at.map(rfc3339),
                "reason": c.revocation_reason,
            })
        };
        let out = serde_json::json!({
            "revoked": revoked.iter().map(row).collect::<Vec<_>>(),
            "already_revoked": already.iter().map(row).collect::<Vec<_>>(),
            "crl_number": published.as_ref().map(|s| s.generation()),
        });
        println!("{out}");
    } else {
        for c in &revoked {
            println!(
                "revoked {} {} reason={}",
                c.serial,
                escape_for_display(&c.hostname),
                how.reason
            );
        }
        for c in &already {
            println!(
                "already revoked {} {} at {} reason={}; nothing changed",
                c.serial,
                escape_for_display(&c.hostname),
                c.revoked_at.map(rfc3339).unwrap_or_default(),
                c.revocation_reason.as_deref().unwrap_or("unspecified")
            );
        }
        if revoked.is_empty() && already.is_empty() {
            println!("nothing to revoke: every certificate of that host is revoked or expired");
        }
        if let Some(set) = &published {
            eprintln!(
                "published CRL number {} ({} certificates listed)",
                set.generation(),
                set.revoked
            );
        }
    }
    Ok(())
}

/// `ca-server crl`: the published CRL bundle (intermediate then root), signing
/// a new generation first if none is current and this data dir can sign.
pub async fn crl(args: CrlArgs, data_dir: &Path, url: &str, clock: Arc<dyn Clock>) -> Result<()> {
    let store = Store::open(url).await?;
    let now = clock.now();
    let service = crl_service(data_dir, &store, clock, args.validity.config())?;
    let set = match service.load_published().await? {
        Some(set) if set.intermediate.is_current(now) && !args.sign => set,
        _ => service.regenerate().await?,
    };
    if set.current_root(now).is_none() {
        eprintln!(
            "warning: no current root CRL (the root key is offline and root.crl is missing or \
             expired): verifiers that check the whole chain will refuse every client"
        );
    }
    let bundle = set.bundle_pem(now);
    match args.out {
        Some(path) => {
            ca_client::fsutil::write_atomic(
                &path,
                bundle.as_bytes(),
                ca_client::fsutil::PUBLIC_MODE,
            )?;
            eprintln!(
                "wrote CRL number {} ({} certificates listed, next update {}) to {}",
                set.generation(),
                set.revoked,
                rfc3339(set.intermediate.next_update),
                path.display()
            );
        }
        None => print!("{bundle}"),
    }
    Ok(())
}

/// A CRL service signing with this data dir's intermediate.
fn crl_service(
    data_dir: &Path,
    store: &Store,
    clock: Arc<dyn Clock>,
    config: CrlConfig,
) -> Result<CrlService> {
    let paths = CaPaths::new(data_dir);
    let signer = Signer::load(&paths, None)
        .with_context(|| format!("loading the intermediate from {}", data_dir.display()))?;
    CrlService::new(&paths, store.clone(), Arc::new(signer), clock, config)
}
