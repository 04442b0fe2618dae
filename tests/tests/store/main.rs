//! The store test suite, run against both engines: the same case functions
//! (in `cases`) open `ca_server::store::Store` on SQLite (a temporary file)
//! and on a throwaway PostgreSQL cluster (a fresh database per case). Every
//! case runs even if an earlier one failed; the test fails listing them all.
//!
//! `copy` moves stores between the engines; `availability` stops PostgreSQL
//! under a running store.

mod availability;
mod cases;
mod copy;

use ca_server::store::{AuditEvent, CertRecord, Engine, Store};
use ca_tests::pg::{PgCluster, require_postgres};
use policy::PskHash;
use sqlx::{Connection, Row};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A case: an async function of its environment.
pub type Case = (
    &'static str,
    fn(Env) -> Pin<Box<dyn Future<Output = ()> + Send>>,
);

/// Builds the case table from function names in `cases`.
macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        &[$((stringify!($name), |env| Box::pin(cases::$name(env)))),*]
    };
}

/// Every case, in the order they run.
const SUITE: &[Case] = suite![
    migrations_run_once_when_stores_open_at_once,
    put_psk_creates_and_replaces,
    remove_psk_reports_and_audits,
    record_issuance_spends_the_psk_with_the_certificate,
    record_issuance_refuses_a_psk_that_is_not_live,
    a_psk_is_spent_once_under_concurrency,
    group_commit_spends_each_psk_once,
    group_commit_isolates_a_failing_row,
    group_commit_checkpoints_the_wal_off_the_writer,
    batched_reads_answer_every_lookup,
    a_failed_certificate_insert_leaves_the_psk_live,
    certs_by_psk_matches_host_and_hash,
    burn_psk_deletes_only_the_matching_hash,
    sweep_deletes_only_expired_psks_and_audits_each,
    batched_audit_rows_extend_the_chain,
    list_certs_filters_by_host_and_expiry,
    listings_read_the_listing_index_alone,
    audit_since_orders_and_limits,
    copy_moves_everything_and_verifies,
    copy_refuses_a_target_with_data,
    copy_refuses_a_table_it_does_not_know,
    the_first_root_claims_the_store_and_others_are_refused,
    stats_count_live_psks_and_expiring_hosts,
    stale_hosts_are_listed_counted_and_renew_within_the_grace,
    audit_query_filters_by_host_and_event,
    inspect_reports_migrations_and_owner,
];

#[test]
fn store_suite_on_sqlite() {
    run_suite(Databases::sqlite());
}

#[test]
fn store_suite_on_postgresql() {
    if !require_postgres() {
        return;
    }
    run_suite(Databases::postgres());
}

