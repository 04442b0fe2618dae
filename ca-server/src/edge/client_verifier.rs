//! The TLS layer's check of client certificates: optional, and when one is
//! presented it must chain to our root (webpki: signatures, names, key
//! usage, path length), or the handshake fails.
//!
//! One difference from rustls' own verifier: an expired certificate whose
//! chain was genuine (it verifies at its own `notAfter`) still completes the
//! handshake, so that `/v1/renew` can renew it within the renewal grace or
//! answer a precise JSON 403 (`renewal_expired`; the admin API:
//! `certificate_expired`) instead of an opaque TLS alert. Revocation is not
//! judged here at all: handlers that act on a client certificate look it up
//! in the store (`Authority::authenticate_client`), which knows a revocation
//! the moment it is recorded, before any CRL, and is the authority on
//! expiry, supersession and kind. There is thus no CRL to forget to load
//! (the Vault CVE-2022-41316 class) and none that can go stale.

use anyhow::{Context, Result};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};
use std::sync::Arc;
use std::time::Duration;

/// rustls' webpki verifier with the expiry exception above.
#[derive(Debug)]
pub struct ClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientVerifier {
    /// Client certificates optional, verified against `roots`.
    pub fn build(
        roots: Arc<rustls::RootCertStore>,
        provider: Arc<CryptoProvider>,
    ) -> Result<Arc<dyn ClientCertVerifier>> {
        let inner = WebPkiClientVerifier::builder_with_provider(roots, provider)
            .allow_unauthenticated()
            .build()
            .context("building the client certificate verifier")?;
        Ok(Arc::new(ClientVerifier { inner }))
    }
}

/// The certificate's `notAfter`, as the time to re-verify an expired chain at.
fn not_after(end_entity: &CertificateDer<'_>) -> Option<UnixTime> {
    let (_, cert) = x509_parser::parse_x509_certificate(end_entity).ok()?;
    let secs = u64::try_from(cert.validity().not_after.timestamp()).ok()?;
    Some(UnixTime::since_unix_epoch(Duration::from_secs(secs)))
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        match self
            .inner
            .verify_client_cert(end_entity, intermediates, now)
        {
            Err(Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. },
            )) => {
                // webpki reports expiry before it checks signatures: verify
                // the whole chain again at the moment the certificate was
                // still valid, so only chains we issued get through.
                let at = not_after(end_entity)
                    .ok_or(Error::InvalidCertificate(CertificateError::BadEncoding))?;
                self.inner.verify_client_cert(end_entity, intermediates, at)
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::ca::{LeafRequest, Signer};
    use crate::testing::{NOW, fixture};
    use policy::{AllowedName, KeyKind, Profile};
    use rcgen::PublicKeyData;

    fn leaf(signer: &Signer, now: i64, validity: u64) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let profile = Profile {
            hostname: "h.example.internal".into(),
            sans: vec![AllowedName::Dns("h.example.internal".into())],
        };
        let signed = signer
            .sign_leaf(&LeafRequest {
                profile: &profile,
                key: KeyKind::EcdsaP256,
                spki_der: &key.subject_public_key_info(),
                now,
                validity: Duration::from_secs(validity),
            })
            .unwrap();
        CertificateDer::from(signed.der)
    }

    fn at(t: i64) -> UnixTime {
        UnixTime::since_unix_epoch(Duration::from_secs(t as u64))
    }

    #[tokio::test]
    async fn expired_certificates_of_ours_pass_and_foreign_ones_do_not() {
        let f = fixture().await;
        let other = fixture().await;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(f.signer.root_der.clone()))
            .unwrap();
        let verifier = ClientVerifier::build(Arc::new(roots), proto::trust::provider()).unwrap();
        let int = [CertificateDer::from(f.signer.intermediate_der.clone())];
        let other_int = [CertificateDer::from(other.signer.intermediate_der.clone())];

        let ours = leaf(&f.signer, NOW, 3600);
        verifier.verify_client_cert(&ours, &int, at(NOW)).unwrap();
        // Expired: still through (the API decides: renewal grace, or a 403).
        verifier
            .verify_client_cert(&ours, &int, at(NOW + 7200))
            .unwrap();
        // Not valid yet: refused.
        assert!(
            verifier
                .verify_client_cert(&ours, &int, at(NOW - 3600))
                .is_err()
        );

        // Another CA's certificate, valid or expired, never gets through.
        let theirs = leaf(&other.signer, NOW, 3600);
        for t in [NOW, NOW + 7200] {
            let err = verifier
                .verify_client_cert(&theirs, &other_int, at(t))
                .unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::InvalidCertificate(CertificateError::UnknownIssuer)
                        | Error::InvalidCertificate(CertificateError::BadSignature)
                ),
                "{t}: {err:?}"
            );
        }
        // Our leaf presented with a foreign intermediate does not chain either.
        assert!(
            verifier
                .verify_client_cert(&ours, &other_int, at(NOW + 7200))
                .is_err()
        );
        assert!(!verifier.client_auth_mandatory());
    }
}
