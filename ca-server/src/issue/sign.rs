//! The issuance flow: parse, authenticate the PSK and decide, sign, record.
//! Four steps, each its own function ([`Authority::sign`] runs them); the
//! HTTP layer only translates.
//!
//! A certificate leaves this module only after its row is committed, so
//! nothing is ever handed out that the store does not know about.
//!
//! Every route that reaches signing goes through [`Authority::admit`] (the
//! per-address refusal throttle), counts every refusal against the address
//! ([`Authority::count_refusal`]) and records refusals through the
//! aggregating [`RejectionLog`].

use crate::clock::Clock;
use crate::diskguard::DiskGuard;
use crate::issue::refusal::Refusal;
use crate::issue::rejection_log::RejectionLog;
use crate::issue::throttle::{Throttle, Weight, retry_after_secs};
use crate::pki::ca::{LeafRequest, SignedLeaf, Signer};
use crate::store::{AuditEvent, Issuance, Store, StoreError};
use crate::store::{CertKind, Event, Outcome};
use policy::csr::Csr;
use policy::{Decision, IssuedUnderPsk, KeyFacts, Profile, PskFailure, PskHash, Rejection};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a successful request gets.
#[derive(Debug, Clone)]
pub struct Issued {
    pub serial: String,
    pub hostname: String,
    /// Leaf then intermediate, PEM.
    pub chain_pem: String,
    /// `true` when this is the certificate already issued for this PSK and key
    /// (the idempotent retry of a lost response), `false` when newly signed.
    pub replayed: bool,
}

/// Why a request did not get a certificate.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error(transparent)]
    Rejected(Rejection),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("signing failed: {0:#}")]
    Signer(anyhow::Error),
    /// Too many PSK failures from this client address; retry after this long.
    #[error("too many failures from this address")]
    Throttled(Duration),
}

/// What step 2 hands on: the profile policy decided, and the PSK to spend.
#[derive(Debug)]
struct Accepted {
    profile: Profile,
    psk_hash: PskHash,
    psk_expires_at: i64,
}

/// Step 2's outcome when it does not refuse.
#[derive(Debug)]
enum Authenticated {
    /// Go on to sign and record.
    Accepted(Accepted),
    /// The idempotent retry: the certificate already recorded for this PSK and key.
    Replayed(Issued),
}

/// Issues certificates against PSKs.
#[derive(Debug)]
pub struct Authority {
    pub store: Store,
    pub signer: Arc<Signer>,
    pub clock: Arc<dyn Clock>,
    pub validity: Duration,
    /// How long after expiry a host's current certificate may still renew
    /// (`serve --renew-grace`), in seconds; 0: never after expiry.
    pub renew_grace: i64,
    /// PSK failures per client address.
    pub throttle: Throttle,
    /// Aggregated audit rows for refusals.
    pub rejections: RejectionLog,
    /// Free space under the SQLite store (`None` for PostgreSQL).
    pub disk: Option<DiskGuard>,
}

impl Authority {
    /// Refuses a client address that has had too many refusals (429);
    /// handlers call it before reading a body, and every signing flow again.
    /// A throttled request writes nothing: it is counted in the refusal
    /// log's memory and written with the next flush.
    pub async fn admit(&self, peer: SocketAddr) -> Result<(), SignError> {
        let Err(retry) = self.throttle.check(peer.ip(), Instant::now()) else {
            return Ok(());
        };
        let cfg = self.throttle.config();
        let event = AuditEvent {
            at: self.clock.now(),
            event: Event::Sign.into(),
            outcome: Outcome::Throttled.into(),
            reason: Some(format!(
                "throttled: {} failures within {} s; retry in {} s",
                cfg.max_failures,
                cfg.window.as_secs(),
                retry_after_secs(retry)
            )),
            peer: Some(peer.ip().to_string()),
            ..Default::default()
        };
        self.rejections.count_only(event, "throttled");
        Err(SignError::Throttled(retry))
    }

    /// Counts one refusal of `peer` against its address (throttle.rs says
    /// what each weight means).
    pub fn count_refusal(&self, peer: SocketAddr, weight: Weight) {
        if self
            .throttle
            .record_failure(peer.ip(), Instant::now(), weight)
            .is_some()
        {
            tracing::warn!(peer = %peer.ip(), "too many refusals; throttling this address");
        }
    }

