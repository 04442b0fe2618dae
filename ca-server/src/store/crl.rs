//! What the CRLs are built from and where they are published: the monotonic
//! CRL number and revocation sequence (`crl_state`), the revoked, unexpired
//! certificates, and the newest signed generation (`crl_published`) that
//! every replica serves. Another `impl Store` block, kept out of
//! `store/mod.rs` so the CRL work stays in its own file.
//!
//! Ordering: [`Store::crl_snapshot`] takes the CRL numbers and reads the
//! revoked set in one transaction that holds the `crl_state` row, and every
//! revocation bumps `revocation_seq` on that same row in its own
//! transaction. So snapshots are totally ordered by their numbers, and a
//! higher number never lists less than a lower one: a client that only
//! accepts newer CRLs can never lose a revocation.

use super::{Store, StoreResult};
use sqlx::Row;

/// A revoked certificate as a CRL lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedEntry {
    /// Lowercase hex, as stored.
    pub serial: String,
    pub revoked_at: i64,
    /// RFC 5280 reason name (`keyCompromise`, `superseded`, ...), if recorded.
    pub reason: Option<String>,
    /// When the certificate expires (and drops out of the CRL).
    pub not_after: i64,
}

/// One consistent view for a CRL generation.
#[derive(Debug, Clone)]
pub struct CrlSnapshot {
    /// The first of the CRL numbers taken; the others follow it.
    pub first_number: i64,
    /// The revocation sequence the entries reflect.
    pub revocation_seq: i64,
    /// When the published generation was signed (its signer's clock): a new
    /// generation's thisUpdate never goes below it, whatever this clock says.
    pub published_at: Option<i64>,
    /// Revoked certificates unexpired at the snapshot's time, oldest revocation first.
    pub entries: Vec<RevokedEntry>,
}

/// A signed generation as stored for every replica to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedCrls {
    /// The intermediate (short) CRL's number; generations only grow.
    pub generation: i64,
    pub generated_at: i64,
    pub revocation_seq: i64,
    /// The earliest `not_after` among the listed certificates: the CRL is
    /// re-signed then so that expired certificates drop out.
    pub next_dropout: Option<i64>,
    pub revoked: i64,
    pub intermediate: Vec<u8>,
    pub intermediate_long: Vec<u8>,
    pub root: Option<Vec<u8>>,
}

/// What a server polls: is the published generation new to it, or behind
/// the revocations in the store?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrlPoll {
    pub revocation_seq: i64,
    pub published_generation: Option<i64>,
}

impl Store {
    /// Takes the next CRL number. One atomic statement, so two replicas
    /// sharing PostgreSQL (or two processes on one SQLite file) never get
    /// the same number, and numbers only grow.
    pub async fn next_crl_number(&self) -> StoreResult<i64> {
        let row = sqlx::query(
            "UPDATE crl_state SET crl_number = crl_number + 1 WHERE id = 1 RETURNING crl_number",
        )
        .fetch_one(&mut *self.conn().await?)
        .await?;
        Ok(row.try_get("crl_number")?)
    }

    /// Takes `count` consecutive CRL numbers and reads the revoked set at
    /// `now`, in one short transaction (no signing inside, so issuance is
    /// never held up by it).
    pub async fn crl_snapshot(&self, now: i64, count: i64) -> StoreResult<CrlSnapshot> {
        let mut tx = self.begin().await?;
        // The UPDATE comes first: it locks the crl_state row (PostgreSQL) or
        // takes the write lock (SQLite) until commit, so revocations, which
        // bump the same row, are either wholly before this read or after it.
        let state = sqlx::query(
            "UPDATE crl_state SET crl_number = crl_number + $1 WHERE id = 1 \
             RETURNING crl_number, revocation_seq",
        )
        .bind(count)
        .fetch_one(&mut *tx)
        .await?;
        let last: i64 = state.try_get("crl_number")?;
        let revocation_seq: i64 = state.try_get("revocation_seq")?;
        let published_at: Option<i64> =
            sqlx::query("SELECT generated_at FROM crl_published WHERE id = 1")
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| r.try_get("generated_at"))
                .transpose()?;
        let rows = sqlx::query(
            "SELECT serial, revoked_at, revocation_reason, not_after FROM certificates \
             WHERE revoked_at IS NOT NULL AND not_after > $1 ORDER BY revoked_at, serial",
        )
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let entries = rows
            .iter()
            .map(|r| {
                Ok(RevokedEntry {
                    serial: r.try_get("serial")?,
                    revoked_at: r.try_get("revoked_at")?,
                    reason: r.try_get("revocation_reason")?,
                    not_after: r.try_get("not_after")?,
                })
            })
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(CrlSnapshot {
            first_number: last - count + 1,
            revocation_seq,
            published_at,
            entries,
        })
    }

    /// Publishes a generation unless a higher one is published already;
    /// `true` if this one is now the published one.
    pub async fn publish_crls(&self, p: &PublishedCrls) -> StoreResult<bool> {
        let n = sqlx::query(
            "INSERT INTO crl_published (id, generation, generated_at, revocation_seq, \
             next_dropout, revoked, intermediate, intermediate_long, root) \
             VALUES (1, $1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (id) DO UPDATE SET generation = excluded.generation, \
             generated_at = excluded.generated_at, revocation_seq = excluded.revocation_seq, \
             next_dropout = excluded.next_dropout, revoked = excluded.revoked, \
             intermediate = excluded.intermediate, intermediate_long = excluded.intermediate_long, \
             root = excluded.root \
             WHERE crl_published.generation < excluded.generation",
        )
        .bind(p.generation)
        .bind(p.generated_at)
        .bind(p.revocation_seq)
        .bind(p.next_dropout)
        .bind(p.revoked)
        .bind(&p.intermediate)
        .bind(&p.intermediate_long)
        .bind(&p.root)
        .execute(&mut *self.conn().await?)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// The published generation, if any.
    pub async fn published_crls(&self) -> StoreResult<Option<PublishedCrls>> {
        let row = sqlx::query(
            "SELECT generation, generated_at, revocation_seq, next_dropout, revoked, \
             intermediate, intermediate_long, root FROM crl_published WHERE id = 1",
        )
        .fetch_optional(&mut *self.conn().await?)
        .await?;
        row.map(|r| {
            Ok(PublishedCrls {
                generation: r.try_get("generation")?,
                generated_at: r.try_get("generated_at")?,
                revocation_seq: r.try_get("revocation_seq")?,
                next_dropout: r.try_get("next_dropout")?,
                revoked: r.try_get("revoked")?,
                intermediate: r.try_get("intermediate")?,
                intermediate_long: r.try_get("intermediate_long")?,
                root: r.try_get("root")?,
            })
        })
        .transpose()
    }

    /// The revocation sequence and the published generation, in one read.
    pub async fn crl_poll(&self) -> StoreResult<CrlPoll> {
        let row = sqlx::query(
            "SELECT s.revocation_seq AS seq, p.generation AS generation FROM crl_state s \
             LEFT JOIN crl_published p ON p.id = s.id WHERE s.id = 1",
        )
        .fetch_one(&mut *self.conn().await?)
        .await?;
        Ok(CrlPoll {
            revocation_seq: row.try_get("seq")?,
            published_generation: row.try_get("generation")?,
        })
    }
}
