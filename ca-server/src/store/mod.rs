//! The store: PSKs, certificates, the audit log and the CRL number, on SQLite
//! (embedded default) or PostgreSQL (replicas), through sqlx's `Any` driver
//! with one SQL text for both engines where the dialects agree (the certificate
//! and audit INSERTs have one per engine, the macros below). Times are Unix seconds.
//!
//! The invariant everything rests on lives in [`Store::record_issuance`]: the
//! PSK row is deleted (exactly one row, `DELETE ... RETURNING`) in the same
//! transaction that inserts the certificate, so a PSK is spent if and only if
//! its certificate is recorded, on one replica or many.

use anyhow::{Context, Result, bail};
use policy::{AllowedName, PskEntry, PskHash};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Connection, Executor, Row};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub mod acme;
pub mod audit_chain;
pub mod audit_sink;
mod availability;
mod batch;
mod chain;
pub mod copy;
mod crl;
pub mod inspect;
mod kinds;
mod ocsp;
mod ownership;
pub use acme::{AcmeAccount, AcmeOrder, SealedPsk};
pub use chain::{CheckpointRow, NewCheckpoint};
pub use crl::{CrlPoll, CrlSnapshot, PublishedCrls, RevokedEntry};
pub use kinds::{CertKind, Event, Outcome, UnknownName};
pub use ocsp::StoredResponder;
pub use stats::StoreStats;

/// Which engine a URL selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

impl Engine {
    pub fn from_url(url: &str) -> Result<Engine> {
        if url.starts_with("sqlite:") {
            Ok(Engine::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Ok(Engine::Postgres)
        } else {
            bail!("unsupported database URL (expected sqlite://... or postgres://...)")
        }
    }
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or refused the operation.
    #[error("store unavailable: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The availability watcher sees the database down; nothing was tried.
    #[error("store unreachable for {for_secs} s; waiting for it to come back")]
    Down { for_secs: i64 },
    /// The PSK was consumed (or replaced, or expired) between check and commit.
    #[error("the PSK is no longer live")]
    PskGone,
    /// A row holds something this version cannot read.
    #[error("store holds an unreadable row: {0}")]
    Corrupt(String),
    /// The filesystem under the store is (nearly) full: refused before signing.
    #[error("no space for the store: {0}")]
    NoSpace(String),
}

impl From<sqlx::Error> for StoreError {
    /// Every database error passes here, so this is where it is counted.
    fn from(e: sqlx::Error) -> StoreError {
        crate::metrics::metrics().store_error("database");
        StoreError::Unavailable(Box::new(e))
    }
}

pub type StoreResult<T> = std::result::Result<T, StoreError>;

/// A live PSK as listed to operators: never the secret, never its hash.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PskInfo {
    pub hostname: String,
    pub allowed_sans: Vec<String>,
    pub created_at: i64,
    pub expires_at: i64,
}

/// A certificate as listings show it: the row without its DER and PSK
/// columns. Migration 0021's `certificates_listing` index holds exactly
/// these, so a listing of 100,000 rows reads that index alone and never the
/// table pages that carry the DER (on a store of 1 M certificates those are
/// most of the file).
#[derive(Debug, Clone)]
pub struct CertSummary {
    pub serial: String,
    pub hostname: String,
    pub kind: String,
    pub public_key_sha256: Vec<u8>,
    pub not_before: i64,
    pub not_after: i64,
    pub issued_at: i64,
    pub revoked_at: Option<i64>,
    pub revocation_reason: Option<String>,
    pub superseded_by: Option<String>,
}

/// A certificate row.
#[derive(Debug, Clone)]
pub struct CertRecord {
    pub serial: String,
    pub hostname: String,
    pub kind: String,
    pub public_key_sha256: Vec<u8>,
    pub psk_hash: Option<Vec<u8>>,
    pub psk_expires_at: Option<i64>,
    pub not_before: i64,
    pub not_after: i64,
    pub der: Vec<u8>,
    pub issued_at: i64,
    pub revoked_at: Option<i64>,
    pub revocation_reason: Option<String>,
    pub superseded_by: Option<String>,
}

impl CertRecord {
    /// The row as listings show it.
    pub fn summary(&self) -> CertSummary {
        CertSummary {
            serial: self.serial.clone(),
            hostname: self.hostname.clone(),
            kind: self.kind.clone(),
            public_key_sha256: self.public_key_sha256.clone(),
            not_before: self.not_before,
            not_after: self.not_after,
            issued_at: self.issued_at,
            revoked_at: self.revoked_at,
            revocation_reason: self.revocation_reason.clone(),
            superseded_by: self.superseded_by.clone(),
        }
    }
}

