//! Who may call the admin API: the TLS client certificate must be, byte for
//! byte, a certificate of `kind = admin` in the store AND carry the admin
//! EKU mark ([`super::cert`]); it must be unrevoked and inside its validity.
//! The store is read on every request, so a revocation counts at once.
//!
//! A refusal goes through the same gates as PSK failures: the address is
//! admitted by the throttle first (429 while it is blocked), every refusal
//! counts as a failure against it, and the refusal is written through the
//! aggregating refusal log with the presented certificate's subject as the
//! actor (event `admin`, outcome `rejected`).

use super::cert::{STORE_PREFIX, has_admin_mark};
use crate::issue::refusal::Refusal;
use crate::issue::sign::{Authority, SignError, clip};
use crate::store::{CertKind, Event};
use crate::store::{CertRecord, StoreError};
use rustls::pki_types::CertificateDer;
use std::net::SocketAddr;
use std::time::Duration;

/// Why a request may not use the admin API. Codes are stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AdminRefusal {
    #[error("the admin API needs an admin certificate as the TLS client certificate")]
    NoCertificate,
    #[error("the client certificate is not one this CA recorded")]
    Unknown,
    #[error("the client certificate is not an admin certificate")]
    NotAdmin,
    #[error("the admin certificate is revoked")]
    Revoked,
    #[error("the admin certificate has expired")]
    Expired,
    #[error("the admin certificate is not valid yet")]
    NotYetValid,
}

impl AdminRefusal {
    /// Stable code, sent to the client and written to the audit log.
    pub fn code(self) -> &'static str {
        match self {
            AdminRefusal::NoCertificate => "admin_certificate_required",
            AdminRefusal::Unknown => "certificate_unknown",
            AdminRefusal::NotAdmin => "not_an_admin",
            AdminRefusal::Revoked => "certificate_revoked",
            AdminRefusal::Expired => "certificate_expired",
            AdminRefusal::NotYetValid => "certificate_not_yet_valid",
        }
    }
}

