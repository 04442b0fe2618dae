//! Renewal over mTLS (`POST /v1/renew`): a host proves it holds a current
//! certificate from this CA (the TLS client certificate) and gets a new one.
//!
//! The same steps as a first issuance, with the certificate in place of the
//! PSK: authenticate (the presented certificate, byte for byte, is a host
//! certificate in the store), parse the CSR (`policy::csr::parse`: the same
//! allow-lists and self-signature check), decide (`policy::decide_renewal`:
//! valid or expired within the renewal grace, unrevoked, not superseded, key
//! not compromised, same hostname, no new names), sign with the same profile
//! builder, and record (the old row is superseded in the transaction that
//! inserts the new one). No second route to the signer.
//!
//! An expired certificate is accepted here, and only here, while it expired
//! less than `--renew-grace` ago and is still the host's current one; its
//! audit row is `renewed_after_expiry` with how long it had been expired.
//! The admin API (`admin/auth.rs`) keeps refusing expired certificates.
//!
//! The store, not a CRL, says whether the certificate is revoked: it knows
//! at once. A lost response is recovered like a lost bootstrap: the old
//! certificate with the same new key gets the certificate already issued.

use crate::issue::refusal::Refusal;
use crate::issue::sign::{Authority, Issued, SignError, clip, weight_of};
use crate::store::{AuditEvent, CertRecord, StoreError};
use crate::store::{CertKind, Event, Outcome};
use policy::csr::Csr;
use policy::{AllowedName, Decision, Rejection, RenewalGrant, RenewalRefusal, Standing};
use rustls::pki_types::CertificateDer;
use std::net::{IpAddr, SocketAddr};
use x509_parser::extensions::{GeneralName, ParsedExtension};

/// A client certificate found in the store.
#[derive(Debug, Clone)]
pub struct ClientCert {
    pub record: CertRecord,
    pub grant: RenewalGrant,
}

impl ClientCert {
    /// How the certificate appears as the actor in the audit log.
    pub fn actor(&self) -> String {
        format!("cert:{}", self.record.serial)
    }
}

