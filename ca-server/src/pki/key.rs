//! The CA signing key behind one interface, whether a PEM file in the data
//! dir or a key in a PKCS#11 token ([`super::pkcs11`]), and where `init`
//! and `intermediate rotate` put new keys ([`KeySource`]).

use super::pkcs11::{Token, TokenError, TokenKey};
use anyhow::{Context, Result};
use rcgen::{KeyPair, PublicKeyData, SigningKey};
use std::path::Path;
use zeroize::{Zeroize, Zeroizing};

/// Where the CA keys live.
#[derive(Debug, Clone, Default)]
pub enum KeySource {
    /// PEM files in the data dir (`root.key`, `intermediate.key`).
    #[default]
    Files,
    /// A PKCS#11 token: no private key file is written or read.
    Token(Token),
}

impl KeySource {
    pub fn token(&self) -> Option<&Token> {
        match self {
            KeySource::Files => None,
            KeySource::Token(t) => Some(t),
        }
    }
}

/// A CA signing key. A file key wipes its PKCS#8 bytes on drop (ring's
/// internal state is not wiped; see docs/security.md); a token key is a
/// reference to an object in the token.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one or two per process, never moved in a hot loop
pub enum CaKey {
    File(KeyPair),
    Token(TokenKey),
}

impl Drop for CaKey {
    fn drop(&mut self) {
        if let CaKey::File(k) = self {
            k.zeroize();
        }
    }
}

impl PublicKeyData for CaKey {
    fn der_bytes(&self) -> &[u8] {
        match self {
            CaKey::File(k) => k.der_bytes(),
            CaKey::Token(k) => k.point(),
        }
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            CaKey::File(k) => k.algorithm(),
            CaKey::Token(k) => k.algorithm(),
        }
    }
}

impl SigningKey for CaKey {
    fn sign(&self, msg: &[u8]) -> std::result::Result<Vec<u8>, rcgen::Error> {
        match self {
            CaKey::File(k) => k.sign(msg),
            CaKey::Token(k) => k.sign(msg).map_err(|e| {
                // rcgen's error carries no detail: log it here, where it is known.
                tracing::error!(error = %e, "signing in the PKCS#11 token failed");
                rcgen::Error::RemoteKeyError
            }),
        }
    }
}

impl CaKey {
    /// A new P-256 key in memory (file keys).
    pub(crate) fn generate() -> Result<CaKey> {
        Ok(CaKey::File(KeyPair::generate_for(
            &rcgen::PKCS_ECDSA_P256_SHA256,
        )?))
    }

    /// A new key where `source` keeps CA keys, labelled `label` in a token.
    pub(crate) fn generate_in(source: &KeySource, token_label: &str, label: &str) -> Result<CaKey> {
        match source {
            KeySource::Files => CaKey::generate(),
            KeySource::Token(t) => Ok(CaKey::Token(t.generate_key(token_label, label)?)),
        }
    }

    pub(crate) fn load(path: &Path) -> Result<CaKey> {
        let pem = Zeroizing::new(
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        );
        Ok(CaKey::File(
            KeyPair::from_pem(&pem).with_context(|| format!("parsing {}", path.display()))?,
        ))
    }

    /// The PEM of a file key; `None` for a token key (it has none).
    pub(crate) fn pem(&self) -> Option<Zeroizing<String>> {
        match self {
            CaKey::File(k) => Some(Zeroizing::new(k.serialize_pem())),
            CaKey::Token(_) => None,
        }
    }

    /// The PKCS#8 of a file key (the OCSP wrap key's input).
    pub(crate) fn pkcs8(&self) -> Option<Zeroizing<Vec<u8>>> {
        match self {
            CaKey::File(k) => Some(Zeroizing::new(k.serialize_der())),
            CaKey::Token(_) => None,
        }
    }

    /// The token key, if this is one.
    pub fn token_key(&self) -> Option<&TokenKey> {
        match self {
            CaKey::File(_) => None,
            CaKey::Token(k) => Some(k),
        }
    }

    /// Whether signing can work now (a token key: its token answers).
    pub fn available(&self) -> std::result::Result<(), TokenError> {
        match self {
            CaKey::File(_) => Ok(()),
            CaKey::Token(k) if k.token().is_up() => Ok(()),
            CaKey::Token(k) => Err(TokenError::Unavailable(
                k.token()
                    .last_error()
                    .unwrap_or_else(|| "not connected".into()),
            )),
        }
    }
}