/// An audit row.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct AuditEvent {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<i64>,
    pub at: i64,
    pub event: String,
    pub hostname: Option<String>,
    pub serial: Option<String>,
    pub outcome: String,
    pub reason: Option<String>,
    pub peer: Option<String>,
    pub actor: Option<String>,
    /// How many times this event happened: repeated refusals from one
    /// address fold into one row (`rejection_log`). Read from the store;
    /// a new row always starts at 1.
    #[serde(default)]
    pub count: i64,
    /// When the last of those repeats happened.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_at: Option<i64>,
}

/// Which audit rows to show (`audit --host --event`); `None` matches all.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub host: Option<String>,
    pub event: Option<String>,
}

/// Everything recorded when a PSK is redeemed.
#[derive(Debug)]
pub struct Issuance<'a> {
    pub psk_hash: PskHash,
    /// The same `now` the decision used: the PSK must still be live at it.
    pub now: i64,
    pub cert: &'a CertRecord,
    pub audit: &'a AuditEvent,
}

/// The certificate columns, as a macro so queries stay `&'static str` literals.
macro_rules! cert_columns {
    () => {
        "serial, hostname, kind, public_key_sha256, psk_hash, psk_expires_at, \
         not_before, not_after, der, issued_at, revoked_at, revocation_reason, superseded_by"
    };
}

/// The columns of a [`CertSummary`]: `certificates_listing` covers them.
macro_rules! cert_summary_columns {
    () => {
        "serial, hostname, kind, public_key_sha256, not_before, not_after, issued_at, \
         revoked_at, revocation_reason, superseded_by"
    };
}

/// The only SQL texts that write `certificates` and `audit` rows, one per
/// engine, as macros so queries stay `&'static str` literals (and the
/// `RETURNING` variant can be appended).
///
/// SQLite: one row, `$n` parameters, which sqlx and rusqlite (the group
/// commit's lane) alike bind by position.
macro_rules! insert_cert_sqlite {
    () => {
        concat!(
            "INSERT INTO certificates (",
            cert_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
        )
    };
}

/// PostgreSQL: any number of rows as one JSON array parameter, so the
/// statement has one shape (prepared once) and costs one round trip whatever
/// the batch size; a single write is a batch of one.
/// `insert_certs_pg!("$2")` takes the array from another parameter (the
/// group commit's combined statement).
macro_rules! insert_certs_pg {
    () => {
        insert_certs_pg!("$1")
    };
    ($rows:literal) => {
        concat!(
            "INSERT INTO certificates (",
            cert_columns!(),
            ") SELECT j.serial, j.hostname, j.kind, decode(j.pk, 'hex'), decode(j.ph, 'hex'), \
             j.pe, j.nb, j.na, decode(j.der, 'hex'), j.ia, j.ra, j.rr, j.sb \
             FROM jsonb_to_recordset(",
            $rows,
            "::jsonb) AS j(serial text, hostname text, kind text, \
             pk text, ph text, pe bigint, nb bigint, na bigint, der text, ia bigint, ra bigint, \
             rr text, sb text)"
        )
    };
}

/// The audit row on SQLite, as [`insert_cert_sqlite!`].
///
/// Every audit row is a link of the hash chain (docs/audit.md): its
/// position and hash come with it, and `repeat_count`, `last_at`,
/// `repeats_of` are set for a repeat row (1, NULL, NULL otherwise).
macro_rules! insert_audit_sqlite {
    () => {
        "INSERT INTO audit (at, event, hostname, serial, outcome, reason, peer, actor, \
         repeat_count, last_at, repeats_of, chain_seq, chain_hash) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
    };
}

/// Audit rows on PostgreSQL, as [`insert_certs_pg!`].
/// Inserted in chain order: ids are drawn in it, which `audit verify` relies on.
macro_rules! insert_audits_pg {
    () => {
        insert_audits_pg!("$1")
    };
    ($rows:literal) => {
        concat!(
            "INSERT INTO audit (at, event, hostname, serial, outcome, reason, peer, actor, \
             repeat_count, last_at, repeats_of, chain_seq, chain_hash) \
             SELECT j.at, j.event, j.hostname, j.serial, j.outcome, j.reason, j.peer, j.actor, \
             j.rc, j.la, j.ro, j.seq, decode(j.hash, 'hex') \
             FROM jsonb_to_recordset(",
            $rows,
            "::jsonb) AS j(at bigint, event text, hostname text, \
             serial text, outcome text, reason text, peer text, actor text, rc bigint, la bigint, \
             ro bigint, seq bigint, hash text) ORDER BY j.seq"
        )
    };
}

