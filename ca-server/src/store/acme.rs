//! ACME rows: accounts (created by spending a PSK), orders, Replay-Nonces,
//! and the sealed PSK that checks an External Account Binding. One SQL text
//! per statement, for both engines.

use super::{AuditEvent, CertRecord, Store, StoreError, StoreResult, insert_audit, insert_cert};
use policy::{PskEntry, PskHash};
use sqlx::Row;
use sqlx::any::AnyRow;

/// An ACME account as stored.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct AcmeAccount {
    pub id: String,
    /// RFC 7638 thumbprint (SHA-256, base64url) of the account key.
    pub thumbprint: String,
    /// The account public key, JSON.
    pub jwk: String,
    /// The grant: the PSK's hostname and extra names.
    pub hostname: String,
    pub allowed_sans: Vec<String>,
    pub contact: Vec<String>,
    /// `valid` or `deactivated`.
    pub status: String,
    pub created_at: i64,
}

/// An order as stored; its authorizations are derived from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeOrder {
    pub id: String,
    pub account_id: String,
    /// The ordered names (DNS names and IP literals).
    pub identifiers: Vec<String>,
    /// `ready`, `valid` (finalized) or `invalid`.
    pub status: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub serial: Option<String>,
}

/// A live PSK with its sealed copy (`None` for rows sealed by no one: added
/// before ACME, or by a CLI without the data dir).
#[derive(Debug)]
pub struct SealedPsk {
    pub entry: PskEntry,
    pub sealed: Option<Vec<u8>>,
}

macro_rules! account_columns {
    () => {
        "id, thumbprint, jwk, hostname, allowed_sans, contact, status, created_at"
    };
}

macro_rules! order_columns {
    () => {
        "id, account_id, identifiers, status, created_at, expires_at, serial"
    };
}

fn json_list(row: &AnyRow, col: &str) -> StoreResult<Vec<String>> {
    let text: String = row.try_get(col)?;
    serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("{col}: {e}")))
}

fn account_from_row(row: &AnyRow) -> StoreResult<AcmeAccount> {
    Ok(AcmeAccount {
        id: row.try_get("id")?,
        thumbprint: row.try_get("thumbprint")?,
        jwk: row.try_get("jwk")?,
        hostname: row.try_get("hostname")?,
        allowed_sans: json_list(row, "allowed_sans")?,
        contact: json_list(row, "contact")?,
        status: row.try_get("status")?,
        created_at: row.try_get("created_at")?,
    })
}

fn order_from_row(row: &AnyRow) -> StoreResult<AcmeOrder> {
    Ok(AcmeOrder {
        id: row.try_get("id")?,
        account_id: row.try_get("account_id")?,
        identifiers: json_list(row, "identifiers")?,
        status: row.try_get("status")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        serial: row.try_get("serial")?,
    })
}

fn to_json(list: &[String]) -> String {
    serde_json::to_string(list).expect("strings serialise")
}

impl Store {
    /// Stores the sealed copy of the PSK `hash` of `hostname` (no-op if the
    /// PSK was replaced meanwhile).
    pub async fn seal_psk(&self, hostname: &str, hash: &PskHash, sealed: &[u8]) -> StoreResult<()> {
        sqlx::query("UPDATE psks SET psk_sealed = $1 WHERE hostname = $2 AND psk_hash = $3")
            .bind(sealed.to_vec())
            .bind(hostname)
            .bind(hash.0.to_vec())
            .execute(&mut *self.conn().await?)
            .await?;
        Ok(())
    }

    /// Claims the store for the PSK seal key `key_id` if no key has claimed
    /// it; the id of the key that has (this one, or another).
    pub async fn claim_psk_seal_key(&self, key_id: &str) -> StoreResult<String> {
        let mut conn = self.conn().await?;
        sqlx::query(
            "INSERT INTO psk_seal_key (id, key_id) VALUES (1, $1) ON CONFLICT (id) DO NOTHING",
        )
        .bind(key_id)
        .execute(&mut *conn)
        .await?;
        let row = sqlx::query("SELECT key_id FROM psk_seal_key WHERE id = 1")
            .fetch_one(&mut *conn)
            .await?;
        Ok(row.try_get("key_id")?)
    }

