//! The admin verbs (`psk`, `cert`, `revoke`, `audit`) as one set of
//! operations on the store ([`Ops`]), run by the local CLI and by the admin
//! API's handlers (`edge/http/admin.rs`) alike, with their inputs and answers as
//! wire types. The CLI reaches them either directly ([`Admin::Local`]) or
//! over mTLS with an admin certificate ([`Admin::Remote`], `remote.rs`), and
//! prints the same answers the same way (`output.rs`), so local and remote
//! output are identical.
//!
//! `acme.rs` holds the `acme accounts|deactivate` verbs, `audit.rs` the
//! audit chain's `audit verify|checkpoint`; `doctor.rs`,
//! `rotate.rs` (`intermediate rotate`) and `revocation.rs` (`revoke`, `crl`)
//! the operator's other verbs.
//!
//! Admin certificates themselves (`cert.rs`) and the authentication of
//! admin requests (`auth.rs`) live beside them.

pub mod acme;
pub mod audit;
pub mod auth;
pub mod cert;
pub mod doctor;
pub mod output;
pub mod remote;
pub mod revocation;
pub mod rotate;

use crate::admin::revocation::Reason;
use crate::pki::crl::CrlService;
use crate::store::{
    AuditEvent, AuditFilter, CertRecord, CertSummary, PskInfo, Revocation, RevokeOutcome, Store,
    StoreError,
};
use crate::store::{Event, Outcome};
use policy::hostname::escape_for_display;
use policy::{AllowedName, Psk, ReservedNames};
use proto::timefmt::rfc3339;
use ring::rand::SecureRandom;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use zeroize::Zeroize;

/// Why an admin operation failed (mapped to HTTP in `edge/http/error.rs`, to
/// exit codes in the CLI).
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The request is not acceptable as given (400 `bad_request`, exit 1).
    #[error("{0}")]
    Invalid(String),
    /// What it names does not exist (404 `not_found`, exit 3).
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0:#}")]
    Internal(anyhow::Error),
}

fn invalid(e: impl std::fmt::Display) -> AdminError {
    AdminError::Invalid(e.to_string())
}

/// `psk add`: create or replace the PSK of a host. `Debug` never shows the PSK.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PskAddRequest {
    pub hostname: String,
    /// Lifetime in seconds.
    pub ttl_secs: u64,
    /// Extra names (DNS or IP) the certificate may carry.
    #[serde(default)]
    pub sans: Vec<String>,
    /// A PSK the spawner chose (`--psk-stdin`); generated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub psk: Option<String>,
}

/// What a redacting `Debug` prints in place of a secret.
const REDACTED: &str = "<redacted>";

impl std::fmt::Debug for PskAddRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PskAddRequest")
            .field("hostname", &self.hostname)
            .field("ttl_secs", &self.ttl_secs)
            .field("sans", &self.sans)
            .field("psk", &self.psk.as_ref().map(|_| REDACTED))
            .finish()
    }
}

impl Drop for PskAddRequest {
    fn drop(&mut self) {
        self.psk.zeroize();
    }
}

/// The answer to `psk add`: the PSK, once. Fields in the order of the
/// `--json` output (alphabetical, as it always was). `Debug` never shows the PSK.
#[derive(Clone, Serialize, Deserialize)]
pub struct PskAdded {
    pub allowed_sans: Vec<String>,
    /// ACME External Account Binding HMAC key: the PSK itself (as printed),
    /// present when the PSK was sealed for ACME (docs/acme.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eab_hmac_key: Option<String>,
    /// ACME External Account Binding key id: the hostname.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eab_kid: Option<String>,
    pub expires_at: String,
    /// The root fingerprint to pin.
    pub fingerprint: Option<String>,
    pub hostname: String,
    pub psk: String,
    /// Where hosts reach the CA (the server's public URL, or `--server-url`).
    pub server_url: Option<String>,
}

impl std::fmt::Debug for PskAdded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PskAdded")
            .field("allowed_sans", &self.allowed_sans)
            .field(
                "eab_hmac_key",
                &self.eab_hmac_key.as_ref().map(|_| REDACTED),
            )
            .field("eab_kid", &self.eab_kid)
            .field("expires_at", &self.expires_at)
            .field("fingerprint", &self.fingerprint)
            .field("hostname", &self.hostname)
            .field("psk", &REDACTED)
            .field("server_url", &self.server_url)
            .finish()
    }
}