/// Waits for the next queued item of a batching task and takes every other
/// one already waiting, up to `max`. `false` once the store is closing (the
/// task then returns, handing back the connection it keeps) or the queue ends.
async fn next_batch<T>(
    rx: &mut tokio::sync::mpsc::Receiver<T>,
    closing: &mut tokio::sync::watch::Receiver<bool>,
    batch: &mut Vec<T>,
    max: usize,
) -> bool {
    let next = tokio::select! {
        next = rx.recv() => next,
        _ = closing.wait_for(|closed| *closed) => None,
    };
    let Some(first) = next else {
        return false;
    };
    batch.push(first);
    while batch.len() < max {
        match rx.try_recv() {
            Ok(item) => batch.push(item),
            Err(_) => break,
        }
    }
    true
}

// After the macros, which they use.
mod checkpoint;
mod lane;
mod reader;
mod revoke;
// After the SQL macros above, which it uses.
mod stats;
mod writer;
pub use revoke::{Revocation, RevokeOutcome};
pub use writer::Issuing;

/// Handle on the database; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    engine: Engine,
    gate: Arc<availability::Gate>,
    /// The group-commit writer, once `serve` starts it.
    writer: Arc<std::sync::OnceLock<writer::Writer>>,
    /// The batching PSK reader, started with the writer.
    reader: Arc<std::sync::OnceLock<reader::Reader>>,
    /// Set by [`Store::close`]: the writer and the reader hand back the
    /// connections they keep, or the pool's close would wait for them forever.
    closing: Arc<tokio::sync::watch::Sender<bool>>,
    /// The SQLite file, which the writer thread and the inline readers open
    /// themselves (`None` for PostgreSQL and in-memory SQLite; see `lane`).
    sqlite_file: Option<PathBuf>,
    /// The writer thread, joined by [`Store::close`].
    lanes: Arc<std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>>,
    /// PSK issuances in progress ([`Store::issuing`]).
    issuing: Arc<std::sync::atomic::AtomicUsize>,
}

