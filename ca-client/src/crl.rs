//! `ca-client crl`: keep the host's CRL bundle current and installed.
//!
//! The bundle (`DIR/crl.pem`) is the intermediate's CRL followed by the
//! root's: nginx, HAProxy and PostgreSQL check revocation for every CA of a
//! client's chain (OpenSSL's `X509_V_FLAG_CRL_CHECK_ALL`), so both must be
//! there or every client is refused.
//!
//! 1. Fetch `/v1/crl` and `/v1/crl/root` over TLS pinned to `DIR/ca.pem`
//!    (or read a bundle given with `--from-file`, e.g. on a host that cannot
//!    reach the CA).
//! 2. Verify each CRL against the pinned CA (`DIR/ca.pem`, and the
//!    intermediate of `DIR/chain.pem`, which must be signed by it): issuer,
//!    signature, not expired.
//! 3. Compare with the installed bundle: the intermediate CRL's number must
//!    be higher (the same number: already current), the root CRL's must not
//!    go down. An older CRL is refused and the installed one stays.
//! 4. Write the bundle atomically, then re-run the installs recorded for the
//!    services named with `--install` whose installed CRL differs from it
//!    (each with the installer's check, reload and rollback).

use crate::bootstrap::{self, CA_FILE, CHAIN_FILE, exit};
use crate::failure::Failure;
use crate::fsutil::{self, PUBLIC_MODE};
use crate::https::HttpsClient;
use crate::install::ServiceKind;
use crate::install::material::{CRL_FILE, certs_from_pem};
use crate::install::record::{self, Reinstalled};
use crate::timefmt::{rfc3339, unix_now};
use crate::trust;
use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http::{Method, StatusCode};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The pinned CA: the root from `ca.pem` and the intermediate from
/// `chain.pem`, checked to be a CA signed by that root.
#[derive(Debug, Clone)]
pub struct CaCerts {
    pub root: Vec<u8>,
    pub intermediate: Vec<u8>,
}

impl CaCerts {
    /// From a bootstrap directory.
    pub fn load(dir: &Path) -> Result<CaCerts> {
        let read = |name: &str| {
            std::fs::read(dir.join(name))
                .with_context(|| format!("reading {}", dir.join(name).display()))
        };
        let root = certs_from_pem(&read(CA_FILE)?)
            .with_context(|| format!("reading {CA_FILE}"))?
            .remove(0);
        let chain =
            certs_from_pem(&read(CHAIN_FILE)?).with_context(|| format!("reading {CHAIN_FILE}"))?;
        CaCerts::new(root, &chain)
    }

    /// From a root and a chain (leaf first): the first certificate after the
    /// leaf must be a CA certificate signed by the root.
    pub fn new(root: Vec<u8>, chain: &[Vec<u8>]) -> Result<CaCerts> {
        let intermediate = chain
            .get(1)
            .context("the chain holds no intermediate after the leaf")?
            .clone();
        let (_, r) = x509_parser::parse_x509_certificate(&root)
            .map_err(|e| anyhow!("the root does not parse: {e}"))?;
        let (_, i) = x509_parser::parse_x509_certificate(&intermediate)
            .map_err(|e| anyhow!("the intermediate does not parse: {e}"))?;
        if !i.is_ca() || i.verify_signature(Some(r.public_key())).is_err() {
            bail!("the chain's intermediate is not a CA signed by the pinned root");
        }
        drop((r, i));
        Ok(CaCerts { root, intermediate })
    }
}

/// One CRL, verified against its issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCrl {
    pub der: Vec<u8>,
    pub number: u64,
    /// Unix seconds.
    pub this_update: i64,
    pub next_update: i64,
    /// How many certificates it lists.
    pub revoked: usize,
}

