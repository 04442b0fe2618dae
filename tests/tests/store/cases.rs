//! The cases of the store suite. Each gets an empty database of one engine
//! and must pass unchanged on both.

use crate::{Env, audit, cert, hash};
use ca_server::store::{CertSummary, Engine, Issuance, Store, StoreError};
use policy::AllowedName;

const NOW: i64 = 1_900_000_000;
const HOUR: i64 = 3600;

/// The number of migration files shipped for `engine`.
fn migration_files(engine: Engine) -> i64 {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../ca-server/migrations")
        .join(match engine {
            Engine::Sqlite => "sqlite",
            Engine::Postgres => "postgres",
        });
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".sql"))
        .count() as i64
}

/// Audit rows with `event`.
async fn audited(store: &Store, event: &str) -> usize {
    store
        .audit_since(i64::MIN, i64::MAX)
        .await
        .unwrap()
        .iter()
        .filter(|a| a.event == event)
        .count()
}

async fn add_psk(store: &Store, host: &str, seed: &str, expires_at: i64) {
    store
        .put_psk(
            host,
            &hash(seed),
            &[],
            NOW,
            expires_at,
            &audit("psk_added", host, NOW),
        )
        .await
        .unwrap();
}

/// Redeems the PSK `seed` of `host` with a certificate of `serial`.
async fn redeem(
    store: &Store,
    host: &str,
    seed: &str,
    serial: u64,
    now: i64,
) -> Result<(), StoreError> {
    let psk = hash(seed);
    let c = cert(serial, host, Some(&psk), now);
    let a = audit("issued", host, now);
    store
        .record_issuance(&Issuance {
            psk_hash: psk,
            now,
            cert: &c,
            audit: &a,
        })
        .await
}

pub async fn migrations_run_once_when_stores_open_at_once(env: Env) {
    // Four stores (replicas) start at once on an empty database.
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let url = env.url.clone();
            tokio::spawn(async move { Store::open(&url).await })
        })
        .collect();
    for o in opens {
        o.await.unwrap().expect("every store opens");
    }
    let applied = env
        .scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .await;
    assert_eq!(applied, migration_files(env.engine));
    assert_eq!(env.scalar("SELECT count(*) FROM crl_state").await, 1);
    // Opening again applies nothing and keeps the data.
    let store = env.open().await;
    add_psk(&store, "a.example.internal", "a", NOW + HOUR).await;
    let store = env.open().await;
    assert_eq!(store.list_psks().await.unwrap().len(), 1);
    assert_eq!(
        env.scalar("SELECT count(*) FROM _sqlx_migrations").await,
        applied
    );
}

pub async fn put_psk_creates_and_replaces(env: Env) {
    let store = env.open().await;
    let host = "web1.example.internal";
    let sans = [
        AllowedName::parse("web1-alt.example.internal").unwrap(),
        AllowedName::parse("10.0.0.7").unwrap(),
    ];
    store
        .put_psk(
            host,
            &hash("first"),
            &sans,
            NOW,
            NOW + HOUR,
            &audit("psk_added", host, NOW),
        )
        .await
        .unwrap();
    let e = store.get_psk(host).await.unwrap().unwrap();
    assert_eq!(e.psk_hash, hash("first"));
    assert_eq!(e.allowed_sans, sans.to_vec());
    assert_eq!(e.expires_at, NOW + HOUR);

    // Adding again replaces: one row, the new hash, names and expiry.
    store
        .put_psk(
            host,
            &hash("second"),
            &[],
            NOW + 10,
            NOW + 2 * HOUR,
            &audit("psk_added", host, NOW + 10),
        )
        .await
        .unwrap();
    let e = store.get_psk(host).await.unwrap().unwrap();
    assert_eq!(e.psk_hash, hash("second"));
    assert!(e.allowed_sans.is_empty());
    assert_eq!(e.expires_at, NOW + 2 * HOUR);
    let listed = store.list_psks().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].created_at, NOW + 10);
    assert!(
        store
            .get_psk("other.example.internal")
            .await
            .unwrap()
            .is_none()
    );
    // The old PSK no longer redeems; the new one does.
    assert!(matches!(
        redeem(&store, host, "first", 1, NOW).await,
        Err(StoreError::PskGone)
    ));
    redeem(&store, host, "second", 2, NOW).await.unwrap();
    let added = audited(&store, "psk_added").await;
    assert_eq!(added, 2);
}

pub async fn remove_psk_reports_and_audits(env: Env) {
    let store = env.open().await;
    let host = "gone.example.internal";
    add_psk(&store, host, "x", NOW + HOUR).await;
    assert!(
        store
            .remove_psk(host, &audit("psk_removed", host, NOW))
            .await
            .unwrap()
    );
    assert!(
        !store
            .remove_psk(host, &audit("psk_removed", host, NOW))
            .await
            .unwrap()
    );
    assert!(store.get_psk(host).await.unwrap().is_none());
    let removed = audited(&store, "psk_removed").await;
    assert_eq!(removed, 1, "only the removal that happened is audited");
}