impl Store {
    /// Connects, applies the per-connection settings and runs the migrations
    /// that ship in the binary.
    pub async fn open(url: &str) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let engine = Engine::from_url(url)?;
        if engine == Engine::Sqlite {
            prepare_sqlite_file(url)?;
        }
        let pool = AnyPoolOptions::new()
            .max_connections(match engine {
                Engine::Sqlite => 8,
                Engine::Postgres => 16,
            })
            .acquire_timeout(Duration::from_secs(5))
            .after_connect(|conn, _meta| {
                Box::pin(async move {
                    if conn.backend_name() == "SQLite" {
                        // WAL for concurrent readers; FULL so a commit survives power loss.
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = FULL").await?;
                        conn.execute("PRAGMA busy_timeout = 5000").await?;
                        // No mmap_size: the hot path keeps its connections and their page
                        // cache, and a memory map only added the mapped file
                        // to the RSS (measured, BENCHMARKS.md).
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await
            .map_err(|e| match e {
                // sqlx retries a refused connection until its acquire timeout.
                sqlx::Error::PoolTimedOut => anyhow::anyhow!(
                    "the database did not accept a connection within 5 s (is it running and reachable?)"
                ),
                e => e.into(),
            })
            .with_context(|| format!("opening the store at {}", redact_url(url)))?;
        migrate(&pool, engine)
            .await
            .context("running store migrations")?;
        Ok(Store {
            pool,
            engine,
            gate: Arc::default(),
            writer: Arc::default(),
            reader: Arc::default(),
            closing: Arc::new(tokio::sync::watch::Sender::new(false)),
            sqlite_file: match engine {
                Engine::Sqlite => sqlite_path(url),
                Engine::Postgres => None,
            },
            lanes: Arc::default(),
            issuing: Arc::default(),
        })
    }

    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// Closes every connection (for orderly shutdown).
    pub async fn close(&self) {
        self.closing.send_replace(true);
        self.join_lanes().await;
        self.pool.close().await;
    }

    /// A round trip to the database.
    pub async fn health(&self) -> StoreResult<()> {
        let result = async {
            sqlx::query("SELECT 1")
                .execute(&mut *self.conn().await?)
                .await?;
            Ok(())
        }
        .await;
        if matches!(result, Err(StoreError::Unavailable(_))) {
            self.suspect();
        }
        result
    }

    /// Creates or replaces the PSK of `hostname` (at most one live PSK per host).
    pub async fn put_psk(
        &self,
        hostname: &str,
        hash: &PskHash,
        allowed_sans: &[AllowedName],
        created_at: i64,
        expires_at: i64,
        audit: &AuditEvent,
    ) -> StoreResult<()> {
        let sans_json = sans_json(allowed_sans);
        let mut tx = self.begin().await?;
        upsert_psk(&mut *tx, hostname, hash, &sans_json, created_at, expires_at).await?;
        insert_audit(self.engine, &mut *tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The PSK entry of `hostname`, if any (expired or not: policy judges).
    pub async fn get_psk(&self, hostname: &str) -> StoreResult<Option<PskEntry>> {
        if let Some(reader) = self.reader.get() {
            return self.get_psk_grouped(reader, hostname).await;
        }
        let row = sqlx::query(
            "SELECT hostname, psk_hash, allowed_sans, expires_at FROM psks WHERE hostname = $1",
        )
        .bind(hostname)
        .fetch_optional(&mut *self.conn().await?)
        .await?;
        row.as_ref().map(psk_entry_from_row).transpose()
    }
}

/// A `psks` row (hostname, psk_hash, allowed_sans, expires_at) as a policy entry.
fn psk_entry_from_row(row: &AnyRow) -> StoreResult<PskEntry> {
    psk_entry(
        row.try_get("hostname")?,
        &row.try_get::<Vec<u8>, _>("psk_hash")?,
        &row.try_get::<String, _>("allowed_sans")?,
        row.try_get("expires_at")?,
    )
}

/// A PSK row's columns as a policy entry.
fn psk_entry(
    hostname: String,
    hash: &[u8],
    sans_json: &str,
    expires_at: i64,
) -> StoreResult<PskEntry> {
    let sans: Vec<String> = serde_json::from_str(sans_json)
        .map_err(|e| StoreError::Corrupt(format!("allowed_sans: {e}")))?;
    let allowed_sans = sans
        .iter()
        .map(|s| AllowedName::parse(s))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| StoreError::Corrupt(format!("allowed_sans: {e}")))?;
    Ok(PskEntry {
        hostname,
        psk_hash: PskHash::from_slice(hash)
            .ok_or_else(|| StoreError::Corrupt("psk_hash is not 32 bytes".into()))?,
        allowed_sans,
        expires_at,
    })
}

impl Store {
    /// Removes the PSK of `hostname`; `false` if there was none.
    pub async fn remove_psk(&self, hostname: &str, audit: &AuditEvent) -> StoreResult<bool> {
        let mut tx = self.begin().await?;
        let n = sqlx::query("DELETE FROM psks WHERE hostname = $1")
            .bind(hostname)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n > 0 {
            insert_audit(self.engine, &mut *tx, audit).await?;
        }
        tx.commit().await?;
        Ok(n > 0)
    }

    /// Deletes the PSK of `hostname` if it is still the one with `hash`
    /// (an expired PSK presented with the right secret is burned).
    pub async fn burn_psk(&self, hostname: &str, hash: &PskHash) -> StoreResult<bool> {
        let n = sqlx::query("DELETE FROM psks WHERE hostname = $1 AND psk_hash = $2")
            .bind(hostname)
            .bind(hash.0.to_vec())
            .execute(&mut *self.conn().await?)
            .await?
            .rows_affected();
        Ok(n > 0)
    }

    /// Deletes every PSK whose lifetime ended at or before `now`; returns their hostnames.
    pub async fn sweep_expired_psks(&self, now: i64) -> StoreResult<Vec<String>> {
        let mut tx = self.begin().await?;
        let rows = sqlx::query("DELETE FROM psks WHERE expires_at <= $1 RETURNING hostname")
            .bind(now)
            .fetch_all(&mut *tx)
            .await?;
        let hosts = rows
            .iter()
            .map(|row| row.try_get("hostname"))
            .collect::<Result<Vec<String>, _>>()?;
        let audits: Vec<AuditEvent> = hosts
            .iter()
            .map(|host| AuditEvent {
                at: now,
                event: Event::PskExpired.into(),
                hostname: Some(host.clone()),
                outcome: Outcome::Swept.into(),
                actor: Some("ca-server".into()),
                ..Default::default()
            })
            .collect();
        insert_audits(self.engine, &mut *tx, &audits).await?;
        tx.commit().await?;
        Ok(hosts)
    }

    /// Live PSKs, by hostname.
    pub async fn list_psks(&self) -> StoreResult<Vec<PskInfo>> {
        let rows = sqlx::query(
            "SELECT hostname, allowed_sans, created_at, expires_at FROM psks ORDER BY hostname",
        )
        .fetch_all(&mut *self.conn().await?)
        .await?;
        rows.iter()
            .map(|row| {
                let sans_json: String = row.try_get("allowed_sans")?;
                Ok(PskInfo {
                    hostname: row.try_get("hostname")?,
                    allowed_sans: serde_json::from_str(&sans_json)
                        .map_err(|e| StoreError::Corrupt(format!("allowed_sans: {e}")))?,
                    created_at: row.try_get("created_at")?,
                    expires_at: row.try_get("expires_at")?,
                })
            })
            .collect()
    }

    /// Spends the PSK and records the certificate and its audit row, in one
    /// transaction. `PskGone` if the PSK was not live at `now` any more (a
    /// concurrent request won, an admin replaced it, or it expired).
    pub async fn record_issuance(&self, issuance: &Issuance<'_>) -> StoreResult<()> {
        match self.writer.get() {
            Some(w) => self.record_issuance_grouped(w, issuance).await,
            None => self.record_issuance_single(issuance).await,
        }
    }

    /// [`Store::record_issuance`] in a transaction of its own.
    pub(super) async fn record_issuance_single(&self, issuance: &Issuance<'_>) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        // The DELETE is the first statement, so SQLite takes its write lock at
        // once and PostgreSQL locks the row: of two concurrent redemptions
        // exactly one sees a row come back.
        let spent = sqlx::query(
            "DELETE FROM psks WHERE hostname = $1 AND psk_hash = $2 AND expires_at > $3 \
             RETURNING hostname",
        )
        .bind(&issuance.cert.hostname)
        .bind(issuance.psk_hash.0.to_vec())
        .bind(issuance.now)
        .fetch_optional(&mut *tx)
        .await?;
        if spent.is_none() {
            tx.rollback().await?;
            return Err(StoreError::PskGone);
        }
        insert_cert(self.engine, &mut *tx, issuance.cert).await?;
        insert_audit(self.engine, &mut *tx, issuance.audit).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records a certificate that no PSK paid for (the server's own, renewals).
    pub async fn record_certificate(
        &self,
        cert: &CertRecord,
        audit: &AuditEvent,
    ) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        insert_cert(self.engine, &mut *tx, cert).await?;
        insert_audit(self.engine, &mut *tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Whether `hostname` names a live server certificate of a `serve`
    /// sharing this store (the CA's own name: reserved, `admin::Ops::psk_add`).
    pub async fn is_server_name(&self, hostname: &str, now: i64) -> StoreResult<bool> {
        let row = sqlx::query(
            "SELECT 1 AS found FROM certificates \
             WHERE hostname = $1 AND kind = 'server' AND not_after > $2 LIMIT 1",
        )
        .bind(hostname)
        .bind(now)
        .fetch_optional(&mut *self.conn().await?)
        .await?;
        Ok(row.is_some())
    }

    /// Certificates issued for `hostname` against the PSK with `hash` (at most
    /// one in practice): what the idempotent retry looks for.
    pub async fn certs_by_psk(
        &self,
        hostname: &str,
        hash: &PskHash,
    ) -> StoreResult<Vec<CertRecord>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            cert_columns!(),
            " FROM certificates WHERE hostname = $1 AND psk_hash = $2"
        ))
        .bind(hostname)
        .bind(hash.0.to_vec())
        .fetch_all(&mut *self.conn().await?)
        .await?;
        rows.iter().map(cert_from_row).collect()
    }

    /// One certificate by serial (lowercase hex).
    pub async fn get_cert(&self, serial: &str) -> StoreResult<Option<CertRecord>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            cert_columns!(),
            " FROM certificates WHERE serial = $1"
        ))
        .bind(serial)
        .fetch_optional(&mut *self.conn().await?)
        .await?;
        row.as_ref().map(cert_from_row).transpose()
    }

    /// `hostname`'s certificates with their DER, newest first.
    pub async fn host_certs(&self, hostname: &str) -> StoreResult<Vec<CertRecord>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            cert_columns!(),
            " FROM certificates WHERE hostname = $1 ORDER BY issued_at DESC, serial"
        ))
        .bind(hostname)
        .fetch_all(&mut *self.conn().await?)
        .await?;
        rows.iter().map(cert_from_row).collect()
    }

    /// Certificates, newest first, optionally only one host's and/or only
    /// those valid at `now` that expire before `expiring_before`. A host's
    /// are found through the hostname index; the rest from
    /// `certificates_listing` alone.
    pub async fn list_certs(
        &self,
        hostname: Option<&str>,
        expiring: Option<(i64, i64)>,
    ) -> StoreResult<Vec<CertSummary>> {
        let (now, before) = expiring.unwrap_or((i64::MIN, i64::MAX));
        let query = match hostname {
            Some(host) => sqlx::query(concat!(
                "SELECT ",
                cert_summary_columns!(),
                " FROM certificates WHERE hostname = $1 AND not_after > $2 AND not_after <= $3 \
                 ORDER BY issued_at DESC, serial"
            ))
            .bind(host)
            .bind(now)
            .bind(before),
            None => sqlx::query(concat!(
                "SELECT ",
                cert_summary_columns!(),
                " FROM certificates WHERE not_after > $1 AND not_after <= $2 \
                 ORDER BY issued_at DESC, serial"
            ))
            .bind(now)
            .bind(before),
        };
        let rows = query.fetch_all(&mut *self.conn().await?).await?;
        rows.iter().map(cert_summary_from_row).collect()
    }

    /// Writes one audit row outside any other transaction.
    pub async fn audit(&self, event: &AuditEvent) -> StoreResult<()> {
        self.audit_returning_id(event).await.map(|_| ())
    }

    /// Writes one audit row and returns its id (so repeats can count up on it).
    pub async fn audit_returning_id(&self, event: &AuditEvent) -> StoreResult<i64> {
        let mut tx = self.begin().await?;
        let id = append_audit(self.engine, &mut tx, event, None).await?;
        tx.commit().await?;
        Ok(id)
    }

    /// Adds counted repeats to audit rows, all in one transaction: each
    /// `(id, n, last_at)` adds `n` to row `id`'s count and moves its
    /// `last_at`, and appends a repeat row saying so to the chain (the
    /// update alone would leave the count unprovable; docs/audit.md). Rows
    /// that no longer exist are skipped. (The refusal log's periodic flush:
    /// one write for every repeat counted since the last.)
    pub async fn audit_repeats(&self, repeats: &[(i64, i64, i64)]) -> StoreResult<()> {
        if repeats.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        for &(id, n, last_at) in repeats {
            let updated = sqlx::query(
                "UPDATE audit SET repeat_count = repeat_count + $2, \
                 last_at = CASE WHEN last_at IS NULL OR last_at < $3 THEN $3 ELSE last_at END \
                 WHERE id = $1 AND repeats_of IS NULL",
            )
            .bind(id)
            .bind(n)
            .bind(last_at)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if updated == 1 {
                let row = AuditEvent {
                    at: last_at,
                    event: Event::RefusalRepeats.into(),
                    outcome: Outcome::Counted.into(),
                    ..Default::default()
                };
                append_audit(self.engine, &mut tx, &row, Some((id, n, last_at))).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Audit rows at or after `since`, oldest first, at most `limit`.
    pub async fn audit_since(&self, since: i64, limit: i64) -> StoreResult<Vec<AuditEvent>> {
        self.audit_query(since, limit, &AuditFilter::default())
            .await
    }

    /// Audit rows at or after `since` that match `filter`, oldest first, at most `limit`.
    pub async fn audit_query(
        &self,
        since: i64,
        limit: i64,
        filter: &AuditFilter,
    ) -> StoreResult<Vec<AuditEvent>> {
        let rows = sqlx::query(
            "SELECT id, at, event, hostname, serial, outcome, reason, peer, actor, \
             repeat_count, last_at FROM audit \
             WHERE (at >= $1 OR last_at >= $1) AND repeats_of IS NULL \
             AND ($3 IS NULL OR hostname = $3) AND ($4 IS NULL OR event = $4) \
             ORDER BY id LIMIT $2",
        )
        .bind(since)
        .bind(limit)
        .bind(filter.host.as_deref())
        .bind(filter.event.as_deref())
        .fetch_all(&mut *self.conn().await?)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AuditEvent {
                    id: Some(r.try_get("id")?),
                    at: r.try_get("at")?,
                    event: r.try_get("event")?,
                    hostname: r.try_get("hostname")?,
                    serial: r.try_get("serial")?,
                    outcome: r.try_get("outcome")?,
                    reason: r.try_get("reason")?,
                    peer: r.try_get("peer")?,
                    actor: r.try_get("actor")?,
                    count: r.try_get("repeat_count")?,
                    last_at: r.try_get("last_at")?,
                })
            })
            .collect()
    }
}