fn run_suite(dbs: Databases) {
    let dbs = Arc::new(dbs);
    let rt = runtime();
    let mut failures = Vec::new();
    for (name, case) in SUITE {
        let env = Env::fresh(&dbs);
        let engine = env.engine;
        match rt.block_on(rt.spawn(case(env))) {
            Ok(()) => eprintln!("store case {name} on {engine:?}: ok"),
            Err(e) => {
                let msg = match e.try_into_panic() {
                    Ok(p) => p
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "panic".into()),
                    Err(e) => e.to_string(),
                };
                eprintln!("store case {name} on {engine:?}: FAILED: {msg}");
                failures.push(format!("{name}: {msg}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} store case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Where fresh databases come from.
#[derive(Debug)]
pub enum Databases {
    Sqlite(tempfile::TempDir, AtomicUsize),
    Postgres(Box<PgCluster>, AtomicUsize),
}

impl Databases {
    pub fn sqlite() -> Databases {
        Databases::Sqlite(
            tempfile::Builder::new()
                .prefix("ca-store-")
                .tempdir()
                .unwrap(),
            AtomicUsize::new(0),
        )
    }

    pub fn postgres() -> Databases {
        Databases::Postgres(Box::new(PgCluster::start()), AtomicUsize::new(0))
    }

    /// The URL of a new, empty database.
    pub fn fresh(&self) -> String {
        match self {
            Databases::Sqlite(dir, n) => format!(
                "sqlite://{}",
                dir.path()
                    .join(format!("db{}.sqlite", n.fetch_add(1, Ordering::SeqCst)))
                    .display()
            ),
            Databases::Postgres(pg, n) => {
                pg.create_database(&format!("db{}", n.fetch_add(1, Ordering::SeqCst)))
            }
        }
    }

    pub fn engine(&self) -> Engine {
        match self {
            Databases::Sqlite(..) => Engine::Sqlite,
            Databases::Postgres(..) => Engine::Postgres,
        }
    }

    pub fn cluster(&self) -> Option<&PgCluster> {
        match self {
            Databases::Postgres(pg, _) => Some(pg),
            Databases::Sqlite(..) => None,
        }
    }
}

/// A case's environment: an empty database, and where more come from.
#[derive(Debug, Clone)]
pub struct Env {
    pub url: String,
    pub engine: Engine,
    pub dbs: Arc<Databases>,
}

impl Env {
    pub fn fresh(dbs: &Arc<Databases>) -> Env {
        Env {
            url: dbs.fresh(),
            engine: dbs.engine(),
            dbs: dbs.clone(),
        }
    }

    /// Another empty database of the same engine.
    pub fn another(&self) -> Env {
        Env::fresh(&self.dbs)
    }

    pub async fn open(&self) -> Store {
        Store::open(&self.url)
            .await
            .unwrap_or_else(|e| panic!("opening {}: {e:#}", self.url))
    }

    /// A number from raw SQL, on a connection of its own.
    pub async fn scalar(&self, sql: &'static str) -> i64 {
        let mut conn = sqlx::AnyConnection::connect(&self.url).await.unwrap();
        let row = sqlx::query(sql).fetch_one(&mut conn).await.unwrap();
        let v: i64 = row.try_get(0).unwrap();
        conn.close().await.unwrap();
        v
    }

    /// Column `col` of every row of raw SQL, as text, on a connection of its own.
    pub async fn texts(&self, sql: &'static str, col: usize) -> Vec<String> {
        let mut conn = sqlx::AnyConnection::connect(&self.url).await.unwrap();
        let rows = sqlx::query(sql).fetch_all(&mut conn).await.unwrap();
        conn.close().await.unwrap();
        rows.iter().map(|r| r.try_get(col).unwrap()).collect()
    }

    /// Runs raw SQL on a connection of its own.
    pub async fn exec(&self, sql: &'static str) {
        let mut conn = sqlx::AnyConnection::connect(&self.url).await.unwrap();
        sqlx::query(sql).execute(&mut conn).await.unwrap();
        conn.close().await.unwrap();
    }
}

/// SHA-256 of `seed`: a stand-in PSK hash.
pub fn hash(seed: &str) -> PskHash {
    let d = ring::digest::digest(&ring::digest::SHA256, seed.as_bytes());
    PskHash(d.as_ref().try_into().unwrap())
}

/// A certificate row for tests (the DER is a marker, never parsed by the store).
pub fn cert(serial: u64, host: &str, psk: Option<&PskHash>, issued_at: i64) -> CertRecord {
    CertRecord {
        serial: format!("{serial:032x}"),
        hostname: host.into(),
        kind: "host".into(),
        public_key_sha256: hash(&format!("key {serial}")).0.to_vec(),
        psk_hash: psk.map(|h| h.0.to_vec()),
        psk_expires_at: psk.map(|_| issued_at + 3600),
        not_before: issued_at - 300,
        not_after: issued_at + 30 * 86400,
        der: format!("der of {serial}").into_bytes(),
        issued_at,
        revoked_at: None,
        revocation_reason: None,
        superseded_by: None,
    }
}

/// An audit row for tests.
pub fn audit(event: &str, host: &str, at: i64) -> AuditEvent {
    AuditEvent {
        at,
        event: event.into(),
        hostname: Some(host.into()),
        outcome: "ok".into(),
        actor: Some("store-suite".into()),
        ..Default::default()
    }
}
