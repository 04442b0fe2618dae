//! Counts for monitoring (the `/metrics` gauges that need the store): live
//! PSKs and hosts whose certificate is about to expire. Cheap queries on
//! indexed columns; the metrics module caches their result for a few seconds.

use super::{Store, StoreResult};
use sqlx::Row;

/// What the store says at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// PSKs not yet expired.
    pub live_psks: i64,
    /// Hosts whose newest valid certificate expires within 7 days.
    pub expiring_7d: i64,
    /// Hosts whose newest valid certificate expires within 30 days.
    pub expiring_30d: i64,
}

impl Store {
    /// Counts at `now`. A host counts as expiring when its newest unrevoked,
    /// unexpired certificate ends inside the window: a host that already
    /// renewed does not, and the server's own certificates (renewed by the
    /// server itself) are left out.
    pub async fn stats(&self, now: i64) -> StoreResult<StoreStats> {
        let mut conn = self.conn().await?;
        let live_psks: i64 = sqlx::query("SELECT COUNT(*) AS n FROM psks WHERE expires_at > $1")
            .bind(now)
            .fetch_one(&mut *conn)
            .await?
            .try_get("n")?;
        let row = sqlx::query(
            "SELECT \
               COALESCE(SUM(CASE WHEN last_not_after <= $2 THEN 1 ELSE 0 END), 0) AS d7, \
               COALESCE(SUM(CASE WHEN last_not_after <= $3 THEN 1 ELSE 0 END), 0) AS d30 \
             FROM (SELECT hostname, MAX(not_after) AS last_not_after FROM certificates \
                   WHERE kind <> 'server' AND revoked_at IS NULL AND not_after > $1 \
                   GROUP BY hostname) AS current_certs",
        )
        .bind(now)
        .bind(now + 7 * 86_400)
        .bind(now + 30 * 86_400)
        .fetch_one(&mut *conn)
        .await?;
        Ok(StoreStats {
            live_psks,
            expiring_7d: row.try_get("d7")?,
            expiring_30d: row.try_get("d30")?,
        })
    }
}
