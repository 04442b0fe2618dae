//! `ca-server store copy`: moves a whole store to another database (SQLite
//! to PostgreSQL when a CA grows into replicas; any direction works) and
//! proves the copy complete.
//!
//! - The source is read in one snapshot (SQLite: one read transaction;
//!   PostgreSQL: `REPEATABLE READ`), so a copy is consistent even if a server
//!   still writes; stop the servers first anyway, or their later writes stay
//!   behind.
//! - The target is written in one transaction: either it holds the whole
//!   copy or nothing. It must hold no data of its own (no PSKs, certificates
//!   or audit rows, CRL number 0): a copy never merges two CAs.
//! - Rows are copied column by column as the source's schema has them, so
//!   columns added by later migrations are carried without changes here; a
//!   table this module does not know stops the copy instead of being left
//!   behind.
//! - Afterwards every table is re-read from the target and compared with what
//!   was read from the source: row count and an order-independent digest of
//!   the rows' contents.

use super::{Engine, Store};
use anyhow::{Context, Result, bail};
use futures_util::TryStreamExt;
use sqlx::any::{AnyRow, AnyTypeInfoKind};
use sqlx::{AnyConnection, AssertSqlSafe, Column, Row, TypeInfo};

/// The tables of the schema, in copy order. `store copy` refuses a source
/// holding any other table (a new table must be added here).
pub const TABLES: &[&str] = &[
    "psks",
    "certificates",
    "audit",
    "audit_chain",
    "audit_checkpoints",
    "crl_state",
    "crl_published",
    "ca_identity",
    "ocsp_responders",
    "acme_accounts",
    "acme_orders",
    "acme_nonces",
    "psk_seal_key",
];

/// Tables that must be empty in the target (`crl_state` and `audit_chain`
/// hold their seed rows).
const DATA_TABLES: &[&str] = &[
    "psks",
    "certificates",
    "audit",
    "audit_checkpoints",
    "crl_published",
    "ca_identity",
    "ocsp_responders",
    "acme_accounts",
    "acme_orders",
    "acme_nonces",
    "psk_seal_key",
];

/// Most bind parameters in one INSERT (SQLite allows 32766, PostgreSQL 65535).
const MAX_PARAMS: usize = 30_000;
/// Most rows in one INSERT.
const MAX_BATCH: usize = 500;

/// What one table's copy moved, as verified in the target.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TableCopy {
    pub table: String,
    pub rows: u64,
    /// Hex of the order-independent content digest, equal on both sides.
    pub digest: String,
}

/// The outcome of a verified copy.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CopyReport {
    pub tables: Vec<TableCopy>,
    /// The CRL number carried over.
    pub crl_number: i64,
}

impl CopyReport {
    /// Rows copied for `table` (0 if the table is not in the report).
    pub fn rows(&self, table: &str) -> u64 {
        self.tables
            .iter()
            .find(|t| t.table == table)
            .map_or(0, |t| t.rows)
    }
}

/// Rows and digest of one table as read.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Tally {
    rows: u64,
    digest: u128,
}

impl Tally {
    fn add(&mut self, row: &[(String, Value)]) {
        self.rows += 1;
        self.digest = self.digest.wrapping_add(row_digest(row));
    }
}

/// One column value, as the store's types allow (numbers, text, bytes).
#[derive(Debug, Clone)]
enum Value {
    Int(Option<i64>),
    Text(Option<String>),
    Blob(Option<Vec<u8>>),
}

impl Store {
    /// Copies every table into `target`, which must hold no data, in one
    /// target transaction; then verifies counts and contents.
    pub async fn copy_to(&self, target: &Store) -> Result<CopyReport> {
        self.check_known_tables().await?;
        target.check_empty().await?;

        // The source snapshot: every table read in one transaction.
        let mut src = match self.engine {
            Engine::Sqlite => self.pool()?.begin().await?,
            Engine::Postgres => {
                self.pool()?
                    .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .await?
            }
        };
        let mut dst = target.pool()?.begin().await?;
        let mut tallies = Vec::new();
        for table in TABLES {
            sqlx::query(AssertSqlSafe(format!("DELETE FROM {table}")))
                .execute(&mut *dst)
                .await?;
            let tally = copy_table(&mut src, &mut dst, table)
                .await
                .with_context(|| format!("copying table {table}"))?;
            if target.engine == Engine::Postgres {
                advance_sequences(&mut dst, table).await?;
            }
            tallies.push((*table, tally));
        }
        dst.commit()
            .await
            .context("committing the copy in the target")?;
        src.rollback().await?;

        // Verify: what the target now holds is what the source held.
        let mut tables = Vec::new();
        for (table, expected) in tallies {
            let found = target.tally(table).await?;
            if found != expected {
                bail!(
                    "verification failed for table {table}: the source had {} rows, the target has {} (digests {:032x} / {:032x})",
                    expected.rows,
                    found.rows,
                    expected.digest,
                    found.digest
                );
            }
            tables.push(TableCopy {
                table: table.to_owned(),
                rows: found.rows,
                digest: format!("{:032x}", found.digest),
            });
        }
        let crl_number: i64 = sqlx::query_scalar("SELECT crl_number FROM crl_state WHERE id = 1")
            .fetch_one(target.pool()?)
            .await?;
        Ok(CopyReport { tables, crl_number })
    }

