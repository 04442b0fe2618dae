//! CA material: creating the root and intermediate (`init`), loading the
//! intermediate to sign with, and building every leaf field from policy's
//! profile. Nothing a CSR requests reaches a certificate except its public key.
//!
//! Data dir layout (keys 0600, certificates 0644, dir 0700):
//! `root.crt`, `root.key` (may be moved offline after init),
//! `intermediate.crt`, `intermediate.key`.

use anyhow::{Context, Result, anyhow, bail};
use policy::{AllowedName, KeyKind, Profile};
use proto::fsutil::{self, KEY_MODE, PUBLIC_MODE};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CrlDistributionPoint,
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType, SerialNumber, SigningKey,
};
use ring::rand::{SecureRandom, SystemRandom};
use std::path::{Path, PathBuf};
use std::time::Duration;
use time::OffsetDateTime;
use zeroize::{Zeroize, Zeroizing};

/// Root validity (10 years).
pub const ROOT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400 + 2 * 86_400);
/// Intermediate validity (5 years).
pub const INTERMEDIATE_VALIDITY: Duration = Duration::from_secs(5 * 365 * 86_400 + 86_400);
/// Leaf notBefore is backdated by this much for clock skew.
pub const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// Where the CA files live inside the data dir.
#[derive(Debug, Clone)]
pub struct CaPaths {
    pub dir: PathBuf,
    pub root_cert: PathBuf,
    pub root_key: PathBuf,
    pub intermediate_cert: PathBuf,
    pub intermediate_key: PathBuf,
}

impl CaPaths {
    pub fn new(dir: &Path) -> CaPaths {
        CaPaths {
            dir: dir.to_path_buf(),
            root_cert: dir.join("root.crt"),
            root_key: dir.join("root.key"),
            intermediate_cert: dir.join("intermediate.crt"),
            intermediate_key: dir.join("intermediate.key"),
        }
    }

    /// Takes the data dir's lock (held until the file is dropped): `init` and
    /// `intermediate rotate` never run at once on one data dir.
    pub fn lock(&self) -> Result<std::fs::File> {
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join(".init.lock"))
            .context("opening the init lock")?;
        lock.lock().context("taking the init lock")?;
        Ok(lock)
    }

    /// The CA counts as initialised once the intermediate (what signs) exists.
    pub fn is_initialised(&self) -> bool {
        self.root_cert.exists() && self.intermediate_cert.exists() && self.intermediate_key.exists()
    }
}

/// A CA signing key that wipes its PKCS#8 bytes on drop (ring's internal
/// state is not wiped; see docs/security.md).
#[derive(Debug)]
pub struct CaKey(KeyPair);

impl Drop for CaKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl PublicKeyData for CaKey {
    fn der_bytes(&self) -> &[u8] {
        self.0.der_bytes()
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.0.algorithm()
    }
}

impl SigningKey for CaKey {
    fn sign(&self, msg: &[u8]) -> std::result::Result<Vec<u8>, rcgen::Error> {
        self.0.sign(msg)
    }
}

impl CaKey {
    pub(crate) fn generate() -> Result<CaKey> {
        Ok(CaKey(KeyPair::generate_for(
            &rcgen::PKCS_ECDSA_P256_SHA256,
        )?))
    }

    fn load(path: &Path) -> Result<CaKey> {
        let pem = Zeroizing::new(
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        );
        Ok(CaKey(
            KeyPair::from_pem(&pem).with_context(|| format!("parsing {}", path.display()))?,
        ))
    }

    pub(crate) fn pem(&self) -> Zeroizing<String> {
        Zeroizing::new(self.0.serialize_pem())
    }
}

/// `sha256:<hex>` over a certificate's DER: how operators pin the root.
pub fn fingerprint(der: &[u8]) -> String {
    proto::trust::fingerprint(der)
}

