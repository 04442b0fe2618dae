//! Certificate revocation lists: what they contain, when they are re-signed,
//! how a new one reaches every server, and the cached copies the HTTP
//! handlers serve.
//!
//! One generation ([`CrlSet`]) is signed from one view of the store:
//! - the intermediate's CRL with the short validity (`--crl-validity`,
//!   default 24 h): `GET /v1/crl`, the leaves' CRL distribution point;
//! - the same entries with the long validity (`--puppet-crl-validity`,
//!   default 5 years as Puppet Server): Puppet agents download their CRL once
//!   (refreshing only if `crl_refresh_interval` is set) and cannot recover
//!   from an expired one, since the refresh itself is verified against it;
//! - the root's CRL (covering the intermediate), signed while `root.key` is
//!   online and kept as `root.crl` for when it is not: verifiers that check
//!   the whole chain (Puppet's default `certificate_revocation = chain`,
//!   OpenSSL's `-crl_check_all`, nginx, HAProxy and PostgreSQL) need a CRL
//!   for every CA.
//!
//! Publication: a generation is signed from one store snapshot (CRL numbers
//! and revoked set read together, [`Store::crl_snapshot`]), then published
//! in the store (`crl_published`), where a higher generation always wins.
//! Every server serves the published generation, so replicas behind one
//! address serve the same CRL and a client never sees numbers go back.
//!
//! Who signs: `ca-server revoke` signs and publishes right after recording a
//! revocation (when the intermediate key is in its data dir); each server
//! polls the store every [`POLL_INTERVAL`] (one small read) and loads a
//! newer published generation, or signs one itself when the published one
//! is behind the store's revocations (a revocation by a process without
//! the key), half of its validity has passed, or a listed certificate
//! expired. Signing never runs on the issuance path, and handlers only read
//! the cache; an expired CRL is never served.

use crate::clock::Clock;
use crate::pki::ca::{BACKDATE, CaPaths, RootSigner, Signer};
use crate::store::{CrlSnapshot, PublishedCrls, RevokedEntry, Store};
use anyhow::{Context, Result, anyhow, bail};
use proto::fsutil::{self, PUBLIC_MODE};
use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevocationReason, RevokedCertParams};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use time::OffsetDateTime;

/// Default validity of the intermediate's CRL served at `/v1/crl`.
pub const DEFAULT_CRL_VALIDITY: Duration = Duration::from_secs(24 * 3600);
/// Default validity of the CRLs served to Puppet agents (and of the root CRL):
/// five years, as Puppet Server's. A Puppet 7 agent downloads its CRL once and
/// never refreshes it unless `crl_refresh_interval` is set, and an expired CRL
/// breaks every connection it makes, its own refresh included.
pub const DEFAULT_PUPPET_CRL_VALIDITY: Duration = Duration::from_secs(5 * 365 * 86_400);
/// How often a server reads the store for a newer or overdue generation.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);
/// CRL numbers one generation takes: short, long, root.
const NUMBERS_PER_GENERATION: i64 = 3;

/// How long the CRLs live.
#[derive(Debug, Clone, Copy)]
pub struct CrlConfig {
    /// The intermediate's CRL at `/v1/crl`.
    pub validity: Duration,
    /// The CRLs for Puppet agents and the root CRL.
    pub long_validity: Duration,
}

impl Default for CrlConfig {
    fn default() -> CrlConfig {
        CrlConfig {
            validity: DEFAULT_CRL_VALIDITY,
            long_validity: DEFAULT_PUPPET_CRL_VALIDITY,
        }
    }
}

/// One signed CRL.
#[derive(Debug, Clone)]
pub struct SignedCrl {
    pub der: Vec<u8>,
    pub pem: String,
    pub number: i64,
    /// Unix seconds.
    pub this_update: i64,
    pub next_update: i64,
}

impl SignedCrl {
    fn new(der: Vec<u8>, number: i64, this_update: i64, next_update: i64) -> SignedCrl {
        SignedCrl {
            pem: pem::encode_config(
                &pem::Pem::new("X509 CRL", der.clone()),
                pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
            ),
            der,
            number,
            this_update,
            next_update,
        }
    }

