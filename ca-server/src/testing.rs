//! Test support shared by the unit tests: a clock the test moves, and a CA
//! with a SQLite store in a temporary directory.

use crate::clock::Clock;
use crate::issue::sign::Authority;
use crate::pki::ca::{CaPaths, Signer};
use crate::pki::crl::{CrlConfig, CrlService};
use crate::store::{AuditEvent, CertRecord, Store};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// The fixtures' "now".
pub const NOW: i64 = 1_800_000_000;

/// A clock that only moves when told to.
#[derive(Debug)]
pub struct TestClock(AtomicI64);

impl TestClock {
    pub fn at(t: i64) -> TestClock {
        TestClock(AtomicI64::new(t))
    }

    pub fn set(&self, t: i64) {
        self.0.store(t, Ordering::SeqCst);
    }
}

impl Clock for TestClock {
    fn now(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// A CA initialised an hour before [`NOW`], its store, and a test clock at [`NOW`].
pub struct Fixture {
    pub _dir: tempfile::TempDir,
    pub paths: CaPaths,
    pub store: Store,
    pub signer: Arc<Signer>,
    pub clock: Arc<TestClock>,
}

pub async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let paths = CaPaths::new(&dir.path().join("ca"));
    crate::pki::ca::init(&paths, "Test", NOW - 3600).unwrap();
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
    /// A CRL service on this CA and store with the default validities.
    pub fn service(&self) -> CrlService {
        CrlService::new(
            &self.paths,
            self.store.clone(),
            self.signer.clone(),
            self.clock.clone(),
            CrlConfig::default(),
        )
        .unwrap()
    }

    /// An authority on this CA and store, with the default throttle and no disk guard.
    pub fn authority(&self) -> Authority {
        Authority {
            store: self.store.clone(),
            signer: self.signer.clone(),
            clock: self.clock.clone(),
            validity: crate::pki::ca::DEFAULT_LEAF_VALIDITY,
            renew_grace: crate::serve::DEFAULT_RENEW_GRACE_SECS,
            throttle: crate::issue::throttle::Throttle::new(Default::default()),
            rejections: Default::default(),
            disk: None,
        }
    }

    /// Records a certificate row (not a real certificate) with this serial,
    /// expiry and, optionally, revocation time and reason.
    pub async fn add_cert(&self, serial: &str, not_after: i64, revoked: Option<(i64, &str)>) {
        let record = CertRecord {
            serial: serial.into(),
            hostname: "h.example.internal".into(),
            kind: crate::store::CertKind::Host.into(),
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