/// 16 CSPRNG bytes, top bit clear (positive) and second bit set (so the DER
/// integer is always exactly 16 bytes and its hex form canonical).
pub fn random_serial(rng: &SystemRandom) -> Result<[u8; 16]> {
    let mut serial = [0u8; 16];
    rng.fill(&mut serial)
        .map_err(|_| anyhow!("CSPRNG failure"))?;
    serial[0] = (serial[0] & 0x7f) | 0x40;
    Ok(serial)
}

fn to_time(unix: i64) -> Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(unix).context("time out of range")
}

pub(crate) fn ca_params(
    cn: &str,
    not_before: i64,
    validity: Duration,
    path_len: Option<u8>,
) -> Result<CertificateParams> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.serial_number = Some(SerialNumber::from_slice(&random_serial(
        &SystemRandom::new(),
    )?));
    params.not_before = to_time(not_before)?;
    params.not_after = to_time(not_before + validity.as_secs() as i64)?;
    params.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

/// What `init` found or made.
#[derive(Debug)]
pub struct InitOutcome {
    pub fingerprint: String,
    pub created: bool,
}

/// Creates the root and intermediate in `paths.dir` unless they exist.
/// Serialised with a lock file so that two processes starting on one empty
/// data dir cannot create two different CAs.
pub fn init(paths: &CaPaths, name: &str, now: i64) -> Result<InitOutcome> {
    init_with(paths, name, now, None)
}

/// [`init`], with the root CRL's plain-HTTP URL (from `--http-public-url`)
/// as the new intermediate's CRL distribution point. An existing CA is left
/// as it is (its intermediate gains the URL at `intermediate rotate`).
pub fn init_with(
    paths: &CaPaths,
    name: &str,
    now: i64,
    root_crl_url: Option<&str>,
) -> Result<InitOutcome> {
    // The data dir holds the CA keys: another user's is refused, an open
    // one of ours tightened to 0700.
    fsutil::private_key_dir(&paths.dir)?;
    let _lock = paths.lock()?;

    if paths.is_initialised() {
        let root = read_cert_der(&paths.root_cert)?;
        return Ok(InitOutcome {
            fingerprint: fingerprint(&root),
            created: false,
        });
    }
    if paths.root_cert.exists()
        || paths.intermediate_cert.exists()
        || paths.intermediate_key.exists()
    {
        bail!(
            "{} holds part of a CA (some of root.crt, intermediate.crt, intermediate.key are missing); \
             refusing to overwrite it. Restore the missing files or use an empty data dir.",
            paths.dir.display()
        );
    }

    let backdate = BACKDATE.as_secs() as i64;
    let root_key = CaKey::generate()?;
    let root_params = ca_params(
        &format!("{name} Root CA"),
        now - backdate,
        ROOT_VALIDITY,
        None,
    )?;
    let root_cert = root_params.self_signed(&root_key)?;
    let root_issuer = Issuer::new(root_params, &root_key);

    let int_key = CaKey::generate()?;
    let mut int_params = ca_params(
        &format!("{name} Intermediate CA"),
        now - backdate,
        INTERMEDIATE_VALIDITY,
        Some(0),
    )?;
    int_params.use_authority_key_identifier_extension = true;
    if let Some(url) = root_crl_url {
        int_params.crl_distribution_points = vec![CrlDistributionPoint {
            uris: vec![url.to_owned()],
        }];
    }
    let int_cert = int_params.signed_by(&int_key, &root_issuer)?;

    // Keys first: a crash leaves no certificate without its key.
    fsutil::write_atomic(&paths.root_key, root_key.pem().as_bytes(), KEY_MODE)?;
    fsutil::write_atomic(&paths.intermediate_key, int_key.pem().as_bytes(), KEY_MODE)?;
    fsutil::write_atomic(
        &paths.intermediate_cert,
        int_cert.pem().as_bytes(),
        PUBLIC_MODE,
    )?;
    fsutil::write_atomic(&paths.root_cert, root_cert.pem().as_bytes(), PUBLIC_MODE)?;
    Ok(InitOutcome {
        fingerprint: fingerprint(root_cert.der()),
        created: true,
    })
}

