//! The OCSP responder: the delegated responder key (kept in the store,
//! wrapped, shared by every replica, renewed at half its life), and the
//! per-replica cache of pre-signed responses, so a repeated request costs a
//! hash-map lookup and no signature.
//!
//! A cached response is used until its refresh time (`--ocsp-refresh`,
//! default 1 h; nextUpdate is thisUpdate + `--ocsp-validity`, default 4 h)
//! or until the store's revocation sequence changes (the CRL poller reads it
//! every 2 s, `CrlService::revocations`), so a revocation shows within a
//! few seconds on every replica. Requests with a nonce get their own
//! signature while the nonce budget allows (RFC 8954), else the cached
//! answer without the nonce; unknown serials and nonces share that budget,
//! so a flood of random requests cannot make the responder sign without bound.

use super::ocsp::{self, OcspRequest, ResponderKey, ResponseFields};
use crate::clock::Clock;
use crate::pki::ca::Signer;
use crate::store::{Store, StoredResponder};
use anyhow::{Context, Result};
use bytes::Bytes;
use proto::ocsp::{CertStatus, IssuerKeys, ResponseStatus};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Lifetime of a responder certificate.
pub const RESPONDER_VALIDITY: Duration = Duration::from_secs(7 * 86_400);
/// Most responses cached per replica (beyond it, the cache starts over).
const MAX_CACHED: usize = 100_000;

/// Response timing.
#[derive(Debug, Clone, Copy)]
pub struct OcspConfig {
    /// nextUpdate - thisUpdate.
    pub validity: Duration,
    /// How long a cached response is served before it is re-signed.
    pub refresh: Duration,
    /// Fresh signatures per second for nonces and unknown serials.
    pub extra_signatures_per_sec: u32,
}

impl Default for OcspConfig {
    fn default() -> OcspConfig {
        OcspConfig {
            validity: Duration::from_secs(4 * 3600),
            refresh: Duration::from_secs(3600),
            extra_signatures_per_sec: 200,
        }
    }
}

/// `serve` flags for [`OcspConfig`].
#[derive(Debug, Clone, clap::Args)]
pub struct OcspArgs {
    /// OCSP response validity (nextUpdate - thisUpdate).
    #[arg(long, env = "CA_OCSP_VALIDITY", default_value = "4h")]
    pub ocsp_validity: humantime::Duration,
    /// How long a pre-signed OCSP response is served before it is re-signed
    /// (a revocation replaces it within seconds regardless).
    #[arg(long, env = "CA_OCSP_REFRESH", default_value = "1h")]
    pub ocsp_refresh: humantime::Duration,
}

impl OcspArgs {
    pub fn config(&self) -> Result<OcspConfig> {
        let validity: Duration = self.ocsp_validity.into();
        let refresh: Duration = self.ocsp_refresh.into();
        if validity < Duration::from_secs(600) || validity > Duration::from_secs(86_400) {
            anyhow::bail!("--ocsp-validity must be between 10m and 24h");
        }
        if refresh.is_zero() || refresh >= validity {
            anyhow::bail!("--ocsp-refresh must be positive and shorter than --ocsp-validity");
        }
        Ok(OcspConfig {
            validity,
            refresh,
            ..OcspConfig::default()
        })
    }
}

/// One cached response.
#[derive(Debug)]
struct Cached {
    der: Bytes,
    etag: String,
    status: &'static str,
    cert_status: CertStatus,
    produced_at: i64,
    this_update: i64,
    next_update: i64,
    refresh_at: i64,
    revocation_seq: i64,
}

/// What the HTTP layer sends back.
#[derive(Debug, Clone)]
pub struct Answer {
    /// A DER OCSPResponse (successful or an error status).
    pub der: Bytes,
    /// The metric label: certificate status or OCSP error status.
    pub status: &'static str,
    /// For a cacheable response: ETag, seconds it may be cached, producedAt, nextUpdate.
    pub caching: Option<Caching>,
}

