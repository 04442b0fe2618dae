//! Trust bootstrap: root fingerprints (`sha256:<hex>`), and the rustls
//! configurations for the one unverified fetch of `/v1/ca` and for every call
//! after it, which trusts only the pinned root.

use anyhow::{Context, Result, anyhow, bail};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::sync::{Arc, Mutex};

/// `sha256:<lowercase hex>` over a certificate's DER.
pub fn fingerprint(der: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    format!("sha256:{}", hex::encode(d.as_ref()))
}

/// Parses an operator-supplied fingerprint: `sha256:` prefix optional, hex in
/// any case, colons optional (as `openssl x509 -fingerprint -sha256` prints it).
pub fn parse_fingerprint(s: &str) -> Result<[u8; 32]> {
    let s = s.trim();
    let hexpart = match s.split_once(':') {
        Some((alg, rest)) if alg.eq_ignore_ascii_case("sha256") => rest,
        _ => s,
    };
    let cleaned: String = hexpart.chars().filter(|c| *c != ':').collect();
    let bytes = hex::decode(&cleaned).context("fingerprint is not hex")?;
    bytes
        .try_into()
        .map_err(|_| anyhow!("fingerprint must be a SHA-256 (32 bytes, 64 hex digits)"))
}

/// The ring crypto provider: the one provider of this product.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client configuration that trusts exactly `root_der`, presenting
/// `client_auth` (chain + key) if given.
pub fn pinned_client_config(
    root_der: &[u8],
    client_auth: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(root_der.to_vec()))
        .context("the pinned root is not a usable trust anchor")?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let mut config = match client_auth {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A client configuration that accepts any server certificate. Used for
/// exactly one request, `GET /v1/ca`, whose answer is then checked against
/// the pinned fingerprint before anything is trusted.
pub fn unverified_client_config() -> Result<ClientConfig> {
    let (mut config, _) = observing_client_config()?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The leaf certificate a server presented, recorded by [`observing_client_config`].
pub type SeenLeaf = Arc<Mutex<Option<CertificateDer<'static>>>>;

/// A client configuration that accepts any server certificate and records
/// the leaf it was shown, even if the handshake fails later (e.g. because
/// the server then demands a client certificate). The installers use it to
/// ask a service which certificate it serves; nothing is trusted from it.
pub fn observing_client_config() -> Result<(ClientConfig, SeenLeaf)> {
    let provider = provider();
    let seen = SeenLeaf::default();
    let config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert(provider, seen.clone())))
        .with_no_client_auth();
    Ok((config, seen))
}

/// Accepts any certificate but still checks the handshake signatures, so the
/// TLS session itself is sound; trust comes from the fingerprint check.
#[derive(Debug)]
struct AcceptAnyServerCert(Arc<CryptoProvider>, SeenLeaf);

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        if let Ok(mut seen) = self.1.lock() {
            *seen = Some(end_entity.clone().into_owned());
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The CA bundle as served by `/v1/ca`, checked against a pinned fingerprint.
#[derive(Debug, Clone)]
pub struct PinnedCa {
    pub root_der: Vec<u8>,
    pub intermediate_der: Vec<u8>,
}

impl PinnedCa {
    /// Checks a bundle (intermediate then root, PEM): the self-signed root must
    /// match `expected`, and the intermediate must be a CA signed by it.
    pub fn from_bundle(bundle_pem: &[u8], expected: &[u8; 32]) -> Result<PinnedCa> {
        let blocks = pem::parse_many(bundle_pem).context("the CA bundle is not PEM")?;
        let certs: Vec<Vec<u8>> = blocks
            .into_iter()
            .filter(|b| b.tag() == "CERTIFICATE")
            .map(|b| b.into_contents())
            .collect();
        let mut root = None;
        for der in &certs {
            let digest = ring::digest::digest(&ring::digest::SHA256, der);
            if digest.as_ref() == expected {
                root = Some(der.clone());
            }
        }
        let Some(root_der) = root else {
            bail!(FingerprintMismatch {
                served: certs.last().map(|d| fingerprint(d)).unwrap_or_default()
            });
        };
        let (_, root) = x509_parser::parse_x509_certificate(&root_der)
            .map_err(|e| anyhow!("the pinned root does not parse: {e}"))?;
        let intermediate_der = certs
            .iter()
            .find(|d| {
                **d != root_der
                    && x509_parser::parse_x509_certificate(d).is_ok_and(|(_, c)| {
                        c.is_ca() && c.verify_signature(Some(root.public_key())).is_ok()
                    })
            })
            .cloned()
            .context("the CA bundle holds no intermediate signed by the pinned root")?;
        Ok(PinnedCa {
            root_der,
            intermediate_der,
        })
    }

    /// The root as PEM (what `ca.pem` holds).
    pub fn root_pem(&self) -> String {
        pem::encode(&pem::Pem::new("CERTIFICATE", self.root_der.clone()))
    }

    /// Intermediate then root, PEM.
    pub fn bundle_pem(&self) -> String {
        let int = pem::encode(&pem::Pem::new("CERTIFICATE", self.intermediate_der.clone()));
        format!("{int}{}", self.root_pem())
    }
}

/// The served root does not match the pinned fingerprint.
#[derive(Debug, thiserror::Error)]
#[error(
    "the server's root CA does not match --fingerprint (server offers {served}); refusing to continue"
)]
pub struct FingerprintMismatch {
    pub served: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_in_every_common_spelling() {
        let fp = fingerprint(b"hello");
        let raw = parse_fingerprint(&fp).unwrap();
        let hexs = hex::encode(raw);
        let colons = hexs
            .as_bytes()
            .chunks(2)
            .map(|c| std::str::from_utf8(c).unwrap().to_uppercase())
            .collect::<Vec<_>>()
            .join(":");
        for s in [
            fp.clone(),
            hexs.clone(),
            colons.clone(),
            format!("SHA256:{colons}"),
        ] {
            assert_eq!(parse_fingerprint(&s).unwrap(), raw, "{s}");
        }
        assert!(parse_fingerprint("sha256:abcd").is_err());
        assert!(parse_fingerprint("zz").is_err());
    }
}