/// Runs the migrations that ship in the binary. PostgreSQL: sqlx holds an
/// advisory lock (`pg_advisory_lock`, keyed by the database name) for the
/// whole run, so replicas starting at once take turns. SQLite: sqlx takes no
/// lock, so the run happens inside `BEGIN IMMEDIATE` (the write lock, waited
/// for through `busy_timeout`); each migration is a savepoint inside it.
async fn migrate(pool: &AnyPool, engine: Engine) -> Result<()> {
    match engine {
        Engine::Postgres => sqlx::migrate!("./migrations/postgres").run(pool).await?,
        Engine::Sqlite => {
            let mut conn = pool.acquire().await?;
            let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
            sqlx::migrate!("./migrations/sqlite")
                .run_direct(None, &mut *tx, false)
                .await?;
            tx.commit().await?;
        }
    }
    Ok(())
}

/// The stored form of a PSK's extra names: a JSON array of strings.
fn sans_json(allowed_sans: &[AllowedName]) -> String {
    let sans: Vec<String> = allowed_sans.iter().map(|n| n.to_string()).collect();
    serde_json::to_string(&sans).expect("strings serialise")
}

/// Creates or replaces one PSK row.
async fn upsert_psk<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(
    ex: E,
    hostname: &str,
    hash: &PskHash,
    sans_json: &str,
    created_at: i64,
    expires_at: i64,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO psks (hostname, psk_hash, allowed_sans, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (hostname) DO UPDATE SET psk_hash = excluded.psk_hash, \
         allowed_sans = excluded.allowed_sans, created_at = excluded.created_at, \
         expires_at = excluded.expires_at",
    )
    .bind(hostname)
    .bind(hash.0.to_vec())
    .bind(sans_json)
    .bind(created_at)
    .bind(expires_at)
    .execute(ex)
    .await?;
    Ok(())
}

