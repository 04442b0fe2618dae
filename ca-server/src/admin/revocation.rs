//! The admin side of revocation: `ca-server revoke SERIAL | --host HOST
//! [--reason R]` and `ca-server crl [--out FILE]`.
//!
//! A revocation is recorded in the store (with the admin's identity and the
//! reason in the audit log, and the revocation sequence bumped in the same
//! transaction); then, when the intermediate key is in the data dir, a new
//! CRL generation is signed and published at once. Running servers serve it
//! within one poll ([`crate::pki::crl::POLL_INTERVAL`]); where the key is not
//! available (an admin host with only the database URL), the servers see the
//! bumped sequence and sign it themselves.

use crate::admin::{Admin, RemoteArgs, RevokeRequest};
use crate::clock::Clock;
use crate::pki::ca::{CaPaths, Signer};
use crate::pki::crl::{CrlConfig, CrlService};
use crate::store::Store;
use anyhow::{Context, Result};
use proto::timefmt::rfc3339;
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
    #[command(flatten)]
    pub remote: RemoteArgs,
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

/// `ca-server revoke`: here (publishing the CRL at once when this data dir
/// holds the intermediate key), or on a remote server with `--server`.
pub async fn revoke(args: RevokeArgs, data_dir: &Path, url: &str) -> Result<()> {
    let admin = Admin::open(&args.remote, data_dir, url).await?;
    let req = RevokeRequest {
        serial: args.serial,
        host: args.host,
        reason: Some(args.reason.as_str().to_owned()),
    };
    let report = admin.revoke(&req, args.validity.config()).await?;
    crate::admin::output::revoke(&report, args.json);
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
            proto::fsutil::write_atomic(&path, bundle.as_bytes(), proto::fsutil::PUBLIC_MODE)?;
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
pub(crate) fn crl_service(
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
