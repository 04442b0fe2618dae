//! Which CA a store belongs to. Replicas share one store but each has its
//! own data dir; a replica started with another CA's data dir, or with an
//! empty one (which `serve` initialises as a brand-new CA), must not issue
//! into the fleet's store under a different root.

use super::Store;
use anyhow::{Result, anyhow, bail};

impl Store {
    /// Refuses to serve from this store unless its newest certificate was
    /// signed by `intermediate_der` (an empty store belongs to anyone).
    pub async fn check_issued_by(&self, intermediate_der: &[u8]) -> Result<()> {
        let newest: Option<(String, Vec<u8>)> = sqlx::query_as(
            "SELECT serial, der FROM certificates ORDER BY issued_at DESC, serial LIMIT 1",
        )
        .fetch_optional(&mut *self.conn().await?)
        .await?;
        let Some((serial, der)) = newest else {
            return Ok(());
        };
        let (_, intermediate) = x509_parser::parse_x509_certificate(intermediate_der)
            .map_err(|e| anyhow!("parsing the intermediate: {e}"))?;
        let signed_here = x509_parser::parse_x509_certificate(&der)
            .map(|(_, cert)| {
                cert.verify_signature(Some(intermediate.public_key()))
                    .is_ok()
            })
            .unwrap_or(false);
        if !signed_here {
            bail!(
                "the store holds certificates of another CA (its newest, serial {serial}, \
                 was not signed by this data dir's intermediate). Every replica needs a copy \
                 of the same data dir (root.crt, intermediate.crt, intermediate.key): copy it \
                 from a running replica instead of initialising a new one"
            );
        }
        Ok(())
    }
}