impl VerifiedCrl {
    /// Checks `der` against `issuer_der`: issuer name, signature, a CRL
    /// number, and (unless `allow_expired`) a nextUpdate after `now`.
    pub fn verify(
        der: &[u8],
        issuer_der: &[u8],
        now: i64,
        allow_expired: bool,
    ) -> Result<VerifiedCrl> {
        let (rest, crl) =
            x509_parser::parse_x509_crl(der).map_err(|e| anyhow!("not a CRL: {e}"))?;
        if !rest.is_empty() {
            bail!("{} bytes of trailing data after the CRL", rest.len());
        }
        let (_, issuer) = x509_parser::parse_x509_certificate(issuer_der)
            .map_err(|e| anyhow!("the CA certificate does not parse: {e}"))?;
        if crl.issuer() != issuer.subject() {
            bail!(
                "it is issued by {}, not by the pinned CA's {}",
                crl.issuer(),
                issuer.subject()
            );
        }
        crl.verify_signature(issuer.public_key()).map_err(|_| {
            anyhow!(
                "its signature does not verify with {}'s key",
                issuer.subject()
            )
        })?;
        let number = crl
            .crl_number()
            .and_then(|n| u64::try_from(n).ok())
            .context("it has no CRL number")?;
        let next_update = crl
            .next_update()
            .context("it has no nextUpdate")?
            .timestamp();
        if !allow_expired && next_update <= now {
            bail!("it expired at {}", rfc3339(next_update));
        }
        Ok(VerifiedCrl {
            der: der.to_vec(),
            number,
            this_update: crl.last_update().timestamp(),
            next_update,
            revoked: crl.iter_revoked_certificates().count(),
        })
    }

    pub fn pem(&self) -> String {
        pem::encode_config(
            &pem::Pem::new("X509 CRL", self.der.clone()),
            pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
        )
    }
}

/// The intermediate's CRL and the root's, as installed for the services.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlBundle {
    pub intermediate: VerifiedCrl,
    pub root: VerifiedCrl,
}

/// How a fetched bundle compares with the installed one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Freshness {
    Newer,
    Same,
    /// Refused, with the reason.
    Older(String),
}

impl CrlBundle {
    /// Reads a PEM bundle: exactly one CRL by the intermediate and one by
    /// the root, each verified (and current unless `allow_expired`).
    pub fn from_pem(text: &[u8], ca: &CaCerts, now: i64, allow_expired: bool) -> Result<CrlBundle> {
        let blocks = pem::parse_many(text).context("not PEM")?;
        if blocks.is_empty() {
            bail!("no PEM block in it");
        }
        let (mut intermediate, mut root) = (None, None);
        for block in blocks {
            if block.tag() != "X509 CRL" {
                bail!(
                    "it holds a {} block; expected only X509 CRL blocks",
                    block.tag()
                );
            }
            let der = block.into_contents();
            let by_intermediate = VerifiedCrl::verify(&der, &ca.intermediate, now, allow_expired);
            let slot = match by_intermediate {
                Ok(crl) => (&mut intermediate, crl),
                Err(by_int) => match VerifiedCrl::verify(&der, &ca.root, now, allow_expired) {
                    Ok(crl) => (&mut root, crl),
                    Err(by_root) => {
                        bail!(
                            "a CRL in it is not from the pinned CA (as the intermediate's: {by_int:#}; as the root's: {by_root:#})"
                        )
                    }
                },
            };
            if slot.0.replace(slot.1).is_some() {
                bail!("it holds two CRLs from the same CA");
            }
        }
        Ok(CrlBundle {
            intermediate: intermediate.context("it holds no CRL from the intermediate")?,
            root: root.context(
                "it holds no CRL from the root (services check every CA of the chain, so they would refuse every client)",
            )?,
        })
    }

    /// Intermediate CRL then root CRL, PEM.
    pub fn to_pem(&self) -> String {
        format!("{}{}", self.intermediate.pem(), self.root.pem())
    }

    /// Compares this (fetched) bundle with the `installed` one.
    pub fn freshness(&self, installed: &CrlBundle) -> Freshness {
        let (new, old) = (&self.intermediate, &installed.intermediate);
        if new.number < old.number {
            return Freshness::Older(format!(
                "its CRL number {} is lower than the installed {}",
                new.number, old.number
            ));
        }
        if self.root.number < installed.root.number {
            return Freshness::Older(format!(
                "its root CRL number {} is lower than the installed {}",
                self.root.number, installed.root.number
            ));
        }
        if new.number == old.number {
            Freshness::Same
        } else {
            Freshness::Newer
        }
    }
}