    /// [`Store::seal_psk`] for many PSKs, in one transaction (`psk batch`).
    pub async fn seal_psks(&self, sealed: &[(String, PskHash, Vec<u8>)]) -> StoreResult<()> {
        if sealed.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        for (hostname, hash, value) in sealed {
            sqlx::query("UPDATE psks SET psk_sealed = $1 WHERE hostname = $2 AND psk_hash = $3")
                .bind(value.clone())
                .bind(hostname)
                .bind(hash.0.to_vec())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The PSK row of `hostname` with its sealed copy (live or not: the caller judges).
    pub async fn sealed_psk(&self, hostname: &str) -> StoreResult<Option<SealedPsk>> {
        let row = sqlx::query(
            "SELECT hostname, psk_hash, allowed_sans, expires_at, psk_sealed \
             FROM psks WHERE hostname = $1",
        )
        .bind(hostname)
        .fetch_optional(&mut *self.conn().await?)
        .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(SealedPsk {
            entry: super::psk_entry_from_row(&row)?,
            sealed: row.try_get("psk_sealed")?,
        }))
    }

    /// Spends the PSK (`hash` of `account.hostname`, live at `now`) and
    /// records the account with the PSK's grant and its audit row, in one
    /// transaction: `PskGone` if another redemption won. The stored grant is
    /// the one the deleted row carried.
    pub async fn create_acme_account(
        &self,
        account: &AcmeAccount,
        hash: &PskHash,
        now: i64,
        audit: &AuditEvent,
    ) -> StoreResult<AcmeAccount> {
        let mut tx = self.begin().await?;
        // First statement, as in record_issuance: exactly one redemption sees the row.
        let spent = sqlx::query(
            "DELETE FROM psks WHERE hostname = $1 AND psk_hash = $2 AND expires_at > $3 \
             RETURNING allowed_sans",
        )
        .bind(&account.hostname)
        .bind(hash.0.to_vec())
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(spent) = spent else {
            tx.rollback().await?;
            return Err(StoreError::PskGone);
        };
        let mut account = account.clone();
        account.allowed_sans = json_list(&spent, "allowed_sans")?;
        sqlx::query(concat!(
            "INSERT INTO acme_accounts (",
            account_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        ))
        .bind(&account.id)
        .bind(&account.thumbprint)
        .bind(&account.jwk)
        .bind(&account.hostname)
        .bind(to_json(&account.allowed_sans))
        .bind(to_json(&account.contact))
        .bind(&account.status)
        .bind(account.created_at)
        .execute(&mut *tx)
        .await?;
        insert_audit(self.engine, &mut *tx, audit).await?;
        tx.commit().await?;
        Ok(account)
    }

    pub async fn acme_account(&self, id: &str) -> StoreResult<Option<AcmeAccount>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            account_columns!(),
            " FROM acme_accounts WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&mut *self.conn().await?)
        .await?;
        row.as_ref().map(account_from_row).transpose()
    }