/// HTTP caching of a response.
#[derive(Debug, Clone)]
pub struct Caching {
    pub etag: String,
    pub max_age: i64,
    pub produced_at: i64,
    pub next_update: i64,
}

impl Answer {
    fn error(status: ResponseStatus) -> Answer {
        Answer {
            der: Bytes::from(status.error_response()),
            status: status.name(),
            caching: None,
        }
    }
}

/// A small token bucket for signatures off the cache.
#[derive(Debug)]
struct Budget {
    per_sec: f64,
    state: Mutex<(Instant, f64)>,
}

impl Budget {
    fn new(per_sec: u32) -> Budget {
        Budget {
            per_sec: f64::from(per_sec),
            state: Mutex::new((Instant::now(), f64::from(per_sec))),
        }
    }

    fn take(&self) -> bool {
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        s.1 = (s.1 + now.duration_since(s.0).as_secs_f64() * self.per_sec).min(self.per_sec);
        s.0 = now;
        if s.1 >= 1.0 {
            s.1 -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The responder.
pub struct Responder {
    store: Store,
    signer: Arc<Signer>,
    clock: Arc<dyn Clock>,
    config: OcspConfig,
    issuer: IssuerKeys,
    intermediate_sha256: Vec<u8>,
    intermediate_ski: Option<Vec<u8>>,
    key: RwLock<Arc<ResponderKey>>,
    cache: Mutex<HashMap<Vec<u8>, Arc<Cached>>>,
    revocations: tokio::sync::watch::Receiver<i64>,
    budget: Budget,
    signatures: AtomicU64,
    /// Serialises cache fills per CertID shard.
    fill_locks: Vec<tokio::sync::Mutex<()>>,
}

/// Cache-fill lock shards.
const FILL_SHARDS: usize = 64;

fn shard_of(cert_id_der: &[u8]) -> usize {
    // The serial's last bytes are CSPRNG output: a fine spread.
    cert_id_der.last().map_or(0, |b| *b as usize) % FILL_SHARDS
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Responder {
    /// Loads (or creates and stores) the responder key for this intermediate.
    pub async fn start(
        store: Store,
        signer: Arc<Signer>,
        clock: Arc<dyn Clock>,
        config: OcspConfig,
        revocations: tokio::sync::watch::Receiver<i64>,
    ) -> Result<Arc<Responder>> {
        let issuer = IssuerKeys::from_cert(&signer.intermediate_der)?;
        let intermediate_sha256 =
            ring::digest::digest(&ring::digest::SHA256, &signer.intermediate_der)
                .as_ref()
                .to_vec();
        let key = current_key(&store, &signer, &intermediate_sha256, clock.now()).await?;
        let intermediate_ski = x509_parser::parse_x509_certificate(&signer.intermediate_der)
            .ok()
            .and_then(|(_, c)| {
                c.extensions()
                    .iter()
                    .find_map(|e| match e.parsed_extension() {
                        x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k) => {
                            Some(k.0.to_vec())
                        }
                        _ => None,
                    })
            });
        let responder = Arc::new(Responder {
            store,
            signer,
            clock,
            budget: Budget::new(config.extra_signatures_per_sec),
            config,
            issuer,
            intermediate_sha256,
            intermediate_ski,
            key: RwLock::new(Arc::new(key)),
            cache: Mutex::new(HashMap::new()),
            revocations,
            signatures: AtomicU64::new(0),
            fill_locks: (0..FILL_SHARDS)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        });
        let weak = Arc::downgrade(&responder);
        crate::metrics::metrics().set_ocsp_oldest(crate::metrics::OcspOldest(Box::new(
            move || weak.upgrade().and_then(|r| r.oldest_produced_at()),
        )));
        Ok(responder)
    }

    /// Signatures made so far (tests: a cached answer makes none).
    pub fn signatures(&self) -> u64 {
        self.signatures.load(Ordering::Relaxed)
    }

    /// The responder certificate in use (DER).
    pub fn responder_cert(&self) -> Vec<u8> {
        self.key
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .cert_der
            .clone()
    }

    /// The oldest producedAt among the responses this replica would still serve.
    fn oldest_produced_at(&self) -> Option<i64> {
        let (now, seq) = (self.clock.now(), *self.revocations.borrow());
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .filter(|c| c.revocation_seq == seq && now < c.refresh_at)
            .map(|c| c.produced_at)
            .min()
    }

    /// Drops the responses that would no longer be served.
    fn prune(&self) {
        let (now, seq) = (self.clock.now(), *self.revocations.borrow());
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|_, c| c.revocation_seq == seq && now < c.refresh_at);
    }

    /// Answers one DER request. Never fails: errors are OCSP error statuses.
    pub async fn answer(&self, body: &[u8]) -> Answer {
        let answer = self.answer_inner(body).await;
        crate::metrics::metrics().ocsp_request(answer.status);
        answer
    }

    async fn answer_inner(&self, body: &[u8]) -> Answer {
        let req = match ocsp::decode_request(body) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "OCSP: malformed request");
                return Answer::error(ResponseStatus::MalformedRequest);
            }
        };
        if !self.issuer.matches(&req.cert_id) {
            return Answer::error(ResponseStatus::Unauthorized);
        }
        let now = self.clock.now();
        let seq = *self.revocations.borrow();
        let lookup = || {
            self.cache
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(&req.cert_id_der)
                .filter(|c| c.revocation_seq == seq && now < c.refresh_at)
                .cloned()
        };
        let cached = match lookup() {
            Some(c) => c,
            None => {
                // One fill per CertID at a time: concurrent first requests
                // wait for it instead of each signing.
                let shard = self.fill_locks[shard_of(&req.cert_id_der)].lock().await;
                let filled = match lookup() {
                    Some(c) => Ok(c),
                    None => self.fill(&req, seq, now).await,
                };
                drop(shard);
                match filled {
                    Ok(c) => c,
                    Err(FreshError::Busy) => return Answer::error(ResponseStatus::TryLater),
                    Err(FreshError::Store(e)) => {
                        tracing::warn!(error = %e, "OCSP: store lookup failed");
                        self.store.suspect();
                        return Answer::error(ResponseStatus::TryLater);
                    }
                    Err(FreshError::Internal(e)) => {
                        tracing::error!(error = %format!("{e:#}"), "OCSP: signing failed");
                        return Answer::error(ResponseStatus::InternalError);
                    }
                }
            }
        };
        // The nonce echo is its own signature, within the budget; past it
        // the pre-signed answer goes out without the nonce (RFC 8954).
        if let Some(n) = &req.nonce
            && self.budget.take()
        {
            let key = self
                .key
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            self.signatures.fetch_add(1, Ordering::Relaxed);
            crate::metrics::metrics().ocsp_signature();
            let signed = ocsp::encode_response(
                &key,
                &ResponseFields {
                    cert_id_der: &req.cert_id_der,
                    status: &cached.cert_status,
                    produced_at: now,
                    this_update: cached.this_update,
                    next_update: cached.next_update,
                    nonce: Some(n),
                },
            );
            return match signed {
                Ok(der) => Answer {
                    der: Bytes::from(der),
                    status: cached.status,
                    caching: None,
                },
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "OCSP: signing failed");
                    Answer::error(ResponseStatus::InternalError)
                }
            };
        }
        cached_answer(&cached, now)
    }

    /// Looks the serial up, signs the nonce-less response and caches it.
    async fn fill(&self, req: &OcspRequest, seq: i64, now: i64) -> Result<Arc<Cached>, FreshError> {
        let status = match req.cert_id.serial_hex() {
            Some(serial) => {
                let record = self
                    .store
                    .get_cert(&serial)
                    .await
                    .map_err(|e| FreshError::Store(e.to_string()))?;
                match record {
                    Some(r) if self.issued_by_us(&r.der) => match r.revoked_at {
                        Some(at) => CertStatus::Revoked {
                            at,
                            reason: ocsp::reason_code(r.revocation_reason.as_deref()),
                        },
                        None => CertStatus::Good,
                    },
                    _ => CertStatus::Unknown,
                }
            }
            None => CertStatus::Unknown,
        };
        // A serial this CA never issued: its first answer comes out of the
        // budget (then it is cached like any other).
        if status == CertStatus::Unknown && !self.budget.take() {
            return Err(FreshError::Busy);
        }
        let key = self
            .key
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let this_update = now - 60;
        let next_update = now + self.config.validity.as_secs() as i64;
        let label = match status {
            CertStatus::Good => "good",
            CertStatus::Revoked { .. } => "revoked",
            CertStatus::Unknown => "unknown",
        };
        let refresh_at = (now + self.config.refresh.as_secs() as i64).min(key.not_after);
        self.signatures.fetch_add(1, Ordering::Relaxed);
        crate::metrics::metrics().ocsp_signature();
        let der = ocsp::encode_response(
            &key,
            &ResponseFields {
                cert_id_der: &req.cert_id_der,
                status: &status,
                produced_at: now,
                this_update,
                next_update,
                nonce: None,
            },
        )
        .map_err(FreshError::Internal)?;
        let der = Bytes::from(der);
        let cached = Arc::new(Cached {
            etag: etag(&der),
            der,
            status: label,
            cert_status: status,
            produced_at: now,
            this_update,
            next_update,
            refresh_at,
            revocation_seq: seq,
        });
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.len() >= MAX_CACHED {
            cache.retain(|_, c| c.revocation_seq == seq && now < c.refresh_at);
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
        }
        cache.insert(req.cert_id_der.clone(), cached.clone());
        Ok(cached)
    }

    /// Whether a stored certificate was signed by this intermediate (its
    /// AKI names our key): after a rotation, the old intermediate's leaves
    /// are not ours to answer for under the new issuer hashes.
    fn issued_by_us(&self, der: &[u8]) -> bool {
        let (Ok((_, cert)), Ok((_, int))) = (
            x509_parser::parse_x509_certificate(der),
            x509_parser::parse_x509_certificate(&self.signer.intermediate_der),
        ) else {
            return false;
        };
        if cert.issuer().as_raw() != int.subject().as_raw() {
            return false;
        }
        let aki = cert
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(a) => {
                    a.key_identifier.as_ref().map(|k| k.0.to_vec())
                }
                _ => None,
            });
        match (&aki, &self.intermediate_ski) {
            (Some(a), Some(s)) => a == s,
            _ => cert.verify_signature(Some(int.public_key())).is_ok(),
        }
    }

    /// Every minute: drops stale cached responses, and renews the responder
    /// key when half its life has passed (or loads the newer one another
    /// replica stored). Runs until aborted.
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            self.prune();
            if let Err(e) = self.renew_if_due().await {
                tracing::warn!(error = %format!("{e:#}"), "renewing the OCSP responder certificate failed; will retry");
            }
        }
    }

    /// Renews the responder key once half its life has passed (or takes the
    /// newer one another replica stored); `true` if the key changed.
    pub async fn renew_if_due(&self) -> Result<bool> {
        let now = self.clock.now();
        let current = self
            .key
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if now < half_life(current.not_before, current.not_after) {
            return Ok(false);
        }
        let k = current_key(&self.store, &self.signer, &self.intermediate_sha256, now).await?;
        tracing::info!(
            not_after = %proto::timefmt::rfc3339(k.not_after),
            "OCSP responder certificate renewed"
        );
        *self
            .key
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(k);
        Ok(true)
    }
}

