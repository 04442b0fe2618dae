//! Host keys: generated locally (they never leave the host) or loaded from a
//! PKCS#8 PEM file, and the CSR that carries the PSK.

use anyhow::{Context, Result, bail};
use policy::psk::{self, Psk};
use rcgen::{
    CertificateParams, CustomExtension, DistinguishedName, DnType, KeyPair, PublicKeyData,
};
use zeroize::{Zeroize, Zeroizing};

/// Key types `ca-client` can generate (RSA keys can be brought with `--key`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyType {
    /// ECDSA P-256 (the default)
    P256,
    /// ECDSA P-384
    P384,
    /// Ed25519
    Ed25519,
}

/// A host key; its PKCS#8 bytes are wiped on drop.
#[derive(Debug)]
pub struct HostKey(KeyPair);

impl Drop for HostKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl HostKey {
    pub fn generate(kind: KeyType) -> Result<HostKey> {
        let alg = match kind {
            KeyType::P256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyType::P384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            KeyType::Ed25519 => &rcgen::PKCS_ED25519,
        };
        Ok(HostKey(
            KeyPair::generate_for(alg).context("generating the host key")?,
        ))
    }

    /// Parses a PKCS#8 PEM key (`-----BEGIN PRIVATE KEY-----`).
    pub fn from_pem(pem_text: &str) -> Result<HostKey> {
        if pem_text.contains("BEGIN EC PRIVATE KEY") || pem_text.contains("BEGIN RSA PRIVATE KEY") {
            bail!(
                "the key is in the legacy SEC1/PKCS#1 format; convert it with `openssl pkcs8 -topk8 -nocrypt`"
            );
        }
        Ok(HostKey(KeyPair::from_pem(pem_text).context(
            "parsing the private key (PKCS#8 PEM expected)",
        )?))
    }

    pub fn load(path: &std::path::Path) -> Result<HostKey> {
        let text = Zeroizing::new(
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        );
        HostKey::from_pem(&text).with_context(|| format!("loading {}", path.display()))
    }

    /// PKCS#8 PEM.
    pub fn pem(&self) -> Zeroizing<String> {
        Zeroizing::new(self.0.serialize_pem())
    }

    /// PKCS#8 DER.
    pub fn pkcs8_der(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.0.serialize_der())
    }

    /// SubjectPublicKeyInfo DER.
    pub fn spki_der(&self) -> Vec<u8> {
        self.0.subject_public_key_info()
    }

    /// A CSR for `hostname` (CN and DNS SAN, plus `extra_sans`) carrying `psk`
    /// in `pp_preshared_key` when given.
    pub fn csr_pem(
        &self,
        hostname: &str,
        extra_sans: &[String],
        psk: Option<&Psk>,
    ) -> Result<Zeroizing<String>> {
        let mut names = vec![hostname.to_owned()];
        names.extend(extra_sans.iter().cloned());
        let mut params = CertificateParams::new(names).context("building the CSR names")?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, hostname);
        params.distinguished_name = dn;
        if let Some(psk) = psk {
            let value = psk::encode_extension_value(psk);
            params
                .custom_extensions
                .push(CustomExtension::from_oid_content(
                    psk::PSK_OID,
                    value.to_vec(),
                ));
        }
        let csr = params
            .serialize_request(&self.0)
            .context("signing the CSR")?;
        Ok(Zeroizing::new(csr.pem()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_the_private_key() {
        let key = HostKey::generate(KeyType::P256).unwrap();
        let shown = format!("{key:?} {key:#?}");
        let pem = key.pem();
        for line in pem.lines().filter(|l| !l.starts_with("-----")) {
            assert!(!shown.contains(line), "{shown}");
        }
        assert!(
            !shown.contains(&hex::encode(&key.pkcs8_der()[..])),
            "{shown}"
        );
    }
}