    pub async fn acme_account_by_key(&self, thumbprint: &str) -> StoreResult<Option<AcmeAccount>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            account_columns!(),
            " FROM acme_accounts WHERE thumbprint = $1"
        ))
        .bind(thumbprint)
        .fetch_optional(&mut *self.conn().await?)
        .await?;
        row.as_ref().map(account_from_row).transpose()
    }

    /// Accounts, oldest first, optionally only those of one host.
    pub async fn acme_accounts(&self, hostname: Option<&str>) -> StoreResult<Vec<AcmeAccount>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            account_columns!(),
            " FROM acme_accounts WHERE ($1 IS NULL OR hostname = $1) ORDER BY created_at, id"
        ))
        .bind(hostname)
        .fetch_all(&mut *self.conn().await?)
        .await?;
        rows.iter().map(account_from_row).collect()
    }

    /// Deactivates one account; `false` if it is unknown or was not valid.
    pub async fn deactivate_acme_account(&self, id: &str, audit: &AuditEvent) -> StoreResult<bool> {
        let mut tx = self.begin().await?;
        let n = sqlx::query(
            "UPDATE acme_accounts SET status = 'deactivated' WHERE id = $1 AND status = 'valid'",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 1 {
            insert_audit(self.engine, &mut *tx, audit).await?;
        }
        tx.commit().await?;
        Ok(n == 1)
    }

    /// Deactivates every valid account of `hostname` (`revoke --host`);
    /// their ids.
    pub async fn deactivate_host_accounts(
        &self,
        hostname: &str,
        audit: &AuditEvent,
    ) -> StoreResult<Vec<String>> {
        let mut tx = self.begin().await?;
        let rows = sqlx::query(
            "UPDATE acme_accounts SET status = 'deactivated' \
             WHERE hostname = $1 AND status = 'valid' RETURNING id",
        )
        .bind(hostname)
        .fetch_all(&mut *tx)
        .await?;
        let ids = rows
            .iter()
            .map(|r| r.try_get::<String, _>("id"))
            .collect::<Result<Vec<_>, _>>()?;
        if !ids.is_empty() {
            let mut audit = audit.clone();
            audit.reason = Some(format!("accounts {}", ids.join(", ")));
            insert_audit(self.engine, &mut *tx, &audit).await?;
        }
        tx.commit().await?;
        Ok(ids)
    }

    /// Key rollover: the account's key becomes `jwk` if it still has the
    /// key `old`; `false` otherwise (a concurrent rollover won).
    pub async fn roll_acme_key(
        &self,
        id: &str,
        old: &str,
        thumbprint: &str,
        jwk: &str,
        audit: &AuditEvent,
    ) -> StoreResult<bool> {
        let mut tx = self.begin().await?;
        let n = sqlx::query(
            "UPDATE acme_accounts SET thumbprint = $1, jwk = $2 \
             WHERE id = $3 AND thumbprint = $4 AND status = 'valid'",
        )
        .bind(thumbprint)
        .bind(jwk)
        .bind(id)
        .bind(old)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 1 {
            insert_audit(self.engine, &mut *tx, audit).await?;
        }
        tx.commit().await?;
        Ok(n == 1)
    }

    pub async fn insert_acme_order(
        &self,
        order: &AcmeOrder,
        audit: &AuditEvent,
    ) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        sqlx::query(concat!(
            "INSERT INTO acme_orders (",
            order_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7)"
        ))
        .bind(&order.id)
        .bind(&order.account_id)
        .bind(to_json(&order.identifiers))
        .bind(&order.status)
        .bind(order.created_at)
        .bind(order.expires_at)
        .bind(&order.serial)
        .execute(&mut *tx)
        .await?;
        insert_audit(self.engine, &mut *tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn acme_order(&self, id: &str) -> StoreResult<Option<AcmeOrder>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            order_columns!(),
            " FROM acme_orders WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&mut *self.conn().await?)
        .await?;
        row.as_ref().map(order_from_row).transpose()
    }

    /// The ids of an account's orders, newest first (at most `limit`).
    pub async fn acme_orders_of(&self, account_id: &str, limit: i64) -> StoreResult<Vec<String>> {
        let rows = sqlx::query(
            "SELECT id FROM acme_orders WHERE account_id = $1 \
             ORDER BY created_at DESC, id LIMIT $2",
        )
        .bind(account_id)
        .bind(limit)
        .fetch_all(&mut *self.conn().await?)
        .await?;
        Ok(rows
            .iter()
            .map(|r| r.try_get::<String, _>("id"))
            .collect::<Result<Vec<_>, _>>()?)
    }

    /// Finalizes a `ready` order with `cert`, in one transaction with the
    /// certificate row and its audit row; `false` (nothing recorded) if the
    /// order was not `ready` any more (a concurrent finalize won) or its
    /// account is no longer valid.
    pub async fn finalize_acme_order(
        &self,
        order_id: &str,
        cert: &CertRecord,
        audit: &AuditEvent,
    ) -> StoreResult<bool> {
        let mut tx = self.begin().await?;
        let n = sqlx::query(
            "UPDATE acme_orders SET status = 'valid', serial = $1 \
             WHERE id = $2 AND status = 'ready' AND account_id IN \
             (SELECT id FROM acme_accounts WHERE status = 'valid')",
        )
        .bind(&cert.serial)
        .bind(order_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        insert_cert(self.engine, &mut *tx, cert).await?;
        insert_audit(self.engine, &mut *tx, audit).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// The account whose order got certificate `serial`, if any.
    pub async fn acme_account_of_serial(&self, serial: &str) -> StoreResult<Option<String>> {
        let row = sqlx::query("SELECT account_id FROM acme_orders WHERE serial = $1")
            .bind(serial)
            .fetch_optional(&mut *self.conn().await?)
            .await?;
        Ok(row.map(|r| r.try_get("account_id")).transpose()?)
    }

    /// Uses up a genuine nonce good until `expires_at`: `true` the first
    /// time, on whichever replica, `false` ever after. Now and then sweeps
    /// the rows of nonces that have expired anyway.
    pub async fn use_acme_nonce(
        &self,
        nonce: &str,
        now: i64,
        expires_at: i64,
    ) -> StoreResult<bool> {
        let mut conn = self.conn().await?;
        let n = sqlx::query(
            "INSERT INTO acme_nonces (nonce, expires_at) VALUES ($1, $2) \
             ON CONFLICT (nonce) DO NOTHING",
        )
        .bind(nonce)
        .bind(expires_at)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        // About one use in 64 (by the nonce's last character) sweeps: no extra task.
        if nonce.ends_with('A') {
            sqlx::query("DELETE FROM acme_nonces WHERE expires_at <= $1")
                .bind(now)
                .execute(&mut *conn)
                .await?;
        }
        Ok(n == 1)
    }
}
