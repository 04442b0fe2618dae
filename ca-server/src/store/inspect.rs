//! A look at a store without changing it (`ca-server doctor`): can it be
//! reached, which migrations it has against those this binary ships, and
//! which CA it belongs to. Unlike [`Store::open`](super::Store::open) this
//! runs no migration and creates no file.

use super::Engine;
use anyhow::{Context, Result};
use sqlx::{Connection, Row};
use std::collections::BTreeMap;
use std::time::Duration;

/// What [`inspect`] found.
#[derive(Debug, Clone, Default)]
pub struct Inspection {
    /// Migrations this binary ships that the store has not run (serve runs them at start).
    pub pending: Vec<String>,
    /// Migrations the store ran that this binary does not know (the store is newer).
    pub unknown: Vec<i64>,
    /// Migrations recorded as failed, or whose content changed since they ran.
    pub broken: Vec<String>,
    /// The root fingerprint recorded in `ca_identity`, if any.
    pub root_fingerprint: Option<String>,
}

fn is_missing_table(e: &sqlx::Error) -> bool {
    let msg = e.to_string();
    msg.contains("no such table") || msg.contains("does not exist")
}

fn migrator(engine: Engine) -> sqlx::migrate::Migrator {
    match engine {
        Engine::Sqlite => sqlx::migrate!("./migrations/sqlite"),
        Engine::Postgres => sqlx::migrate!("./migrations/postgres"),
    }
}

/// Connects to `url` (within 5 s) and reads the migration table and the CA
/// identity.
pub async fn inspect(url: &str) -> Result<Inspection> {
    sqlx::any::install_default_drivers();
    let engine = Engine::from_url(url)?;
    let mut conn = tokio::time::timeout(Duration::from_secs(5), sqlx::AnyConnection::connect(url))
        .await
        .map_err(|_| anyhow::anyhow!("no connection within 5 s"))?
        .context("connecting")?;
    // `success` is BOOLEAN on PostgreSQL and an integer on SQLite.
    let rows = sqlx::query(
        "SELECT version, CAST(CASE WHEN success THEN 1 ELSE 0 END AS BIGINT) AS ok, checksum \
         FROM _sqlx_migrations",
    )
    .fetch_all(&mut conn)
    .await;
    let applied: BTreeMap<i64, (bool, Vec<u8>)> = match rows {
        Ok(rows) => rows
            .iter()
            .map(|r| {
                Ok((
                    r.try_get::<i64, _>("version")?,
                    (
                        r.try_get::<i64, _>("ok")? == 1,
                        r.try_get::<Vec<u8>, _>("checksum")?,
                    ),
                ))
            })
            .collect::<Result<_, sqlx::Error>>()
            .context("reading the migration table")?,
        // No migration table yet: a store no `serve` has opened.
        Err(e) if is_missing_table(&e) => BTreeMap::new(),
        Err(e) => return Err(e).context("reading the migration table"),
    };
    let mut out = Inspection::default();
    let shipped = migrator(engine);
    for m in shipped.iter() {
        let name = format!("{} {}", m.version, m.description);
        match applied.get(&m.version) {
            None => out.pending.push(name),
            Some((false, _)) => out.broken.push(format!("{name} (failed)")),
            Some((true, sum)) if sum.as_slice() != &*m.checksum => {
                out.broken.push(format!("{name} (changed since it ran)"))
            }
            Some(_) => {}
        }
    }
    out.unknown = applied
        .keys()
        .filter(|v| !shipped.iter().any(|m| m.version == **v))
        .copied()
        .collect();
    // Absent before the identity migration has run.
    out.root_fingerprint =
        sqlx::query_scalar("SELECT root_fingerprint FROM ca_identity WHERE id = 1")
            .fetch_optional(&mut conn)
            .await
            .ok()
            .flatten();
    let _ = conn.close().await;
    Ok(out)
}