impl Drop for PskAdded {
    fn drop(&mut self) {
        self.psk.zeroize();
        self.eab_hmac_key.zeroize();
    }
}

/// `psk batch`: one PSK per hostname, in one transaction.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PskBatchRequest {
    pub hostnames: Vec<String>,
    pub ttl_secs: u64,
    #[serde(default)]
    pub sans: Vec<String>,
}

/// One line of the `psk batch` answer. `Debug` never shows the PSK.
#[derive(Clone, Serialize, Deserialize)]
pub struct PskIssued {
    pub hostname: String,
    pub psk: String,
}

impl std::fmt::Debug for PskIssued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PskIssued")
            .field("hostname", &self.hostname)
            .field("psk", &REDACTED)
            .finish()
    }
}

impl Drop for PskIssued {
    fn drop(&mut self) {
        self.psk.zeroize();
    }
}

/// `cert list` filters.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertQuery {
    pub host: Option<String>,
    /// Only certificates valid now that expire within this many seconds.
    pub expiring_secs: Option<u64>,
    /// Only stale hosts: the current certificate of each host whose newest
    /// certificate expired unrevoked and unrenewed, marked within or beyond
    /// the renewal grace.
    #[serde(default)]
    pub stale: bool,
    /// The renewal grace that splits stale hosts, in seconds (default:
    /// remotely the server's own, locally 14 days).
    #[serde(default)]
    pub renew_grace_secs: Option<u64>,
}

/// A certificate as `cert list` and `cert show` print it (never the PSK
/// hash of its row). Fields in the `--json` output's (alphabetical) order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CertView {
    pub hostname: String,
    pub issued_at: String,
    pub kind: String,
    pub not_after: String,
    pub not_before: String,
    /// The certificate, for `cert show` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pem: Option<String>,
    pub public_key_sha256: String,
    pub revocation_reason: Option<String>,
    pub revoked_at: Option<String>,
    pub serial: String,
    /// `cert list --stale` only: `within_grace` (the host can still renew)
    /// or `beyond_grace` (it needs a new PSK).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale: Option<String>,
    /// `valid`, `expired`, `revoked` or `superseded`, at the time of the answer.
    pub status: String,
    pub superseded_by: Option<String>,
}

impl CertView {
    /// `der`, when given, is shown as PEM.
    fn new(c: &CertSummary, now: i64, der: Option<&[u8]>) -> CertView {
        let status = if c.revoked_at.is_some() {
            "revoked"
        } else if c.superseded_by.is_some() {
            "superseded"
        } else if c.not_after <= now {
            "expired"
        } else {
            "valid"
        };
        CertView {
            hostname: c.hostname.clone(),
            issued_at: rfc3339(c.issued_at),
            kind: c.kind.clone(),
            not_after: rfc3339(c.not_after),
            not_before: rfc3339(c.not_before),
            pem: der.map(|der| pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec()))),
            public_key_sha256: hex::encode(&c.public_key_sha256),
            revocation_reason: c.revocation_reason.clone(),
            revoked_at: c.revoked_at.map(rfc3339),
            serial: c.serial.clone(),
            stale: None,
            status: status.into(),
            superseded_by: c.superseded_by.clone(),
        }
    }
}

/// `revoke SERIAL | --host HOST [--reason R]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    pub serial: Option<String>,
    pub host: Option<String>,
    /// An RFC 5280 reason name as `--reason` takes it; `unspecified` if absent.
    pub reason: Option<String>,
}

/// One revoked certificate in a [`RevokeReport`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RevokedCert {
    pub hostname: String,
    pub reason: Option<String>,
    pub revoked_at: Option<String>,
    pub serial: String,
}

impl From<&CertRecord> for RevokedCert {
    fn from(c: &CertRecord) -> RevokedCert {
        RevokedCert {
            hostname: c.hostname.clone(),
            reason: c.revocation_reason.clone(),
            revoked_at: c.revoked_at.map(rfc3339),
            serial: c.serial.clone(),
        }
    }
}