    /// Refuses a source with tables this module would leave behind.
    async fn check_known_tables(&self) -> Result<()> {
        let sql = match self.engine {
            Engine::Sqlite => {
                "SELECT name FROM sqlite_master WHERE type = 'table' \
                 AND name NOT LIKE 'sqlite_%' AND name <> '_sqlx_migrations'"
            }
            Engine::Postgres => {
                "SELECT table_name::text AS name FROM information_schema.tables \
                 WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' \
                 AND table_name <> '_sqlx_migrations'"
            }
        };
        let names: Vec<String> = sqlx::query_scalar(sql).fetch_all(self.pool()?).await?;
        for name in names {
            if !TABLES.contains(&name.as_str()) {
                bail!(
                    "the source has a table `store copy` does not know: {name} (add it to store::copy::TABLES)"
                );
            }
        }
        Ok(())
    }

    /// Refuses a target that already holds data of its own.
    async fn check_empty(&self) -> Result<()> {
        for table in DATA_TABLES {
            let n: i64 = sqlx::query_scalar(AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
                .fetch_one(self.pool()?)
                .await?;
            if n > 0 {
                bail!(
                    "the target already holds data ({n} rows in {table}); copy into an empty database"
                );
            }
        }
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM crl_state WHERE crl_number <> 0")
            .fetch_one(self.pool()?)
            .await?;
        if n > 0 {
            bail!("the target already has a CRL number; copy into an empty database");
        }
        Ok(())
    }

    /// Rows and digest of `table` as this store holds it now.
    async fn tally(&self, table: &str) -> Result<Tally> {
        let mut conn = self.pool()?.acquire().await?;
        let mut tally = Tally::default();
        let mut rows =
            sqlx::query(AssertSqlSafe(format!("SELECT * FROM {table}"))).fetch(&mut *conn);
        while let Some(row) = rows.try_next().await? {
            tally.add(&decode_row(&row)?);
        }
        Ok(tally)
    }
}

/// Streams `table` from `src` into `dst` in multi-row INSERTs.
async fn copy_table(
    src: &mut AnyConnection,
    dst: &mut AnyConnection,
    table: &str,
) -> Result<Tally> {
    let mut tally = Tally::default();
    let mut batch: Vec<Vec<(String, Value)>> = Vec::new();
    let mut rows = sqlx::query(AssertSqlSafe(format!("SELECT * FROM {table}"))).fetch(src);
    while let Some(row) = rows.try_next().await? {
        let row = decode_row(&row)?;
        tally.add(&row);
        batch.push(row);
        if batch.len() >= MAX_BATCH || batch.len() * batch[0].len() >= MAX_PARAMS {
            insert_batch(dst, table, &batch).await?;
            batch.clear();
        }
    }
    if !batch.is_empty() {
        insert_batch(dst, table, &batch).await?;
    }
    Ok(tally)
}

async fn insert_batch(
    dst: &mut AnyConnection,
    table: &str,
    batch: &[Vec<(String, Value)>],
) -> Result<()> {
    let columns: Vec<&str> = batch[0].iter().map(|(name, _)| name.as_str()).collect();
    let mut sql = format!("INSERT INTO {table} ({}) VALUES ", columns.join(", "));
    let mut n = 0;
    for (i, _) in batch.iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for c in 0..columns.len() {
            n += 1;
            if c > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("${n}"));
        }
        sql.push(')');
    }
    let mut q = sqlx::query(AssertSqlSafe(sql));
    for row in batch {
        for (_, value) in row {
            q = match value.clone() {
                Value::Int(v) => q.bind(v),
                Value::Text(v) => q.bind(v),
                Value::Blob(v) => q.bind(v),
            };
        }
    }
    q.execute(&mut *dst).await?;
    Ok(())
}