    /// Reads a DER CRL that must be signed by `issuer_der`'s key and name it as issuer.
    fn read(der: Vec<u8>, issuer_der: &[u8]) -> Result<SignedCrl> {
        let (_, crl) = x509_parser::parse_x509_crl(&der).map_err(|e| anyhow!("not a CRL: {e}"))?;
        let (_, issuer) = x509_parser::parse_x509_certificate(issuer_der)
            .map_err(|e| anyhow!("parsing the CA certificate: {e}"))?;
        if crl.issuer() != issuer.subject() {
            bail!("the CRL names another issuer ({})", crl.issuer());
        }
        crl.verify_signature(issuer.public_key())
            .map_err(|_| anyhow!("the CRL is not signed by {}", issuer.subject()))?;
        let number = crl
            .crl_number()
            .and_then(|n| i64::try_from(n.clone()).ok())
            .context("the CRL has no usable CRL number")?;
        let next_update = crl
            .next_update()
            .context("the CRL has no nextUpdate")?
            .timestamp();
        let this_update = crl.last_update().timestamp();
        drop(crl);
        Ok(SignedCrl::new(der, number, this_update, next_update))
    }

    /// Still usable at `now`.
    pub fn is_current(&self, now: i64) -> bool {
        now < self.next_update
    }
}

/// The CRLs of one generation.
#[derive(Debug)]
pub struct CrlSet {
    /// The intermediate's CRL, short validity. Its number is the generation's.
    pub intermediate: SignedCrl,
    /// The intermediate's CRL, long validity, same entries.
    pub intermediate_long: SignedCrl,
    /// The root's CRL, if one is available (signed now, or read from `root.crl`).
    pub root: Option<SignedCrl>,
    /// Unix seconds at which this set was signed: its `Last-Modified`.
    pub generated_at: i64,
    /// How many certificates the intermediate's CRLs list.
    pub revoked: usize,
    /// The store's revocation sequence the entries reflect.
    pub revocation_seq: i64,
    /// When the first listed certificate expires (and must drop out).
    pub next_dropout: Option<i64>,
}

impl CrlSet {
    /// The generation: the short intermediate CRL's number.
    pub fn generation(&self) -> i64 {
        self.intermediate.number
    }

    /// The long-lived intermediate CRL then the root CRL (when current), PEM:
    /// what a verifier checking the whole chain needs.
    pub fn chain_pem(&self, now: i64) -> String {
        let mut out = self.intermediate_long.pem.clone();
        if let Some(root) = self.current_root(now) {
            out.push_str(&root.pem);
        }
        out
    }

    /// The short intermediate CRL then the root CRL (when current), PEM: the
    /// bundle `ca-server crl` writes and `ca-client crl` installs.
    pub fn bundle_pem(&self, now: i64) -> String {
        let mut out = self.intermediate.pem.clone();
        if let Some(root) = self.current_root(now) {
            out.push_str(&root.pem);
        }
        out
    }

    /// The root CRL, unless it has expired.
    pub fn current_root(&self, now: i64) -> Option<&SignedCrl> {
        self.root.as_ref().filter(|r| r.is_current(now))
    }

    fn to_published(&self) -> PublishedCrls {
        PublishedCrls {
            generation: self.generation(),
            generated_at: self.generated_at,
            revocation_seq: self.revocation_seq,
            next_dropout: self.next_dropout,
            revoked: self.revoked as i64,
            intermediate: self.intermediate.der.clone(),
            intermediate_long: self.intermediate_long.der.clone(),
            root: self.root.as_ref().map(|r| r.der.clone()),
        }
    }

    /// A published generation, every signature checked against our CA.
    fn from_published(p: PublishedCrls, signer: &Signer) -> Result<CrlSet> {
        let intermediate = SignedCrl::read(p.intermediate, &signer.intermediate_der)
            .context("the published intermediate CRL")?;
        if intermediate.number != p.generation {
            bail!("the published CRL's number is not its generation");
        }
        let intermediate_long = SignedCrl::read(p.intermediate_long, &signer.intermediate_der)
            .context("the published long-lived intermediate CRL")?;
        let root = p
            .root
            .map(|der| SignedCrl::read(der, &signer.root_der))
            .transpose()
            .context("the published root CRL")?;
        Ok(CrlSet {
            intermediate,
            intermediate_long,
            root,
            generated_at: p.generated_at,
            revoked: usize::try_from(p.revoked).unwrap_or(0),
            revocation_seq: p.revocation_seq,
            next_dropout: p.next_dropout,
        })
    }
}

/// Where the root CRL comes from.
enum RootCrlSource {
    /// `root.key` is online: sign a fresh one with every generation.
    Key(Box<RootSigner>),
    /// The root key is offline: `root.crl` as found at start (or a newer
    /// one published by a server that has the key).
    File(SignedCrl),
    /// Neither (unless a server with the key publishes one): chain
    /// verifiers will miss the intermediate's status.
    Missing,
}

