//! The ACME flows: a new account spends its PSK (External Account Binding),
//! an order is checked against the account's grant and its authorizations
//! are valid from the start (RFC 8555 §7.1.4: the PSK pre-authorised the
//! names), finalize decides the CSR with `policy::decide_acme` and signs it
//! through the same signer path as `/v1/sign`, revocation by the account or
//! by the certificate's key. The HTTP side (JWS, nonces, problem documents)
//! is `edge::acme`; the rows are `store::acme`.

use crate::edge::acme::jws::{AccountKey, Jws, JwsError};
use crate::issue::refusal::Refusal;
use crate::issue::sign::{Authority, SignError, clip};
use crate::store::{
    AcmeAccount, AcmeOrder, AuditEvent, CertRecord, Revocation, RevokeOutcome, StoreError,
};
use crate::store::{CertKind, Event, Outcome};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use policy::{AcmeGrant, AllowedName, Decision, IdentifierRefusal, Rejection};
use ring::rand::SecureRandom;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long an order may wait for its finalize.
pub const ORDER_LIFETIME: i64 = 7 * 86_400;

/// Why an ACME request failed; `edge::acme` maps each to its ACME error type.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    /// The EAB did not authenticate (spent, expired, unknown or wrong PSK):
    /// one answer outside, the precise reason in the audit log.
    #[error("the external account binding does not authenticate (spent, expired or wrong PSK)")]
    EabRejected,
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Malformed(String),
    #[error("no account exists with this key")]
    AccountDoesNotExist,
    #[error("{0}")]
    RejectedIdentifier(IdentifierRefusal),
    #[error("{}", .0.reason())]
    BadCsr(Rejection),
    #[error("{0}")]
    OrderNotReady(String),
    #[error("the certificate is already revoked")]
    AlreadyRevoked,
    #[error("revocation reason code {0} is not supported (0, 1, 3, 4, 5 or 9)")]
    BadRevocationReason(i64),
    #[error(transparent)]
    Sign(#[from] SignError),
}

impl From<StoreError> for AcmeError {
    fn from(e: StoreError) -> AcmeError {
        AcmeError::Sign(SignError::Store(e))
    }
}

/// A random identifier for URLs (16 bytes, base64url).
pub fn random_id() -> Result<String, AcmeError> {
    let mut b = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| AcmeError::Sign(SignError::Signer(anyhow::anyhow!("CSPRNG failure"))))?;
    Ok(URL_SAFE_NO_PAD.encode(b))
}

/// The grant an account holds.
pub fn grant_of(account: &AcmeAccount) -> Result<AcmeGrant, AcmeError> {
    let allowed = account
        .allowed_sans
        .iter()
        .map(|s| AllowedName::parse(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| StoreError::Corrupt(format!("acme account grant: {e}")))?;
    Ok(AcmeGrant {
        hostname: account.hostname.clone(),
        allowed,
    })
}

/// What newAccount presents: the account key and the EAB (already parsed).
#[derive(Debug)]
pub struct NewAccount<'a> {
    pub key: &'a AccountKey,
    pub eab: &'a Jws,
    /// The newAccount URL (the EAB's `url` must name it).
    pub url: &'a str,
    pub contact: Vec<String>,
}

