//! What the CRLs are built from: the monotonic CRL number (`crl_state`) and
//! the revoked, unexpired certificates. Another `impl Store` block, kept out
//! of `store/mod.rs` so the CRL work stays in its own file.

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
}

/// A cheap summary of the revoked set at a time: when it changes, the CRL
/// must be re-signed (a revocation by another process or replica, or a
/// revoked certificate that expired and drops out).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RevocationMarker {
    pub count: i64,
    pub latest: Option<i64>,
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

    /// Certificates revoked and still unexpired at `now`, oldest revocation
    /// first: an expired certificate drops out of the CRL.
    pub async fn revoked_unexpired(&self, now: i64) -> StoreResult<Vec<RevokedEntry>> {
        let rows = sqlx::query(
            "SELECT serial, revoked_at, revocation_reason FROM certificates \
             WHERE revoked_at IS NOT NULL AND not_after > $1 ORDER BY revoked_at, serial",
        )
        .bind(now)
        .fetch_all(&mut *self.conn().await?)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(RevokedEntry {
                    serial: r.try_get("serial")?,
                    revoked_at: r.try_get("revoked_at")?,
                    reason: r.try_get("revocation_reason")?,
                })
            })
            .collect()
    }

    /// The [`RevocationMarker`] at `now`.
    pub async fn revocation_marker(&self, now: i64) -> StoreResult<RevocationMarker> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n, MAX(revoked_at) AS latest FROM certificates \
             WHERE revoked_at IS NOT NULL AND not_after > $1",
        )
        .bind(now)
        .fetch_one(&mut *self.conn().await?)
        .await?;
        Ok(RevocationMarker {
            count: row.try_get("n")?,
            latest: row.try_get("latest")?,
        })
    }
}