/// Why an admin request was not let in.
#[derive(Debug, thiserror::Error)]
pub enum AdminAuthError {
    #[error(transparent)]
    Refused(AdminRefusal),
    /// Too many failures from this address; retry after this long.
    #[error("too many failures from this address")]
    Throttled(Duration),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An authenticated admin: what the audit log names as the actor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminIdentity {
    pub serial: String,
    /// The name given at `admin-cert issue`.
    pub name: String,
    /// The certificate's subject as X.509 text (`CN=..., OU=ca-server admin`).
    pub subject: String,
}

impl AdminIdentity {
    /// The audit log's actor for this admin's actions.
    pub fn actor(&self) -> String {
        format!("admin:{} serial={}", self.subject, self.serial)
    }
}

/// The decision, given the presented certificate's row (found by its serial),
/// the certificate itself and the time. Pure, so every case is unit-tested.
pub fn judge(record: Option<&CertRecord>, leaf: &[u8], now: i64) -> Result<(), AdminRefusal> {
    let Some(record) = record.filter(|r| r.der == leaf) else {
        return Err(AdminRefusal::Unknown);
    };
    if record.kind != CertKind::Admin || !has_admin_mark(leaf) {
        return Err(AdminRefusal::NotAdmin);
    }
    // The same standing rules as a renewal's, with no grace after expiry:
    // an admin certificate is only ever good inside its validity.
    let grant = policy::RenewalGrant {
        hostname: record.hostname.clone(),
        names: Vec::new(),
        not_before: record.not_before,
        not_after: record.not_after,
        revoked: record.revoked_at.is_some(),
        superseded: false,
        replaced: false,
        key_compromised: false,
    };
    match grant.check(now, 0) {
        Ok(_) => Ok(()),
        Err(policy::RenewalRefusal::Revoked) => Err(AdminRefusal::Revoked),
        Err(policy::RenewalRefusal::NotYetValid) => Err(AdminRefusal::NotYetValid),
        // Expired; superseded, replaced and compromised are not set above.
        Err(_) => Err(AdminRefusal::Expired),
    }
}

impl Authority {
    /// Authenticates an admin API request by its TLS client certificate chain.
    pub async fn authenticate_admin(
        &self,
        chain: Option<&[CertificateDer<'static>]>,
        peer: SocketAddr,
    ) -> Result<AdminIdentity, AdminAuthError> {
        if let Err(e) = self.admit(peer).await {
            return Err(match e {
                SignError::Throttled(retry) => AdminAuthError::Throttled(retry),
                SignError::Store(e) => AdminAuthError::Store(e),
                other => {
                    tracing::error!(error = %other, "unexpected refusal from the throttle");
                    AdminAuthError::Throttled(Duration::from_secs(1))
                }
            });
        }
        let now = self.clock.now();
        let Some(leaf) = chain.and_then(|c| c.first()) else {
            return Err(self
                .refuse_admin(now, peer, None, AdminRefusal::NoCertificate)
                .await);
        };
        let parsed = x509_parser::parse_x509_certificate(leaf).ok();
        let serial = parsed.as_ref().map(|(_, c)| hex::encode(c.raw_serial()));
        let subject = parsed.as_ref().map(|(_, c)| c.subject().to_string());
        let record = match &serial {
            Some(serial) => self.store.get_cert(serial).await?,
            None => None,
        };
        match judge(record.as_ref(), leaf, now) {
            Ok(()) => {
                let record = record.expect("judged a record");
                Ok(AdminIdentity {
                    name: record
                        .hostname
                        .strip_prefix(STORE_PREFIX)
                        .unwrap_or(&record.hostname)
                        .to_owned(),
                    serial: record.serial,
                    subject: subject.unwrap_or_default(),
                })
            }
            Err(r) => {
                let presented = Presented {
                    serial: serial.as_deref(),
                    subject: subject.as_deref(),
                };
                Err(self.refuse_admin(now, peer, Some(presented), r).await)
            }
        }
    }

    /// Counts the refusal against the address, audits it (aggregated) with
    /// the presented subject as actor, and hands it back.
    async fn refuse_admin(
        &self,
        now: i64,
        peer: SocketAddr,
        presented: Option<Presented<'_>>,
        r: AdminRefusal,
    ) -> AdminAuthError {
        let refusal = Refusal {
            event: Event::Admin,
            hostname: None,
            serial: presented.as_ref().and_then(|p| p.serial.map(str::to_owned)),
            reason: format!("{}: {r}", r.code()),
            actor: presented
                .as_ref()
                .and_then(|p| p.subject)
                .map(|s| clip(&format!("presented:{s}"))),
            key: r.code(),
            weight: Some(crate::issue::throttle::Weight::Full),
            what: "a refused admin request",
        };
        self.refuse(now, peer, refusal).await;
        AdminAuthError::Refused(r)
    }
}

/// What a refused request presented.
struct Presented<'a> {
    serial: Option<&'a str>,
    subject: Option<&'a str>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::cert::sign_admin;
    use crate::pki::ca::LeafRequest;
    use crate::store::AuditEvent;
    use crate::testing::{NOW, fixture};
    use policy::{KeyKind, Profile};
    use proto::keys::{HostKey, KeyType};

