//! The TLS material an installer copies: read from the bootstrap directory
//! (`key.pem`, `cert.pem`, `chain.pem`, `ca.pem`, and `crl.pem` once
//! `ca-client crl` has written one) and checked as a set: the key matches
//! the leaf, the leaf and intermediate chain to the root, the certificate is
//! valid now, and the CRL bundle holds a current CRL from the intermediate
//! and one from the root, both verified.
//! The same check runs again on the files written into a new generation,
//! before it goes live.

use crate::bootstrap::{CA_FILE, CERT_FILE, CHAIN_FILE, KEY_FILE};
use crate::crl::{CaCerts, CrlBundle};
use crate::keys::HostKey;
use crate::trust;
use anyhow::{Context, Result, anyhow, bail};
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use std::path::Path;
use zeroize::Zeroizing;

/// Name of the CRL in the bootstrap directory (written by `ca-client crl`).
pub const CRL_FILE: &str = "crl.pem";

/// A checked set: one issuance's key, chain and trust anchor.
#[derive(Debug)]
pub struct Material {
    /// PKCS#8 PEM of the host key.
    pub key_pem: Zeroizing<String>,
    /// Leaf first, then the intermediate(s), DER.
    pub chain: Vec<Vec<u8>>,
    /// The root (the pinned trust anchor), DER.
    pub root: Vec<u8>,
    /// The CRL as PEM, if the bootstrap directory has one (signature checked).
    pub crl_pem: Option<Vec<u8>>,
    pub leaf: LeafInfo,
}

/// Key, chain (leaf first) and root as read back from installed files.
#[derive(Debug)]
pub struct KeySet {
    pub key_pem: Zeroizing<String>,
    pub chain: Vec<Vec<u8>>,
    pub root: Vec<u8>,
}

/// What the installers print about the leaf.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LeafInfo {
    /// The leaf's subject CN: the host's name (also used as SNI when probing).
    pub hostname: String,
    /// Serial in lowercase hex, as `bootstrap` prints it.
    pub serial: String,
    pub not_after: String,
}

impl Material {
    /// Reads and checks the bootstrap directory.
    pub fn load(dir: &Path) -> Result<Material> {
        let read = |name: &str| -> Result<Vec<u8>> {
            std::fs::read(dir.join(name))
                .with_context(|| format!("reading {}", dir.join(name).display()))
        };
        let key_pem = Zeroizing::new(
            String::from_utf8(read(KEY_FILE)?).map_err(|_| anyhow!("{KEY_FILE} is not text"))?,
        );
        let chain =
            certs_from_pem(&read(CHAIN_FILE)?).with_context(|| format!("reading {CHAIN_FILE}"))?;
        let leaf =
            certs_from_pem(&read(CERT_FILE)?).with_context(|| format!("reading {CERT_FILE}"))?;
        if leaf.first() != chain.first() {
            bail!("{CERT_FILE} is not the first certificate of {CHAIN_FILE}");
        }
        let root = one_cert(&read(CA_FILE)?).with_context(|| format!("reading {CA_FILE}"))?;
        let crl_path = dir.join(CRL_FILE);
        let crl_pem = if crl_path.exists() {
            let pem = read(CRL_FILE)?;
            let ca = CaCerts::new(root.clone(), &chain)?;
            CrlBundle::from_pem(&pem, &ca, crate::timefmt::unix_now(), false).with_context(
                || format!("{CRL_FILE} is not usable (run `ca-client crl` to fetch a current one)"),
            )?;
            Some(pem)
        } else {
            None
        };
        let leaf = check_set(&key_pem, &chain, &root)?;
        Ok(Material {
            key_pem,
            chain,
            root,
            crl_pem,
            leaf,
        })
    }

    /// Leaf then intermediates, PEM (nginx `fullchain.pem`, PostgreSQL `server.crt`).
    pub fn chain_pem(&self) -> String {
        self.chain.iter().map(|d| cert_pem(d)).collect()
    }

    /// The root, PEM.
    pub fn root_pem(&self) -> String {
        cert_pem(&self.root)
    }
}

pub use proto::certs::{cert_pem, certs_from_pem};

fn one_cert(text: &[u8]) -> Result<Vec<u8>> {
    let mut certs = certs_from_pem(text)?;
    if certs.len() != 1 {
        bail!("expected exactly one certificate, found {}", certs.len());
    }
    Ok(certs.remove(0))
}

/// The private key block of a PEM text (e.g. HAProxy's combined file),
/// re-encoded on its own.
pub fn key_from_pem(text: &str) -> Result<Zeroizing<String>> {
    let blocks = pem::parse_many(text).context("not PEM")?;
    let mut keys = blocks
        .into_iter()
        .filter(|b| b.tag().contains("PRIVATE KEY"));
    let key = keys.next().context("no private key in it")?;
    if keys.next().is_some() {
        bail!("more than one private key in it");
    }
    let der = Zeroizing::new(key.contents().to_vec());
    Ok(Zeroizing::new(pem::encode(&pem::Pem::new(
        key.tag().to_owned(),
        der.to_vec(),
    ))))
}

/// A certificate's subject CN: the host's name.
pub fn subject_cn(cert: &x509_parser::certificate::X509Certificate<'_>) -> Result<String> {
    Ok(cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .context("the certificate has no subject CN")?
        .to_owned())
}

/// Checks one set: the key is the leaf's, and leaf + intermediates chain to
/// `root` for the leaf's own name, now, as a TLS server certificate.
pub fn check_set(key_pem: &str, chain: &[Vec<u8>], root: &[u8]) -> Result<LeafInfo> {
    let leaf_der = chain.first().context("no leaf certificate")?;
    let (_, leaf) = x509_parser::parse_x509_certificate(leaf_der)
        .map_err(|e| anyhow!("the certificate does not parse: {e}"))?;
    let key = HostKey::from_pem(key_pem)?;
    if leaf.public_key().raw != key.spki_der().as_slice() {
        bail!(
            "the private key does not match the certificate (serial {})",
            hex::encode(leaf.raw_serial())
        );
    }
    let hostname = subject_cn(&leaf)?;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(root.to_vec()))
        .context("the root is not a usable trust anchor")?;
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        roots.into(),
        trust::provider(),
    )
    .build()?;
    let intermediates: Vec<CertificateDer> = chain[1..]
        .iter()
        .map(|d| CertificateDer::from(d.clone()))
        .collect();
    let name = ServerName::try_from(hostname.clone())
        .map_err(|e| anyhow!("the certificate's CN is not a host name: {e}"))?;
    verifier
        .verify_server_cert(
            &CertificateDer::from(leaf_der.clone()),
            &intermediates,
            &name,
            &[],
            UnixTime::now(),
        )
        .map_err(|e| anyhow!("the certificate chain does not verify against the root: {e}"))?;
    Ok(LeafInfo {
        hostname,
        serial: hex::encode(leaf.raw_serial()),
        not_after: leaf
            .validity()
            .not_after
            .to_datetime()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
    })
}