/// PostgreSQL: a serial column's sequence continues after the copied ids
/// (SQLite's AUTOINCREMENT follows explicit ids by itself).
async fn advance_sequences(dst: &mut AnyConnection, table: &str) -> Result<()> {
    let columns: Vec<String> = sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name = $1 \
         AND pg_get_serial_sequence(table_name::text, column_name::text) IS NOT NULL",
    )
    .bind(table)
    .fetch_all(&mut *dst)
    .await?;
    for column in columns {
        check_identifier(&column)?;
        sqlx::query(AssertSqlSafe(format!(
            "SELECT setval(pg_get_serial_sequence('{table}', '{column}'), m) \
             FROM (SELECT max({column}) AS m FROM {table}) s WHERE m IS NOT NULL"
        )))
        .execute(&mut *dst)
        .await?;
    }
    Ok(())
}

/// Reads every column of a row by its declared type.
fn decode_row(row: &AnyRow) -> Result<Vec<(String, Value)>> {
    row.columns()
        .iter()
        .map(|col| {
            let name = col.name().to_owned();
            check_identifier(&name)?;
            let i = col.ordinal();
            let value = match col.type_info().kind() {
                AnyTypeInfoKind::SmallInt | AnyTypeInfoKind::Integer | AnyTypeInfoKind::BigInt => {
                    Value::Int(row.try_get(i)?)
                }
                AnyTypeInfoKind::Text => Value::Text(row.try_get(i)?),
                AnyTypeInfoKind::Blob => Value::Blob(row.try_get(i)?),
                other => bail!(
                    "column {name} has type {} ({other:?}), which `store copy` does not carry",
                    col.type_info().name()
                ),
            };
            Ok((name, value))
        })
        .collect()
}

/// Table and column names go into SQL text: only plain lowercase identifiers.
fn check_identifier(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit();
    if !ok {
        bail!("unexpected column name {name:?} in the store");
    }
    Ok(())
}

/// SHA-256 over the row's columns in name order, each as name, type and
/// value (a NULL is the same whatever its column type); the first 16 bytes
/// as a number, summed over the table, make an order-independent digest.
fn row_digest(row: &[(String, Value)]) -> u128 {
    let mut cols: Vec<&(String, Value)> = row.iter().collect();
    cols.sort_by(|a, b| a.0.cmp(&b.0));
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for (name, value) in cols {
        ctx.update(&(name.len() as u64).to_be_bytes());
        ctx.update(name.as_bytes());
        let (tag, bytes): (u8, Vec<u8>) = match value {
            Value::Int(Some(v)) => (b'i', v.to_be_bytes().to_vec()),
            Value::Text(Some(v)) => (b't', v.as_bytes().to_vec()),
            Value::Blob(Some(v)) => (b'b', v.clone()),
            Value::Int(None) | Value::Text(None) | Value::Blob(None) => (b'n', Vec::new()),
        };
        ctx.update(&[tag]);
        ctx.update(&(bytes.len() as u64).to_be_bytes());
        ctx.update(&bytes);
    }
    let d = ctx.finish();
    u128::from_be_bytes(d.as_ref()[..16].try_into().expect("16 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_ignores_row_and_column_order_but_not_content() {
        let a = vec![
            ("a".to_owned(), Value::Int(Some(1))),
            ("b".to_owned(), Value::Text(Some("x".into()))),
        ];
        let a_swapped = vec![a[1].clone(), a[0].clone()];
        let b = vec![
            ("a".to_owned(), Value::Int(Some(2))),
            ("b".to_owned(), Value::Blob(None)),
        ];
        let b_typed_null = vec![
            ("a".to_owned(), Value::Int(Some(2))),
            ("b".to_owned(), Value::Text(None)),
        ];
        assert_eq!(row_digest(&a), row_digest(&a_swapped));
        assert_eq!(row_digest(&b), row_digest(&b_typed_null));
        let (mut t1, mut t2) = (Tally::default(), Tally::default());
        t1.add(&a);
        t1.add(&b);
        t2.add(&b);
        t2.add(&a_swapped);
        assert_eq!(t1, t2);
        let text_one = vec![
            ("a".to_owned(), Value::Text(Some("1".into()))),
            ("b".to_owned(), Value::Text(Some("x".into()))),
        ];
        assert_ne!(row_digest(&a), row_digest(&text_one));
    }

    #[test]
    fn only_plain_identifiers_reach_sql() {
        assert!(check_identifier("psk_hash").is_ok());
        for bad in ["", "1a", "a;b", "A", "a b", "\"a\""] {
            assert!(check_identifier(bad).is_err(), "{bad:?}");
        }
    }
}