/// Writes one certificate row: the one function behind every path that
/// records a certificate outside the group commit (which uses the same SQL).
async fn insert_cert<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(
    engine: Engine,
    ex: E,
    c: &CertRecord,
) -> StoreResult<()> {
    match engine {
        Engine::Sqlite => {
            sqlx::query(insert_cert_sqlite!())
                .bind(&c.serial)
                .bind(&c.hostname)
                .bind(&c.kind)
                .bind(&c.public_key_sha256)
                .bind(&c.psk_hash)
                .bind(c.psk_expires_at)
                .bind(c.not_before)
                .bind(c.not_after)
                .bind(&c.der)
                .bind(c.issued_at)
                .bind(c.revoked_at)
                .bind(&c.revocation_reason)
                .bind(&c.superseded_by)
                .execute(ex)
                .await?;
            Ok(())
        }
        Engine::Postgres => insert_certs_pg(ex, &[c]).await,
    }
}

/// Writes certificate rows on PostgreSQL in one statement (the group
/// commit's batch, or one row).
async fn insert_certs_pg<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(
    ex: E,
    certs: &[&CertRecord],
) -> StoreResult<()> {
    sqlx::query(insert_certs_pg!())
        .bind(certs_json(certs))
        .execute(ex)
        .await?;
    Ok(())
}