pub async fn record_issuance_spends_the_psk_with_the_certificate(env: Env) {
    let store = env.open().await;
    let host = "one.example.internal";
    add_psk(&store, host, "p", NOW + HOUR).await;
    redeem(&store, host, "p", 7, NOW).await.unwrap();
    assert!(store.get_psk(host).await.unwrap().is_none());
    let c = store
        .get_cert(&format!("{:032x}", 7))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.hostname, host);
    assert_eq!(c.psk_hash.as_deref(), Some(&hash("p").0[..]));
    assert_eq!(c.psk_expires_at, Some(NOW + HOUR));
    assert_eq!(c.der, b"der of 7");
    assert_eq!(audited(&store, "issued").await, 1);
    // Spent: a second redemption, even with the same certificate data, fails.
    assert!(matches!(
        redeem(&store, host, "p", 8, NOW).await,
        Err(StoreError::PskGone)
    ));
    assert_eq!(store.list_certs(Some(host), None).await.unwrap().len(), 1);
}

pub async fn record_issuance_refuses_a_psk_that_is_not_live(env: Env) {
    let store = env.open().await;
    let host = "late.example.internal";
    add_psk(&store, host, "right", NOW + HOUR).await;
    let audits_before = store.audit_since(0, 1000).await.unwrap().len();
    // Wrong hash, unknown host, and the exact expiry boundary: nothing written.
    for (h, seed, now) in [
        (host, "wrong", NOW),
        ("nobody.example.internal", "right", NOW),
        (host, "right", NOW + HOUR),
    ] {
        assert!(
            matches!(
                redeem(&store, h, seed, 1, now).await,
                Err(StoreError::PskGone)
            ),
            "{h} {seed} {now}"
        );
    }
    assert!(store.get_psk(host).await.unwrap().is_some());
    assert!(store.list_certs(None, None).await.unwrap().is_empty());
    assert_eq!(
        store.audit_since(0, 1000).await.unwrap().len(),
        audits_before
    );
    // One second before the boundary it still works.
    redeem(&store, host, "right", 1, NOW + HOUR - 1)
        .await
        .unwrap();
}

pub async fn a_psk_is_spent_once_under_concurrency(env: Env) {
    spend_once_under_concurrency(&env.open().await, 10, 16).await;
}

pub async fn group_commit_spends_each_psk_once(env: Env) {
    let store = env.open().await;
    store.start_group_commit();
    // Enough racers that batches hold several requests for one PSK.
    spend_once_under_concurrency(&store, 40, 16).await;
}

/// `racers` concurrent redemptions of each of `hosts` PSKs: one winner each.
async fn spend_once_under_concurrency(store: &Store, hosts: u64, racers: u64) {
    for h in 0..hosts {
        let host = format!("race{h}.example.internal");
        add_psk(store, &host, &host, NOW + HOUR).await;
    }
    let tasks: Vec<_> = (0..hosts)
        .flat_map(|h| (0..racers).map(move |i| (h, i)))
        .map(|(h, i)| {
            let store = store.clone();
            tokio::spawn(async move {
                let host = format!("race{h}.example.internal");
                let r = redeem(&store, &host, &host, (h << 8) | i, NOW).await;
                (h, r)
            })
        })
        .collect();
    let mut won = vec![0; hosts as usize];
    for t in tasks {
        let (h, r) = t.await.unwrap();
        match r {
            Ok(()) => won[h as usize] += 1,
            Err(StoreError::PskGone) => {}
            Err(e) => panic!("unexpected store error: {e}"),
        }
    }
    assert_eq!(won, vec![1; hosts as usize], "exactly one winner per PSK");
    assert_eq!(
        store.list_certs(None, None).await.unwrap().len(),
        hosts as usize
    );
    assert!(store.list_psks().await.unwrap().is_empty());
    let issued = audited(store, "issued").await;
    assert_eq!(issued, hosts as usize);
}