/// Where the CRLs come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// The CA server's `/v1/crl` and `/v1/crl/root`.
    Server(String),
    /// A PEM bundle (as `ca-server crl --out` writes it).
    File(PathBuf),
}

/// Inputs of `ca-client crl`.
#[derive(Debug, Clone)]
pub struct CrlOptions {
    pub source: Source,
    pub dir: PathBuf,
    pub install: Vec<ServiceKind>,
    pub deadline: Duration,
    pub request_timeout: Duration,
}

/// What `ca-client crl` did.
#[derive(Debug, serde::Serialize)]
pub struct CrlOutcome {
    /// The installed intermediate CRL's number (after this run).
    pub number: u64,
    pub root_number: u64,
    pub revoked: usize,
    pub next_update: String,
    /// The number installed before, if any.
    pub previous: Option<u64>,
    /// A newer CRL was written to the directory.
    pub updated: bool,
    pub services: Vec<Reinstalled>,
}

/// Runs `ca-client crl`.
pub async fn refresh(opts: &CrlOptions) -> Result<CrlOutcome, Failure> {
    // A bootstrap directory (it holds the host key) is kept private.
    if opts.dir.join(crate::bootstrap::KEY_FILE).exists() {
        fsutil::tighten_key_dir(&opts.dir)?;
    }
    let _lock = fsutil::lock_dir(&opts.dir)?;
    let ca = CaCerts::load(&opts.dir)
        .context("the directory holds no usable CA certificates (bootstrap first)")?;
    let now = unix_now();
    let refused = |e: anyhow::Error| Failure::new(exit::CRL_REFUSED, e);
    let fetched = match &opts.source {
        Source::Server(url) => {
            let (int_der, root_der) = fetch(url, &ca, opts).await?;
            let intermediate = VerifiedCrl::verify(&int_der, &ca.intermediate, now, false)
                .context("the CRL from /v1/crl is refused")
                .map_err(refused)?;
            let root = VerifiedCrl::verify(&root_der, &ca.root, now, false)
                .context("the CRL from /v1/crl/root is refused")
                .map_err(refused)?;
            CrlBundle { intermediate, root }
        }
        Source::File(path) => {
            let text =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            CrlBundle::from_pem(&text, &ca, now, false)
                .with_context(|| format!("the CRL bundle {} is refused", path.display()))
                .map_err(refused)?
        }
    };

    let path = opts.dir.join(CRL_FILE);
    let installed = installed(&path, &ca, now);
    let previous = installed.as_ref().map(|b| b.intermediate.number);
    let freshness = match &installed {
        Some(old) => fetched.freshness(old),
        None => Freshness::Newer,
    };
    let (bundle, updated) = match (freshness, installed) {
        (Freshness::Older(why), _) => {
            return Err(refused(anyhow!(
                "the fetched CRL is older than the installed one ({why}); keeping the installed one"
            )));
        }
        (Freshness::Same, Some(old)) => (old, false),
        (_, _) => {
            fsutil::write_atomic(&path, fetched.to_pem().as_bytes(), PUBLIC_MODE)?;
            (fetched, true)
        }
    };
    let services = record::reinstall(&opts.dir, &opts.install, record::Only::CrlChanged).await?;
    Ok(CrlOutcome {
        number: bundle.intermediate.number,
        root_number: bundle.root.number,
        revoked: bundle.intermediate.revoked,
        next_update: rfc3339(bundle.intermediate.next_update),
        previous,
        updated,
        services,
    })
}

/// The installed bundle, if there is one that verifies (expired or not: its
/// numbers still say what a newer one must beat). One that does not verify
/// is replaced, with a warning.
fn installed(path: &Path, ca: &CaCerts, now: i64) -> Option<CrlBundle> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the installed CRL; replacing it");
            return None;
        }
    };
    match CrlBundle::from_pem(&text, ca, now, true) {
        Ok(b) => Some(b),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "the installed CRL is not usable; replacing it");
            None
        }
    }
}