    const PEER: SocketAddr = SocketAddr::new(
        std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 9)),
        4000,
    );

    #[tokio::test]
    async fn only_recorded_unrevoked_current_marked_admin_certificates_get_in() {
        let f = fixture().await;
        let authority = f.authority();
        let key = HostKey::generate(KeyType::P256).unwrap();
        let day = Duration::from_secs(86_400);
        let admin = sign_admin(&f.signer, "spawner", &key.spki_der(), NOW, day).unwrap();
        let admin_row = admin.to_record(
            "admin:spawner",
            crate::store::CertKind::Admin,
            &key.spki_der(),
            NOW,
        );
        let host = f
            .signer
            .sign_leaf(&LeafRequest {
                profile: &Profile::new("web.example.internal", &[]),
                key: KeyKind::EcdsaP256,
                spki_der: &key.spki_der(),
                now: NOW,
                validity: day,
            })
            .unwrap();
        let host_row = host.to_record(
            "web.example.internal",
            crate::store::CertKind::Host,
            &key.spki_der(),
            NOW,
        );

        // The pure decision, case by case.
        assert_eq!(judge(Some(&admin_row), &admin.der, NOW), Ok(()));
        assert_eq!(
            judge(None, &admin.der, NOW),
            Err(AdminRefusal::Unknown),
            "not recorded"
        );
        let mut tampered = admin.der.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(
            judge(Some(&admin_row), &tampered, NOW),
            Err(AdminRefusal::Unknown)
        );
        assert_eq!(
            judge(Some(&host_row), &host.der, NOW),
            Err(AdminRefusal::NotAdmin)
        );
        // A host certificate recorded as admin (a forged row) still lacks the
        // mark; the admin certificate recorded as a host lacks the kind.
        let mut forged = host_row.clone();
        forged.kind = "admin".into();
        assert_eq!(
            judge(Some(&forged), &host.der, NOW),
            Err(AdminRefusal::NotAdmin)
        );
        let mut as_host = admin_row.clone();
        as_host.kind = "host".into();
        assert_eq!(
            judge(Some(&as_host), &admin.der, NOW),
            Err(AdminRefusal::NotAdmin)
        );
        let mut revoked = admin_row.clone();
        revoked.revoked_at = Some(NOW);
        assert_eq!(
            judge(Some(&revoked), &admin.der, NOW),
            Err(AdminRefusal::Revoked)
        );
        assert_eq!(
            judge(Some(&admin_row), &admin.der, admin_row.not_after),
            Err(AdminRefusal::Expired)
        );
        assert_eq!(
            judge(Some(&admin_row), &admin.der, admin_row.not_before - 1),
            Err(AdminRefusal::NotYetValid)
        );

        // Through the authority: the store decides, refusals are audited with
        // the presented subject and count against the address.
        f.store
            .record_certificate(&admin_row, &AuditEvent::default())
            .await
            .unwrap();
        f.store
            .record_certificate(&host_row, &AuditEvent::default())
            .await
            .unwrap();
        let id = authority
            .authenticate_admin(Some(&[CertificateDer::from(admin.der.clone())]), PEER)
            .await
            .unwrap();
        assert_eq!(id.name, "spawner");
        assert_eq!(
            id.actor(),
            format!(
                "admin:CN=spawner, OU=ca-server admin serial={}",
                admin.serial
            )
        );
        let err = authority
            .authenticate_admin(Some(&[CertificateDer::from(host.der.clone())]), PEER)
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            AdminAuthError::Refused(AdminRefusal::NotAdmin)
        ));
        let err = authority.authenticate_admin(None, PEER).await.unwrap_err();
        assert!(matches!(
            err,
            AdminAuthError::Refused(AdminRefusal::NoCertificate)
        ));
        let audit = f.store.audit_since(0, 100).await.unwrap();
        let refused: Vec<_> = audit.iter().filter(|a| a.event == "admin").collect();
        assert_eq!(refused.len(), 2, "{refused:?}");
        assert_eq!(
            refused[0].actor.as_deref(),
            Some("presented:CN=web.example.internal")
        );
        assert_eq!(refused[0].serial.as_deref(), Some(host.serial.as_str()));
        assert_eq!(
            refused[0].reason.as_deref(),
            Some("not_an_admin: the client certificate is not an admin certificate")
        );
        assert_eq!(refused[1].actor, None);

        // Revoked in the store: refused on the very next request.
        f.store
            .revoke_serial(
                &admin.serial,
                &crate::store::Revocation {
                    reason: "keyCompromise",
                    now: NOW,
                    actor: "test",
                },
            )
            .await
            .unwrap();
        let err = authority
            .authenticate_admin(Some(&[CertificateDer::from(admin.der.clone())]), PEER)
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            AdminAuthError::Refused(AdminRefusal::Revoked)
        ));

        // Ten failures (the default throttle) block the address: 429.
        for _ in 0..7 {
            let _ = authority.authenticate_admin(None, PEER).await;
        }
        let err = authority
            .authenticate_admin(Some(&[CertificateDer::from(admin.der.clone())]), PEER)
            .await
            .unwrap_err();
        assert!(matches!(err, AdminAuthError::Throttled(_)), "{err:?}");
    }
}