#[derive(Debug)]
enum FreshError {
    Busy,
    Store(String),
    Internal(anyhow::Error),
}

fn half_life(not_before: i64, not_after: i64) -> i64 {
    not_before + (not_after - not_before) / 2
}

fn etag(der: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    format!("\"{}\"", hex::encode(&d.as_ref()[..16]))
}

fn cached_answer(c: &Cached, now: i64) -> Answer {
    Answer {
        der: c.der.clone(),
        status: c.status,
        caching: Some(Caching {
            etag: c.etag.clone(),
            // Clients may keep it until it would be re-signed here, never past nextUpdate.
            max_age: (c.refresh_at.min(c.next_update) - now).max(0),
            produced_at: c.produced_at,
            next_update: c.next_update,
        }),
    }
}

/// The stored responder for this intermediate if it is before half its
/// life, else a new one signed, wrapped and stored (then the newest stored,
/// in case another replica stored one at the same time).
async fn current_key(
    store: &Store,
    signer: &Signer,
    intermediate_sha256: &[u8],
    now: i64,
) -> Result<ResponderKey> {
    if let Some(r) = store.ocsp_responder(intermediate_sha256).await?
        && now < half_life(r.not_before, r.not_after)
    {
        return open(signer, &r);
    }
    let (pkcs8, spki) = ocsp::generate_key()?;
    let cert = signer.sign_ocsp_responder(&spki, now, RESPONDER_VALIDITY)?;
    let wrapped = signer.ocsp_wrap_key().wrap(&pkcs8, &cert.der)?;
    store
        .add_ocsp_responder(
            intermediate_sha256,
            &StoredResponder {
                serial: cert.serial.clone(),
                not_before: cert.not_before,
                not_after: cert.not_after,
                cert_der: cert.der.clone(),
                wrapped_key: wrapped,
            },
            now,
        )
        .await
        .context("storing the OCSP responder")?;
    tracing::info!(serial = %cert.serial, "issued a new OCSP responder certificate");
    let newest = store
        .ocsp_responder(intermediate_sha256)
        .await?
        .context("the OCSP responder just stored is missing")?;
    open(signer, &newest)
}

