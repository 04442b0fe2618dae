//! The audit chain's SQL: reserving positions on the chain head and moving
//! it ([`reserve`], [`Links`]; the rows themselves are written by the one
//! audit INSERT per engine in `store/mod.rs`), reading the trail for `audit verify`, and the signed
//! checkpoints. The encoding and the walk are in [`super::audit_chain`].
//!
//! Every append starts with `UPDATE audit_chain SET seq = seq + n ...
//! RETURNING seq, head`: on SQLite a write, so the transaction holds the
//! write lock from there; on PostgreSQL a row lock held to commit, so
//! appends from replicas sharing the database take turns and commit in
//! chain order (docs/audit.md).

use super::audit_chain::{self, Fields, Head, StoredCheckpoint, StoredRow};
use super::{AuditEvent, Store, StoreError, StoreResult};
use sqlx::Row;

/// The chain head's UPDATE that reserves `n` positions ($1) and returns the
/// last reserved position and the head hash before them.
pub(super) const RESERVE_SQL: &str =
    "UPDATE audit_chain SET seq = seq + $1 WHERE id = 1 RETURNING seq, head";
/// Moves the head hash after the appended rows.
pub(super) const SET_HEAD_SQL: &str = "UPDATE audit_chain SET head = $1 WHERE id = 1";

impl AuditEvent {
    /// The fields the chain covers; `repeats` for a repeat row.
    pub(super) fn chain_fields(&self, repeats: Option<(i64, i64, i64)>) -> Fields<'_> {
        Fields {
            at: self.at,
            event: &self.event,
            hostname: self.hostname.as_deref(),
            serial: self.serial.as_deref(),
            outcome: &self.outcome,
            reason: self.reason.as_deref(),
            peer: self.peer.as_deref(),
            actor: self.actor.as_deref(),
            repeats,
        }
    }
}

/// Positions and hashes for rows appended after a reservation, in order.
pub(super) struct Links {
    next_seq: i64,
    prev: [u8; 32],
}

/// One appended row's chain columns.
#[derive(Debug, Clone, Copy)]
pub(super) struct Link {
    pub seq: i64,
    pub hash: [u8; 32],
    /// `repeat_count`: 1, or how many a repeat row adds.
    pub count: i64,
    /// `last_at` and `repeats_of`: set for a repeat row only.
    pub last_at: Option<i64>,
    pub repeats_of: Option<i64>,
}

/// Reserves `n` positions on the head row (the lock: see the module doc).
pub(super) async fn reserve(conn: &mut sqlx::AnyConnection, n: i64) -> StoreResult<Links> {
    let reserved = sqlx::query(RESERVE_SQL)
        .bind(n)
        .fetch_one(&mut *conn)
        .await?;
    Links::new(
        reserved.try_get("seq")?,
        n,
        &reserved.try_get::<Vec<u8>, _>("head")?,
    )
}

impl Links {
    /// From the reservation's answer: `last` is the last reserved position.
    pub(super) fn new(last: i64, n: i64, head: &[u8]) -> StoreResult<Links> {
        let prev = audit_chain::hash_from(head)
            .ok_or_else(|| StoreError::Corrupt("audit_chain.head is not 32 bytes".into()))?;
        Ok(Links {
            next_seq: last - n + 1,
            prev,
        })
    }

    /// The next row's chain columns (`repeats`: of a repeat row).
    pub(super) fn next(&mut self, a: &AuditEvent, repeats: Option<(i64, i64, i64)>) -> Link {
        let seq = self.next_seq;
        let hash = audit_chain::link(&self.prev, seq, &a.chain_fields(repeats));
        self.prev = hash;
        self.next_seq += 1;
        let (count, last_at, repeats_of) = match repeats {
            Some((of, n, last)) => (n, Some(last), Some(of)),
            None => (1, None, None),
        };
        Link {
            seq,
            hash,
            count,
            last_at,
            repeats_of,
        }
    }

    /// The head after the last row.
    pub(super) fn head(&self) -> [u8; 32] {
        self.prev
    }