/// Who asks to revoke.
#[derive(Debug)]
pub enum RevokeBy<'a> {
    Account(&'a AcmeAccount),
    CertificateKey(&'a AccountKey),
}

/// The audit actor of an account.
pub fn actor(account: &AcmeAccount) -> String {
    format!("acme:{}", account.id)
}

impl Authority {
    /// newAccount with EAB: checks the binding against the sealed PSK of
    /// its `kid` (the hostname) and spends the PSK in the transaction that
    /// records the account.
    pub async fn acme_new_account(
        &self,
        req: NewAccount<'_>,
        peer: SocketAddr,
    ) -> Result<AcmeAccount, AcmeError> {
        let now = self.clock.now();
        let thumbprint = req.key.thumbprint();
        let eab = req.eab;
        if eab.header.nonce.is_some() {
            return Err(AcmeError::Malformed(
                "the externalAccountBinding must not carry a nonce".into(),
            ));
        }
        if eab.header.url.as_deref() != Some(req.url) {
            return Err(AcmeError::Malformed(
                "the externalAccountBinding's url must be the newAccount URL".into(),
            ));
        }
        let bound: serde_json::Value = serde_json::from_slice(&eab.payload).map_err(|_| {
            AcmeError::Malformed("the externalAccountBinding's payload is not a JWK".into())
        })?;
        let bound =
            AccountKey::from_jwk(&bound).map_err(|e| AcmeError::Malformed(e.to_string()))?;
        if bound != *req.key {
            return Err(AcmeError::Malformed(
                "the externalAccountBinding binds another key than the account's".into(),
            ));
        }
        let Some(host) = eab.header.kid.clone() else {
            return Err(AcmeError::Malformed(
                "the externalAccountBinding has no kid (the hostname)".into(),
            ));
        };
        if policy::hostname::validate(&host).is_err() {
            return Err(self
                .eab_refused(now, None, &thumbprint, peer, "psk_unknown_host")
                .await);
        }
        let Some(row) = self.store.sealed_psk(&host).await? else {
            let reason = if self.store.acme_accounts(Some(&host)).await?.is_empty() {
                "psk_unknown_host"
            } else {
                "psk_used"
            };
            return Err(self
                .eab_refused(now, Some(&host), &thumbprint, peer, reason)
                .await);
        };
        let psk = row.sealed.as_deref().and_then(|sealed| {
            crate::pki::psk_seal::installed()?.open(&host, &row.entry.psk_hash, sealed)
        });
        let Some(psk) = psk else {
            return Err(self
                .eab_refused(now, Some(&host), &thumbprint, peer, "psk_not_sealed")
                .await);
        };
        // RFC 8555 §7.3.4: the HMAC key is the base64url-decoded string, as
        // certbot and lego decode `--eab-hmac-key`.
        let Ok(key) = URL_SAFE_NO_PAD
            .decode(psk.expose().trim_end_matches('='))
            .map(zeroize::Zeroizing::new)
        else {
            return Err(self
                .eab_refused(now, Some(&host), &thumbprint, peer, "psk_not_base64url")
                .await);
        };
        match eab.verify_hmac(&key) {
            Ok(()) => {}
            Err(JwsError::BadAlgorithm(alg)) => {
                return Err(AcmeError::Malformed(format!(
                    "externalAccountBinding alg {alg} is not supported (HS256, HS384, HS512)"
                )));
            }
            Err(_) => {
                return Err(self
                    .eab_refused(now, Some(&host), &thumbprint, peer, "psk_wrong")
                    .await);
            }
        }
        if now >= row.entry.expires_at {
            self.store.burn_psk(&host, &row.entry.psk_hash).await?;
            return Err(self
                .eab_refused(now, Some(&host), &thumbprint, peer, "psk_expired")
                .await);
        }
        let account = AcmeAccount {
            id: random_id()?,
            thumbprint: thumbprint.clone(),
            jwk: req.key.canonical_jwk(),
            hostname: host.clone(),
            allowed_sans: Vec::new(), // the spent row's, filled in by the store
            contact: req.contact,
            status: "valid".into(),
            created_at: now,
        };
        let audit = AuditEvent {
            at: now,
            event: Event::AcmeAccount.into(),
            hostname: Some(host.clone()),
            outcome: Outcome::Created.into(),
            reason: Some(format!(
                "account {}; key {thumbprint}; psk spent",
                account.id
            )),
            peer: Some(peer.to_string()),
            actor: Some(actor(&account)),
            ..Default::default()
        };
        match self
            .store
            .create_acme_account(&account, &row.entry.psk_hash, now, &audit)
            .await
        {
            Ok(account) => Ok(account),
            Err(StoreError::PskGone) => Err(self
                .eab_refused(now, Some(&host), &thumbprint, peer, "psk_used")
                .await),
            Err(e) => Err(e.into()),
        }
    }

    /// Audits a refused binding (aggregated per address and reason), counts
    /// it against the address as a PSK failure, and hands back the answer.
    async fn eab_refused(
        &self,
        now: i64,
        host: Option<&str>,
        thumbprint: &str,
        peer: SocketAddr,
        reason: &'static str,
    ) -> AcmeError {
        if self
            .throttle
            .record_failure(
                peer.ip(),
                Instant::now(),
                crate::issue::throttle::Weight::Full,
            )
            .is_some()
        {
            tracing::warn!(peer = %peer.ip(), "too many PSK failures; throttling this address");
        }
        self.acme_refusal(
            now,
            host,
            peer,
            reason,
            format!("{reason}; key {thumbprint}"),
        )
        .await;
        AcmeError::EabRejected
    }

    /// Writes the audit row of a refused ACME request through the aggregating log.
    pub async fn acme_refusal(
        &self,
        now: i64,
        host: Option<&str>,
        peer: SocketAddr,
        key: &'static str,
        reason: String,
    ) {
        let refusal = Refusal {
            event: Event::Acme,
            hostname: host.map(clip),
            serial: None,
            reason: clip(&reason),
            actor: None,
            key,
            // ACME weighs its refusals where they happen (edge/acme).
            weight: None,
            what: "a refused ACME request",
        };
        self.refuse(now, peer, refusal).await;
    }

    /// newOrder: the identifiers must lie within the account's grant.
    pub async fn acme_new_order(
        &self,
        account: &AcmeAccount,
        identifiers: &[(String, String)],
        peer: SocketAddr,
    ) -> Result<AcmeOrder, AcmeError> {
        let now = self.clock.now();
        let names = match policy::check_order(&grant_of(account)?, identifiers) {
            Ok(names) => names,
            Err(r) => {
                self.acme_refusal(
                    now,
                    Some(&account.hostname),
                    peer,
                    "acme_rejected_identifier",
                    format!("order by {}: {r}", actor(account)),
                )
                .await;
                return Err(if r.is_malformed() {
                    AcmeError::Malformed(r.to_string())
                } else {
                    AcmeError::RejectedIdentifier(r)
                });
            }
        };
        let order = AcmeOrder {
            id: random_id()?,
            account_id: account.id.clone(),
            identifiers: names.iter().map(ToString::to_string).collect(),
            status: "ready".into(),
            created_at: now,
            expires_at: now + ORDER_LIFETIME,
            serial: None,
        };
        let audit = AuditEvent {
            at: now,
            event: Event::AcmeOrder.into(),
            hostname: Some(account.hostname.clone()),
            outcome: Outcome::Ready.into(),
            reason: Some(clip(&format!(
                "order {}; key {}; names {}",
                order.id,
                account.thumbprint,
                order.identifiers.join(",")
            ))),
            peer: Some(peer.to_string()),
            actor: Some(actor(account)),
            ..Default::default()
        };
        self.store.insert_acme_order(&order, &audit).await?;
        Ok(order)
    }

    /// finalize: parse and decide the CSR, sign with the host profile,
    /// record the certificate with the order's move to `valid`.
    pub async fn acme_finalize(
        &self,
        account: &AcmeAccount,
        order: &AcmeOrder,
        csr_der: &[u8],
        peer: SocketAddr,
    ) -> Result<AcmeOrder, AcmeError> {
        let now = self.clock.now();
        if order.status != "ready" || now >= order.expires_at {
            return Err(AcmeError::OrderNotReady(format!(
                "the order is {}, not ready",
                if now >= order.expires_at {
                    "expired"
                } else {
                    order.status.as_str()
                }
            )));
        }
        let refuse = |r: Rejection| async move {
            self.acme_refusal(
                now,
                Some(&account.hostname),
                peer,
                r.code(),
                format!(
                    "finalize of {} by {}: {}",
                    order.id,
                    actor(account),
                    r.reason()
                ),
            )
            .await;
            AcmeError::BadCsr(r)
        };
        let csr = match policy::csr::parse(csr_der) {
            Ok(csr) => match self.ca_key_rule(&csr) {
                Ok(()) => csr,
                Err(r) => return Err(refuse(r).await),
            },
            Err(r) => return Err(refuse(r).await),
        };
        let names = order
            .identifiers
            .iter()
            .map(|s| AllowedName::parse(s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StoreError::Corrupt(format!("acme order identifiers: {e}")))?;
        let profile = match policy::decide_acme(&csr, &grant_of(account)?, &names) {
            Decision::Accept(p) => p,
            Decision::Reject(r) => return Err(refuse(r).await),
        };
        if let Some(r) = self.compromised_key(&csr).await? {
            return Err(refuse(r).await);
        }
        let leaf = self.sign_profile(&profile, &csr, now)?;
        let record = leaf.to_record(&account.hostname, CertKind::Host, &csr.spki_der, now);
        let audit = AuditEvent {
            at: now,
            event: Event::Issued.into(),
            hostname: Some(account.hostname.clone()),
            serial: Some(leaf.serial.clone()),
            outcome: Outcome::Issued.into(),
            reason: Some(format!(
                "acme order {}; account key {}; key {}",
                order.id, account.thumbprint, csr.key
            )),
            peer: Some(peer.to_string()),
            actor: Some(actor(account)),
            ..Default::default()
        };
        if !self
            .store
            .finalize_acme_order(&order.id, &record, &audit)
            .await?
        {
            return Err(AcmeError::OrderNotReady(
                "the order was finalized by another request, or the account was deactivated".into(),
            ));
        }
        Ok(AcmeOrder {
            status: "valid".into(),
            serial: Some(leaf.serial),
            ..order.clone()
        })
    }

    /// revokeCert: by the account that ordered the certificate (or any
    /// valid account of its host), or signed with the certificate's own key.
    pub async fn acme_revoke(
        &self,
        cert_der: &[u8],
        by: RevokeBy<'_>,
        reason: Option<i64>,
        peer: SocketAddr,
    ) -> Result<CertRecord, AcmeError> {
        let now = self.clock.now();
        let reason = match reason.unwrap_or(0) {
            0 => "unspecified",
            1 => "keyCompromise",
            3 => "affiliationChanged",
            4 => "superseded",
            5 => "cessationOfOperation",
            9 => "privilegeWithdrawn",
            other => return Err(AcmeError::BadRevocationReason(other)),
        };
        let (_, cert) = x509_parser::parse_x509_certificate(cert_der).map_err(|_| {
            AcmeError::Malformed("certificate is not a DER X.509 certificate".into())
        })?;
        let serial = hex::encode(cert.raw_serial());
        let record = self
            .store
            .get_cert(&serial)
            .await?
            .filter(|r| r.der == cert_der && r.kind == CertKind::Host)
            .ok_or_else(|| {
                AcmeError::Unauthorized("this CA issued no such host certificate".into())
            })?;
        let (actor, allowed) = match &by {
            RevokeBy::Account(a) => {
                let ordered = self.store.acme_account_of_serial(&serial).await?;
                (
                    actor(a),
                    ordered.as_deref() == Some(a.id.as_str()) || record.hostname == a.hostname,
                )
            }
            RevokeBy::CertificateKey(k) => (
                format!("acme-key:{}", k.thumbprint()),
                AccountKey::from_spki(cert.public_key()).as_ref() == Some(*k),
            ),
        };
        if !allowed {
            self.acme_refusal(
                now,
                Some(&record.hostname),
                peer,
                "acme_revoke_unauthorized",
                format!("revocation of {serial} by {actor}: not its account or key"),
            )
            .await;
            return Err(AcmeError::Unauthorized(
                "neither an account of this certificate's host nor the certificate's key".into(),
            ));
        }
        let how = Revocation {
            reason,
            now,
            actor: &actor,
        };
        match self.store.revoke_serial(&serial, &how).await? {
            Some(RevokeOutcome::Revoked(c)) => {
                // The revocation row names the actor; this one the peer and key.
                let key = match &by {
                    RevokeBy::Account(a) => a.thumbprint.clone(),
                    RevokeBy::CertificateKey(k) => k.thumbprint(),
                };
                self.store
                    .audit(&AuditEvent {
                        at: now,
                        event: Event::AcmeRevoke.into(),
                        hostname: Some(c.hostname.clone()),
                        serial: Some(c.serial.clone()),
                        outcome: Outcome::Revoked.into(),
                        reason: Some(format!("{reason}; key {key}")),
                        peer: Some(peer.to_string()),
                        actor: Some(actor),
                        ..Default::default()
                    })
                    .await?;
                Ok(c)
            }
            Some(RevokeOutcome::AlreadyRevoked(_)) => Err(AcmeError::AlreadyRevoked),
            None => Err(AcmeError::Unauthorized(
                "this CA issued no such certificate".into(),
            )),
        }
    }

    /// A throttled address: refused before its body is read.
    pub async fn acme_admit(&self, peer: SocketAddr) -> Result<(), Duration> {
        match self.admit(peer).await {
            Ok(()) => Ok(()),
            Err(SignError::Throttled(d)) => Err(d),
            Err(_) => Ok(()),
        }
    }
}
