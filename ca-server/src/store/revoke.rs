//! Revocation and renewal in the store: marking certificates revoked (by
//! serial or by host) and replacing a certificate by its renewal. Another
//! `impl Store` block, kept out of `store/mod.rs`.
//!
//! Both are compare-and-swap updates that must change exactly the rows they
//! expect, in the same transaction as their audit rows: revoking twice
//! changes nothing, and of two renewals with one certificate only one wins.

use super::{
    AuditEvent, CertRecord, Store, StoreResult, cert_from_row, insert_audit, insert_audits,
    insert_cert,
};
use super::{Event, Outcome};

/// What revoking one serial did.
#[derive(Debug, Clone)]
pub enum RevokeOutcome {
    /// Revoked now.
    Revoked(CertRecord),
    /// It was revoked before; nothing changed.
    AlreadyRevoked(CertRecord),
}

/// A revocation to record.
#[derive(Debug, Clone)]
pub struct Revocation<'a> {
    /// RFC 5280 reason name (`keyCompromise`, `unspecified`, ...).
    pub reason: &'a str,
    pub now: i64,
    /// Who revoked (the audit row's actor).
    pub actor: &'a str,
}

impl Revocation<'_> {
    fn audit(&self, cert: &CertRecord) -> AuditEvent {
        AuditEvent {
            at: self.now,
            event: Event::Revoked.into(),
            hostname: Some(cert.hostname.clone()),
            serial: Some(cert.serial.clone()),
            outcome: Outcome::Revoked.into(),
            reason: Some(self.reason.to_owned()),
            actor: Some(self.actor.to_owned()),
            ..Default::default()
        }
    }
}

/// Bumps the revocation sequence: the servers' signal that the published
/// CRLs are behind. Same transaction as the revocation it announces.
const BUMP_REVOCATION_SEQ: &str =
    "UPDATE crl_state SET revocation_seq = revocation_seq + 1 WHERE id = 1";

impl Store {
    /// Revokes one certificate (serial in lowercase hex); `None` if there is
    /// no such certificate. An already revoked certificate keeps its time
    /// and reason.
    pub async fn revoke_serial(
        &self,
        serial: &str,
        how: &Revocation<'_>,
    ) -> StoreResult<Option<RevokeOutcome>> {
        let mut tx = self.begin().await?;
        let row = sqlx::query(concat!(
            "UPDATE certificates SET revoked_at = $1, revocation_reason = $2 \
             WHERE serial = $3 AND revoked_at IS NULL RETURNING ",
            cert_columns!()
        ))
        .bind(how.now)
        .bind(how.reason)
        .bind(serial)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Ok(self
                .get_cert(serial)
                .await?
                .map(RevokeOutcome::AlreadyRevoked));
        };
        let cert = cert_from_row(&row)?;
        sqlx::query(BUMP_REVOCATION_SEQ).execute(&mut *tx).await?;
        insert_audit(self.engine, &mut *tx, &how.audit(&cert)).await?;
        tx.commit().await?;
        Ok(Some(RevokeOutcome::Revoked(cert)))
    }

    /// Revokes every unexpired, unrevoked certificate of `hostname`; returns
    /// those it revoked (none if there were none).
    pub async fn revoke_host(
        &self,
        hostname: &str,
        how: &Revocation<'_>,
    ) -> StoreResult<Vec<CertRecord>> {
        let mut tx = self.begin().await?;
        let rows = sqlx::query(concat!(
            "UPDATE certificates SET revoked_at = $1, revocation_reason = $2 \
             WHERE hostname = $3 AND revoked_at IS NULL AND not_after > $1 RETURNING ",
            cert_columns!()
        ))
        .bind(how.now)
        .bind(how.reason)
        .bind(hostname)
        .fetch_all(&mut *tx)
        .await?;
        let mut certs = rows
            .iter()
            .map(cert_from_row)
            .collect::<StoreResult<Vec<_>>>()?;
        if certs.is_empty() {
            tx.rollback().await?;
            return Ok(certs);
        }
        sqlx::query(BUMP_REVOCATION_SEQ).execute(&mut *tx).await?;
        let audits: Vec<AuditEvent> = certs.iter().map(|c| how.audit(c)).collect();
        insert_audits(self.engine, &mut *tx, &audits).await?;
        tx.commit().await?;
        certs.sort_by(|a, b| a.serial.cmp(&b.serial));
        Ok(certs)
    }

    /// Whether a certificate for this key (SHA-256 of its SubjectPublicKeyInfo)
    /// was revoked as `keyCompromise`: such a key never gets a certificate again.
    pub async fn key_compromised(&self, public_key_sha256: &[u8]) -> StoreResult<bool> {
        if let Some(reader) = self.reader.get() {
            return self
                .key_compromised_grouped(reader, public_key_sha256)
                .await;
        }
        let row = sqlx::query(
            "SELECT serial FROM certificates WHERE public_key_sha256 = $1 \
             AND revocation_reason = 'keyCompromise' LIMIT 1",
        )
        .bind(public_key_sha256.to_vec())
        .fetch_optional(&mut *self.conn().await?)
        .await?;
        Ok(row.is_some())
    }

    /// Whether `hostname` has a host certificate that ends after `not_after`
    /// (revoked or not): a later bootstrap replaced the one ending then.
    pub async fn has_later_cert(&self, hostname: &str, not_after: i64) -> StoreResult<bool> {
        let row = sqlx::query(
            "SELECT serial FROM certificates WHERE hostname = $1 AND kind = 'host' \
             AND not_after > $2 LIMIT 1",
        )
        .bind(hostname)
        .bind(not_after)
        .fetch_optional(&mut *self.conn().await?)
        .await?;
        Ok(row.is_some())
    }

    /// Records `new` as the renewal of `old_serial`: the old row gets
    /// `superseded_by`, only if it is still unrevoked, not superseded and
    /// ends after `valid_after` (the time of the request less the renewal
    /// grace: an expired certificate renews within the grace); then the new
    /// row and its audit row go in. `false` (nothing written) if the old
    /// certificate no longer qualifies.
    pub async fn record_renewal(
        &self,
        old_serial: &str,
        new: &CertRecord,
        audit: &AuditEvent,
        valid_after: i64,
    ) -> StoreResult<bool> {
        let mut tx = self.begin().await?;
        // First statement, as in record_issuance: SQLite takes its write lock
        // at once and PostgreSQL locks the old row, so of two concurrent
        // renewals exactly one changes it.
        let n = sqlx::query(
            "UPDATE certificates SET superseded_by = $1 WHERE serial = $2 \
             AND superseded_by IS NULL AND revoked_at IS NULL AND not_after > $3",
        )
        .bind(&new.serial)
        .bind(old_serial)
        .bind(valid_after)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        insert_cert(self.engine, &mut *tx, new).await?;
        insert_audit(self.engine, &mut *tx, audit).await?;
        tx.commit().await?;
        Ok(true)
    }
}