/// What `revoke` did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RevokeReport {
    pub already_revoked: Vec<RevokedCert>,
    /// The CRL published for it, if it was signed at once.
    pub crl_number: Option<i64>,
    /// How many certificates that CRL lists.
    pub crl_listed: Option<usize>,
    /// Why no CRL was published at once, for the operator.
    pub note: Option<String>,
    /// The reason given (what `revoke` prints for the newly revoked).
    pub reason: String,
    pub revoked: Vec<RevokedCert>,
    /// ACME accounts `revoke --host` deactivated (ids).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acme_accounts_deactivated: Vec<String>,
}

/// `audit` filters (defaults as the CLI's: the last hour, 1000 rows).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// How far back, in seconds.
    #[serde(default = "AuditQuery::default_since")]
    pub since_secs: u64,
    pub host: Option<String>,
    pub event: Option<String>,
    #[serde(default = "AuditQuery::default_limit")]
    pub limit: i64,
}

/// Most audit rows one admin API answer may hold: a remote caller cannot
/// make the server build an unbounded answer. The local CLI reads its own
/// database and is bounded only below.
pub const MAX_REMOTE_AUDIT_ROWS: i64 = 10_000;

impl AuditQuery {
    /// A limit of at least one row and, when given, at most `max`.
    pub fn check_limit(&self, max: Option<i64>) -> Result<(), AdminError> {
        let within = self.limit >= 1 && max.is_none_or(|m| self.limit <= m);
        if within {
            return Ok(());
        }
        Err(AdminError::Invalid(match max {
            Some(m) => format!("limit must be between 1 and {m} (got {})", self.limit),
            None => format!("limit must be at least 1 (got {})", self.limit),
        }))
    }

    fn default_since() -> u64 {
        3600
    }
    fn default_limit() -> i64 {
        1000
    }
}

/// How a revocation's CRL gets published: by the server's own CRL service,
/// or (CLI) by signing with the data dir's intermediate when it is there.
#[derive(Debug, Clone)]
pub enum Publisher {
    Service(Arc<CrlService>),
    DataDir {
        dir: std::path::PathBuf,
        config: crate::pki::crl::CrlConfig,
        clock: Arc<dyn crate::clock::Clock>,
    },
}

/// What the answer to `psk add` names besides the PSK.
#[derive(Debug, Clone, Default)]
pub struct Hints {
    pub fingerprint: Option<String>,
    pub server_url: Option<String>,
}

/// The admin operations, on one store, for one actor at one moment.
#[derive(Debug, Clone)]
pub struct Ops<'a> {
    pub store: &'a Store,
    pub now: i64,
    /// Who acts (audit `actor`): `cli:<user>(uid N)` or `admin:<subject> serial=...`.
    pub actor: String,
    /// The client address of a remote admin (audit `peer`).
    pub peer: Option<String>,
}