/// Signs, publishes, caches and refreshes the CRLs.
pub struct CrlService {
    store: Store,
    signer: Arc<Signer>,
    root: RootCrlSource,
    root_crl_path: PathBuf,
    clock: Arc<dyn Clock>,
    config: CrlConfig,
    current: RwLock<Option<Arc<CrlSet>>>,
    regenerating: tokio::sync::Mutex<()>,
    /// A published generation that failed verification (logged once).
    refused_generation: Mutex<Option<i64>>,
    /// The store's revocation sequence as last seen: the OCSP cache drops
    /// what it answered before a change (`pki::responder`).
    revocations: tokio::sync::watch::Sender<i64>,
}

impl std::fmt::Debug for CrlService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrlService")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl CrlService {
    /// Sets up the service; the root CRL source is chosen from the data dir
    /// (`root.key` present: sign; else `root.crl` if it verifies).
    pub fn new(
        paths: &CaPaths,
        store: Store,
        signer: Arc<Signer>,
        clock: Arc<dyn Clock>,
        config: CrlConfig,
    ) -> Result<CrlService> {
        if config.validity < Duration::from_secs(3600) || config.long_validity < config.validity {
            bail!("CRL validity must be at least 1h, and the Puppet CRL validity at least as long");
        }
        let root_crl_path = paths.dir.join("root.crl");
        let root = match RootSigner::load(paths)? {
            Some(key) => RootCrlSource::Key(Box::new(key)),
            None => match read_root_crl(&root_crl_path, &signer.root_der) {
                Ok(Some(crl)) => {
                    tracing::info!(
                        next_update = %proto::timefmt::rfc3339(crl.next_update),
                        "the root key is offline; serving root.crl"
                    );
                    RootCrlSource::File(crl)
                }
                Ok(None) => {
                    tracing::warn!(
                        "the root key is offline and there is no root.crl: verifiers that check \
                         the whole chain (Puppet agents, nginx, HAProxy, PostgreSQL) will fail \
                         unless a server with the root key publishes one"
                    );
                    RootCrlSource::Missing
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "ignoring root.crl");
                    RootCrlSource::Missing
                }
            },
        };
        Ok(CrlService {
            store,
            signer,
            root,
            root_crl_path,
            clock,
            config,
            current: RwLock::new(None),
            regenerating: tokio::sync::Mutex::new(()),
            refused_generation: Mutex::new(None),
            revocations: tokio::sync::watch::Sender::new(0),
        })
    }

    pub fn config(&self) -> CrlConfig {
        self.config
    }

    /// The store's revocation sequence, updated by every poll (2 s).
    pub fn revocations(&self) -> tokio::sync::watch::Receiver<i64> {
        self.revocations.subscribe()
    }

    /// The cached CRLs (none before the first generation).
    pub fn current(&self) -> Option<Arc<CrlSet>> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Caches `set` unless a newer generation is cached already; returns what is cached.
    fn cache(&self, set: Arc<CrlSet>) -> Arc<CrlSet> {
        let mut current = self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match current.as_ref() {
            Some(have) if have.generation() >= set.generation() => have.clone(),
            _ => {
                *current = Some(set.clone());
                set
            }
        }
    }

    fn cached_generation(&self) -> Option<i64> {
        self.current().map(|s| s.generation())
    }

    /// Signs a new generation from the store now, publishes it and caches
    /// the newest published one (this, or a newer one another process
    /// published meanwhile). The hook for revocation.
    pub async fn regenerate(&self) -> Result<Arc<CrlSet>> {
        let _one_at_a_time = self.regenerating.lock().await;
        let now = self.clock.now();
        let snapshot = self.store.crl_snapshot(now, NUMBERS_PER_GENERATION).await?;
        self.revocations
            .send_if_modified(|seq| std::mem::replace(seq, snapshot.revocation_seq) != *seq);
        let set = Arc::new(self.sign(&snapshot, now)?);
        if self.store.publish_crls(&set.to_published()).await? {
            tracing::info!(
                number = set.generation(),
                revoked = set.revoked,
                next_update = %proto::timefmt::rfc3339(set.intermediate.next_update),
                "signed and published the CRLs"
            );
        } else {
            // Another process published a higher generation since our
            // snapshot; it saw at least what we saw, so serve that one.
            self.load_published().await?;
        }
        Ok(self.cache(set))
    }

    /// Signs the CRLs of one snapshot (CPU only).
    fn sign(&self, snapshot: &CrlSnapshot, now: i64) -> Result<CrlSet> {
        // A replica whose clock is behind the one that published last signs
        // as of that moment: thisUpdate never goes backwards across replicas
        // (a relying party may refuse a CRL older than the one it holds).
        let now = now.max(snapshot.published_at.unwrap_or(i64::MIN));
        let this_update = now - BACKDATE.as_secs() as i64;
        let revoked = snapshot
            .entries
            .iter()
            .map(revoked_params)
            .collect::<Result<Vec<_>>>()?;
        let sign = |number: i64, validity: Duration, revoked: Vec<RevokedCertParams>| {
            let next_update = now + validity.as_secs() as i64;
            let der =
                self.signer
                    .sign_crl(crl_params(number, this_update, next_update, revoked)?)?;
            anyhow::Ok(SignedCrl::new(der, number, this_update, next_update))
        };
        let first = snapshot.first_number;
        let intermediate = sign(first, self.config.validity, revoked.clone())?;
        let intermediate_long = sign(first + 1, self.config.long_validity, revoked)?;
        let root = match &self.root {
            RootCrlSource::Key(key) => {
                let next_update = now + self.config.long_validity.as_secs() as i64;
                // No intermediate is ever revoked yet: the root's list is empty.
                let der = key.sign_crl(crl_params(first + 2, this_update, next_update, vec![])?)?;
                let crl = SignedCrl::new(der, first + 2, this_update, next_update);
                // Kept for when the root key goes offline; failing to write it is not fatal.
                if let Err(e) =
                    fsutil::write_atomic(&self.root_crl_path, crl.pem.as_bytes(), PUBLIC_MODE)
                {
                    tracing::warn!(error = %format!("{e:#}"), "could not write root.crl");
                }
                Some(crl)
            }
            RootCrlSource::File(file) => {
                // The newer of root.crl and what a server with the key published.
                let published = self.current().and_then(|s| s.current_root(now).cloned());
                let crl = match published {
                    Some(p) if p.number > file.number => p,
                    _ => file.clone(),
                };
                if crl.next_update - now < self.config.long_validity.as_secs() as i64 / 4 {
                    tracing::warn!(
                        next_update = %proto::timefmt::rfc3339(crl.next_update),
                        "the root CRL expires soon; sign a new one where the root key is"
                    );
                }
                Some(crl)
            }
            RootCrlSource::Missing => self.current().and_then(|s| s.current_root(now).cloned()),
        };
        Ok(CrlSet {
            revoked: snapshot.entries.len(),
            next_dropout: snapshot.entries.iter().map(|e| e.not_after).min(),
            revocation_seq: snapshot.revocation_seq,
            intermediate,
            intermediate_long,
            root,
            generated_at: now,
        })
    }

    /// Reads the published generation and caches it if it is newer than the
    /// cached one and verifies against our CA. Returns what is cached.
    pub async fn load_published(&self) -> Result<Option<Arc<CrlSet>>> {
        let Some(published) = self.store.published_crls().await? else {
            return Ok(self.current());
        };
        if self.cached_generation() >= Some(published.generation) {
            return Ok(self.current());
        }
        let generation = published.generation;
        match CrlSet::from_published(published, &self.signer) {
            Ok(set) => {
                tracing::info!(
                    number = set.generation(),
                    revoked = set.revoked,
                    "serving newly published CRLs"
                );
                Ok(Some(self.cache(Arc::new(set))))
            }
            Err(e) => {
                let mut refused = self
                    .refused_generation
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if *refused != Some(generation) {
                    *refused = Some(generation);
                    tracing::error!(
                        generation,
                        error = %format!("{e:#}"),
                        "the store's published CRLs do not verify against this CA; not serving them"
                    );
                }
                Ok(self.current())
            }
        }
    }

    /// Whether a new generation must be signed at `now`, given the store's
    /// revocation sequence.
    fn due(&self, now: i64, revocation_seq: i64) -> bool {
        let Some(set) = self.current() else {
            return true;
        };
        let half = self.config.validity.as_secs() as i64 / 2;
        set.revocation_seq < revocation_seq
            || now >= set.generated_at + half
            || set.next_dropout.is_some_and(|t| now >= t)
            || !set.intermediate.is_current(now)
    }

    /// One round of the background task: load a newer published generation,
    /// then sign one if the cached one is due.
    pub async fn poll(&self) -> Result<()> {
        let state = self.store.crl_poll().await?;
        self.revocations.send_if_modified(|seq| {
            let changed = *seq != state.revocation_seq;
            *seq = state.revocation_seq;
            changed
        });
        if state.published_generation > self.cached_generation() {
            self.load_published().await?;
        }
        if self.due(self.clock.now(), state.revocation_seq) {
            self.regenerate().await?;
        }
        Ok(())
    }

    /// Polls every [`POLL_INTERVAL`]; runs until aborted. A failure keeps
    /// the previous CRLs (served until they expire) and is retried.
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tick.tick().await;
            match self.poll().await {
                Ok(()) => failing = false,
                // Logged when it starts failing, not every two seconds.
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %format!("{e:#}"), "refreshing the CRLs failed; will retry");
                }
                Err(e) => tracing::debug!(error = %format!("{e:#}"), "refreshing the CRLs failed"),
            }
        }
    }
}

