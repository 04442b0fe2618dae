//! Many PSKs at once (`ca-server psk batch`): a fleet launch creates
//! thousands of hosts, one transaction for all of them instead of one each.

use super::{AuditEvent, Store, StoreResult, insert_audits, sans_json, upsert_psk};
use policy::{AllowedName, PskHash};

impl Store {
    /// Creates or replaces the PSK of every `(hostname, hash)` in one
    /// transaction, with one audit row per host.
    pub async fn put_psks(
        &self,
        entries: &[(String, PskHash)],
        allowed_sans: &[AllowedName],
        created_at: i64,
        expires_at: i64,
        audit: &AuditEvent,
    ) -> StoreResult<()> {
        let sans = sans_json(allowed_sans);
        let mut tx = self.begin().await?;
        let mut audits = Vec::with_capacity(entries.len());
        for (host, hash) in entries {
            upsert_psk(&mut *tx, host, hash, &sans, created_at, expires_at).await?;
            let mut row = audit.clone();
            row.hostname = Some(host.clone());
            audits.push(row);
        }
        insert_audits(self.engine, &mut *tx, &audits).await?;
        tx.commit().await?;
        Ok(())
    }
}