impl Ops<'_> {
    fn audit_event(
        &self,
        event: Event,
        hostname: Option<String>,
        reason: Option<String>,
    ) -> AuditEvent {
        AuditEvent {
            at: self.now,
            event: event.into(),
            hostname,
            outcome: Outcome::Ok.into(),
            reason,
            peer: self.peer.clone(),
            actor: Some(self.actor.clone()),
            ..Default::default()
        }
    }

    /// Records that a remote admin read something (reads change nothing, but
    /// every admin action is audited).
    pub async fn audit_read(&self, what: &str) -> Result<(), AdminError> {
        self.store
            .audit(&self.audit_event(Event::AdminRead, None, Some(what.to_owned())))
            .await?;
        Ok(())
    }

    /// Refuses a grant that names one of the CA's own names: those
    /// `reserved` holds (configuration) or a live server certificate in the
    /// store carries (any replica's, whatever its configuration says).
    async fn refuse_reserved(
        &self,
        reserved: &ReservedNames,
        hostname: &str,
        allowed: &[AllowedName],
    ) -> Result<(), AdminError> {
        let refuse = |e: policy::ReservedName| AdminError::Invalid(e.to_string());
        reserved.check(hostname, allowed).map_err(refuse)?;
        let dns = std::iter::once(hostname).chain(allowed.iter().filter_map(|n| match n {
            AllowedName::Dns(d) => Some(d.as_str()),
            AllowedName::Ip(_) => None,
        }));
        for (i, name) in dns.enumerate() {
            if self.store.is_server_name(name, self.now).await? {
                return Err(refuse(policy::ReservedName {
                    name: name.to_owned(),
                    as_san: i > 0,
                }));
            }
        }
        Ok(())
    }

    /// Stores the PSK sealed for ACME's EAB (`pki::psk_seal`); `false` when
    /// this process has no seal key or the PSK is not base64url (the PSK
    /// then works for /v1/sign and Puppet only).
    async fn seal_for_acme(&self, host: &str, psk: &Psk) -> Result<bool, AdminError> {
        let Some(sealed) = sealed_for_acme(host, psk)? else {
            return Ok(false);
        };
        self.store.seal_psk(host, &psk.hash(), &sealed).await?;
        Ok(true)
    }

    /// Creates or replaces the PSK of a host; none for the CA's own names.
    pub async fn psk_add(
        &self,
        mut req: PskAddRequest,
        hints: &Hints,
        reserved: &ReservedNames,
    ) -> Result<PskAdded, AdminError> {
        validate_host(&req.hostname)?;
        let (allowed, ttl) = parse_grant(&req.sans, req.ttl_secs)?;
        self.refuse_reserved(reserved, &req.hostname, &allowed)
            .await?;
        let psk = match req.psk.take() {
            Some(supplied) => Psk::new_supplied(supplied)
                .map_err(|e| AdminError::Invalid(format!("the PSK on stdin: {e}")))?,
            None => generate_psk()?,
        };
        let expires_at = self.now + ttl as i64;
        let audit = self.audit_event(
            Event::PskAdded,
            Some(req.hostname.clone()),
            Some(format!("ttl {ttl}s; extra names {}", allowed.len())),
        );
        self.store
            .put_psk(
                &req.hostname,
                &psk.hash(),
                &allowed,
                self.now,
                expires_at,
                &audit,
            )
            .await?;
        let eab = self.seal_for_acme(&req.hostname, &psk).await?;
        Ok(PskAdded {
            allowed_sans: req.sans.clone(),
            eab_hmac_key: eab.then(|| psk.expose().to_owned()),
            eab_kid: eab.then(|| req.hostname.clone()),
            expires_at: rfc3339(expires_at),
            fingerprint: hints.fingerprint.clone(),
            hostname: req.hostname.clone(),
            psk: psk.expose().to_owned(),
            server_url: hints.server_url.clone(),
        })
    }

    /// A PSK for each hostname, in one transaction; none for the CA's own names.
    pub async fn psk_batch(
        &self,
        req: &PskBatchRequest,
        reserved: &ReservedNames,
    ) -> Result<Vec<PskIssued>, AdminError> {
        let (allowed, ttl) = parse_grant(&req.sans, req.ttl_secs)?;
        let mut entries = Vec::with_capacity(req.hostnames.len());
        let mut issued = Vec::with_capacity(req.hostnames.len());
        for host in &req.hostnames {
            validate_host(host)?;
            self.refuse_reserved(reserved, host, &allowed).await?;
            let psk = generate_psk()?;
            entries.push((host.clone(), psk.hash()));
            issued.push((host.clone(), psk));
        }
        let audit = self.audit_event(
            Event::PskAdded,
            None,
            Some(format!("batch; ttl {ttl}s; extra names {}", allowed.len())),
        );
        self.store
            .put_psks(&entries, &allowed, self.now, self.now + ttl as i64, &audit)
            .await?;
        // Sealed in one more transaction (one commit, not one per host).
        let mut sealed = Vec::with_capacity(issued.len());
        for (hostname, psk) in &issued {
            if let Some(s) = sealed_for_acme(hostname, psk)? {
                sealed.push((hostname.clone(), psk.hash(), s));
            }
        }
        self.store.seal_psks(&sealed).await?;
        let mut out = Vec::with_capacity(issued.len());
        for (hostname, psk) in issued {
            out.push(PskIssued {
                hostname,
                psk: psk.expose().to_owned(),
            });
        }
        Ok(out)
    }

    pub async fn psk_list(&self) -> Result<Vec<PskInfo>, AdminError> {
        Ok(self.store.list_psks().await?)
    }

    pub async fn psk_remove(&self, host: &str) -> Result<(), AdminError> {
        let audit = self.audit_event(Event::PskRemoved, Some(host.to_owned()), None);
        if self.store.remove_psk(host, &audit).await? {
            Ok(())
        } else {
            Err(AdminError::NotFound(format!(
                "no PSK for {}",
                escape_for_display(host)
            )))
        }
    }

    pub async fn cert_list(&self, q: &CertQuery) -> Result<Vec<CertView>, AdminError> {
        if q.stale {
            if q.expiring_secs.is_some() {
                return Err(AdminError::Invalid(
                    "--stale lists expired certificates; it does not combine with --expiring"
                        .into(),
                ));
            }
            let grace = q
                .renew_grace_secs
                .map(|g| g.min(i64::MAX as u64 / 2) as i64)
                .unwrap_or(crate::serve::DEFAULT_RENEW_GRACE_SECS);
            return Ok(self
                .store
                .list_stale(q.host.as_deref(), self.now)
                .await?
                .iter()
                .map(|c| {
                    let mut view = CertView::new(c, self.now, None);
                    view.stale = Some(
                        if self.now - c.not_after < grace {
                            "within_grace"
                        } else {
                            "beyond_grace"
                        }
                        .into(),
                    );
                    view
                })
                .collect());
        }
        let window = q.expiring_secs.map(|s| {
            (
                self.now,
                self.now.saturating_add(s.min(i64::MAX as u64) as i64),
            )
        });
        Ok(self
            .store
            .list_certs(q.host.as_deref(), window)
            .await?
            .iter()
            .map(|c| CertView::new(c, self.now, None))
            .collect())
    }

    /// One certificate by serial, or the newest of a host.
    pub async fn cert_show(&self, target: &str) -> Result<CertView, AdminError> {
        let found = match normalize_serial(target) {
            Some(serial) => self.store.get_cert(&serial).await?,
            None => None,
        };
        let found = match found {
            Some(c) => Some(c),
            None => self.store.host_certs(target).await?.into_iter().next(),
        };
        found
            .map(|c| CertView::new(&c.summary(), self.now, Some(&c.der)))
            .ok_or_else(|| {
                AdminError::NotFound(format!(
                    "no certificate with serial or hostname {}",
                    escape_for_display(target)
                ))
            })
    }

    /// Records a revocation, then publishes the new CRL if `publisher` can.
    pub async fn revoke(
        &self,
        req: &RevokeRequest,
        publisher: &Publisher,
    ) -> Result<RevokeReport, AdminError> {
        let reason = match req.reason.as_deref() {
            None => Reason::Unspecified,
            Some(r) => <Reason as clap::ValueEnum>::from_str(r, false).map_err(|_| {
                AdminError::Invalid(format!(
                    "unknown revocation reason {}",
                    escape_for_display(r)
                ))
            })?,
        };
        let how = Revocation {
            reason: reason.as_str(),
            now: self.now,
            actor: &self.actor,
        };
        let mut deactivated = Vec::new();
        let (revoked, already) = match (&req.serial, &req.host) {
            (Some(serial), None) => {
                let Some(normal) = normalize_serial(serial) else {
                    return Err(AdminError::Invalid(format!(
                        "{} is not a serial (hex digits, colons optional)",
                        escape_for_display(serial)
                    )));
                };
                match self.store.revoke_serial(&normal, &how).await? {
                    None => {
                        return Err(AdminError::NotFound(format!(
                            "no certificate with serial {}",
                            escape_for_display(serial)
                        )));
                    }
                    Some(RevokeOutcome::Revoked(c)) => (vec![c], vec![]),
                    Some(RevokeOutcome::AlreadyRevoked(c)) => (vec![], vec![c]),
                }
            }
            (None, Some(host)) => {
                let revoked = self.store.revoke_host(host, &how).await?;
                // The host's ACME accounts could order again: they end with it.
                let audit = self.audit_event(Event::AcmeAccount, Some(host.clone()), None);
                let audit = AuditEvent {
                    outcome: Outcome::Deactivated.into(),
                    ..audit
                };
                deactivated = self.store.deactivate_host_accounts(host, &audit).await?;
                if revoked.is_empty()
                    && deactivated.is_empty()
                    && self.store.list_certs(Some(host), None).await?.is_empty()
                {
                    return Err(AdminError::NotFound(format!(
                        "no certificate for host {}",
                        escape_for_display(host)
                    )));
                }
                (revoked, vec![])
            }
            _ => return Err(invalid("name a serial or a host (not both)")),
        };
        let mut report = RevokeReport {
            acme_accounts_deactivated: deactivated,
            already_revoked: already.iter().map(RevokedCert::from).collect(),
            crl_number: None,
            crl_listed: None,
            note: None,
            reason: reason.as_str().to_owned(),
            revoked: revoked.iter().map(RevokedCert::from).collect(),
        };
        if !revoked.is_empty() {
            match publish(self.store, publisher).await {
                Ok(set) => {
                    report.crl_number = Some(set.generation());
                    report.crl_listed = Some(set.revoked);
                }
                Err(note) => report.note = Some(note),
            }
        }
        Ok(report)
    }

    /// The audit rows `q` asks for; `max_rows` bounds the limit (the admin
    /// API passes [`MAX_REMOTE_AUDIT_ROWS`]).
    pub async fn audit(
        &self,
        q: &AuditQuery,
        max_rows: Option<i64>,
    ) -> Result<Vec<AuditEvent>, AdminError> {
        q.check_limit(max_rows)?;
        let since = self.now - q.since_secs.min(i64::MAX as u64) as i64;
        let filter = AuditFilter {
            host: q.host.clone(),
            event: q.event.clone(),
        };
        Ok(self.store.audit_query(since, q.limit, &filter).await?)
    }
}

