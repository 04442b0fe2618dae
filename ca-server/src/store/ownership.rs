//! Which CA a store belongs to. Replicas share one store but each has its
//! own data dir; a replica started with another CA's data dir, or with an
//! empty one (which `serve` initialises as a brand-new CA), must not issue
//! into the fleet's store under a different root.
//!
//! The store records the root fingerprint of the first data dir that served
//! from it (`ca_identity`). The root, not the intermediate, is the identity,
//! so rotating the intermediate keeps the store.

use super::Store;
use anyhow::{Context, Result, anyhow, bail};

impl Store {
    /// Claims an unclaimed store for `root_fingerprint`, or checks that it is
    /// the root that claimed it.
    pub async fn check_ca_identity(
        &self,
        root_fingerprint: &str,
        intermediate_der: &[u8],
    ) -> Result<()> {
        let mut conn = self.conn().await?;
        let claimed: Option<String> =
            sqlx::query_scalar("SELECT root_fingerprint FROM ca_identity WHERE id = 1")
                .fetch_optional(&mut *conn)
                .await
                .context("reading the store's CA identity")?;
        if let Some(claimed) = claimed {
            if claimed != root_fingerprint {
                bail!(
                    "the store belongs to another CA (root {claimed}; this data dir's root is \
                     {root_fingerprint}). Every replica needs a copy of the same data dir \
                     (root.crt, intermediate.crt, intermediate.key): copy it from a running \
                     replica instead of initialising a new one"
                );
            }
            return Ok(());
        }
        // A store from before the identity row: its newest certificate must
        // come from this intermediate (an empty store belongs to anyone).
        let newest: Option<(String, Vec<u8>)> = sqlx::query_as(
            "SELECT serial, der FROM certificates ORDER BY issued_at DESC, serial LIMIT 1",
        )
        .fetch_optional(&mut *conn)
        .await?;
        if let Some((serial, der)) = newest {
            let (_, intermediate) = x509_parser::parse_x509_certificate(intermediate_der)
                .map_err(|e| anyhow!("parsing the intermediate: {e}"))?;
            let signed_here = x509_parser::parse_x509_certificate(&der).is_ok_and(|(_, cert)| {
                cert.verify_signature(Some(intermediate.public_key()))
                    .is_ok()
            });
            if !signed_here {
                bail!(
                    "the store holds certificates of another CA (its newest, serial {serial}, \
                     was not signed by this data dir's intermediate); refusing to claim it"
                );
            }
        }
        // Two replicas claiming at once: the row exists after either insert,
        // and the loser's check below compares against the winner's root.
        sqlx::query("INSERT INTO ca_identity (id, root_fingerprint) VALUES (1, $1) ON CONFLICT (id) DO NOTHING")
            .bind(root_fingerprint)
            .execute(&mut *conn)
            .await
            .context("recording the store's CA identity")?;
        drop(conn);
        Box::pin(self.check_ca_identity(root_fingerprint, intermediate_der)).await
    }
}