    /// Moves the head row's hash after the rows appended.
    pub(super) async fn set_head(&self, conn: &mut sqlx::AnyConnection) -> StoreResult<()> {
        sqlx::query(SET_HEAD_SQL)
            .bind(self.prev.to_vec())
            .execute(conn)
            .await?;
        Ok(())
    }
}

/// A connection an append can run on (the callers' `&mut *tx`).
pub(super) trait AuditConn: Send {
    fn as_conn(&mut self) -> &mut sqlx::AnyConnection;
}

impl AuditConn for sqlx::AnyConnection {
    fn as_conn(&mut self) -> &mut sqlx::AnyConnection {
        self
    }
}

/// A checkpoint to store: the chain's head and length at `at`, signed.
#[derive(Debug, Clone)]
pub struct NewCheckpoint {
    pub at: i64,
    pub seq: i64,
    pub head: [u8; 32],
    pub key_id: String,
    pub signature: Vec<u8>,
}

/// A stored checkpoint with its key id and signature, for verification.
#[derive(Debug, Clone)]
pub struct CheckpointRow {
    pub id: i64,
    pub at: i64,
    pub seq: i64,
    pub head: Vec<u8>,
    pub key_id: String,
    pub signature: Vec<u8>,
}

impl CheckpointRow {
    pub fn checked(&self, signature_ok: bool) -> StoredCheckpoint {
        StoredCheckpoint {
            id: self.id,
            at: self.at,
            seq: self.seq,
            head: self.head.clone(),
            signature_ok,
        }
    }
}

impl Store {
    /// Writes a signed checkpoint of the chain as it stands: the head is
    /// locked (PostgreSQL) or the write lock taken (SQLite) while `sign`
    /// signs it, so the checkpoint names a committed state. With `skip_same`,
    /// nothing is written when the newest checkpoint already has this
    /// length (the periodic task on an idle CA). Returns the checkpoint
    /// written, if any.
    pub async fn audit_checkpoint(
        &self,
        at: i64,
        skip_same: bool,
        sign: impl FnOnce(i64, &[u8; 32], i64) -> anyhow::Result<(String, Vec<u8>)>,
    ) -> anyhow::Result<Option<NewCheckpoint>> {
        let mut tx = self.begin().await?;
        let row = sqlx::query(RESERVE_SQL)
            .bind(0i64)
            .fetch_one(&mut *tx)
            .await?;
        let seq: i64 = row.try_get("seq")?;
        let head = audit_chain::hash_from(&row.try_get::<Vec<u8>, _>("head")?)
            .ok_or_else(|| StoreError::Corrupt("audit_chain.head is not 32 bytes".into()))?;
        if skip_same {
            let last: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM audit_checkpoints")
                .fetch_one(&mut *tx)
                .await?;
            if last == Some(seq) {
                tx.rollback().await?;
                return Ok(None);
            }
        }
        let (key_id, signature) = sign(seq, &head, at)?;
        sqlx::query(
            "INSERT INTO audit_checkpoints (at, seq, head, key_id, signature) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(at)
        .bind(seq)
        .bind(head.to_vec())
        .bind(&key_id)
        .bind(&signature)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(NewCheckpoint {
            at,
            seq,
            head,
            key_id,
            signature,
        }))
    }

    /// Claims the store for the audit key `key_id` if no key has claimed it
    /// yet; returns the key id the store's checkpoints are signed with.
    pub async fn claim_audit_key(&self, key_id: &str) -> StoreResult<String> {
        let mut conn = self.conn().await?;
        sqlx::query("UPDATE audit_chain SET key_id = $1 WHERE id = 1 AND key_id IS NULL")
            .bind(key_id)
            .execute(&mut *conn)
            .await?;
        let claimed: Option<String> =
            sqlx::query_scalar("SELECT key_id FROM audit_chain WHERE id = 1")
                .fetch_one(&mut *conn)
                .await?;
        claimed.ok_or_else(|| StoreError::Corrupt("audit_chain.key_id is not set".into()))
    }