/// Signs and publishes the CRL after a revocation; on failure, the note for
/// the operator (the revocation itself is recorded either way, and running
/// servers sign it within seconds).
async fn publish(
    store: &Store,
    publisher: &Publisher,
) -> Result<Arc<crate::pki::crl::CrlSet>, String> {
    match publisher {
        Publisher::Service(service) => service.regenerate().await.map_err(|e| {
            tracing::warn!(error = %format!("{e:#}"), "signing the CRL after a revocation failed");
            "the revocation is recorded, but signing the CRL failed; the servers retry within seconds".to_owned()
        }),
        Publisher::DataDir { dir, config, clock } => {
            let service = match crate::admin::revocation::crl_service(dir, store, clock.clone(), *config) {
                Ok(s) => s,
                Err(e) => {
                    return Err(format!(
                        "note: cannot sign here ({e:#}); the running servers publish the new CRL within seconds"
                    ));
                }
            };
            service.regenerate().await.map_err(|e| {
                format!(
                    "warning: the revocation is recorded, but signing the CRL failed ({e:#}); \
                     the running servers will sign it"
                )
            })
        }
    }
}

fn validate_host(host: &str) -> Result<(), AdminError> {
    policy::hostname::validate(host)
        .map_err(|e| AdminError::Invalid(format!("hostname {}: {e}", escape_for_display(host))))
}