fn to_time(unix: i64) -> Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(unix).context("time out of range")
}

/// The CRL number as a positive DER integer's content bytes.
fn number_bytes(n: i64) -> Vec<u8> {
    let bytes = n.to_be_bytes();
    let first = bytes
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(bytes.len() - 1);
    bytes[first..].to_vec()
}

fn crl_params(
    number: i64,
    this_update: i64,
    next_update: i64,
    revoked_certs: Vec<RevokedCertParams>,
) -> Result<CertificateRevocationListParams> {
    Ok(CertificateRevocationListParams {
        this_update: to_time(this_update)?,
        next_update: to_time(next_update)?,
        crl_number: rcgen::SerialNumber::from_slice(&number_bytes(number)),
        issuing_distribution_point: None,
        revoked_certs,
        // Replaced by the issuer's own subject key identifier when signing.
        key_identifier_method: KeyIdMethod::Sha256,
    })
}

fn revoked_params(entry: &RevokedEntry) -> Result<RevokedCertParams> {
    let serial = hex::decode(&entry.serial)
        .map_err(|_| anyhow!("revoked certificate has a malformed serial in the store"))?;
    Ok(RevokedCertParams {
        serial_number: rcgen::SerialNumber::from_slice(&serial),
        revocation_time: to_time(entry.revoked_at)?,
        reason_code: entry.reason.as_deref().and_then(parse_reason),
        invalidity_date: None,
    })
}