/// The writer's commits reach the database file while the store is open,
/// long before the writer's own automatic checkpoint (64 MiB of WAL) would
/// copy them: the checkpointer thread does (store/checkpoint.rs). SQLite
/// only; PostgreSQL checkpoints by itself.
pub async fn group_commit_checkpoints_the_wal_off_the_writer(env: Env) {
    let Some(file) = env.url.strip_prefix("sqlite://") else {
        return;
    };
    let file = std::path::PathBuf::from(file);
    let wal = std::path::PathBuf::from(format!("{}-wal", file.display()));
    let store = env.open().await;
    store.start_group_commit();
    const N: u64 = 300;
    const DER: usize = 1200;
    let hosts: Vec<String> = (0..N)
        .map(|i| format!("ckpt{i}.example.internal"))
        .collect();
    // The PSKs first: their commits run on the pool, whose connections
    // checkpoint by themselves at 1000 pages. From here on only the writer
    // commits.
    for host in &hosts {
        add_psk(&store, host, host, NOW + HOUR).await;
    }
    let before = std::fs::metadata(&file).unwrap().len();
    for (i, host) in hosts.iter().enumerate() {
        let psk = hash(host);
        let mut c = cert(10_000 + i as u64, host, Some(&psk), NOW);
        c.der = vec![i as u8; DER];
        let a = audit("issued", host, NOW);
        store
            .record_issuance(&Issuance {
                psk_hash: psk,
                now: NOW,
                cert: &c,
                audit: &a,
            })
            .await
            .unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let len = std::fs::metadata(&file).unwrap().len();
        if len >= before + N * DER as u64 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the database file stayed at {len} bytes (from {before}) with {N} certificates committed: \
             nothing checkpointed the WAL"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let wal_len = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    assert!(wal_len < 64 << 20, "the WAL grew to {wal_len} bytes");
    store.close().await;
}

pub async fn group_commit_isolates_a_failing_row(env: Env) {
    let store = env.open().await;
    store.start_group_commit();
    // Serial 9 is taken, so one redemption of the batch cannot be recorded.
    store
        .record_certificate(
            &cert(9, "other.example.internal", None, NOW),
            &audit("issued", "other.example.internal", NOW),
        )
        .await
        .unwrap();
    for h in 0..20u64 {
        add_psk(&store, &format!("g{h}.example.internal"), "p", NOW + HOUR).await;
    }
    let tasks: Vec<_> = (0..20u64)
        .map(|h| {
            let store = store.clone();
            let serial = if h == 7 { 9 } else { 100 + h };
            tokio::spawn(async move {
                redeem(&store, &format!("g{h}.example.internal"), "p", serial, NOW).await
            })
        })
        .collect();
    for (h, t) in tasks.into_iter().enumerate() {
        let r = t.await.unwrap();
        if h == 7 {
            assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
        } else {
            r.unwrap_or_else(|e| panic!("g{h}: {e}"));
        }
    }
    assert!(
        store
            .get_psk("g7.example.internal")
            .await
            .unwrap()
            .is_some(),
        "its PSK survives"
    );
    assert_eq!(store.list_psks().await.unwrap().len(), 1);
    assert_eq!(
        audited(&store, "issued").await,
        20,
        "19 issuances and the seed certificate"
    );
}

pub async fn a_failed_certificate_insert_leaves_the_psk_live(env: Env) {
    let store = env.open().await;
    let host = "dup.example.internal";
    // A certificate already holds serial 9: the insert inside the issuance
    // transaction fails after the PSK's DELETE ran.
    store
        .record_certificate(
            &cert(9, "other.example.internal", None, NOW),
            &audit("issued", "other.example.internal", NOW),
        )
        .await
        .unwrap();
    add_psk(&store, host, "p", NOW + HOUR).await;
    let audits_before = store.audit_since(0, 1000).await.unwrap().len();
    let err = redeem(&store, host, "p", 9, NOW).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    assert!(
        store.get_psk(host).await.unwrap().is_some(),
        "the PSK survives"
    );
    assert!(store.list_certs(Some(host), None).await.unwrap().is_empty());
    assert_eq!(
        store.audit_since(0, 1000).await.unwrap().len(),
        audits_before
    );
    redeem(&store, host, "p", 10, NOW).await.unwrap();
}

pub async fn certs_by_psk_matches_host_and_hash(env: Env) {
    let store = env.open().await;
    for (host, seed, serial) in [
        ("a.example.internal", "pa", 1),
        ("b.example.internal", "pb", 2),
    ] {
        add_psk(&store, host, seed, NOW + HOUR).await;
        redeem(&store, host, seed, serial, NOW).await.unwrap();
    }
    let found = store
        .certs_by_psk("a.example.internal", &hash("pa"))
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].serial, format!("{:032x}", 1));
    for (host, seed) in [
        ("a.example.internal", "pb"),
        ("b.example.internal", "pa"),
        ("c.example.internal", "pa"),
    ] {
        assert!(
            store
                .certs_by_psk(host, &hash(seed))
                .await
                .unwrap()
                .is_empty()
        );
    }
}

pub async fn burn_psk_deletes_only_the_matching_hash(env: Env) {
    let store = env.open().await;
    let host = "burn.example.internal";
    add_psk(&store, host, "p", NOW + HOUR).await;
    assert!(!store.burn_psk(host, &hash("q")).await.unwrap());
    assert!(store.get_psk(host).await.unwrap().is_some());
    assert!(store.burn_psk(host, &hash("p")).await.unwrap());
    assert!(store.get_psk(host).await.unwrap().is_none());
    assert!(!store.burn_psk(host, &hash("p")).await.unwrap());
}