    /// Whether the store can take writes: reachable, and space left under it.
    pub async fn store_ready(&self) -> Result<(), StoreError> {
        if let Some(disk) = &self.disk {
            disk.check()?;
        }
        self.store.health().await
    }

    /// The whole `/v1/sign` flow for one request body from `peer`; with
    /// `certname` for a route that names the host in its URL (Puppet's
    /// `certificate_request/{certname}`): the CSR's CN must be `certname`.
    /// The steps: [`Self::parse`], [`Self::authenticate`] (which decides),
    /// [`Self::sign_profile`], [`Self::record`].
    pub async fn sign(
        &self,
        body: &[u8],
        certname: Option<&str>,
        peer: SocketAddr,
    ) -> Result<Issued, SignError> {
        self.admit(peer).await?;
        // Lets the store batch this request with the others in flight.
        let _issuing = self.store.issuing();
        let now = self.clock.now();
        let (csr, host) = self.parse(body, certname, now, peer).await?;
        let accepted = match self.authenticate(&csr, &host, now, peer).await? {
            Authenticated::Accepted(accepted) => accepted,
            Authenticated::Replayed(issued) => return Ok(issued),
        };
        // Sign (CPU only; discarded unless the record below commits).
        let leaf = self.sign_profile(&accepted.profile, &csr, now)?;
        self.record(&csr, host, leaf, &accepted, now, peer).await
    }

    /// Step 1, parse: verify the CSR (pure, bounded by the body limit), and the
    /// rules that need only the CSR: not the CA's own key, one valid
    /// hostname, and the URL's `certname` if the route has one.
    async fn parse(
        &self,
        body: &[u8],
        certname: Option<&str>,
        now: i64,
        peer: SocketAddr,
    ) -> Result<(Csr, String), SignError> {
        let csr = match policy::csr::parse(body) {
            Ok(csr) => match self.ca_key_rule(&csr) {
                Ok(()) => csr,
                Err(r) => return Err(self.reject(now, None, peer, r).await),
            },
            Err(r) => return Err(self.reject(now, None, peer, r).await),
        };
        let host = match policy::decision::requested_hostname(&csr) {
            Ok(h) => h.to_owned(),
            Err(r) => {
                let shown = csr.common_names.first().cloned();
                return Err(self.reject(now, shown, peer, r).await);
            }
        };
        if let Err(r) = policy::check_certname(certname, &host) {
            return Err(self.reject(now, Some(host), peer, r).await);
        }
        Ok((csr, host))
    }

    /// Step 2, authenticate and decide: the host's PSK entry and `policy::decide`
    /// (the PSK hashed once, here), then the key's standing in the store. A
    /// PSK that fails may still be the idempotent retry of a request that
    /// succeeded ([`Authenticated::Replayed`]).
    async fn authenticate(
        &self,
        csr: &Csr,
        host: &str,
        now: i64,
        peer: SocketAddr,
    ) -> Result<Authenticated, SignError> {
        let psk_hash = csr.psk.as_ref().map(|p| p.hash());
        // Both reads at once: on PostgreSQL they join one batch of the
        // reader (one wait, not two in turn). The key's standing counts only
        // once the PSK is accepted.
        let key = csr.public_key_sha256();
        let (entry, compromised) =
            tokio::join!(self.store.get_psk(host), self.store.key_compromised(&key));
        let entry = entry?;
        let profile = match policy::decide_hashed(csr, psk_hash.as_ref(), entry.as_ref(), now) {
            Decision::Accept(profile) => profile,
            Decision::Reject(Rejection::Psk(failure)) => {
                return self
                    .psk_failure(csr, host, psk_hash.as_ref(), failure, now, peer)
                    .await
                    .map(Authenticated::Replayed);
            }
            Decision::Reject(r) => {
                return Err(self.reject(now, Some(host.to_owned()), peer, r).await);
            }
        };
        let (Some(entry), Some(psk_hash)) = (entry, psk_hash) else {
            unreachable!("policy accepts only with a PSK and its entry")
        };
        if let Some(r) = key_rule(compromised?) {
            return Err(self.reject(now, Some(host.to_owned()), peer, r).await);
        }
        Ok(Authenticated::Accepted(Accepted {
            profile,
            psk_hash,
            psk_expires_at: entry.expires_at,
        }))
    }