/// An RFC 5280 reason name (as `revoke --reason` takes it) as a reason code.
/// `unspecified` and unknown names give no reason code extension, which
/// RFC 5280 prefers over an explicit `unspecified`.
pub fn parse_reason(name: &str) -> Option<RevocationReason> {
    Some(match name {
        "keyCompromise" => RevocationReason::KeyCompromise,
        "cACompromise" | "caCompromise" => RevocationReason::CaCompromise,
        "affiliationChanged" => RevocationReason::AffiliationChanged,
        "superseded" => RevocationReason::Superseded,
        "cessationOfOperation" => RevocationReason::CessationOfOperation,
        "certificateHold" => RevocationReason::CertificateHold,
        "privilegeWithdrawn" => RevocationReason::PrivilegeWithdrawn,
        "aACompromise" | "aaCompromise" => RevocationReason::AaCompromise,
        _ => return None,
    })
}

/// Reads `root.crl` (PEM or DER) if present: it must be a CRL signed by the root.
fn read_root_crl(path: &std::path::Path, root_der: &[u8]) -> Result<Option<SignedCrl>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let der = match pem::parse(&bytes) {
        Ok(block) if block.tag() == "X509 CRL" => block.into_contents(),
        Ok(block) => bail!("{} holds a {} block", path.display(), block.tag()),
        Err(_) => bytes,
    };
    SignedCrl::read(der, root_der)
        .map(Some)
        .with_context(|| format!("reading {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Revocation;
    use crate::testing::{NOW, fixture};

    fn parse(der: &[u8]) -> x509_parser::revocation_list::CertificateRevocationList<'_> {
        let (rest, crl) = x509_parser::parse_x509_crl(der).unwrap();
        assert!(rest.is_empty());
        crl
    }

    fn number_of(der: &[u8]) -> i64 {
        i64::try_from(parse(der).crl_number().unwrap().clone()).unwrap()
    }

    fn cert_of(der: &[u8]) -> x509_parser::certificate::X509Certificate<'_> {
        x509_parser::parse_x509_certificate(der).unwrap().1
    }

    #[tokio::test]
    async fn crl_numbers_strictly_increase_even_under_concurrency() {
        let f = fixture().await;
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let store = f.store.clone();
            tasks.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                for _ in 0..25 {
                    mine.push(store.next_crl_number().await.unwrap());
                }
                mine
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            let mine = t.await.unwrap();
            assert!(mine.windows(2).all(|w| w[0] < w[1]), "{mine:?}");
            all.extend(mine);
        }
        all.sort();
        assert_eq!(
            all,
            (1..=200).collect::<Vec<i64>>(),
            "no number twice, none skipped"
        );

        // Each generation's CRLs take the next numbers, across service restarts.
        let service = f.service();
        let first = service.regenerate().await.unwrap();
        assert_eq!(number_of(&first.intermediate.der), 201);
        assert_eq!(number_of(&first.intermediate_long.der), 202);
        assert_eq!(number_of(&first.root.as_ref().unwrap().der), 203);
        let again = f.service().regenerate().await.unwrap();
        assert!(number_of(&again.intermediate.der) > number_of(&first.root.as_ref().unwrap().der));
    }

    #[tokio::test]
    async fn the_crl_lists_revoked_unexpired_certificates_with_reasons_and_verifies() {
        let f = fixture().await;
        f.add_cert("4a01", NOW + 86_400, Some((NOW - 60, "keyCompromise")))
            .await;
        f.add_cert("4a02", NOW + 86_400, Some((NOW - 30, "superseded")))
            .await;
        f.add_cert("4a03", NOW + 86_400, Some((NOW - 20, "unspecified")))
            .await;
        f.add_cert("4a04", NOW - 1, Some((NOW - 7200, "keyCompromise")))
            .await; // expired: drops out
        f.add_cert("4a05", NOW + 86_400, None).await; // not revoked
        let set = f.service().regenerate().await.unwrap();

        let int = cert_of(&f.signer.intermediate_der);
        let root = cert_of(&f.signer.root_der);
        for signed in [&set.intermediate, &set.intermediate_long] {
            let crl = parse(&signed.der);
            crl.verify_signature(int.public_key()).unwrap();
            assert!(crl.verify_signature(root.public_key()).is_err());
            assert_eq!(crl.issuer(), int.subject());
            assert_eq!(crl.last_update().timestamp(), NOW - 300);
            let listed: Vec<(String, Option<u8>, i64)> = crl
                .iter_revoked_certificates()
                .map(|r| {
                    (
                        hex::encode(r.raw_serial()),
                        r.reason_code().map(|(_, c)| c.0),
                        r.revocation_date.timestamp(),
                    )
                })
                .collect();
            assert_eq!(
                listed,
                vec![
                    ("4a01".to_string(), Some(1), NOW - 60),
                    ("4a02".to_string(), Some(4), NOW - 30),
                    ("4a03".to_string(), None, NOW - 20),
                ]
            );
            // The CRL's AKI is the intermediate's SKI, so verifiers match them.
            let aki = crl
                .extensions()
                .iter()
                .find_map(|e| match e.parsed_extension() {
                    x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(a) => {
                        a.key_identifier.as_ref().map(|k| k.0.to_vec())
                    }
                    _ => None,
                })
                .unwrap();
            let ski = int
                .extensions()
                .iter()
                .find_map(|e| match e.parsed_extension() {
                    x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k) => {
                        Some(k.0.to_vec())
                    }
                    _ => None,
                })
                .unwrap();
            assert_eq!(aki, ski);
        }
        assert_eq!(
            parse(&set.intermediate.der)
                .next_update()
                .unwrap()
                .timestamp(),
            NOW + 86_400
        );
        assert_eq!(
            parse(&set.intermediate_long.der)
                .next_update()
                .unwrap()
                .timestamp(),
            NOW + 5 * 365 * 86_400
        );
        let root_crl = parse(&set.root.as_ref().unwrap().der);
        root_crl.verify_signature(root.public_key()).unwrap();
        assert_eq!(root_crl.iter_revoked_certificates().count(), 0);
        assert_eq!(set.chain_pem(NOW).matches("BEGIN X509 CRL").count(), 2);
        assert!(set.bundle_pem(NOW).starts_with(&set.intermediate.pem));
        assert_eq!(set.next_dropout, Some(NOW + 86_400));
        assert_eq!(set.revoked, 3);
    }

    fn revocation(reason: &str) -> Revocation<'_> {
        Revocation {
            reason,
            now: NOW,
            actor: "test",
        }
    }

    #[tokio::test]
    async fn refresh_is_due_at_half_life_on_a_revocation_and_when_a_listed_certificate_expires() {
        let f = fixture().await;
        let service = f.service();
        assert!(service.due(NOW, 0), "nothing cached yet");
        service.regenerate().await.unwrap();
        let seq = f.store.crl_poll().await.unwrap().revocation_seq;
        assert!(!service.due(NOW + 3600, seq));
        assert!(service.due(NOW + 12 * 3600, seq), "half of 24 h");

        // A revocation bumps the store's sequence: the cached set is behind.
        f.add_cert("4b01", NOW + 7200, None).await;
        let revoked = f
            .store
            .revoke_serial("4b01", &revocation("keyCompromise"))
            .await;
        assert!(matches!(
            revoked,
            Ok(Some(crate::store::RevokeOutcome::Revoked(_)))
        ));
        let seq2 = f.store.crl_poll().await.unwrap().revocation_seq;
        assert_eq!(seq2, seq + 1);
        assert!(service.due(NOW + 60, seq2));
        let set = service.regenerate().await.unwrap();
        assert_eq!(set.revocation_seq, seq2);
        assert_eq!(set.next_dropout, Some(NOW + 7200));
        assert!(!service.due(NOW + 60, seq2));
        // When the listed certificate expires, it must drop out.
        assert!(service.due(NOW + 7200, seq2));
        f.clock.set(NOW + 7200);
        let later = service.regenerate().await.unwrap();
        assert_eq!(later.revoked, 0);
        assert_eq!(later.next_dropout, None);
        // Revoking again changes nothing: same time, same reason, same sequence.
        match f
            .store
            .revoke_serial("4b01", &revocation("superseded"))
            .await
        {
            Ok(Some(crate::store::RevokeOutcome::AlreadyRevoked(c))) => {
                assert_eq!(c.revoked_at, Some(NOW));
                assert_eq!(c.revocation_reason.as_deref(), Some("keyCompromise"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(f.store.crl_poll().await.unwrap().revocation_seq, seq2);
        assert!(
            f.store
                .revoke_serial("4bff", &revocation("keyCompromise"))
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn a_revocation_by_another_process_reaches_a_running_service() {
        let f = fixture().await;
        let server = f.service();
        let first = server.regenerate().await.unwrap();
        f.add_cert("4c01", NOW + 86_400, None).await;
        f.add_cert("4c02", NOW + 86_400, None).await;

        // The CLI revokes and publishes: the server loads that generation, signing nothing.
        f.store
            .revoke_serial("4c01", &revocation("keyCompromise"))
            .await
            .unwrap();
        let cli = f.service().regenerate().await.unwrap();
        server.poll().await.unwrap();
        let served = server.current().unwrap();
        assert_eq!(served.generation(), cli.generation());
        assert_eq!(served.intermediate.der, cli.intermediate.der);
        assert!(served.generation() > first.generation());
        assert_eq!(served.revoked, 1);

        // A revocation nobody published (no intermediate key where it was made):
        // the server notices the sequence and signs itself.
        f.store
            .revoke_serial("4c02", &revocation("cessationOfOperation"))
            .await
            .unwrap();
        server.poll().await.unwrap();
        let resigned = server.current().unwrap();
        assert!(resigned.generation() > cli.generation());
        assert_eq!(resigned.revoked, 2);
        let listed: Vec<String> = parse(&resigned.intermediate.der)
            .iter_revoked_certificates()
            .map(|r| hex::encode(r.raw_serial()))
            .collect();
        assert_eq!(listed, vec!["4c01", "4c02"]);
        // And publishes it for the others.
        let published = f.store.published_crls().await.unwrap().unwrap();
        assert_eq!(published.generation, resigned.generation());
        // Nothing new: the next poll neither signs nor reloads.
        server.poll().await.unwrap();
        assert_eq!(
            server.current().unwrap().generation(),
            resigned.generation()
        );
    }

    /// Two replicas, one clock an hour ahead: the one behind signs after it
    /// and its CRLs' thisUpdate is not earlier than the published one's.
    #[tokio::test]
    async fn this_update_never_goes_backwards_across_replicas() {
        let f = fixture().await;
        f.clock.set(NOW + 3600);
        let ahead = f.service().regenerate().await.unwrap();
        f.clock.set(NOW);
        let behind = f.service().regenerate().await.unwrap();
        assert!(behind.generation() > ahead.generation());
        for (new, old) in [
            (&behind.intermediate, &ahead.intermediate),
            (&behind.intermediate_long, &ahead.intermediate_long),
        ] {
            assert!(new.this_update >= old.this_update, "{new:?} vs {old:?}");
            let parsed = parse(&new.der);
            assert_eq!(parsed.last_update().timestamp(), new.this_update);
        }
        assert!(
            behind.root.as_ref().unwrap().this_update >= ahead.root.as_ref().unwrap().this_update
        );
        // With no CRL published yet, the clock alone decides.
        let g = fixture().await;
        let first = g.service().regenerate().await.unwrap();
        assert_eq!(
            first.intermediate.this_update,
            NOW - BACKDATE.as_secs() as i64
        );
    }

    #[tokio::test]
    async fn only_a_higher_generation_is_published_and_foreign_crls_are_not_served() {
        let f = fixture().await;
        let set = f.service().regenerate().await.unwrap();
        let mut older = f.store.published_crls().await.unwrap().unwrap();
        older.generation -= 1;
        assert!(!f.store.publish_crls(&older).await.unwrap());
        assert_eq!(
            f.store.published_crls().await.unwrap().unwrap().generation,
            set.generation()
        );

        // Another CA's CRLs in this store (a misconfiguration) are not served.
        let other = fixture().await;
        let theirs = other.service().regenerate().await.unwrap();
        let mut foreign = other.store.published_crls().await.unwrap().unwrap();
        foreign.generation = set.generation() + 100;
        assert!(f.store.publish_crls(&foreign).await.unwrap());
        let fresh = f.service();
        assert!(fresh.load_published().await.unwrap().is_none());
        // A server still signs and serves its own, though it cannot publish
        // over the higher foreign generation.
        let own = fresh.regenerate().await.unwrap();
        assert_ne!(own.intermediate.der, theirs.intermediate.der);
        SignedCrl::read(own.intermediate.der.clone(), &f.signer.intermediate_der).unwrap();
        assert!(
            SignedCrl::read(theirs.intermediate.der.clone(), &f.signer.intermediate_der).is_err()
        );
    }

    #[tokio::test]
    async fn with_the_root_key_offline_root_crl_is_served_from_the_data_dir() {
        let f = fixture().await;
        let signed = f.service().regenerate().await.unwrap();
        let written = std::fs::read_to_string(f.paths.dir.join("root.crl")).unwrap();
        assert_eq!(written, signed.root.as_ref().unwrap().pem);
        std::fs::remove_file(&f.paths.root_key).unwrap();

        let offline = f.service();
        let set = offline.regenerate().await.unwrap();
        assert_eq!(set.root.as_ref().unwrap().pem, written);
        // Past its nextUpdate it is no longer part of the chain.
        let expired_at = set.root.as_ref().unwrap().next_update;
        assert_eq!(
            set.chain_pem(expired_at).matches("BEGIN X509 CRL").count(),
            1
        );

        // A CRL not signed by the root is refused.
        std::fs::write(f.paths.dir.join("root.crl"), &set.intermediate.pem).unwrap();
        let set = f.service().regenerate().await.unwrap();
        assert!(set.root.is_none());
    }

    #[tokio::test]
    async fn a_server_without_the_root_key_serves_the_newest_root_crl_published() {
        let f = fixture().await;
        let key = std::fs::read(&f.paths.root_key).unwrap();
        let first = f.service().regenerate().await.unwrap();
        std::fs::remove_file(&f.paths.root_key).unwrap();
        // Offline: root.crl from the data dir; and one with neither.
        let keyless = f.service();
        std::fs::remove_file(f.paths.dir.join("root.crl")).unwrap();
        let bare = f.service();
        std::fs::write(&f.paths.root_key, &key).unwrap();

        // The root key back for a moment (`ca-server crl --sign`): a newer root CRL.
        let renewed = f.service().regenerate().await.unwrap();
        let newer_root = renewed.root.as_ref().unwrap().number;
        assert!(newer_root > first.root.as_ref().unwrap().number);
        for service in [&keyless, &bare] {
            service.poll().await.unwrap();
            f.clock.set(NOW + 13 * 3600);
            let resigned = service.regenerate().await.unwrap();
            assert!(resigned.generation() > renewed.generation());
            assert_eq!(resigned.root.as_ref().unwrap().number, newer_root);
            f.clock.set(NOW);
        }
    }

    #[test]
    fn reason_names_map_to_rfc5280_codes() {
        assert_eq!(
            parse_reason("keyCompromise"),
            Some(RevocationReason::KeyCompromise)
        );
        assert_eq!(
            parse_reason("cessationOfOperation"),
            Some(RevocationReason::CessationOfOperation)
        );
        assert_eq!(parse_reason("unspecified"), None);
        assert_eq!(parse_reason("made-up"), None);
        assert_eq!(number_bytes(1), vec![1]);
        assert_eq!(number_bytes(256), vec![1, 0]);
        assert_eq!(number_bytes(0), vec![0]);
    }
}