pub async fn sweep_deletes_only_expired_psks_and_audits_each(env: Env) {
    let store = env.open().await;
    add_psk(&store, "old1.example.internal", "1", NOW - 1).await;
    add_psk(&store, "old2.example.internal", "2", NOW).await;
    add_psk(&store, "live.example.internal", "3", NOW + 1).await;
    let mut swept = store.sweep_expired_psks(NOW).await.unwrap();
    swept.sort();
    assert_eq!(swept, ["old1.example.internal", "old2.example.internal"]);
    let left: Vec<_> = store
        .list_psks()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.hostname)
        .collect();
    assert_eq!(left, ["live.example.internal"]);
    let audited = store
        .audit_since(0, 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|a| a.event == "psk_expired" && a.outcome == "swept")
        .count();
    assert_eq!(audited, 2);
    assert!(store.sweep_expired_psks(NOW).await.unwrap().is_empty());
}

/// The writes that append many audit rows in one transaction (`psk batch`,
/// the sweep, revoking a host) reserve their chain positions at once; the
/// chain they leave verifies, position by position.
pub async fn batched_audit_rows_extend_the_chain(env: Env) {
    let store = env.open().await;
    let hosts: Vec<(String, policy::PskHash)> = (0..5)
        .map(|i| (format!("b{i}.example.internal"), hash(&format!("b{i}"))))
        .collect();
    store
        .put_psks(&hosts, &[], NOW, NOW + HOUR, &audit("psk_added", "", NOW))
        .await
        .unwrap();
    add_psk(&store, "old.example.internal", "o", NOW - 1).await;
    for serial in [1, 2] {
        let c = cert(serial, "r.example.internal", None, NOW);
        store
            .record_certificate(&c, &audit("issued", &c.hostname, NOW))
            .await
            .unwrap();
    }
    let swept = store.sweep_expired_psks(NOW).await.unwrap();
    assert_eq!(swept, ["old.example.internal"]);
    let how = ca_server::store::Revocation {
        reason: "superseded",
        now: NOW,
        actor: "test",
    };
    assert_eq!(
        store
            .revoke_host("r.example.internal", &how)
            .await
            .unwrap()
            .len(),
        2
    );
    store
        .put_psks(
            &hosts[..2],
            &[],
            NOW,
            NOW + HOUR,
            &audit("psk_added", "", NOW),
        )
        .await
        .unwrap();
    let (head, checkpoints, rows) = store.audit_snapshot().await.unwrap();
    assert!(checkpoints.is_empty());
    let report = ca_server::store::audit_chain::verify(&rows, &head, &[]);
    assert!(report.intact(), "{:?}", report.first_break);
    // 5 + 1 PSKs, 2 certificates, 1 swept, 2 revoked, 2 PSKs again.
    assert_eq!(report.rows, 13);
    let batch_hosts: Vec<_> = rows
        .iter()
        .filter(|r| r.event == "psk_added")
        .map(|r| r.hostname.clone().unwrap_or_default())
        .collect();
    assert_eq!(batch_hosts.len(), 8);
    assert_eq!(
        batch_hosts[..5],
        hosts.iter().map(|h| h.0.clone()).collect::<Vec<_>>()[..]
    );
}

pub async fn list_certs_filters_by_host_and_expiry(env: Env) {
    let store = env.open().await;
    // Three certificates of a, one of b; different issue times and lifetimes.
    let mut rows = vec![
        cert(1, "a.example.internal", None, NOW - 30),
        cert(2, "a.example.internal", None, NOW - 20),
        cert(3, "b.example.internal", None, NOW - 10),
        cert(4, "a.example.internal", None, NOW),
    ];
    rows[0].not_after = NOW - 1; // expired
    rows[1].not_after = NOW + 86400; // expires within 7 days
    for r in &rows {
        store
            .record_certificate(r, &audit("issued", &r.hostname, r.issued_at))
            .await
            .unwrap();
    }
    let serials = |v: Vec<ca_server::store::CertSummary>| -> Vec<u64> {
        v.iter()
            .map(|c| u64::from_str_radix(&c.serial, 16).unwrap())
            .collect()
    };
    assert_eq!(
        serials(store.list_certs(None, None).await.unwrap()),
        [4, 3, 2, 1],
        "newest first"
    );
    assert_eq!(
        serials(
            store
                .list_certs(Some("a.example.internal"), None)
                .await
                .unwrap()
        ),
        [4, 2, 1]
    );
    assert_eq!(
        serials(
            store
                .list_certs(None, Some((NOW, NOW + 7 * 86400)))
                .await
                .unwrap()
        ),
        [2],
        "valid now and expiring within the window"
    );
    assert_eq!(
        serials(
            store
                .list_certs(Some("b.example.internal"), Some((NOW, NOW + 7 * 86400)))
                .await
                .unwrap()
        ),
        Vec::<u64>::new()
    );
    assert!(
        store
            .get_cert(&format!("{:032x}", 99))
            .await
            .unwrap()
            .is_none()
    );
}

