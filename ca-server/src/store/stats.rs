//! Counts for monitoring (the `/metrics` gauges that need the store): live
//! PSKs, hosts whose certificate is about to expire, and stale hosts (whose
//! current certificate expired without a renewal), within the renewal grace
//! and beyond it. Cheap queries on indexed columns; the metrics module
//! caches their result for a few seconds.

use super::{CertSummary, Store, StoreResult, cert_summary_from_row};
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
    /// Stale hosts whose certificate expired less than the grace ago: they
    /// can still renew.
    pub expired_within_grace: i64,
    /// Stale hosts past the grace: they need a new PSK.
    pub expired_beyond_grace: i64,
}

/// The stale certificates `c` at `$1` (now): host certificates that
/// expired unrevoked and unrenewed, with no later certificate for their host
/// (a renewal or a new bootstrap). A revoked one is the operator's decision,
/// not a stranded host.
macro_rules! stale_where {
    () => {
        "c.kind = 'host' AND c.revoked_at IS NULL AND c.superseded_by IS NULL \
         AND c.not_after <= $1 AND NOT EXISTS (SELECT 1 FROM certificates n \
         WHERE n.hostname = c.hostname AND n.kind = 'host' AND n.not_after > c.not_after)"
    };
}

impl Store {
    /// The stale certificates at `now` (see `stale_where!`), optionally
    /// only `hostname`'s, the most recently expired first.
    pub async fn list_stale(
        &self,
        hostname: Option<&str>,
        now: i64,
    ) -> StoreResult<Vec<CertSummary>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            cert_summary_columns!(),
            " FROM certificates c WHERE ",
            stale_where!(),
            " AND ($2 IS NULL OR c.hostname = $2) ORDER BY c.not_after DESC, c.serial"
        ))
        .bind(now)
        .bind(hostname)
        .fetch_all(&mut *self.conn().await?)
        .await?;
        rows.iter().map(cert_summary_from_row).collect()
    }

    /// Counts at `now`. A host counts as expiring when its newest unrevoked,
    /// unexpired certificate ends inside the window: a host that already
    /// renewed does not, and the server's own certificates (renewed by the
    /// server itself) are left out.
    ///
    /// A host is stale when its newest host certificate expired unrevoked
    /// and unrenewed (`list_stale` lists them); `grace` (seconds) splits them.
    pub async fn stats(&self, now: i64, grace: i64) -> StoreResult<StoreStats> {
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
        let stale = sqlx::query(concat!(
            "SELECT \
               COALESCE(SUM(CASE WHEN c.not_after > $2 THEN 1 ELSE 0 END), 0) AS within, \
               COALESCE(SUM(CASE WHEN c.not_after <= $2 THEN 1 ELSE 0 END), 0) AS beyond \
             FROM certificates c WHERE ",
            stale_where!()
        ))
        .bind(now)
        .bind(now.saturating_sub(grace))
        .fetch_one(&mut *conn)
        .await?;
        Ok(StoreStats {
            live_psks,
            expiring_7d: row.try_get("d7")?,
            expiring_30d: row.try_get("d30")?,
            expired_within_grace: stale.try_get("within")?,
            expired_beyond_grace: stale.try_get("beyond")?,
        })
    }
}