/// GETs the intermediate's and the root's CRL (DER) over pinned TLS.
async fn fetch(url: &str, ca: &CaCerts, opts: &CrlOptions) -> Result<(Vec<u8>, Vec<u8>), Failure> {
    let config =
        trust::pinned_client_config(&ca.root, None).map_err(|e| Failure::new(exit::TRUST, e))?;
    let mut client = HttpsClient::new(url, config)?;
    client.timeout = opts.request_timeout;
    let deadline = Instant::now() + opts.deadline;
    let mut out = Vec::with_capacity(2);
    for path in ["/v1/crl", "/v1/crl/root"] {
        let reply = bootstrap::send_with_retries(&client, deadline, || {
            (Method::GET, path, None, Bytes::new())
        })
        .await?;
        if reply.status != StatusCode::OK {
            let detail = reply
                .api_error()
                .map(|(c, m)| format!("{c}: {m}"))
                .unwrap_or_default();
            return Err(Failure::new(
                exit::REFUSED,
                anyhow!("GET {path} answered {} {detail}", reply.status),
            ));
        }
        out.push(reply.body.to_vec());
    }
    let root = out.pop().expect("two replies");
    Ok((out.pop().expect("two replies"), root))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType, IsCa, Issuer,
        KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SerialNumber,
    };

    const NOW: i64 = 1_800_000_000;

    /// A root and an intermediate named `name`, ready to sign CRLs.
    struct TestCa {
        certs: CaCerts,
        root: Issuer<'static, KeyPair>,
        intermediate: Issuer<'static, KeyPair>,
    }

    fn ca_params(cn: &str) -> CertificateParams {
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.not_before = time::OffsetDateTime::from_unix_timestamp(NOW - 86_400).unwrap();
        p.not_after = time::OffsetDateTime::from_unix_timestamp(NOW + 365 * 86_400).unwrap();
        p
    }

    fn test_ca(name: &str) -> TestCa {
        let root_key = KeyPair::generate().unwrap();
        let root_params = ca_params(&format!("{name} Root"));
        let root_cert = root_params.self_signed(&root_key).unwrap();
        let root = Issuer::new(root_params, root_key);
        let int_key = KeyPair::generate().unwrap();
        let int_params = ca_params(&format!("{name} Intermediate"));
        let int_cert = int_params.signed_by(&int_key, &root).unwrap();
        let leaf = vec![0u8];
        TestCa {
            certs: CaCerts::new(root_cert.der().to_vec(), &[leaf, int_cert.der().to_vec()])
                .unwrap(),
            intermediate: Issuer::new(int_params, int_key),
            root,
        }
    }

    fn crl(issuer: &Issuer<'_, KeyPair>, number: u64, next_update: i64, revoked: &[u8]) -> Vec<u8> {
        let t = |s| time::OffsetDateTime::from_unix_timestamp(s).unwrap();
        CertificateRevocationListParams {
            this_update: t(NOW - 300),
            next_update: t(next_update),
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&[*s]),
                    revocation_time: t(NOW - 60),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(issuer)
        .unwrap()
        .der()
        .to_vec()
    }

    fn bundle(ca: &TestCa, number: u64, root_number: u64) -> String {
        let int = VerifiedCrl::verify(
            &crl(&ca.intermediate, number, NOW + 86_400, &[7]),
            &ca.certs.intermediate,
            NOW,
            false,
        )
        .unwrap();
        let root = VerifiedCrl::verify(
            &crl(&ca.root, root_number, NOW + 86_400, &[]),
            &ca.certs.root,
            NOW,
            false,
        )
        .unwrap();
        CrlBundle {
            intermediate: int,
            root,
        }
        .to_pem()
    }

    #[test]
    fn a_bundle_needs_one_current_crl_from_each_ca_of_the_pinned_chain() {
        let ca = test_ca("Fleet");
        let text = bundle(&ca, 10, 9);
        let b = CrlBundle::from_pem(text.as_bytes(), &ca.certs, NOW, false).unwrap();
        assert_eq!((b.intermediate.number, b.root.number), (10, 9));
        assert_eq!(b.intermediate.revoked, 1);
        assert_eq!(b.to_pem(), text);
        // Order in the file does not matter.
        let swapped = format!("{}{}", b.root.pem(), b.intermediate.pem());
        assert_eq!(
            CrlBundle::from_pem(swapped.as_bytes(), &ca.certs, NOW, false).unwrap(),
            b
        );

        let only_int = b.intermediate.pem();
        let err = CrlBundle::from_pem(only_int.as_bytes(), &ca.certs, NOW, false).unwrap_err();
        assert!(
            format!("{err:#}").contains("no CRL from the root"),
            "{err:#}"
        );
        let twice = format!(
            "{}{}{}",
            b.intermediate.pem(),
            b.intermediate.pem(),
            b.root.pem()
        );
        assert!(CrlBundle::from_pem(twice.as_bytes(), &ca.certs, NOW, false).is_err());
        let cert = format!(
            "{only_int}{}",
            pem::encode(&pem::Pem::new("CERTIFICATE", ca.certs.root.clone()))
        );
        assert!(CrlBundle::from_pem(cert.as_bytes(), &ca.certs, NOW, false).is_err());
        assert!(CrlBundle::from_pem(b"", &ca.certs, NOW, false).is_err());
    }

    #[test]
    fn foreign_forged_and_expired_crls_are_refused() {
        let ca = test_ca("Fleet");
        // Another CA, even one with the very same names, is not ours.
        let twin = test_ca("Fleet");
        let other = test_ca("Other");
        for (who, foreign) in [("twin", &twin), ("other", &other)] {
            let der = crl(&foreign.intermediate, 99, NOW + 86_400, &[]);
            let err = VerifiedCrl::verify(&der, &ca.certs.intermediate, NOW, false).unwrap_err();
            let msg = format!("{err:#}");
            assert!(
                msg.contains("signature does not verify") || msg.contains("not by the pinned CA"),
                "{who}: {msg}"
            );
            let text = bundle(foreign, 99, 99);
            assert!(
                CrlBundle::from_pem(text.as_bytes(), &ca.certs, NOW, false).is_err(),
                "{who}"
            );
        }
        // A root CRL presented as the intermediate's is refused too.
        let der = crl(&ca.root, 5, NOW + 86_400, &[]);
        assert!(VerifiedCrl::verify(&der, &ca.certs.intermediate, NOW, false).is_err());

        // Expired: refused when fetched, but still readable as the installed one.
        let der = crl(&ca.intermediate, 5, NOW, &[]);
        let err = VerifiedCrl::verify(&der, &ca.certs.intermediate, NOW, false).unwrap_err();
        assert!(format!("{err:#}").contains("expired"), "{err:#}");
        assert_eq!(
            VerifiedCrl::verify(&der, &ca.certs.intermediate, NOW, true)
                .unwrap()
                .number,
            5
        );
        // Trailing bytes are not a CRL.
        let mut long = crl(&ca.intermediate, 5, NOW + 60, &[]);
        long.push(0);
        assert!(VerifiedCrl::verify(&long, &ca.certs.intermediate, NOW, false).is_err());
    }

    #[test]
    fn only_a_newer_crl_replaces_the_installed_one() {
        let ca = test_ca("Fleet");
        let read = |n, r| {
            CrlBundle::from_pem(bundle(&ca, n, r).as_bytes(), &ca.certs, NOW, false).unwrap()
        };
        let installed = read(10, 9);
        assert_eq!(read(13, 12).freshness(&installed), Freshness::Newer);
        // The root key offline: the root CRL stays while the intermediate's moves on.
        assert_eq!(read(13, 9).freshness(&installed), Freshness::Newer);
        assert_eq!(read(10, 9).freshness(&installed), Freshness::Same);
        assert!(matches!(
            read(7, 6).freshness(&installed),
            Freshness::Older(_)
        ));
        assert!(
            matches!(read(13, 8).freshness(&installed), Freshness::Older(w) if w.contains("root"))
        );
    }

    #[test]
    fn the_pinned_chain_must_hold_an_intermediate_signed_by_the_root() {
        let ca = test_ca("Fleet");
        let other = test_ca("Other");
        let leaf = vec![0u8];
        assert!(CaCerts::new(ca.certs.root.clone(), std::slice::from_ref(&leaf)).is_err());
        assert!(
            CaCerts::new(
                ca.certs.root.clone(),
                &[leaf, other.certs.intermediate.clone()]
            )
            .is_err()
        );
    }
}