/// Migration 0021: `certificates_listing` holds every column a listing
/// returns, led by `not_after`, and replaced `certificates_not_after`
/// (`certificates_psk_hash` went too: `certs_by_psk` finds a host's rows
/// by hostname, checked in `certs_by_psk_matches_host_and_hash`); on
/// SQLite the planner answers a listing from that index without the table
/// rows (PostgreSQL's planner picks by table size, so only the index is
/// checked there).
pub async fn listings_read_the_listing_index_alone(env: Env) {
    let store = env.open().await;
    let columns = match env.engine {
        Engine::Sqlite => {
            env.texts(
                "SELECT name FROM pragma_index_info('certificates_listing') ORDER BY seqno",
                0,
            )
            .await
        }
        Engine::Postgres => {
            env.texts(
                "SELECT a.attname::text FROM pg_index i \
                 JOIN pg_class c ON c.oid = i.indexrelid \
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                 WHERE c.relname = 'certificates_listing' \
                 ORDER BY array_position(i.indkey::int2[], a.attnum)",
                0,
            )
            .await
        }
    };
    assert_eq!(
        columns,
        [
            "not_after",
            "issued_at",
            "serial",
            "hostname",
            "kind",
            "not_before",
            "revoked_at",
            "revocation_reason",
            "superseded_by",
            "public_key_sha256"
        ]
    );
    let old = match env.engine {
        Engine::Sqlite => {
            env.scalar(
                "SELECT count(*) FROM sqlite_master \
                 WHERE name IN ('certificates_not_after', 'certificates_psk_hash')",
            )
            .await
        }
        Engine::Postgres => {
            env.scalar(
                "SELECT count(*) FROM pg_indexes \
                 WHERE indexname IN ('certificates_not_after', 'certificates_psk_hash')",
            )
            .await
        }
    };
    assert_eq!(old, 0, "the indexes it replaces are gone");
    // What a listing selects and filters on (Store::list_certs without a host).
    if env.engine == Engine::Sqlite {
        let plan = env
            .texts(
                "EXPLAIN QUERY PLAN SELECT serial, hostname, kind, public_key_sha256, \
                 not_before, not_after, issued_at, revoked_at, revocation_reason, superseded_by \
                 FROM certificates WHERE not_after > 1 AND not_after <= 2 \
                 ORDER BY issued_at DESC, serial",
                3,
            )
            .await
            .join("; ");
        assert!(
            plan.contains("USING COVERING INDEX certificates_listing"),
            "{plan}"
        );
    }
    // A host's certificates come with their DER, newest first.
    for (serial, at) in [(1, NOW - 10), (2, NOW)] {
        let c = cert(serial, "a.example.internal", None, at);
        store
            .record_certificate(&c, &audit("issued", &c.hostname, at))
            .await
            .unwrap();
    }
    let found = store.host_certs("a.example.internal").await.unwrap();
    assert_eq!(
        found.iter().map(|c| c.der.clone()).collect::<Vec<_>>(),
        [b"der of 2".to_vec(), b"der of 1".to_vec()]
    );
    assert!(
        store
            .host_certs("b.example.internal")
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn audit_since_orders_and_limits(env: Env) {
    let store = env.open().await;
    for (i, at) in [NOW - 100, NOW - 50, NOW, NOW + 5].iter().enumerate() {
        let mut a = audit("sign", &format!("h{i}.example.internal"), *at);
        a.outcome = "rejected".into();
        a.reason = Some(format!("reason {i}"));
        a.peer = Some("127.0.0.1:1".into());
        store.audit(&a).await.unwrap();
    }
    let rows = store.audit_since(NOW - 50, 100).await.unwrap();
    let hosts: Vec<_> = rows.iter().map(|a| a.hostname.clone().unwrap()).collect();
    assert_eq!(
        hosts,
        [
            "h1.example.internal",
            "h2.example.internal",
            "h3.example.internal"
        ]
    );
    assert!(rows.windows(2).all(|w| w[0].id < w[1].id));
    assert_eq!(rows[0].reason.as_deref(), Some("reason 1"));
    assert_eq!(rows[0].peer.as_deref(), Some("127.0.0.1:1"));
    assert_eq!(store.audit_since(0, 2).await.unwrap().len(), 2);
}

/// Fills a store with one of everything: live, expired and spent PSKs,
/// issued, server and revoked certificates, audit rows, a CRL number.
pub async fn populate(env: &Env) -> Store {
    let store = env.open().await;
    add_psk(&store, "live.example.internal", "live", NOW + HOUR).await;
    store
        .put_psk(
            "sans.example.internal",
            &hash("sans"),
            &[AllowedName::parse("10.1.2.3").unwrap()],
            NOW,
            NOW + HOUR,
            &audit("psk_added", "sans.example.internal", NOW),
        )
        .await
        .unwrap();
    add_psk(&store, "stale.example.internal", "stale", NOW - 1).await;
    for (i, host) in ["used1.example.internal", "used2.example.internal"]
        .iter()
        .enumerate()
    {
        add_psk(&store, host, host, NOW + HOUR).await;
        redeem(&store, host, host, 100 + i as u64, NOW)
            .await
            .unwrap();
    }
    store
        .record_certificate(
            &cert(200, "ca.example.internal", None, NOW),
            &audit("server_cert_issued", "ca.example.internal", NOW),
        )
        .await
        .unwrap();
    let mut rejected = audit("sign", "used1.example.internal", NOW + 1);
    rejected.outcome = "rejected".into();
    rejected.reason = Some("psk_used".into());
    store.audit(&rejected).await.unwrap();
    env.exec(
        "UPDATE certificates SET revoked_at = 1900000100, revocation_reason = 'keyCompromise' \
         WHERE serial = '00000000000000000000000000000065'",
    )
    .await;
    env.exec("UPDATE crl_state SET crl_number = 7 WHERE id = 1")
        .await;
    store
}

/// Everything a store holds, as comparable text.
pub async fn snapshot(store: &Store) -> Vec<String> {
    let mut out = Vec::new();
    for p in store.list_psks().await.unwrap() {
        out.push(format!("{p:?}"));
        let e = store.get_psk(&p.hostname).await.unwrap().unwrap();
        out.push(format!("{:?} {:?}", e.psk_hash.0, e.allowed_sans));
    }
    for c in store.list_certs(None, None).await.unwrap() {
        out.push(format!("{c:?}"));
    }
    for a in store.audit_since(i64::MIN, i64::MAX).await.unwrap() {
        out.push(format!("{a:?}"));
    }
    out
}

pub async fn copy_moves_everything_and_verifies(env: Env) {
    let source = populate(&env).await;
    let target_env = env.another();
    let target = target_env.open().await;
    let report = source.copy_to(&target).await.expect("copy");
    assert_eq!(report.rows("psks"), 5 - 2);
    assert_eq!(report.rows("certificates"), 3);
    assert_eq!(report.crl_number, 7);
    assert_eq!(
        report.rows("audit") as usize,
        source.audit_since(i64::MIN, i64::MAX).await.unwrap().len()
    );
    assert_eq!(snapshot(&source).await, snapshot(&target).await);
    assert_eq!(
        target_env
            .scalar("SELECT crl_number FROM crl_state WHERE id = 1")
            .await,
        7
    );
    // The target works as a store: audit ids continue after the copied ones,
    // the used PSKs stay used, the live ones redeem.
    let last_id = source
        .audit_since(i64::MIN, i64::MAX)
        .await
        .unwrap()
        .last()
        .unwrap()
        .id
        .unwrap();
    target.audit(&audit("after", "x", NOW)).await.unwrap();
    let after = target.audit_since(i64::MIN, i64::MAX).await.unwrap();
    assert_eq!(after.last().unwrap().id, Some(last_id + 1));
    assert!(matches!(
        redeem(
            &target,
            "used1.example.internal",
            "used1.example.internal",
            300,
            NOW
        )
        .await,
        Err(StoreError::PskGone)
    ));
    redeem(&target, "live.example.internal", "live", 301, NOW)
        .await
        .unwrap();
    // The source is untouched.
    assert!(
        source
            .get_psk("live.example.internal")
            .await
            .unwrap()
            .is_some()
    );
}

pub async fn copy_refuses_a_target_with_data(env: Env) {
    let source = populate(&env).await;
    let target_env = env.another();
    let target = target_env.open().await;
    add_psk(&target, "mine.example.internal", "mine", NOW + HOUR).await;
    let err = source.copy_to(&target).await.unwrap_err();
    assert!(format!("{err:#}").contains("already holds data"), "{err:#}");
    assert_eq!(target.list_psks().await.unwrap().len(), 1);
    // A CRL number alone also counts as data.
    let other_env = env.another();
    let other = other_env.open().await;
    other_env
        .exec("UPDATE crl_state SET crl_number = 1 WHERE id = 1")
        .await;
    let err = source.copy_to(&other).await.unwrap_err();
    assert!(format!("{err:#}").contains("CRL number"), "{err:#}");
}

pub async fn copy_refuses_a_table_it_does_not_know(env: Env) {
    let source = populate(&env).await;
    env.exec("CREATE TABLE surprise (id BIGINT PRIMARY KEY)")
        .await;
    let target = env.another().open().await;
    let err = source.copy_to(&target).await.unwrap_err();
    assert!(format!("{err:#}").contains("surprise"), "{err:#}");
    assert!(target.list_psks().await.unwrap().is_empty());
}

pub async fn the_first_root_claims_the_store_and_others_are_refused(env: Env) {
    let store = env.open().await;
    // Claims race like replicas starting at once: all for the same root succeed.
    let claims: Vec<_> = (0..4)
        .map(|_| {
            let s = store.clone();
            tokio::spawn(async move { s.check_ca_identity("sha256:aa", b"unused").await })
        })
        .collect();
    for c in claims {
        c.await.unwrap().expect("the same root may serve again");
    }
    assert_eq!(env.scalar("SELECT count(*) FROM ca_identity").await, 1);
    // Another root (another CA's data dir) is refused; the claim stays.
    let err = store
        .check_ca_identity("sha256:bb", b"unused")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("belongs to another CA"), "{err}");
    store
        .check_ca_identity("sha256:aa", b"unused")
        .await
        .unwrap();
}

pub async fn stats_count_live_psks_and_expiring_hosts(env: Env) {
    let store = env.open().await;
    add_psk(&store, "live.example.internal", "l", NOW + HOUR).await;
    add_psk(&store, "old.example.internal", "o", NOW - 1).await;
    let day = 86_400;
    let mut rows = vec![
        // a: renewed; only its newest certificate (25 days left) counts.
        cert(1, "a.example.internal", None, NOW - 20 * day),
        cert(2, "a.example.internal", None, NOW - 5 * day),
        // b: 3 days left; c: 20 days left; d: revoked; e: the server's own.
        cert(3, "b.example.internal", None, NOW),
        cert(4, "c.example.internal", None, NOW),
        cert(5, "d.example.internal", None, NOW),
        cert(6, "e.example.internal", None, NOW),
        // f: expired.
        cert(7, "f.example.internal", None, NOW - 40 * day),
    ];
    rows[0].not_after = NOW + 2 * day;
    rows[1].not_after = NOW + 25 * day;
    rows[2].not_after = NOW + 3 * day;
    rows[3].not_after = NOW + 20 * day;
    rows[4].not_after = NOW + 2 * day;
    rows[4].revoked_at = Some(NOW - 1);
    rows[5].not_after = NOW + 2 * day;
    rows[5].kind = "server".into();
    for r in &rows {
        store
            .record_certificate(r, &audit("issued", &r.hostname, r.issued_at))
            .await
            .unwrap();
    }
    let stats = store.stats(NOW, 14 * day).await.unwrap();
    assert_eq!(stats.live_psks, 1);
    assert_eq!(stats.expiring_7d, 1, "b only");
    assert_eq!(stats.expiring_30d, 3, "a, b and c");
}

/// `cert list --stale` and the stale-host gauges: only a host's newest
/// certificate, expired unrevoked and unrenewed, counts, split by the grace;
/// and a renewal after expiry records only within the grace.
pub async fn stale_hosts_are_listed_counted_and_renew_within_the_grace(env: Env) {
    let store = env.open().await;
    let day = 86_400;
    let grace = 14 * day;
    let expired = |serial, host: &str, ago: i64| {
        let mut c = cert(serial, host, None, NOW - ago - 30 * day);
        c.not_after = NOW - ago;
        c
    };
    let mut rows = vec![
        // a: expired a day ago (within the grace); b: 20 days ago (beyond).
        expired(1, "a.example.internal", day),
        expired(2, "b.example.internal", 20 * day),
        // c: expired, but renewed before: its successor is valid.
        expired(3, "c.example.internal", day),
        cert(4, "c.example.internal", None, NOW - day),
        // d: expired and revoked (the operator's decision, not stranded).
        expired(5, "d.example.internal", day),
        // e: an expired certificate replaced by a new bootstrap.
        expired(6, "e.example.internal", day),
        cert(7, "e.example.internal", None, NOW - 2 * day),
        // f: the server's own; g: valid.
        expired(8, "f.example.internal", day),
        cert(9, "g.example.internal", None, NOW),
    ];
    rows[2].superseded_by = Some(rows[3].serial.clone());
    rows[4].revoked_at = Some(NOW - 10);
    rows[7].kind = "server".into();
    for r in &rows {
        store
            .record_certificate(r, &audit("issued", &r.hostname, r.issued_at))
            .await
            .unwrap();
    }
    let serials = |certs: Vec<CertSummary>| certs.into_iter().map(|c| c.serial).collect::<Vec<_>>();
    assert_eq!(
        serials(store.list_stale(None, NOW).await.unwrap()),
        vec![rows[0].serial.clone(), rows[1].serial.clone()],
        "a and b, the most recently expired first"
    );
    assert_eq!(
        serials(
            store
                .list_stale(Some("b.example.internal"), NOW)
                .await
                .unwrap()
        ),
        vec![rows[1].serial.clone()]
    );
    let stats = store.stats(NOW, grace).await.unwrap();
    assert_eq!(
        (stats.expired_within_grace, stats.expired_beyond_grace),
        (1, 1)
    );
    let stats = store.stats(NOW, 0).await.unwrap();
    assert_eq!(
        (stats.expired_within_grace, stats.expired_beyond_grace),
        (0, 2)
    );
    assert!(
        store
            .has_later_cert("e.example.internal", rows[5].not_after)
            .await
            .unwrap()
    );
    assert!(
        !store
            .has_later_cert("a.example.internal", rows[0].not_after)
            .await
            .unwrap()
    );

    // a renews within the grace; b is past it: nothing written for b.
    let new_a = cert(10, "a.example.internal", None, NOW);
    let renewed = audit("renewed_after_expiry", "a.example.internal", NOW);
    assert!(
        store
            .record_renewal(&rows[0].serial, &new_a, &renewed, NOW - grace)
            .await
            .unwrap()
    );
    let new_b = cert(11, "b.example.internal", None, NOW);
    assert!(
        !store
            .record_renewal(&rows[1].serial, &new_b, &renewed, NOW - grace)
            .await
            .unwrap()
    );
    assert!(store.get_cert(&new_b.serial).await.unwrap().is_none());
    // The old a cannot renew twice.
    let again = cert(12, "a.example.internal", None, NOW);
    assert!(
        !store
            .record_renewal(&rows[0].serial, &again, &renewed, NOW - grace)
            .await
            .unwrap()
    );
    assert_eq!(
        serials(store.list_stale(None, NOW).await.unwrap()),
        vec![rows[1].serial.clone()]
    );
}

pub async fn audit_query_filters_by_host_and_event(env: Env) {
    let store = env.open().await;
    for (event, host) in [
        ("sign", "a.example.internal"),
        ("issued", "a.example.internal"),
        ("sign", "b.example.internal"),
    ] {
        store.audit(&audit(event, host, NOW)).await.unwrap();
    }
    let q = |host: Option<&str>, event: Option<&str>| {
        let filter = ca_server::store::AuditFilter {
            host: host.map(str::to_owned),
            event: event.map(str::to_owned),
        };
        let store = store.clone();
        async move {
            store
                .audit_query(NOW, 100, &filter)
                .await
                .unwrap()
                .iter()
                .map(|a| format!("{} {}", a.event, a.hostname.as_deref().unwrap()))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(q(None, None).await.len(), 3);
    assert_eq!(
        q(Some("a.example.internal"), None).await,
        ["sign a.example.internal", "issued a.example.internal"]
    );
    assert_eq!(q(None, Some("sign")).await.len(), 2);
    assert_eq!(
        q(Some("b.example.internal"), Some("sign")).await,
        ["sign b.example.internal"]
    );
    assert!(
        q(Some("b.example.internal"), Some("issued"))
            .await
            .is_empty()
    );
}

pub async fn inspect_reports_migrations_and_owner(env: Env) {
    use ca_server::store::inspect::inspect;
    // A database no store has opened: every shipped migration is pending.
    let blank = env.another();
    if env.engine == Engine::Sqlite {
        // inspect never creates a SQLite file; make an empty one.
        let path = blank.url.trim_start_matches("sqlite://");
        std::fs::write(path, b"").unwrap();
    }
    let found = inspect(&blank.url).await.unwrap();
    assert_eq!(found.pending.len() as i64, migration_files(env.engine));
    assert!(found.unknown.is_empty() && found.broken.is_empty());
    assert_eq!(found.root_fingerprint, None);

    let store = env.open().await;
    store.check_ca_identity("sha256:00", &[]).await.unwrap();
    let found = inspect(&env.url).await.unwrap();
    assert!(found.pending.is_empty(), "{:?}", found.pending);
    assert_eq!(found.root_fingerprint.as_deref(), Some("sha256:00"));
}

pub async fn batched_reads_answer_every_lookup(env: Env) {
    let store = env.open().await;
    store.start_batched_reads();
    for h in 0..30u64 {
        add_psk(
            &store,
            &format!("r{h}.example.internal"),
            &format!("s{h}"),
            NOW + HOUR,
        )
        .await;
    }
    // Keys of certificates 1000..1010; those of 1000..1005 revoked as
    // compromised, 1005 for another reason.
    for serial in 1000..1010u64 {
        let host = format!("k{serial}.example.internal");
        add_psk(&store, &host, &host, NOW + HOUR).await;
        redeem(&store, &host, &host, serial, NOW).await.unwrap();
    }
    // 1005 is 0x3ed.
    env.exec(
        "UPDATE certificates SET revoked_at = 1900000000, revocation_reason = 'keyCompromise' \
         WHERE serial < '000000000000000000000000000003ed'",
    )
    .await;
    env.exec(
        "UPDATE certificates SET revoked_at = 1900000000, revocation_reason = 'superseded' \
         WHERE serial = '000000000000000000000000000003ed'",
    )
    .await;
    // Each name looked up several times at once, names with no PSK, and key
    // lookups in the same batches (PostgreSQL answers both in one query).
    let tasks: Vec<_> = (0..40u64)
        .flat_map(|h| (0..3).map(move |_| h))
        .map(|h| {
            let store = store.clone();
            tokio::spawn(async move {
                let host = format!("r{h}.example.internal");
                let key = hash(&format!("key {}", 1000 + h % 12)).0;
                let (entry, compromised) =
                    tokio::join!(store.get_psk(&host), store.key_compromised(&key));
                (h, entry.unwrap(), compromised.unwrap())
            })
        })
        .collect();
    for t in tasks {
        let (h, entry, compromised) = t.await.unwrap();
        if h < 30 {
            let entry = entry.unwrap_or_else(|| panic!("r{h} has a PSK"));
            assert_eq!(entry.hostname, format!("r{h}.example.internal"));
            assert!(entry.psk_hash.ct_eq(&hash(&format!("s{h}"))));
        } else {
            assert!(entry.is_none(), "r{h} has no PSK");
        }
        assert_eq!(
            compromised,
            h % 12 < 5,
            "key of certificate {}",
            1000 + h % 12
        );
    }
}
