//! The OCSP responder rows (`ocsp_responders`): certificate and wrapped key
//! of each delegated responder, so every replica signs with the same one.
//! Another `impl Store` block, as `store/crl.rs`.

use super::{Store, StoreResult};
use sqlx::Row;

/// One stored responder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponder {
    /// The responder certificate's serial, lowercase hex.
    pub serial: String,
    pub not_before: i64,
    pub not_after: i64,
    pub cert_der: Vec<u8>,
    /// nonce || AES-256-GCM(PKCS#8); see `pki::ocsp::WrapKey`.
    pub wrapped_key: Vec<u8>,
}

impl Store {
    /// The responder that expires last for the intermediate with this
    /// SHA-256 (two replicas renewing at once both insert; all then use the newest).
    pub async fn ocsp_responder(
        &self,
        intermediate_sha256: &[u8],
    ) -> StoreResult<Option<StoredResponder>> {
        let row = sqlx::query(
            "SELECT serial, not_before, not_after, cert_der, wrapped_key FROM ocsp_responders \
             WHERE intermediate_sha256 = $1 ORDER BY not_after DESC, serial DESC LIMIT 1",
        )
        .bind(intermediate_sha256)
        .fetch_optional(&mut *self.conn().await?)
        .await?;
        row.map(|r| {
            Ok(StoredResponder {
                serial: r.try_get("serial")?,
                not_before: r.try_get("not_before")?,
                not_after: r.try_get("not_after")?,
                cert_der: r.try_get("cert_der")?,
                wrapped_key: r.try_get("wrapped_key")?,
            })
        })
        .transpose()
    }

    /// Stores a new responder and deletes those expired before `now`.
    pub async fn add_ocsp_responder(
        &self,
        intermediate_sha256: &[u8],
        r: &StoredResponder,
        now: i64,
    ) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO ocsp_responders (serial, intermediate_sha256, created_at, not_before, \
             not_after, cert_der, wrapped_key) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&r.serial)
        .bind(intermediate_sha256)
        .bind(now)
        .bind(r.not_before)
        .bind(r.not_after)
        .bind(&r.cert_der)
        .bind(&r.wrapped_key)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM ocsp_responders WHERE not_after < $1")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}