/// The JSON array parameter of [`insert_certs_pg!`].
fn certs_json(certs: &[&CertRecord]) -> String {
    let rows: Vec<serde_json::Value> = certs
        .iter()
        .map(|c| {
            serde_json::json!({
                "serial": c.serial,
                "hostname": c.hostname,
                "kind": c.kind,
                "pk": hex::encode(&c.public_key_sha256),
                "ph": c.psk_hash.as_ref().map(hex::encode),
                "pe": c.psk_expires_at,
                "nb": c.not_before,
                "na": c.not_after,
                "der": hex::encode(&c.der),
                "ia": c.issued_at,
                "ra": c.revoked_at,
                "rr": c.revocation_reason,
                "sb": c.superseded_by,
            })
        })
        .collect();
    serde_json::Value::Array(rows).to_string()
}

/// Appends one audit row to the hash chain in the caller's transaction
/// (the one function for every path but the group commit, which uses the
/// same SQL).
async fn insert_audit<C: chain::AuditConn + ?Sized>(
    engine: Engine,
    conn: &mut C,
    a: &AuditEvent,
) -> StoreResult<()> {
    append_audit(engine, conn.as_conn(), a, None)
        .await
        .map(|_| ())
}

/// Appends one audit row (`repeats`: of a repeat row) to the chain: its
/// position reserved on the head row, the row, the new head. Returns its id.
async fn append_audit(
    engine: Engine,
    conn: &mut sqlx::AnyConnection,
    a: &AuditEvent,
    repeats: Option<(i64, i64, i64)>,
) -> StoreResult<i64> {
    let mut links = chain::reserve(conn, 1).await?;
    let row = links.next(a, repeats);
    let inserted = match engine {
        Engine::Sqlite => {
            bind_audit_sqlite(
                sqlx::query(concat!(insert_audit_sqlite!(), " RETURNING id")),
                a,
                &row,
            )
            .fetch_one(&mut *conn)
            .await?
        }
        Engine::Postgres => {
            sqlx::query(concat!(insert_audits_pg!(), " RETURNING id"))
                .bind(audits_json(&[(a, row)]))
                .fetch_one(&mut *conn)
                .await?
        }
    };
    links.set_head(conn).await?;
    Ok(inserted.try_get("id")?)
}

/// Appends `audits` to the chain in order, with one reservation and one
/// head update for all of them. Appended one by one, each row updates the
/// one head row; inside one transaction PostgreSQL keeps every version of
/// that row and each update walks past all the earlier ones, so `psk batch`
/// of 100,000 hosts ran for many minutes, quadratically.
async fn insert_audits<C: chain::AuditConn + ?Sized>(
    engine: Engine,
    conn: &mut C,
    audits: &[AuditEvent],
) -> StoreResult<()> {
    if audits.is_empty() {
        return Ok(());
    }
    let conn = conn.as_conn();
    match engine {
        Engine::Postgres => insert_audits_pg(conn, &audits.iter().collect::<Vec<_>>()).await,
        Engine::Sqlite => {
            let mut links = chain::reserve(conn, audits.len() as i64).await?;
            for a in audits {
                let row = links.next(a, None);
                bind_audit_sqlite(sqlx::query(insert_audit_sqlite!()), a, &row)
                    .execute(&mut *conn)
                    .await?;
            }
            links.set_head(conn).await
        }
    }
}

