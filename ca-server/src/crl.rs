//! Certificate revocation lists: what they contain, when they are re-signed,
//! and the cached copies the HTTP handlers serve.
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
//!   OpenSSL's `-crl_check_all`) need a CRL for every CA.
//!
//! Every CRL number comes from one atomic counter in the store, so numbers
//! strictly increase per issuer on one replica or many. Generation runs in a
//! background task (never on the issuance path): at start, when half of the
//! short validity has passed, when the revoked set changes (a revocation by
//! any process or replica, or a revoked certificate expiring), and whenever
//! [`CrlService::regenerate`] is called (the hook for `revoke`).

use crate::ca::{BACKDATE, CaPaths, RootSigner, Signer};
use crate::clock::Clock;
use crate::store::{RevocationMarker, RevokedEntry, Store};
use anyhow::{Context, Result, anyhow, bail};
use ca_client::fsutil::{self, PUBLIC_MODE};
use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevocationReason, RevokedCertParams};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use time::OffsetDateTime;

/// Default validity of the intermediate's CRL served at `/v1/crl`.
pub const DEFAULT_CRL_VALIDITY: Duration = Duration::from_secs(24 * 3600);
/// Default validity of the CRLs served to Puppet agents (and of the root CRL):
/// five years, as Puppet Server's. A Puppet 7 agent downloads its CRL once and
/// never refreshes it unless `crl_refresh_interval` is set, and an expired CRL
/// breaks every connection it makes, its own refresh included.
pub const DEFAULT_PUPPET_CRL_VALIDITY: Duration = Duration::from_secs(5 * 365 * 86_400);
/// How often the background task looks at the store for changes.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(10);

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

    /// Still usable at `now`.
    pub fn is_current(&self, now: i64) -> bool {
        now < self.next_update
    }
}

/// The CRLs of one generation.
#[derive(Debug)]
pub struct CrlSet {
    /// The intermediate's CRL, short validity.
    pub intermediate: SignedCrl,
    /// The intermediate's CRL, long validity, same entries.
    pub intermediate_long: SignedCrl,
    /// The root's CRL, if one is available (signed now, or read from `root.crl`).
    pub root: Option<SignedCrl>,
    /// Unix seconds at which this set was signed: its `Last-Modified`.
    pub generated_at: i64,
    /// How many certificates the intermediate's CRLs list.
    pub revoked: usize,
    marker: RevocationMarker,
}

impl CrlSet {
    /// The long-lived intermediate CRL then the root CRL (when current), PEM:
    /// what a verifier checking the whole chain needs.
    pub fn chain_pem(&self, now: i64) -> String {
        let mut out = self.intermediate_long.pem.clone();
        if let Some(root) = self.root.as_ref().filter(|r| r.is_current(now)) {
            out.push_str(&root.pem);
        }
        out
    }
}

/// Where the root CRL comes from.
enum RootCrlSource {
    /// `root.key` is online: sign a fresh one with every generation.
    Key(Box<RootSigner>),
    /// The root key is offline: serve `root.crl` as found at start.
    File(SignedCrl),
    /// Neither: chain verifiers will miss the intermediate's status.
    Missing,
}