/// The extra names and lifetime (seconds) a spawner grants with a PSK.
fn parse_grant(sans: &[String], ttl_secs: u64) -> Result<(Vec<AllowedName>, u64), AdminError> {
    let allowed = sans
        .iter()
        .map(|s| {
            AllowedName::parse(s)
                .map_err(|e| AdminError::Invalid(format!("--san {}: {e}", escape_for_display(s))))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if ttl_secs == 0 {
        return Err(invalid("--ttl must be positive"));
    }
    // Bounded so that `now + ttl` stays far from overflowing.
    if ttl_secs > 100 * 365 * 86_400 {
        return Err(invalid("--ttl is over 100 years"));
    }
    Ok((allowed, ttl_secs))
}

/// The PSK sealed for ACME's EAB (`pki::psk_seal`), or `None` when this
/// process has no seal key or the PSK is not base64url (ACME clients
/// base64url-decode the HMAC key; standard base64 with + or / cannot be one).
fn sealed_for_acme(host: &str, psk: &Psk) -> Result<Option<Vec<u8>>, AdminError> {
    let Some(key) = crate::pki::psk_seal::installed() else {
        return Ok(None);
    };
    let decodes = base64::Engine::decode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        psk.expose().trim_end_matches('='),
    )
    .map(zeroize::Zeroizing::new)
    .is_ok();
    if !decodes {
        return Ok(None);
    }
    key.seal(host, psk).map(Some).map_err(AdminError::Internal)
}

/// 32 bytes from the OS CSPRNG as a base64url PSK.
fn generate_psk() -> Result<Psk, AdminError> {
    let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
    ring::rand::SystemRandom::new()
        .fill(&mut bytes[..])
        .map_err(|_| AdminError::Internal(anyhow::anyhow!("CSPRNG failure")))?;
    Ok(Psk::from_random(&bytes))
}

/// Where the CLI's admin verbs run: on the store here, or on a remote
/// server's admin API.
#[derive(Debug)]
pub enum Admin {
    Local {
        store: Store,
        data_dir: std::path::PathBuf,
    },
    Remote(remote::Remote),
}

/// `--server URL --admin-cert DIR` on `psk`, `cert`, `revoke` and `audit`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RemoteArgs {
    /// Run on the ca-server at URL through its admin API (mTLS) instead of
    /// on the local store. Needs --admin-cert.
    #[arg(
        long = "server",
        env = "CA_ADMIN_SERVER",
        value_name = "URL",
        global = true,
        requires = "admin_cert"
    )]
    pub server: Option<String>,
    /// The directory `admin-cert issue` wrote (key.pem, chain.pem, and
    /// ca.pem: the root the server must chain to).
    #[arg(
        long,
        env = "CA_ADMIN_CERT",
        value_name = "DIR",
        global = true,
        requires = "server"
    )]
    pub admin_cert: Option<std::path::PathBuf>,
}