    /// Step 4, record: spend the PSK and store the certificate atomically; only
    /// then does the certificate leave.
    async fn record(
        &self,
        csr: &Csr,
        host: String,
        leaf: SignedLeaf,
        accepted: &Accepted,
        now: i64,
        peer: SocketAddr,
    ) -> Result<Issued, SignError> {
        let mut record = leaf.to_record(&host, CertKind::Host, &csr.spki_der, now);
        record.psk_hash = Some(accepted.psk_hash.0.to_vec());
        record.psk_expires_at = Some(accepted.psk_expires_at);
        let audit = AuditEvent {
            at: now,
            event: Event::Issued.into(),
            hostname: Some(host.clone()),
            serial: Some(leaf.serial.clone()),
            outcome: Outcome::Issued.into(),
            reason: Some(format!("psk; key {}", csr.key)),
            peer: Some(peer.to_string()),
            ..Default::default()
        };
        match self
            .store
            .record_issuance(&Issuance {
                psk_hash: accepted.psk_hash,
                now,
                cert: &record,
                audit: &audit,
            })
            .await
        {
            Ok(()) => Ok(Issued {
                serial: leaf.serial,
                hostname: host,
                chain_pem: self.signer.chain_pem(&leaf.der),
                replayed: false,
            }),
            // Lost a race for the PSK: the winner may have been this very
            // client retrying, in which case it gets the winner's certificate.
            Err(StoreError::PskGone) => {
                let hash = Some(&accepted.psk_hash);
                self.psk_failure(csr, &host, hash, PskFailure::Used, now, peer)
                    .await
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The CA's own keys never get a certificate (`policy::check_key`).
    pub(crate) fn ca_key_rule(&self, csr: &Csr) -> Result<(), Rejection> {
        policy::check_key(KeyFacts {
            ca_own_key: self.signer.is_ca_key(&csr.spki_der),
            ..KeyFacts::default()
        })
    }

    /// A key revoked as compromised never gets a certificate again, on any
    /// route and for any host (`policy::check_key`, the fact from the store).
    pub(crate) async fn compromised_key(&self, csr: &Csr) -> Result<Option<Rejection>, StoreError> {
        let compromised = self.store.key_compromised(&csr.public_key_sha256()).await?;
        Ok(key_rule(compromised))
    }

    /// Signs the certificate policy decided for `csr`: the one step every
    /// route to the signer shares (its public key is all the CSR gives).
    /// Refused before signing when the store cannot take the record.
    pub(crate) fn sign_profile(
        &self,
        profile: &Profile,
        csr: &Csr,
        now: i64,
    ) -> Result<SignedLeaf, SignError> {
        if let Some(disk) = &self.disk {
            disk.check()?;
        }
        self.signer
            .sign_leaf(&LeafRequest {
                profile,
                key: csr.key,
                spki_der: &csr.spki_der,
                now,
                validity: self.validity,
            })
            .map_err(SignError::Signer)
    }

    /// A PSK that did not authenticate: either the idempotent retry of a
    /// request that already succeeded, or a generic 403 with a precise audit.
    async fn psk_failure(
        &self,
        csr: &Csr,
        host: &str,
        psk_hash: Option<&PskHash>,
        failure: PskFailure,
        now: i64,
        peer: SocketAddr,
    ) -> Result<Issued, SignError> {
        let Some(&hash) = psk_hash else {
            return Err(self
                .reject(now, Some(host.to_owned()), peer, Rejection::Psk(failure))
                .await);
        };
        let mut failure = failure;
        if failure.may_be_retry() {
            let key = csr.public_key_sha256();
            for cert in self.store.certs_by_psk(host, &hash).await? {
                failure = PskFailure::Used;
                let issued = IssuedUnderPsk {
                    same_key: cert.public_key_sha256 == key,
                    psk_expires_at: cert.psk_expires_at,
                    revoked: cert.revoked_at.is_some(),
                };
                if issued.answers_retry(now) {
                    self.store
                        .audit(&AuditEvent {
                            at: now,
                            event: Event::Replayed.into(),
                            hostname: Some(host.to_owned()),
                            serial: Some(cert.serial.clone()),
                            outcome: Outcome::Issued.into(),
                            reason: Some("idempotent retry: same PSK and key".into()),
                            peer: Some(peer.to_string()),
                            ..Default::default()
                        })
                        .await?;
                    return Ok(Issued {
                        chain_pem: self.signer.chain_pem(&cert.der),
                        serial: cert.serial,
                        hostname: host.to_owned(),
                        replayed: true,
                    });
                }
            }
        }
        if failure.burns_psk() {
            // An expired PSK is burned (SPIRE does the same): it can never work again.
            self.store.burn_psk(host, &hash).await?;
        }
        Err(self
            .reject(now, Some(host.to_owned()), peer, Rejection::Psk(failure))
            .await)
    }

    /// Audits a rejection (aggregated per client address and precise
    /// reason), counts it against the address (a PSK failure in full, any
    /// other refusal lightly), and hands it back.
    /// A store failure while auditing is logged, not hidden behind the rejection.
    async fn reject(
        &self,
        now: i64,
        hostname: Option<String>,
        peer: SocketAddr,
        r: Rejection,
    ) -> SignError {
        let key = match &r {
            Rejection::Psk(f) => f.reason(),
            other => other.code(),
        };
        let refusal = Refusal {
            event: Event::Sign,
            hostname: hostname.map(|h| clip(&h)),
            serial: None,
            reason: clip(&r.reason()),
            actor: None,
            key,
            weight: Some(weight_of(&r)),
            what: "a rejection",
        };
        self.refuse(now, peer, refusal).await;
        SignError::Rejected(r)
    }
}

/// `policy::check_key` with the store's fact about the key.
fn key_rule(compromised: bool) -> Option<Rejection> {
    policy::check_key(KeyFacts {
        compromised,
        ..KeyFacts::default()
    })
    .err()
}

/// How much a refusal counts against its address: a failed authentication
/// (PSK, renewal client certificate) in full, anything else lightly. A
/// renewal that lost a race to a concurrent one (superseded) is not an
/// authentication failure.
pub(crate) fn weight_of(r: &Rejection) -> Weight {
    match r {
        Rejection::Renewal(policy::RenewalRefusal::Superseded) => Weight::Light,
        Rejection::Psk(_) | Rejection::Renewal(_) => Weight::Full,
        _ => Weight::Light,
    }
}

/// Untrusted text bound for the audit table: at most 256 characters.
pub(crate) fn clip(s: &str) -> String {
    s.chars().take(256).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{NOW, fixture};
    use policy::psk::Psk;
    use proto::keys::{HostKey, KeyType};
    use std::future::Future;
    use std::task::Poll;

    const PEER: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 1);

    /// The PSK flow runs on the connection's task, so a client that hangs up
    /// drops it wherever it waits. Cut off after any number of polls, it
    /// leaves the PSK and the certificate agreeing (spent and recorded, or
    /// neither), and the client's retry with the same CSR gets a certificate:
    /// a new one, or the one recorded for it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_dropped_at_any_await_leaves_psk_and_certificate_agreeing() {
        let f = fixture().await;
        f.store.start_group_commit();
        f.store.start_batched_reads();
        let authority = f.authority();
        let (mut cut_before_commit, mut cut_after_submit) = (0, 0);
        for polls in 0..24u8 {
            let host = format!("h{polls}.example.internal");
            let psk = Psk::from_random(&[polls + 1; 32]);
            let added = AuditEvent::default();
            f.store
                .put_psk(&host, &psk.hash(), &[], NOW - 60, NOW + 3600, &added)
                .await
                .unwrap();
            let key = HostKey::generate(KeyType::P256).unwrap();
            let csr = key.csr_pem(&host, &[], Some(&psk)).unwrap();
            {
                let mut request = std::pin::pin!(authority.sign(csr.as_bytes(), None, PEER));
                for _ in 0..polls {
                    let poll = std::future::poll_fn(|cx| Poll::Ready(request.as_mut().poll(cx)));
                    if let Poll::Ready(result) = poll.await {
                        result.unwrap();
                        break;
                    }
                    tokio::task::yield_now().await;
                }
            }
            // The retry. It may overtake a commit still in the writer's
            // queue: then it loses the PSK to it and is answered with it.
            let retry = authority.sign(csr.as_bytes(), None, PEER).await.unwrap();
            let certs = f.store.certs_by_psk(&host, &psk.hash()).await.unwrap();
            assert_eq!(certs.len(), 1, "{host}: one certificate for the PSK");
            assert_eq!(certs[0].serial, retry.serial);
            assert!(
                f.store.get_psk(&host).await.unwrap().is_none(),
                "{host}: PSK spent"
            );
            if retry.replayed {
                cut_after_submit += 1;
            } else {
                cut_before_commit += 1;
            }
        }
        // Both kinds of cut happened (polls = 0 never starts the request;
        // a cut while the writer commits leaves its certificate to the retry).
        assert!(cut_before_commit > 0 && cut_after_submit > 0);
    }
}