impl Authority {
    /// Finds the TLS client certificate in the store: only a host
    /// certificate this CA recorded, byte for byte, authenticates. Its state
    /// (revoked, expired, superseded, replaced, compromised key) is read
    /// here and judged by the caller.
    pub async fn authenticate_client(
        &self,
        chain: Option<&[CertificateDer<'static>]>,
        peer: SocketAddr,
    ) -> Result<ClientCert, SignError> {
        let now = self.clock.now();
        let Some(leaf) = chain.and_then(|c| c.first()) else {
            let r = Rejection::Renewal(RenewalRefusal::NoClientCertificate);
            return Err(self.refuse_renewal(now, None, peer, r).await);
        };
        let serial = x509_parser::parse_x509_certificate(leaf)
            .map(|(_, c)| hex::encode(c.raw_serial()))
            .ok();
        let record = match &serial {
            Some(serial) => self.store.get_cert(serial).await?,
            None => None,
        };
        let Some(record) = record.filter(|r| r.der == leaf.as_ref() && r.kind == CertKind::Host)
        else {
            let r = Rejection::Renewal(RenewalRefusal::UnknownCertificate);
            return Err(self.refuse_renewal(now, None, peer, r).await);
        };
        // Whether a newer bootstrap replaced it matters only once it has
        // expired (policy::RenewalGrant::check): no extra read before that.
        let replaced = now >= record.not_after
            && self
                .store
                .has_later_cert(&record.hostname, record.not_after)
                .await?;
        let grant = RenewalGrant {
            hostname: record.hostname.clone(),
            names: names_of(&record.der)?,
            not_before: record.not_before,
            not_after: record.not_after,
            revoked: record.revoked_at.is_some(),
            superseded: record.superseded_by.is_some(),
            replaced,
            key_compromised: self
                .store
                .key_compromised(&record.public_key_sha256)
                .await?,
        };
        Ok(ClientCert { record, grant })
    }

    /// The renewal of `client` with the CSR in `body`.
    pub async fn renew(
        &self,
        client: &ClientCert,
        body: &[u8],
        peer: SocketAddr,
    ) -> Result<Issued, SignError> {
        let now = self.clock.now();
        let grace = self.renew_grace;
        // Revoked, compromised or expired beyond the grace: refused before
        // the body is looked at. Superseded may still be the retry of a
        // renewal whose answer was lost.
        match client.grant.check(now, grace) {
            Ok(_) | Err(RenewalRefusal::Superseded) => {}
            Err(r) => {
                return Err(self
                    .refuse_renewal(now, Some(client), peer, Rejection::Renewal(r))
                    .await);
            }
        }
        let csr = match policy::csr::parse(body) {
            Ok(csr) => match self.ca_key_rule(&csr) {
                Ok(()) => csr,
                Err(r) => return Err(self.refuse_renewal(now, Some(client), peer, r).await),
            },
            Err(r) => return Err(self.refuse_renewal(now, Some(client), peer, r).await),
        };
        if let Some(issued) = self.renewal_retry(client, &csr, now, peer).await? {
            return Ok(issued);
        }
        let profile = match policy::decide_renewal(&csr, &client.grant, now, grace) {
            Decision::Accept(profile) => profile,
            Decision::Reject(r) => {
                return Err(self.refuse_renewal(now, Some(client), peer, r).await);
            }
        };
        if let Some(r) = self.compromised_key(&csr).await? {
            return Err(self.refuse_renewal(now, Some(client), peer, r).await);
        }

        // Sign (CPU only; discarded unless the record below commits).
        let leaf = self.sign_profile(&profile, &csr, now)?;
        let record = leaf.to_record(&profile.hostname, CertKind::Host, &csr.spki_der, now);
        let (event, after_expiry) = match client.grant.check(now, grace) {
            Ok(Standing::ExpiredWithinGrace { expired_for }) => (
                Event::RenewedAfterExpiry,
                format!(
                    " after expiry (expired {} ago, {expired_for} s; grace {} s)",
                    policy::renewal::human_secs(expired_for),
                    grace
                ),
            ),
            _ => (Event::Renewed, String::new()),
        };
        let audit = AuditEvent {
            at: now,
            event: event.into(),
            hostname: Some(profile.hostname.clone()),
            serial: Some(leaf.serial.clone()),
            outcome: Outcome::Issued.into(),
            reason: Some(format!(
                "renewal of {}{after_expiry}; key {}",
                client.record.serial, csr.key
            )),
            peer: Some(peer.to_string()),
            actor: Some(client.actor()),
            ..Default::default()
        };
        if self
            .store
            .record_renewal(&client.record.serial, &record, &audit, now - grace)
            .await?
        {
            return Ok(Issued {
                serial: leaf.serial,
                hostname: profile.hostname,
                chain_pem: self.signer.chain_pem(&leaf.der),
                replayed: false,
            });
        }
        // The old certificate changed since it was read: renewed by a
        // concurrent request (possibly this client's own retry), or revoked.
        let fresh = self
            .authenticate_client(
                Some(&[CertificateDer::from(client.record.der.clone())]),
                peer,
            )
            .await?;
        if let Some(issued) = self.renewal_retry(&fresh, &csr, now, peer).await? {
            return Ok(issued);
        }
        let r = fresh
            .grant
            .check(now, grace)
            .err()
            .unwrap_or(RenewalRefusal::Superseded);
        Err(self
            .refuse_renewal(now, Some(&fresh), peer, Rejection::Renewal(r))
            .await)
    }

    /// The idempotent retry: `client` was already renewed to a certificate
    /// for this CSR's key that is still current: that certificate again.
    async fn renewal_retry(
        &self,
        client: &ClientCert,
        csr: &Csr,
        now: i64,
        peer: SocketAddr,
    ) -> Result<Option<Issued>, SignError> {
        let Some(next) = &client.record.superseded_by else {
            return Ok(None);
        };
        let Some(next) = self.store.get_cert(next).await? else {
            return Ok(None);
        };
        let current =
            next.revoked_at.is_none() && next.superseded_by.is_none() && now < next.not_after;
        if !current || next.public_key_sha256 != csr.public_key_sha256() {
            return Ok(None);
        }
        self.store
            .audit(&AuditEvent {
                at: now,
                event: Event::RenewReplayed.into(),
                hostname: Some(next.hostname.clone()),
                serial: Some(next.serial.clone()),
                outcome: Outcome::Issued.into(),
                reason: Some(format!(
                    "idempotent retry: renewal of {} with the same key",
                    client.record.serial
                )),
                peer: Some(peer.to_string()),
                actor: Some(client.actor()),
                ..Default::default()
            })
            .await?;
        Ok(Some(Issued {
            chain_pem: self.signer.chain_pem(&next.der),
            serial: next.serial,
            hostname: next.hostname,
            replayed: true,
        }))
    }

    /// Counts a refused renewal against the address (a certificate refusal
    /// in full, a CSR refusal lightly), audits it (actor: the presented
    /// certificate) through the aggregating refusal log, and hands the
    /// refusal back. A store failure while auditing is logged.
    async fn refuse_renewal(
        &self,
        now: i64,
        client: Option<&ClientCert>,
        peer: SocketAddr,
        r: Rejection,
    ) -> SignError {
        let refusal = Refusal {
            event: Event::Renew,
            hostname: client.map(|c| c.record.hostname.clone()),
            serial: client.map(|c| c.record.serial.clone()),
            reason: clip(&r.reason()),
            actor: client.map(ClientCert::actor),
            key: r.code(),
            weight: Some(weight_of(&r)),
            what: "a refused renewal",
        };
        self.refuse(now, peer, refusal).await;
        SignError::Rejected(r)
    }
}

/// The DNS and IP names of a certificate we issued (its SANs).
fn names_of(der: &[u8]) -> Result<Vec<AllowedName>, StoreError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| StoreError::Corrupt(format!("certificate: {e}")))?;
    let mut names = Vec::new();
    for ext in cert.extensions() {
        let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() else {
            continue;
        };
        for name in &san.general_names {
            match name {
                GeneralName::DNSName(d) => names.push(AllowedName::Dns(d.to_string())),
                GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => IpAddr::from(<[u8; 4]>::try_from(*b).expect("4 bytes")),
                        16 => IpAddr::from(<[u8; 16]>::try_from(*b).expect("16 bytes")),
                        _ => return Err(StoreError::Corrupt("an IP SAN of odd length".into())),
                    };
                    names.push(AllowedName::Ip(ip));
                }
                _ => {}
            }
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::ca::LeafRequest;
    use crate::testing::{NOW, fixture};
    use policy::{KeyKind, Profile};
    use proto::keys::{HostKey, KeyType};
    use std::sync::Arc;

    const HOST: &str = "h.example.internal";
    const PEER: SocketAddr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 1);

    fn csr(host: &str) -> (HostKey, Vec<u8>) {
        let key = HostKey::generate(KeyType::P256).unwrap();
        let pem = key.csr_pem(host, &[], None).unwrap();
        (key, pem.as_bytes().to_vec())
    }

    fn code(e: &SignError) -> &'static str {
        match e {
            SignError::Rejected(r) => r.code(),
            other => panic!("not a rejection: {other}"),
        }
    }

    #[tokio::test]
    async fn one_certificate_renews_once_keeps_its_names_and_retries_get_the_same_answer() {
        let f = fixture().await;
        let authority = Arc::new(f.authority());
        // A host certificate with an extra IP name, as a first issuance makes it.
        let old_key = HostKey::generate(KeyType::P256).unwrap();
        let profile = Profile::new(HOST, &[AllowedName::Ip("10.0.0.5".parse().unwrap())]);
        let leaf = f
            .signer
            .sign_leaf(&LeafRequest {
                profile: &profile,
                key: KeyKind::EcdsaP256,
                spki_der: &old_key.spki_der(),
                now: NOW,
                validity: crate::pki::ca::DEFAULT_LEAF_VALIDITY,
            })
            .unwrap();
        let record = leaf.to_record(HOST, crate::store::CertKind::Host, &old_key.spki_der(), NOW);
        f.store
            .record_certificate(&record, &AuditEvent::default())
            .await
            .unwrap();
        let chain = [CertificateDer::from(leaf.der.clone())];
        let client = authority
            .authenticate_client(Some(&chain), PEER)
            .await
            .unwrap();
        assert_eq!(client.grant.names, profile.sans);

        // Eight concurrent renewals with eight new keys: exactly one wins.
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (authority, client) = (authority.clone(), client.clone());
            tasks.push(tokio::spawn(async move {
                let (_, body) = csr(HOST);
                authority.renew(&client, &body, PEER).await
            }));
        }
        let mut won = Vec::new();
        for t in tasks {
            match t.await.unwrap() {
                Ok(issued) => won.push(issued),
                Err(e) => assert_eq!(code(&e), "certificate_superseded"),
            }
        }
        assert_eq!(won.len(), 1, "{won:?}");
        let new = f.store.get_cert(&won[0].serial).await.unwrap().unwrap();
        let old = f.store.get_cert(&leaf.serial).await.unwrap().unwrap();
        assert_eq!(old.superseded_by.as_deref(), Some(new.serial.as_str()));
        assert_eq!(
            names_of(&new.der).unwrap(),
            profile.sans,
            "the old names carry over"
        );

        // The retry of a lost answer (old certificate, same new key): the same certificate.
        let (key, body) = csr(HOST);
        let client = authority
            .authenticate_client(Some(&chain), PEER)
            .await
            .unwrap();
        assert_eq!(
            code(&authority.renew(&client, &body, PEER).await.unwrap_err()),
            "certificate_superseded"
        );
        let fresh_record = f.store.get_cert(&won[0].serial).await.unwrap().unwrap();
        let fresh_chain = [CertificateDer::from(fresh_record.der.clone())];
        let newer = authority
            .authenticate_client(Some(&fresh_chain), PEER)
            .await
            .unwrap();
        let renewed = authority.renew(&newer, &body, PEER).await.unwrap();
        assert!(!renewed.replayed);
        let newer = authority
            .authenticate_client(Some(&fresh_chain), PEER)
            .await
            .unwrap();
        let again = authority.renew(&newer, &body, PEER).await.unwrap();
        assert!(again.replayed);
        assert_eq!(again.serial, renewed.serial);
        drop(key);

        // Another host's name, or a foreign certificate, or none: refused.
        let latest = f.store.get_cert(&renewed.serial).await.unwrap().unwrap();
        let latest_chain = [CertificateDer::from(latest.der.clone())];
        let c = authority
            .authenticate_client(Some(&latest_chain), PEER)
            .await
            .unwrap();
        let (_, other) = csr("other.example.internal");
        assert_eq!(
            code(&authority.renew(&c, &other, PEER).await.unwrap_err()),
            "hostname_mismatch"
        );
        let err = authority.authenticate_client(None, PEER).await.unwrap_err();
        assert_eq!(code(&err), "client_certificate_required");
        let mut tampered = latest.der.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        let err = authority
            .authenticate_client(Some(&[CertificateDer::from(tampered)]), PEER)
            .await
            .unwrap_err();
        assert_eq!(code(&err), "certificate_unknown");

        // Revoked: refused before the CSR is read, audited with the certificate as actor.
        f.store
            .revoke_serial(
                &latest.serial,
                &crate::store::Revocation {
                    reason: "keyCompromise",
                    now: NOW,
                    actor: "test",
                },
            )
            .await
            .unwrap();
        let c = authority
            .authenticate_client(Some(&latest_chain), PEER)
            .await
            .unwrap();
        assert_eq!(
            code(&authority.renew(&c, b"not a csr", PEER).await.unwrap_err()),
            "certificate_revoked"
        );
        let audit = f.store.audit_since(0, 1000).await.unwrap();
        let refused = audit.iter().rev().find(|a| a.event == "renew").unwrap();
        assert_eq!(
            refused.actor.as_deref(),
            Some(format!("cert:{}", latest.serial).as_str())
        );
        assert_eq!(
            refused.reason.as_deref(),
            Some("certificate_revoked: the client certificate is revoked")
        );
        assert!(audit.iter().any(|a| a.event == "renewed"
            && a.actor.as_deref() == Some(format!("cert:{}", leaf.serial).as_str())));
    }

    /// A host certificate for `HOST` issued at `now`, valid for an hour, recorded.
    async fn issued(
        f: &crate::testing::Fixture,
        now: i64,
    ) -> (HostKey, Vec<CertificateDer<'static>>) {
        let key = HostKey::generate(KeyType::P256).unwrap();
        let profile = Profile::new(HOST, &[]);
        let leaf = f
            .signer
            .sign_leaf(&LeafRequest {
                profile: &profile,
                key: KeyKind::EcdsaP256,
                spki_der: &key.spki_der(),
                now,
                validity: std::time::Duration::from_secs(3600),
            })
            .unwrap();
        let record = leaf.to_record(HOST, crate::store::CertKind::Host, &key.spki_der(), now);
        f.store
            .record_certificate(&record, &AuditEvent::default())
            .await
            .unwrap();
        (key, vec![CertificateDer::from(leaf.der)])
    }

    #[tokio::test]
    async fn an_expired_certificate_renews_within_the_grace_once_and_is_audited() {
        let f = fixture().await;
        let mut authority = f.authority();
        authority.clock = f.clock.clone();
        let authority = Arc::new(authority);
        let (_, chain) = issued(&f, NOW).await;
        // Two minutes after expiry: renewed, audited as renewed_after_expiry.
        f.clock.set(NOW + 3600 + 120);
        let client = authority
            .authenticate_client(Some(&chain), PEER)
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let (authority, client) = (authority.clone(), client.clone());
            tasks.push(tokio::spawn(async move {
                let (_, body) = csr(HOST);
                authority.renew(&client, &body, PEER).await
            }));
        }
        let mut won = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(_) => won += 1,
                Err(e) => assert_eq!(code(&e), "certificate_superseded"),
            }
        }
        assert_eq!(won, 1, "concurrent renewals after expiry: one certificate");
        let audit = f.store.audit_since(0, 1000).await.unwrap();
        let row = audit
            .iter()
            .find(|a| a.event == "renewed_after_expiry")
            .expect("the audit row");
        let reason = row.reason.as_deref().unwrap();
        assert!(
            reason.contains("expired 2m ago, 120 s; grace 1209600 s"),
            "{reason}"
        );

        // Past the grace: renewal_expired, before the body is read.
        let (_, late) = issued(&f, NOW + 3600).await;
        f.clock
            .set(NOW + 2 * 3600 + crate::serve::DEFAULT_RENEW_GRACE_SECS);
        let client = authority
            .authenticate_client(Some(&late), PEER)
            .await
            .unwrap();
        let err = authority
            .renew(&client, b"not a csr", PEER)
            .await
            .unwrap_err();
        assert_eq!(code(&err), "renewal_expired");
    }

    #[tokio::test]
    async fn within_the_grace_a_replaced_or_compromised_certificate_cannot_renew() {
        let f = fixture().await;
        let mut authority = f.authority();
        authority.clock = f.clock.clone();
        // An old certificate, then a new bootstrap for the same host.
        let (_, old) = issued(&f, NOW).await;
        let (key, newer) = issued(&f, NOW + 60).await;
        f.clock.set(NOW + 3600 + 10);
        let client = authority
            .authenticate_client(Some(&old), PEER)
            .await
            .unwrap();
        let (_, body) = csr(HOST);
        let err = authority.renew(&client, &body, PEER).await.unwrap_err();
        assert_eq!(code(&err), "certificate_superseded");
        // The newer one's key revoked as compromised on another certificate.
        let mut twin = f.store.host_certs(HOST).await.unwrap()[0].clone();
        assert_eq!(
            twin.public_key_sha256,
            ring::digest::digest(&ring::digest::SHA256, &key.spki_der()).as_ref()
        );
        twin.serial = "77".into();
        twin.der = vec![0x30, 0x00];
        f.store
            .record_certificate(&twin, &AuditEvent::default())
            .await
            .unwrap();
        f.store
            .revoke_serial(
                "77",
                &crate::store::Revocation {
                    reason: "keyCompromise",
                    now: NOW,
                    actor: "test",
                },
            )
            .await
            .unwrap();
        f.clock.set(NOW + 3600 + 120);
        let client = authority
            .authenticate_client(Some(&newer), PEER)
            .await
            .unwrap();
        let err = authority.renew(&client, &body, PEER).await.unwrap_err();
        assert_eq!(code(&err), "key_compromised");
    }
}