impl Admin {
    /// The remote server when `--server` is given, else the local store.
    pub async fn open(
        remote: &RemoteArgs,
        data_dir: &std::path::Path,
        url: &str,
    ) -> anyhow::Result<Admin> {
        match (&remote.server, &remote.admin_cert) {
            (Some(server), Some(dir)) => Ok(Admin::Remote(remote::Remote::load(server, dir)?)),
            _ => Ok(Admin::Local {
                store: Store::open(url).await?,
                data_dir: data_dir.to_owned(),
            }),
        }
    }

    /// Loads the data dir's PSK seal key so that PSKs added here are sealed
    /// for ACME; without it (not the CA's data dir, no key yet, another key
    /// than the store's) they are not, and the spawner is told why.
    async fn load_seal_key(store: &Store, data_dir: &std::path::Path) {
        if !crate::pki::ca::CaPaths::new(data_dir).is_initialised() {
            return;
        }
        if let Err(e) = crate::pki::psk_seal::install(data_dir, store, false).await {
            eprintln!("warning: {e:#}; PSKs added now will not work for ACME");
        }
    }

    fn local_ops(store: &Store) -> Ops<'_> {
        Ops {
            store,
            now: crate::clock::Clock::now(&crate::clock::SystemClock),
            actor: actor(),
            peer: None,
        }
    }

    /// `reserved`: the CA's own names from the local configuration (a
    /// remote server checks its own).
    pub async fn psk_add(
        &self,
        req: PskAddRequest,
        reserved: &ReservedNames,
    ) -> Result<PskAdded, AdminError> {
        match self {
            Admin::Local { store, data_dir } => {
                Admin::load_seal_key(store, data_dir).await;
                let root = crate::pki::ca::CaPaths::new(data_dir).root_cert;
                let hints = Hints {
                    fingerprint: crate::pki::ca::read_cert_der(&root)
                        .ok()
                        .map(|d| crate::pki::ca::fingerprint(&d)),
                    server_url: None,
                };
                Admin::local_ops(store).psk_add(req, &hints, reserved).await
            }
            Admin::Remote(r) => {
                let added = r.psk_add(&req).await?;
                if added.fingerprint.as_deref() != Some(r.fingerprint.as_str()) {
                    return Err(AdminError::Internal(anyhow::anyhow!(
                        "the CA named another root fingerprint than the pinned ca.pem"
                    )));
                }
                Ok(added)
            }
        }
    }

    pub async fn psk_batch(
        &self,
        req: &PskBatchRequest,
        reserved: &ReservedNames,
    ) -> Result<Vec<PskIssued>, AdminError> {
        match self {
            Admin::Local { store, data_dir } => {
                Admin::load_seal_key(store, data_dir).await;
                Admin::local_ops(store).psk_batch(req, reserved).await
            }
            Admin::Remote(r) => r.psk_batch(req).await,
        }
    }

    pub async fn psk_list(&self) -> Result<Vec<PskInfo>, AdminError> {
        match self {
            Admin::Local { store, .. } => Admin::local_ops(store).psk_list().await,
            Admin::Remote(r) => r.psk_list().await,
        }
    }

    pub async fn psk_remove(&self, host: &str) -> Result<(), AdminError> {
        match self {
            Admin::Local { store, .. } => Admin::local_ops(store).psk_remove(host).await,
            Admin::Remote(r) => r.psk_remove(host).await,
        }
    }

    pub async fn cert_list(&self, q: &CertQuery) -> Result<Vec<CertView>, AdminError> {
        match self {
            Admin::Local { store, .. } => Admin::local_ops(store).cert_list(q).await,
            Admin::Remote(r) => r.cert_list(q).await,
        }
    }

    pub async fn cert_show(&self, target: &str) -> Result<CertView, AdminError> {
        match self {
            Admin::Local { store, .. } => Admin::local_ops(store).cert_show(target).await,
            Admin::Remote(r) => r.cert_show(target).await,
        }
    }

    /// Locally, the CRL is signed with the data dir's intermediate (if it is
    /// there) using `crl`'s lifetimes; remotely, by the server.
    pub async fn revoke(
        &self,
        req: &RevokeRequest,
        crl: crate::pki::crl::CrlConfig,
    ) -> Result<RevokeReport, AdminError> {
        match self {
            Admin::Local { store, data_dir } => {
                let publisher = Publisher::DataDir {
                    dir: data_dir.clone(),
                    config: crl,
                    clock: Arc::new(crate::clock::SystemClock),
                };
                Admin::local_ops(store).revoke(req, &publisher).await
            }
            Admin::Remote(r) => r.revoke(req).await,
        }
    }

    pub async fn audit(&self, q: &AuditQuery) -> Result<Vec<AuditEvent>, AdminError> {
        match self {
            Admin::Local { store, .. } => Admin::local_ops(store).audit(q, None).await,
            Admin::Remote(r) => r.audit(q).await,
        }
    }
}