/// Reads the first certificate of a PEM file as DER.
pub fn read_cert_der(path: &Path) -> Result<Vec<u8>> {
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let block = pem::parse(&text).with_context(|| format!("parsing {}", path.display()))?;
    if block.tag() != "CERTIFICATE" {
        bail!("{} does not hold a certificate", path.display());
    }
    Ok(block.into_contents())
}

/// What to put in a leaf.
#[derive(Debug)]
pub struct LeafRequest<'a> {
    pub profile: &'a Profile,
    pub key: KeyKind,
    pub spki_der: &'a [u8],
    pub now: i64,
    pub validity: Duration,
}

/// A signed leaf.
#[derive(Debug, Clone)]
pub struct SignedLeaf {
    /// Lowercase hex, 32 characters.
    pub serial: String,
    pub der: Vec<u8>,
    pub not_before: i64,
    pub not_after: i64,
}

impl SignedLeaf {
    /// The store row for this certificate (no PSK, not revoked).
    pub fn to_record(
        &self,
        hostname: &str,
        kind: crate::store::CertKind,
        spki_der: &[u8],
        issued_at: i64,
    ) -> crate::store::CertRecord {
        crate::store::CertRecord {
            serial: self.serial.clone(),
            hostname: hostname.to_owned(),
            kind: kind.into(),
            public_key_sha256: policy::csr::spki_sha256(spki_der).to_vec(),
            psk_hash: None,
            psk_expires_at: None,
            not_before: self.not_before,
            not_after: self.not_after,
            der: self.der.clone(),
            issued_at,
            revoked_at: None,
            revocation_reason: None,
            superseded_by: None,
        }
    }
}

/// The intermediate, loaded and ready to sign leaves and CRLs.
pub struct Signer {
    issuer: Issuer<'static, CaKey>,
    pub intermediate_der: Vec<u8>,
    pub root_der: Vec<u8>,
    /// Intermediate then root, PEM: what `GET /v1/ca` serves.
    pub bundle_pem: String,
    pub intermediate_pem: String,
    pub fingerprint: String,
    intermediate_not_after: i64,
    crl_url: Option<String>,
    /// Set with the plain-HTTP listener: leaves then carry its CDP and AIA.
    plain_http: Option<PlainHttpUrls>,
    /// Wraps the OCSP responder key in the store (derived from the intermediate key).
    ocsp_wrap: crate::pki::ocsp::WrapKey,
    rng: SystemRandom,
}

/// Where the plain-HTTP listener publishes CRLs, CA certificates and OCSP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlainHttpUrls {
    pub intermediate_crl: String,
    pub root_crl: String,
    pub intermediate_cert: String,
    pub root_cert: String,
    pub ocsp: String,
}

impl PlainHttpUrls {
    /// The stable paths under `base` (e.g. `http://ca.example:8080`).
    pub fn new(base: &str) -> PlainHttpUrls {
        let base = base.trim_end_matches('/');
        PlainHttpUrls {
            intermediate_crl: format!("{base}{}", PLAIN_PATH_INTERMEDIATE_CRL),
            root_crl: format!("{base}{}", PLAIN_PATH_ROOT_CRL),
            intermediate_cert: format!("{base}{}", PLAIN_PATH_INTERMEDIATE_CERT),
            root_cert: format!("{base}{}", PLAIN_PATH_ROOT_CERT),
            ocsp: format!("{base}/ocsp"),
        }
    }
}

/// Plain-HTTP paths (stable: they are written into certificates).
pub const PLAIN_PATH_INTERMEDIATE_CRL: &str = "/crl/intermediate.crl";
pub const PLAIN_PATH_ROOT_CRL: &str = "/crl/root.crl";
pub const PLAIN_PATH_INTERMEDIATE_CERT: &str = "/ca/intermediate.crt";
pub const PLAIN_PATH_ROOT_CERT: &str = "/ca/root.crt";