/// Binds one audit row and its chain columns to [`insert_audit_sqlite!`].
fn bind_audit_sqlite<'q>(
    query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    a: &'q AuditEvent,
    row: &chain::Link,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    query
        .bind(a.at)
        .bind(&a.event)
        .bind(&a.hostname)
        .bind(&a.serial)
        .bind(&a.outcome)
        .bind(&a.reason)
        .bind(&a.peer)
        .bind(&a.actor)
        .bind(row.count)
        .bind(row.last_at)
        .bind(row.repeats_of)
        .bind(row.seq)
        .bind(row.hash.to_vec())
}

/// The JSON array parameter of [`insert_audits_pg!`].
fn audits_json(audits: &[(&AuditEvent, chain::Link)]) -> String {
    let rows: Vec<serde_json::Value> = audits
        .iter()
        .map(|(a, l)| {
            serde_json::json!({
                "at": a.at, "event": a.event, "hostname": a.hostname, "serial": a.serial,
                "outcome": a.outcome, "reason": a.reason, "peer": a.peer, "actor": a.actor,
                "rc": l.count, "la": l.last_at, "ro": l.repeats_of, "seq": l.seq,
                "hash": hex::encode(l.hash),
            })
        })
        .collect();
    serde_json::Value::Array(rows).to_string()
}

/// Appends audit rows on PostgreSQL in three statements whatever their
/// number (the group commit's batch): reserve, insert, move the head.
async fn insert_audits_pg(
    conn: &mut sqlx::AnyConnection,
    audits: &[&AuditEvent],
) -> StoreResult<()> {
    let mut links = chain::reserve(conn, audits.len() as i64).await?;
    let rows: Vec<(&AuditEvent, chain::Link)> =
        audits.iter().map(|a| (*a, links.next(a, None))).collect();
    sqlx::query(insert_audits_pg!())
        .bind(audits_json(&rows))
        .execute(&mut *conn)
        .await?;
    links.set_head(conn).await
}

fn cert_from_row(r: &AnyRow) -> StoreResult<CertRecord> {
    Ok(CertRecord {
        serial: r.try_get("serial")?,
        hostname: r.try_get("hostname")?,
        kind: r.try_get("kind")?,
        public_key_sha256: r.try_get("public_key_sha256")?,
        psk_hash: r.try_get("psk_hash")?,
        psk_expires_at: r.try_get("psk_expires_at")?,
        not_before: r.try_get("not_before")?,
        not_after: r.try_get("not_after")?,
        der: r.try_get("der")?,
        issued_at: r.try_get("issued_at")?,
        revoked_at: r.try_get("revoked_at")?,
        revocation_reason: r.try_get("revocation_reason")?,
        superseded_by: r.try_get("superseded_by")?,
    })
}

fn cert_summary_from_row(r: &AnyRow) -> StoreResult<CertSummary> {
    Ok(CertSummary {
        serial: r.try_get("serial")?,
        hostname: r.try_get("hostname")?,
        kind: r.try_get("kind")?,
        public_key_sha256: r.try_get("public_key_sha256")?,
        not_before: r.try_get("not_before")?,
        not_after: r.try_get("not_after")?,
        issued_at: r.try_get("issued_at")?,
        revoked_at: r.try_get("revoked_at")?,
        revocation_reason: r.try_get("revocation_reason")?,
        superseded_by: r.try_get("superseded_by")?,
    })
}

/// The file behind a `sqlite://` URL, created 0600 before SQLite opens it
/// (SQLite gives its WAL and SHM files the same mode).
fn prepare_sqlite_file(url: &str) -> Result<()> {
    let Some(path) = sqlite_path(url) else {
        return Ok(());
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        proto::fsutil::create_private_dir(parent)?;
    }
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e).with_context(|| format!("creating {}", path.display())),
    }
}

/// The file behind a `sqlite://` URL (`None` for other engines and `:memory:`).
pub fn sqlite_path(url: &str) -> Option<PathBuf> {
    let rest = url.strip_prefix("sqlite:")?.trim_start_matches("//");
    let path = rest.split('?').next().unwrap_or("");
    if path.is_empty() || path == ":memory:" {
        return None;
    }
    Some(PathBuf::from(path))
}

/// A database URL with any password replaced, for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://ca:secret@127.0.0.1:5432/ca"),
            "postgres://ca:***@127.0.0.1:5432/ca"
        );
        assert_eq!(
            redact_url("sqlite://./ca-data/ca.db"),
            "sqlite://./ca-data/ca.db"
        );
    }
}