/// Signs, caches and refreshes the CRLs.
pub struct CrlService {
    store: Store,
    signer: Arc<Signer>,
    root: RootCrlSource,
    root_crl_path: PathBuf,
    clock: Arc<dyn Clock>,
    config: CrlConfig,
    current: RwLock<Option<Arc<CrlSet>>>,
    regenerating: tokio::sync::Mutex<()>,
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
                        next_update = %crate::cli::rfc3339(crl.next_update),
                        "the root key is offline; serving root.crl"
                    );
                    RootCrlSource::File(crl)
                }
                Ok(None) => {
                    tracing::warn!(
                        "the root key is offline and there is no root.crl: verifiers that check \
                         the whole chain (Puppet agents by default) will fail"
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
        })
    }

    pub fn config(&self) -> CrlConfig {
        self.config
    }

    /// The cached CRLs (none before the first generation).
    pub fn current(&self) -> Option<Arc<CrlSet>> {
        self.current.read().expect("crl cache lock").clone()
    }

    /// Signs a new generation now and caches it. The hook for revocation:
    /// call it after recording one so the CRL lists it at once.
    pub async fn regenerate(&self) -> Result<Arc<CrlSet>> {
        let _one_at_a_time = self.regenerating.lock().await;
        let now = self.clock.now();
        let marker = self.store.revocation_marker(now).await?;
        let entries = self.store.revoked_unexpired(now).await?;
        let this_update = now - BACKDATE.as_secs() as i64;
        let revoked = entries
            .iter()
            .map(revoked_params)
            .collect::<Result<Vec<_>>>()?;

        let short_number = self.store.next_crl_number().await?;
        let long_number = self.store.next_crl_number().await?;
        let sign = |number: i64, validity: Duration, revoked: Vec<RevokedCertParams>| {
            let next_update = now + validity.as_secs() as i64;
            let der =
                self.signer
                    .sign_crl(crl_params(number, this_update, next_update, revoked)?)?;
            anyhow::Ok(SignedCrl::new(der, number, this_update, next_update))
        };
        let intermediate = sign(short_number, self.config.validity, revoked.clone())?;
        let intermediate_long = sign(long_number, self.config.long_validity, revoked)?;

        let root = match &self.root {
            RootCrlSource::Key(key) => {
                let number = self.store.next_crl_number().await?;
                let next_update = now + self.config.long_validity.as_secs() as i64;
                // No intermediate is ever revoked yet: the root's list is empty.
                let der = key.sign_crl(crl_params(number, this_update, next_update, vec![])?)?;
                let crl = SignedCrl::new(der, number, this_update, next_update);
                // Kept for when the root key goes offline; failing to write it is not fatal.
                if let Err(e) =
                    fsutil::write_atomic(&self.root_crl_path, crl.pem.as_bytes(), PUBLIC_MODE)
                {
                    tracing::warn!(error = %format!("{e:#}"), "could not write root.crl");
                }
                Some(crl)
            }
            RootCrlSource::File(crl) => {
                if crl.next_update - now < self.config.long_validity.as_secs() as i64 / 4 {
                    tracing::warn!(
                        next_update = %crate::cli::rfc3339(crl.next_update),
                        "root.crl expires soon; sign a new one where the root key is"
                    );
                }
                Some(crl.clone())
            }
            RootCrlSource::Missing => None,
        };

        let set = Arc::new(CrlSet {
            revoked: entries.len(),
            intermediate,
            intermediate_long,
            root,
            generated_at: now,
            marker,
        });
        *self.current.write().expect("crl cache lock") = Some(set.clone());
        tracing::info!(
            number = set.intermediate.number,
            revoked = set.revoked,
            next_update = %crate::cli::rfc3339(set.intermediate.next_update),
            "signed the CRLs"
        );
        Ok(set)
    }

    /// Whether the cached set must be re-signed at `now`, given the revoked
    /// set's current marker.
    fn due(&self, now: i64, marker: RevocationMarker) -> bool {
        let Some(set) = self.current() else {
            return true;
        };
        let half = self.config.validity.as_secs() as i64 / 2;
        set.marker != marker || now >= set.generated_at + half
    }

    /// Re-signs the CRLs whenever they are due; runs until aborted. A failure
    /// keeps the previous CRLs (served until they expire) and is retried.
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(CHECK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = self.clock.now();
            let result = async {
                let marker = self.store.revocation_marker(now).await?;
                if self.due(now, marker) {
                    self.regenerate().await?;
                }
                anyhow::Ok(())
            }
            .await;
            if let Err(e) = result {
                tracing::warn!(error = %format!("{e:#}"), "re-signing the CRLs failed; will retry");
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
    let (_, crl) = x509_parser::parse_x509_crl(&der)
        .map_err(|e| anyhow!("{} is not a CRL: {e}", path.display()))?;
    let (_, root) = x509_parser::parse_x509_certificate(root_der)
        .map_err(|e| anyhow!("parsing the root certificate: {e}"))?;
    crl.verify_signature(root.public_key())
        .map_err(|_| anyhow!("{} is not signed by the root", path.display()))?;
    let number = crl
        .crl_number()
        .and_then(|n| i64::try_from(n.clone()).ok())
        .context("root.crl has no usable CRL number")?;
    let next_update = crl
        .next_update()
        .context("root.crl has no nextUpdate")?
        .timestamp();
    let this_update = crl.last_update().timestamp();
    Ok(Some(SignedCrl::new(der, number, this_update, next_update)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;
    use crate::store::{AuditEvent, CertRecord};
    use std::sync::atomic::{AtomicI64, Ordering};

    #[derive(Debug)]
    struct TestClock(AtomicI64);
    impl Clock for TestClock {
        fn now(&self) -> i64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    const NOW: i64 = 1_800_000_000;

    struct Fixture {
        _dir: tempfile::TempDir,
        paths: CaPaths,
        store: Store,
        signer: Arc<Signer>,
        clock: Arc<TestClock>,
    }

    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let paths = CaPaths::new(&dir.path().join("ca"));
        crate::ca::init(&paths, "Test", NOW - 3600).unwrap();
        let store = Store::open(&format!("sqlite://{}", dir.path().join("ca.db").display()))
            .await
            .unwrap();
        let signer = Arc::new(Signer::load(&paths, None).unwrap());
        Fixture {
            _dir: dir,
            paths,
            store,
            signer,
            clock: Arc::new(TestClock(AtomicI64::new(NOW))),
        }
    }

    impl Fixture {
        fn service(&self) -> CrlService {
            CrlService::new(
                &self.paths,
                self.store.clone(),
                self.signer.clone(),
                self.clock.clone(),
                CrlConfig::default(),
            )
            .unwrap()
        }

        async fn add_cert(&self, serial: &str, not_after: i64, revoked: Option<(i64, &str)>) {
            let record = CertRecord {
                serial: serial.into(),
                hostname: "h.example.internal".into(),
                kind: "host".into(),
                public_key_sha256: vec![0; 32],
                psk_hash: None,
                psk_expires_at: None,
                not_before: NOW - 86_400,
                not_after,
                der: vec![0x30, 0x00],
                issued_at: NOW - 86_400,
                revoked_at: revoked.map(|r| r.0),
                revocation_reason: revoked.map(|r| r.1.to_owned()),
                superseded_by: None,
            };
            self.store
                .record_certificate(&record, &AuditEvent::default())
                .await
                .unwrap();
        }
    }

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
    }

    #[tokio::test]
    async fn refresh_is_due_at_half_life_and_when_the_revoked_set_changes() {
        let f = fixture().await;
        let service = f.service();
        assert!(service.due(NOW, RevocationMarker::default()));
        service.regenerate().await.unwrap();
        let marker = f.store.revocation_marker(NOW).await.unwrap();
        assert!(!service.due(NOW + 3600, marker));
        assert!(service.due(NOW + 12 * 3600, marker));
        f.add_cert("4b01", NOW + 86_400, Some((NOW, "keyCompromise")))
            .await;
        let changed = f.store.revocation_marker(NOW).await.unwrap();
        assert_ne!(changed, marker);
        assert!(service.due(NOW + 60, changed));
        // A revoked certificate that expires changes the marker too.
        let later = f.store.revocation_marker(NOW + 2 * 86_400).await.unwrap();
        assert_eq!(later, marker);
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