    /// The head row, the checkpoints and every audit row (in id order), read
    /// in one snapshot, so rows committed meanwhile cannot look like a
    /// mismatch (SQLite: one read transaction; PostgreSQL: `REPEATABLE READ`).
    pub async fn audit_snapshot(&self) -> StoreResult<(Head, Vec<CheckpointRow>, Vec<StoredRow>)> {
        let mut tx = match self.engine {
            super::Engine::Sqlite => self.begin().await?,
            super::Engine::Postgres => {
                self.pool()?
                    .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .await?
            }
        };
        let head = read_head(&mut tx).await?;
        let checkpoints = read_checkpoints(&mut tx).await?;
        let rows = sqlx::query(ROWS_BY_ID_SQL).fetch_all(&mut *tx).await?;
        let rows = rows.iter().map(stored_row).collect::<StoreResult<_>>()?;
        tx.rollback().await?;
        Ok((head, checkpoints, rows))
    }

    /// The chain head row.
    pub async fn audit_chain_head(&self) -> StoreResult<Head> {
        read_head(&mut *self.conn().await?).await
    }

    /// Chained rows after position `after`, in chain order, at most
    /// `limit` (the export's tail).
    pub async fn audit_rows_after(&self, after: i64, limit: i64) -> StoreResult<Vec<StoredRow>> {
        let rows = sqlx::query(ROWS_AFTER_SQL)
            .bind(after)
            .bind(limit)
            .fetch_all(&mut *self.conn().await?)
            .await?;
        rows.iter().map(stored_row).collect()
    }
}

/// The columns the walk and the export read.
macro_rules! trail_columns {
    () => {
        "SELECT id, at, event, hostname, serial, outcome, reason, peer, actor, \
         repeat_count, last_at, repeats_of, chain_seq, chain_hash FROM audit"
    };
}
const ROWS_BY_ID_SQL: &str = concat!(trail_columns!(), " ORDER BY id");
const ROWS_AFTER_SQL: &str = concat!(
    trail_columns!(),
    " WHERE chain_seq > $1 ORDER BY chain_seq LIMIT $2"
);

async fn read_head(conn: &mut sqlx::AnyConnection) -> StoreResult<Head> {
    let row = sqlx::query("SELECT seq, head, genesis_id FROM audit_chain WHERE id = 1")
        .fetch_optional(conn)
        .await?
        .ok_or_else(|| StoreError::Corrupt("the audit_chain row is missing".into()))?;
    Ok(Head {
        seq: row.try_get("seq")?,
        head: row.try_get("head")?,
        genesis_id: row.try_get("genesis_id")?,
    })
}

async fn read_checkpoints(conn: &mut sqlx::AnyConnection) -> StoreResult<Vec<CheckpointRow>> {
    let rows = sqlx::query(
        "SELECT id, at, seq, head, key_id, signature FROM audit_checkpoints ORDER BY id",
    )
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(CheckpointRow {
                id: r.try_get("id")?,
                at: r.try_get("at")?,
                seq: r.try_get("seq")?,
                head: r.try_get("head")?,
                key_id: r.try_get("key_id")?,
                signature: r.try_get("signature")?,
            })
        })
        .collect()
}

fn stored_row(r: &sqlx::any::AnyRow) -> StoreResult<StoredRow> {
    Ok(StoredRow {
        id: r.try_get("id")?,
        at: r.try_get("at")?,
        event: r.try_get("event")?,
        hostname: r.try_get("hostname")?,
        serial: r.try_get("serial")?,
        outcome: r.try_get("outcome")?,
        reason: r.try_get("reason")?,
        peer: r.try_get("peer")?,
        actor: r.try_get("actor")?,
        repeat_count: r.try_get("repeat_count")?,
        last_at: r.try_get("last_at")?,
        repeats_of: r.try_get("repeats_of")?,
        chain_seq: r.try_get("chain_seq")?,
        chain_hash: r.try_get("chain_hash")?,
    })
}