/// Who runs this CLI, for the audit log.
pub fn actor() -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "Zg4iPgx_OFNITw_dRhJ05omhxk-QEymzPbWJbcZubaw";

    #[test]
    fn wire_types_that_carry_a_psk_never_show_it_in_debug() {
        let req = PskAddRequest {
            hostname: "web.example.internal".into(),
            ttl_secs: 60,
            sans: vec![],
            psk: Some(SECRET.into()),
        };
        let added = PskAdded {
            allowed_sans: vec![],
            eab_hmac_key: Some(SECRET.into()),
            eab_kid: Some("web.example.internal".into()),
            expires_at: "2026-12-04T00:00:00Z".into(),
            fingerprint: None,
            hostname: "web.example.internal".into(),
            psk: SECRET.into(),
            server_url: None,
        };
        let issued = PskIssued {
            hostname: "web.example.internal".into(),
            psk: SECRET.into(),
        };
        for shown in [
            format!("{req:?}"),
            format!("{added:?}"),
            format!("{issued:?}"),
            format!("{:#?}", vec![issued.clone()]),
        ] {
            assert!(!shown.contains(SECRET), "{shown}");
            assert!(!shown.contains(&SECRET[..12]), "{shown}");
            assert!(shown.contains("<redacted>"), "{shown}");
            assert!(shown.contains("web.example.internal"), "{shown}");
        }
    }

    #[test]
    fn the_audit_limit_is_at_least_one_and_bounded_remotely() {
        let q = |limit| AuditQuery {
            since_secs: 60,
            host: None,
            event: None,
            limit,
        };
        let max = Some(MAX_REMOTE_AUDIT_ROWS);
        for bad in [-1, 0, i64::MIN, MAX_REMOTE_AUDIT_ROWS + 1] {
            let err = q(bad).check_limit(max).unwrap_err();
            assert!(matches!(err, AdminError::Invalid(_)), "{bad}: {err:?}");
            assert!(err.to_string().contains("between 1 and 10000"), "{err}");
        }
        for good in [1, 1000, MAX_REMOTE_AUDIT_ROWS] {
            q(good).check_limit(max).unwrap();
        }
        // Locally only the lower bound holds.
        q(100_000).check_limit(None).unwrap();
        assert!(q(-1).check_limit(None).is_err());
    }

    #[test]
    fn serials_normalise_like_openssl_prints_them() {
        assert_eq!(normalize_serial("4A:3B:0C").as_deref(), Some("4a3b0c"));
        assert_eq!(normalize_serial("004a3b0c").as_deref(), Some("4a3b0c"));
        assert_eq!(normalize_serial("web1.example").as_deref(), None);
        assert_eq!(normalize_serial("abc").as_deref(), Some("0abc"));
    }
}