/// authorityInfoAccess (1.3.6.1.5.5.7.1.1) naming the OCSP responder and the issuer's certificate.
fn aia_extension(ocsp: &str, ca_issuers: &str) -> rcgen::CustomExtension {
    use proto::ocsp::der::{OID, seq, tlv};
    let desc = |method: u8, uri: &str| {
        seq(&[
            &tlv(OID, &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, method]),
            &tlv(0x86, uri.as_bytes()),
        ])
    };
    rcgen::CustomExtension::from_oid_content(
        &[1, 3, 6, 1, 5, 5, 7, 1, 1],
        seq(&[&desc(1, ocsp), &desc(2, ca_issuers)]),
    )
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// Loads the intermediate key and the certificates; checks that the key
    /// belongs to the intermediate and the intermediate to the root.
    pub fn load(paths: &CaPaths, crl_url: Option<String>) -> Result<Signer> {
        let root_der = read_cert_der(&paths.root_cert)?;
        let (intermediate_der, key) =
            load_ca_pair(&paths.intermediate_cert, &paths.intermediate_key)?;

        let (_, int) = x509_parser::parse_x509_certificate(&intermediate_der)
            .map_err(|e| anyhow!("parsing {}: {e}", paths.intermediate_cert.display()))?;
        let (_, root) = x509_parser::parse_x509_certificate(&root_der)
            .map_err(|e| anyhow!("parsing {}: {e}", paths.root_cert.display()))?;
        int.verify_signature(Some(root.public_key()))
            .map_err(|_| anyhow!("the intermediate is not signed by the root"))?;
        let intermediate_not_after = int.validity().not_after.timestamp();

        let ocsp_wrap = {
            let pkcs8 = Zeroizing::new(key.0.serialize_der());
            crate::pki::ocsp::WrapKey::derive(&pkcs8)
        };
        let issuer = Issuer::from_ca_cert_der(&intermediate_der.clone().into(), key)
            .context("reading the intermediate as an issuer")?;
        let intermediate_pem = pem::encode(&pem::Pem::new("CERTIFICATE", intermediate_der.clone()));
        let root_pem = pem::encode(&pem::Pem::new("CERTIFICATE", root_der.clone()));
        Ok(Signer {
            issuer,
            fingerprint: fingerprint(&root_der),
            bundle_pem: format!("{intermediate_pem}{root_pem}"),
            intermediate_pem,
            intermediate_der,
            root_der,
            intermediate_not_after,
            crl_url,
            plain_http: None,
            ocsp_wrap,
            rng: SystemRandom::new(),
        })
    }

    /// With the plain-HTTP listener: new leaves name its CRL (in place of
    /// the HTTPS one) and carry AIA (OCSP, caIssuers).
    pub fn with_plain_http(mut self, urls: PlainHttpUrls) -> Signer {
        self.crl_url = Some(urls.intermediate_crl.clone());
        self.plain_http = Some(urls);
        self
    }

    /// The plain-HTTP URLs leaves carry, if configured.
    pub fn plain_http(&self) -> Option<&PlainHttpUrls> {
        self.plain_http.as_ref()
    }

    /// The key wrapping the OCSP responder key in the store.
    pub fn ocsp_wrap_key(&self) -> &crate::pki::ocsp::WrapKey {
        &self.ocsp_wrap
    }

    /// Signs a delegated OCSP responder certificate for `spki_der`: EKU
    /// OCSPSigning only, id-pkix-ocsp-nocheck (relying parties do not ask
    /// for its own status), valid `validity` from `now` (backdated like leaves).
    pub fn sign_ocsp_responder(
        &self,
        spki_der: &[u8],
        now: i64,
        validity: Duration,
    ) -> Result<SignedLeaf> {
        let (_, int) = x509_parser::parse_x509_certificate(&self.intermediate_der)
            .map_err(|e| anyhow!("parsing the intermediate: {e}"))?;
        let cn = int
            .subject()
            .iter_common_name()
            .next()
            .and_then(|c| c.as_str().ok())
            .unwrap_or("CA")
            .trim_end_matches(" Intermediate CA")
            .to_owned();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("{cn} OCSP Responder"));
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::OcspSigning];
        params.custom_extensions = vec![rcgen::CustomExtension::from_oid_content(
            &[1, 3, 6, 1, 5, 5, 7, 48, 1, 5],
            vec![0x05, 0x00],
        )];
        let spki = rcgen::SubjectPublicKeyInfo::from_der(spki_der)
            .context("reading the responder public key")?;
        let serial = random_serial(&self.rng)?;
        let not_before = now - BACKDATE.as_secs() as i64;
        let not_after = (now + validity.as_secs() as i64).min(self.intermediate_not_after);
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.not_before = to_time(not_before)?;
        params.not_after = to_time(not_after)?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&spki, &self.issuer)?;
        Ok(SignedLeaf {
            serial: hex::encode(serial),
            der: cert.der().to_vec(),
            not_before,
            not_after,
        })
    }

    /// Unix time at which the intermediate expires.
    pub fn intermediate_not_after(&self) -> i64 {
        self.intermediate_not_after
    }

    /// Signs a leaf. Every field is decided here from the profile; the CSR
    /// contributes only the public key.
    pub fn sign_leaf(&self, req: &LeafRequest<'_>) -> Result<SignedLeaf> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, req.profile.hostname.as_str());
        params.distinguished_name = dn;
        params.subject_alt_names = req
            .profile
            .sans
            .iter()
            .map(|n| {
                Ok(match n {
                    AllowedName::Dns(d) => SanType::DnsName(d.as_str().try_into()?),
                    AllowedName::Ip(ip) => SanType::IpAddress(*ip),
                })
            })
            .collect::<std::result::Result<_, rcgen::Error>>()?;
        params.key_usages = if req.key.is_rsa() {
            vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ]
        } else {
            vec![KeyUsagePurpose::DigitalSignature]
        };
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.sign_end_entity(params, req.spki_der, req.now, req.validity)
    }

    /// Signs an end-entity certificate whose profile fields (subject, names,
    /// key and extended key usages) are already in `params`: sets what every
    /// leaf shares (random serial, backdated validity capped by the
    /// intermediate's, AKI, CRL distribution point) and signs `spki_der`.
    pub(crate) fn sign_end_entity(
        &self,
        mut params: CertificateParams,
        spki_der: &[u8],
        now: i64,
        validity: Duration,
    ) -> Result<SignedLeaf> {
        let spki = rcgen::SubjectPublicKeyInfo::from_der(spki_der)
            .context("reading the subject public key")?;
        // rcgen re-encodes the key from its algorithm; make sure it is the same key encoding.
        if spki.subject_public_key_info() != spki_der {
            bail!("subject public key uses an encoding that cannot be reproduced exactly");
        }
        let serial = random_serial(&self.rng)?;
        let not_before = now - BACKDATE.as_secs() as i64;
        let not_after = (now + validity.as_secs() as i64).min(self.intermediate_not_after);
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.not_before = to_time(not_before)?;
        params.not_after = to_time(not_after)?;
        params.is_ca = IsCa::ExplicitNoCa; // basicConstraints CA:FALSE and the SKI
        params.use_authority_key_identifier_extension = true;
        if let Some(url) = &self.crl_url {
            params.crl_distribution_points = vec![CrlDistributionPoint {
                uris: vec![url.clone()],
            }];
        }
        if let Some(urls) = &self.plain_http {
            params
                .custom_extensions
                .push(aia_extension(&urls.ocsp, &urls.intermediate_cert));
        }
        let cert = params.signed_by(&spki, &self.issuer)?;
        Ok(SignedLeaf {
            serial: hex::encode(serial),
            der: cert.der().to_vec(),
            not_before,
            not_after,
        })
    }

    /// Whether `spki_der` is the root's or the intermediate's public key
    /// (a CSR for the CA's own key is refused: nobody else should hold it).
    pub fn is_ca_key(&self, spki_der: &[u8]) -> bool {
        [&self.root_der, &self.intermediate_der].iter().any(|der| {
            x509_parser::parse_x509_certificate(der)
                .is_ok_and(|(_, cert)| cert.public_key().raw == spki_der)
        })
    }

    /// Leaf then intermediate, PEM.
    pub fn chain_pem(&self, leaf_der: &[u8]) -> String {
        let leaf = pem::encode(&pem::Pem::new("CERTIFICATE", leaf_der.to_vec()));
        format!("{leaf}{}", self.intermediate_pem)
    }

    /// Signs a CRL with the intermediate (it covers every leaf). The content
    /// is decided by `crate::pki::crl`; the issuer's key identifier is set here.
    pub fn sign_crl(&self, params: CertificateRevocationListParams) -> Result<Vec<u8>> {
        sign_crl_with(&self.issuer, &self.intermediate_der, params)
    }
}