fn open(signer: &Signer, r: &StoredResponder) -> Result<ResponderKey> {
    let pkcs8 = signer.ocsp_wrap_key().unwrap(&r.wrapped_key, &r.cert_der)?;
    ResponderKey::new(&pkcs8, r.cert_der.clone(), signer.intermediate_der.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;
    use crate::pki::ca::{CaPaths, LeafRequest};
    use proto::ocsp::{CertId, CertIdHash, encode_request, verify_response};

    const TEST_NOW: i64 = 1_800_000_000;

    #[derive(Debug)]
    struct Fixed(i64);
    impl Clock for Fixed {
        fn now(&self) -> i64 {
            self.0
        }
    }

    async fn fixture() -> (
        tempfile::TempDir,
        Arc<Responder>,
        Arc<Signer>,
        Store,
        tokio::sync::watch::Sender<i64>,
    ) {
        fixture_with(Arc::new(Fixed(TEST_NOW)), OcspConfig::default()).await
    }

    /// A CA, a store and a responder on `clock` with `config`.
    async fn fixture_with(
        clock: Arc<dyn Clock>,
        config: OcspConfig,
    ) -> (
        tempfile::TempDir,
        Arc<Responder>,
        Arc<Signer>,
        Store,
        tokio::sync::watch::Sender<i64>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let paths = CaPaths::new(&dir.path().join("ca"));
        crate::pki::ca::init(&paths, "Test", TEST_NOW).unwrap();
        let signer = Arc::new(Signer::load(&paths, None).unwrap());
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("s.db").display());
        let store = Store::open(&url).await.unwrap();
        let (tx, rx) = tokio::sync::watch::channel(0);
        let r = Responder::start(store.clone(), signer.clone(), clock, config, rx)
            .await
            .unwrap();
        (dir, r, signer, store, tx)
    }

    fn leaf(signer: &Signer) -> crate::pki::ca::SignedLeaf {
        let key = rcgen::KeyPair::generate().unwrap();
        use rcgen::PublicKeyData;
        let spki = key.subject_public_key_info();
        let profile = policy::Profile {
            hostname: "web1.example.internal".into(),
            sans: vec![policy::AllowedName::Dns("web1.example.internal".into())],
        };
        signer
            .sign_leaf(&LeafRequest {
                profile: &profile,
                key: policy::KeyKind::EcdsaP256,
                spki_der: &spki,
                now: TEST_NOW,
                validity: Duration::from_secs(86_400),
            })
            .unwrap()
    }

    /// A host certificate signed and recorded in the store, as an issuance does.
    async fn recorded_leaf(signer: &Signer, store: &Store) -> crate::pki::ca::SignedLeaf {
        let l = leaf(signer);
        store
            .record_certificate(
                &l.to_record(
                    "web1.example.internal",
                    crate::store::CertKind::Host,
                    &[],
                    TEST_NOW,
                ),
                &crate::store::AuditEvent {
                    at: TEST_NOW,
                    event: "issued".into(),
                    outcome: "issued".into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        l
    }

    #[tokio::test]
    async fn a_cached_answer_makes_no_signature_and_a_revocation_replaces_it() {
        let (_dir, r, signer, store, tx) = fixture().await;
        let now = TEST_NOW;
        let l = recorded_leaf(&signer, &store).await;
        let issuer = IssuerKeys::from_cert(&signer.intermediate_der).unwrap();
        let serial = proto::ocsp::cert_serial(&l.der).unwrap();
        let id = CertId::new(CertIdHash::Sha1, &issuer, &serial);
        let req = encode_request(&id, None);

        // Concurrent first requests: one fill, one signature.
        let answers = futures_util::future::join_all((0..8).map(|_| r.answer(&req))).await;
        let first = answers[0].clone();
        assert!(answers.iter().all(|a| a.der == first.der));
        assert_eq!(first.status, "good");
        let after_first = r.signatures();
        assert_eq!(after_first, 1);
        for _ in 0..100 {
            let again = r.answer(&req).await;
            assert_eq!(again.der, first.der);
        }
        assert_eq!(r.signatures(), after_first, "a cached GET signs nothing");
        let v = verify_response(&first.der, &id, &signer.intermediate_der, now, 60).unwrap();
        assert_eq!(v.single.status, CertStatus::Good);
        assert!(v.signer.starts_with("delegated responder"));

        // With a nonce: its own signature, the nonce echoed.
        let with_nonce = r.answer(&encode_request(&id, Some(&[5; 16]))).await;
        let (_, basic) = proto::ocsp::decode_response(&with_nonce.der).unwrap();
        assert_eq!(
            basic.unwrap().nonce.unwrap(),
            vec![5; 16],
            "the nonce is echoed"
        );

        store
            .revoke_serial(
                &l.serial,
                &crate::store::Revocation {
                    reason: "keyCompromise",
                    now,
                    actor: "test",
                },
            )
            .await
            .unwrap();
        assert_eq!(
            r.answer(&req).await.status,
            "good",
            "cached until the sequence moves"
        );
        tx.send_replace(1);
        let revoked = r.answer(&req).await;
        assert_eq!(revoked.status, "revoked");
        let v = verify_response(&revoked.der, &id, &signer.intermediate_der, now, 60).unwrap();
        assert_eq!(
            v.single.status,
            CertStatus::Revoked {
                at: now,
                reason: Some(1)
            }
        );
    }

    #[tokio::test]
    async fn unknown_issuers_serials_and_garbage_get_ocsp_errors() {
        let (_dir, r, signer, _store, _tx) = fixture().await;
        assert_eq!(r.answer(b"garbage").await.status, "malformedRequest");
        let other = IssuerKeys {
            name_der: vec![0x30, 0],
            public_key: vec![4; 65],
        };
        let id = CertId::new(CertIdHash::Sha256, &other, &[0x40; 16]);
        assert_eq!(
            r.answer(&encode_request(&id, None)).await.status,
            "unauthorized"
        );
        let issuer = IssuerKeys::from_cert(&signer.intermediate_der).unwrap();
        let id = CertId::new(CertIdHash::Sha256, &issuer, &[0x40; 16]);
        let a = r.answer(&encode_request(&id, None)).await;
        assert_eq!(a.status, "unknown");
        let now = TEST_NOW;
        let v = verify_response(&a.der, &id, &signer.intermediate_der, now, 60).unwrap();
        assert_eq!(v.single.status, CertStatus::Unknown);
    }

    /// Half-way through its 7 days the responder certificate is renewed,
    /// stored for the other replicas, and new answers are signed with it.
    #[tokio::test]
    async fn the_responder_certificate_is_renewed_at_half_its_life() {
        let clock = Arc::new(crate::testing::TestClock::at(TEST_NOW));
        let (_dir, r, signer, store, _tx) =
            fixture_with(clock.clone(), OcspConfig::default()).await;
        let first = r.responder_cert();
        let life = RESPONDER_VALIDITY.as_secs() as i64;
        clock.set(TEST_NOW + life / 2 - 3600);
        assert!(!r.renew_if_due().await.unwrap(), "not yet half its life");
        assert_eq!(r.responder_cert(), first);
        clock.set(TEST_NOW + life / 2 + 60);
        assert!(r.renew_if_due().await.unwrap());
        let second = r.responder_cert();
        assert_ne!(second, first);
        let (_, cert) = x509_parser::parse_x509_certificate(&second).unwrap();
        assert!(cert.validity().not_after.timestamp() > TEST_NOW + life);
        // Stored: a replica starting now uses the renewed one, not a third.
        let (_tx2, rx2) = tokio::sync::watch::channel(0);
        let r2 = Responder::start(
            store,
            signer.clone(),
            clock.clone(),
            OcspConfig::default(),
            rx2,
        )
        .await
        .unwrap();
        assert_eq!(r2.responder_cert(), second);
        // Answers are signed by the renewed certificate.
        let issuer = IssuerKeys::from_cert(&signer.intermediate_der).unwrap();
        let id = CertId::new(CertIdHash::Sha256, &issuer, &[0x41; 16]);
        let a = r.answer(&encode_request(&id, None)).await;
        let (_, basic) = proto::ocsp::decode_response(&a.der).unwrap();
        let basic = basic.unwrap();
        assert!(
            basic
                .certs
                .iter()
                .any(|c| c.as_slice() == second.as_slice()),
            "the answer carries the renewed responder certificate"
        );
    }

    /// Unknown serials cost a signature each: past the budget they get
    /// `tryLater` (never a hang or a 5xx), while known serials are still
    /// answered from the cache.
    #[tokio::test]
    async fn past_the_signature_budget_unknown_serials_get_try_later() {
        let config = OcspConfig {
            extra_signatures_per_sec: 1,
            ..OcspConfig::default()
        };
        let (_dir, r, signer, store, _tx) = fixture_with(Arc::new(Fixed(TEST_NOW)), config).await;
        let l = recorded_leaf(&signer, &store).await;
        let issuer = IssuerKeys::from_cert(&signer.intermediate_der).unwrap();
        let known = encode_request(
            &CertId::new(
                CertIdHash::Sha1,
                &issuer,
                &proto::ocsp::cert_serial(&l.der).unwrap(),
            ),
            None,
        );
        assert_eq!(r.answer(&known).await.status, "good");
        let mut statuses = Vec::new();
        for i in 0..20u8 {
            let id = CertId::new(CertIdHash::Sha256, &issuer, &[0x42, i, 1, 2, 3, 4, 5, 6]);
            statuses.push(r.answer(&encode_request(&id, None)).await.status);
        }
        assert!(
            statuses
                .iter()
                .all(|s| matches!(*s, "unknown" | "tryLater")),
            "{statuses:?}"
        );
        assert!(statuses.contains(&"tryLater"), "{statuses:?}");
        let before = r.signatures();
        assert_eq!(
            r.answer(&known).await.status,
            "good",
            "cached, budget or not"
        );
        assert_eq!(r.signatures(), before);
    }

    #[tokio::test]
    async fn replicas_share_one_stored_responder() {
        let (dir, r, signer, store, _tx) = fixture().await;
        let (_tx2, rx2) = tokio::sync::watch::channel(0);
        let r2 = Responder::start(
            store,
            signer,
            Arc::new(Fixed(TEST_NOW)),
            OcspConfig::default(),
            rx2,
        )
        .await
        .unwrap();
        assert_eq!(r.responder_cert(), r2.responder_cert());
        drop(dir);
    }
}