/// The root key, loaded only while it is in the data dir (it may be moved
/// offline after `init`), to sign the root's CRL, which covers the intermediate.
pub struct RootSigner {
    issuer: Issuer<'static, CaKey>,
    root_der: Vec<u8>,
}

impl std::fmt::Debug for RootSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootSigner").finish_non_exhaustive()
    }
}

impl RootSigner {
    /// `None` when `root.key` is not in the data dir.
    pub fn load(paths: &CaPaths) -> Result<Option<RootSigner>> {
        if !paths.root_key.exists() {
            return Ok(None);
        }
        let (root_der, key) = load_ca_pair(&paths.root_cert, &paths.root_key)?;
        let issuer = Issuer::from_ca_cert_der(&root_der.clone().into(), key)
            .context("reading the root as an issuer")?;
        Ok(Some(RootSigner { issuer, root_der }))
    }

    /// Signs a CRL with the root.
    pub fn sign_crl(&self, params: CertificateRevocationListParams) -> Result<Vec<u8>> {
        sign_crl_with(&self.issuer, &self.root_der, params)
    }
}

/// Reads a CA certificate (DER) and its key, checking that they belong together.
pub(crate) fn load_ca_pair(cert_path: &Path, key_path: &Path) -> Result<(Vec<u8>, CaKey)> {
    let der = read_cert_der(cert_path)?;
    let key = CaKey::load(key_path)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| anyhow!("parsing {}: {e}", cert_path.display()))?;
    if cert.public_key().raw != key.subject_public_key_info().as_slice() {
        bail!(
            "{} does not belong to {}",
            key_path.display(),
            cert_path.display()
        );
    }
    Ok((der, key))
}

/// Signs `params` with `issuer`, whose certificate is `issuer_der`. The CRL's
/// authority key identifier must be the issuer's subject key identifier, or
/// verifiers may not pair them.
fn sign_crl_with(
    issuer: &Issuer<'_, CaKey>,
    issuer_der: &[u8],
    mut params: CertificateRevocationListParams,
) -> Result<Vec<u8>> {
    let (_, cert) = x509_parser::parse_x509_certificate(issuer_der)
        .map_err(|e| anyhow!("parsing the CA certificate: {e}"))?;
    let ski = cert
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
            _ => None,
        })
        .context("the CA certificate has no subject key identifier")?;
    params.key_identifier_method = KeyIdMethod::PreSpecified(ski);
    Ok(params.signed_by(issuer)?.der().to_vec())
}

/// Leaf validity with the default of the contract (30 days).
pub const DEFAULT_LEAF_VALIDITY: Duration = Duration::from_secs(30 * 86_400);

/// Where the CA itself says its CRL is published.
pub fn crl_url_for(public_url: &str) -> String {
    format!("{}/v1/crl", public_url.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> i64 {
        1_800_000_000
    }

    #[test]
    fn init_then_sign_a_leaf_with_the_full_profile() {
        let dir = tempfile::tempdir().unwrap();
        let paths = CaPaths::new(&dir.path().join("ca"));
        let first = init(&paths, "Test", now()).unwrap();
        assert!(first.created);
        assert!(first.fingerprint.starts_with("sha256:"));
        let again = init(&paths, "Test", now()).unwrap();
        assert!(!again.created);
        assert_eq!(again.fingerprint, first.fingerprint);

        use std::os::unix::fs::PermissionsExt;
        for key in [&paths.root_key, &paths.intermediate_key] {
            let mode = std::fs::metadata(key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }

        let signer = Signer::load(&paths, Some("https://ca.example:8443/v1/crl".into())).unwrap();
        let key = KeyPair::generate().unwrap();
        let profile = Profile {
            hostname: "web1.example.internal".into(),
            sans: vec![
                AllowedName::Dns("web1.example.internal".into()),
                AllowedName::Ip("10.0.0.5".parse().unwrap()),
            ],
        };
        let spki = key.subject_public_key_info();
        let leaf = signer
            .sign_leaf(&LeafRequest {
                profile: &profile,
                key: KeyKind::EcdsaP256,
                spki_der: &spki,
                now: now(),
                validity: DEFAULT_LEAF_VALIDITY,
            })
            .unwrap();
        assert_eq!(leaf.serial.len(), 32);
        assert_eq!(leaf.not_before, now() - 300);

        let (_, cert) = x509_parser::parse_x509_certificate(&leaf.der).unwrap();
        assert_eq!(hex::encode(cert.raw_serial()), leaf.serial);
        assert_eq!(cert.subject().to_string(), "CN=web1.example.internal");
        assert_eq!(cert.public_key().raw, spki.as_slice());
        let bc = cert.basic_constraints().unwrap().unwrap();
        assert!(bc.critical && !bc.value.ca);
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth && !eku.any);
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature() && !ku.key_encipherment() && !ku.key_cert_sign());
        let (_, root) = x509_parser::parse_x509_certificate(&signer.root_der).unwrap();
        let (_, int) = x509_parser::parse_x509_certificate(&signer.intermediate_der).unwrap();
        cert.verify_signature(Some(int.public_key())).unwrap();
        int.verify_signature(Some(root.public_key())).unwrap();
        assert_eq!(
            int.basic_constraints()
                .unwrap()
                .unwrap()
                .value
                .path_len_constraint,
            Some(0)
        );
        // No PSK extension, and only the extensions we decided.
        let oids: Vec<String> = cert
            .extensions()
            .iter()
            .map(|e| e.oid.to_id_string())
            .collect();
        assert!(!oids.contains(&policy::psk::PSK_OID_STR.to_string()));
        for oid in [
            "2.5.29.35",
            "2.5.29.14",
            "2.5.29.17",
            "2.5.29.19",
            "2.5.29.15",
            "2.5.29.37",
            "2.5.29.31",
        ] {
            assert!(oids.contains(&oid.to_string()), "missing {oid}");
        }
        assert_eq!(oids.len(), 7);
    }

    #[test]
    fn a_partial_data_dir_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let paths = CaPaths::new(dir.path());
        init(&paths, "Test", now()).unwrap();
        std::fs::remove_file(&paths.intermediate_key).unwrap();
        let err = init(&paths, "Test", now()).unwrap_err();
        assert!(err.to_string().contains("refusing to overwrite"), "{err}");
    }

    #[test]
    fn serials_are_canonical_16_byte_positive_integers() {
        let rng = SystemRandom::new();
        for _ in 0..1000 {
            let s = random_serial(&rng).unwrap();
            assert_eq!(s[0] & 0xc0, 0x40);
        }
    }
}
